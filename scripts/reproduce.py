"""Train presets x seeds and tabulate accuracy as mean ± std over the seeds.

  python scripts/reproduce.py --models=softmax,mlp --presets=seed,default --seeds=0,1,2
  python scripts/reproduce.py --models=softmax --presets=seed --seeds=0   # MNIST, ~30 s

Each run is its own process, `python -m mnist_tf2.train --model=M --preset=P
--seed=S --workdir=OUTPUT_DIR/M-P-seedS --eval_splits=validation,test`, and is
read back from its results.json. With --precisions=float32,mixed every run is
also trained with --mixed_precision (bfloat16 on a CPU, float16 on a GPU) in
OUTPUT_DIR/M-P-mixed-seedS; the table's precision column tells the rows apart.
The table (Markdown) goes to stdout and to OUTPUT_DIR/results.md, every figure
with the machine and its load to OUTPUT_DIR/results.json. Nothing is selected
here: the test figures are reported, never compared.

With --plots (needs matplotlib: `pip install -e ".[scripts]"`) it also draws
OUTPUT_DIR/frontier.png, test error against wall-clock seconds for every
(model, preset), mean and sample std over the seeds, beside the published
results for this class of CNN; and OUTPUT_DIR/validation_curves.png, the
validation error of every run against epochs, read from its TensorBoard
events (a point per `--eval_every` steps, given to the runs if non-zero).

A run already finished in OUTPUT_DIR with the same config is reused, not
retrained, and an interrupted one resumes from its checkpoint, so a long
reproduction can be continued; a workdir that holds another config is refused.
"""

import dataclasses
import datetime
import importlib.metadata
import json
import os
import platform
import statistics
import subprocess
import sys
import time

from absl import flags

# Run from a checkout: import mnist_tf2 from it, and have every training
# process import the very same package (not another installed copy).
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from mnist_tf2 import cli  # pylint: disable=g-import-not-at-top
from mnist_tf2 import config as config_lib  # pylint: disable=g-import-not-at-top
from mnist_tf2.errors import UserError  # pylint: disable=g-import-not-at-top

def define_flags() -> None:
  """The script's flags; defined only when it runs, so importing it (the tests do) does
  not clash with the training flags of the same names (--eval_every)."""
  flags.DEFINE_list("models", ["softmax", "mlp", "cnn"], "Models to run.")
  flags.DEFINE_list("presets", ["seed", "default"], "Presets to run for every model that has "
                    "them (e.g. seed_sgd exists for the cnn only).")
  flags.DEFINE_list("seeds", ["0", "1", "2"], "Seeds; every (model, preset) runs once each.")
  flags.DEFINE_string("output_dir", "/tmp/mnist_tf2/reproduce", "Workdirs, logs and the "
                      "results.md / results.json tables go here.")
  flags.DEFINE_bool("plots", False, "Also draw frontier.png and validation_curves.png in "
                    "--output_dir (needs matplotlib).")
  flags.DEFINE_integer("eval_every", 0, "Give the runs --eval_every=N (0: the presets' own), "
                       "for points on the validation curves.")
  flags.DEFINE_list("precisions", ["float32"], "float32 and/or mixed: the runs as the presets "
                    "set them, and/or with --mixed_precision (bfloat16 on a CPU, float16 on a "
                    "GPU; workdirs M-P-mixed-seedS). The precision column says what each row "
                    "computed in.")
  flags.DEFINE_bool("reuse_only", False, "Train nothing: tabulate and plot the finished runs "
                    "in --output_dir and skip the others (e.g. to put runs made by several "
                    "calls, or copied in, into one table and one frontier).")


FLAGS = flags.FLAGS

SPLITS = ("validation", "test")
# Fields that say where a run writes and how often it reports, not what it trains
# (resuming is exact, so checkpoints do not change the weights either): a run
# that differs only in these is reused. A field missing from a saved config did
# not exist yet when it ran, i.e. the run had its default.
BOOKKEEPING = ("workdir", "eval_every", "log_every", "checkpoint_every", "histogram_every",
               "max_to_keep", "summaries", "profile_steps", "export_dir", "log_device_placement")
# Every run evaluates only what the table reports; the 55,000-image training
# split would cost more than the other two together.
OVERRIDES = {"eval_splits": ",".join(SPLITS)}


PRECISIONS = ("float32", "mixed")


def plan(models, presets, seeds, precisions=("float32",)):
  """The (model, preset, seed, mixed_precision) runs, in order; presets a model lacks are skipped.

  Raises:
    UserError: an unknown model or precision, a bad seed, or a preset no chosen model has.
  """
  unknown = [precision for precision in precisions if precision not in PRECISIONS]
  if unknown or not precisions:
    raise UserError("--precisions takes float32 and/or mixed (--mixed_precision: bfloat16 on "
                    f"a CPU, float16 on a GPU), got {','.join(precisions) or 'nothing'}")
  try:
    seeds = [int(seed) for seed in seeds]
  except ValueError:
    raise UserError(f"--seeds must be integers, got {','.join(seeds)}") from None
  available = {model: config_lib.load_presets(model) for model in models}
  for preset in presets:
    if not any(preset in names for names in available.values()):
      raise UserError(f"no chosen model has --presets={preset}")
  return [(model, preset, seed, precision == "mixed") for model in models
          for preset in presets if preset in available[model]
          for precision in PRECISIONS if precision in precisions for seed in seeds]


def workdir_of(output_dir, model, preset, seed, mixed_precision=False):
  return os.path.join(output_dir,
                      f"{model}-{preset}{'-mixed' if mixed_precision else ''}-seed{seed}")


def training_differences(saved, config):
  """Fields in which a saved config.json trains otherwise than `config`.

  Args:
    saved: a run's config.json as a dict.
    config: a Config.to_dict().

  Returns:
    `name <saved> in the run, <wanted> now` for each differing field that is not BOOKKEEPING,
    sorted by name; empty when the saved run trains what `config` trains.
  """
  defaults = {field.name: field.default for field in dataclasses.fields(config_lib.Config)
              if field.default is not dataclasses.MISSING}
  saved = {**{name: defaults[name] for name in config if name in defaults}, **saved}
  names = sorted((set(saved) | set(config)) - set(BOOKKEEPING))
  return [f"{name} {saved.get(name, '(none)')!r} in the run, {config.get(name, '(none)')!r} now"
          for name in names if saved.get(name) != config.get(name)]


def run(model, preset, seed, mixed_precision, output_dir, overrides=None, reuse_only=False):
  """Trains one (model, preset, seed), with --mixed_precision or not, unless it is done.

  `overrides` (default `OVERRIDES`) are the flags given to every run. With
  `reuse_only`, a run not done is skipped.

  Returns:
    (the run's results.json, whether it was reused rather than trained now);
    (None, None) for a run skipped with `reuse_only`.
  """
  overrides = {**(OVERRIDES if overrides is None else overrides),
               **({"mixed_precision": True} if mixed_precision else {})}
  workdir = workdir_of(output_dir, model, preset, seed, mixed_precision)
  name = f"{model} {preset}{' mixed' if mixed_precision else ''} seed {seed}"
  config = config_lib.resolve(model, preset,
                              {"seed": seed, "workdir": workdir, **overrides}).to_dict()
  config_path = os.path.join(workdir, "config.json")
  results_path = os.path.join(workdir, "results.json")
  if os.path.exists(config_path):
    with open(config_path) as f:
      saved = json.load(f)
    differences = training_differences(saved, config)
    if differences:
      raise UserError(f"{workdir} holds a run of another config ({', '.join(differences)}; "
                      "was the preset or the run's config.json edited?); remove it or choose "
                      "another --output_dir")
    if os.path.exists(results_path):
      # Reporting cadences do not change the weights, so such a run is reused; its
      # validation curve keeps the points it was evaluated at.
      cadence = ("" if "eval_every" not in overrides
                 or saved.get("eval_every") == config["eval_every"]
                 else f" (evaluated {_cadence(saved.get('eval_every'))}, not every "
                      f"{config['eval_every']}: its curve keeps those points; another "
                      "--output_dir trains the run anew)")
      print(f"{name}: reusing {results_path}{cadence}", flush=True)
      with open(results_path) as f:
        return json.load(f), True
  if reuse_only:
    print(f"{name}: no finished run in {workdir}, skipped "
          "(--reuse_only)", flush=True)
    return None, None
  log_path = f"{workdir}.log"
  command = [sys.executable, "-m", "mnist_tf2.train", f"--model={model}",
             f"--preset={preset}", f"--seed={seed}", f"--workdir={workdir}",
             *(f"--{flag}={value}" for flag, value in overrides.items())]
  print(f"{name}: python {' '.join(command[1:])} > {log_path}",
        flush=True)
  with open(log_path, "w") as log:
    python_path = os.pathsep.join(filter(None, [REPO, os.environ.get("PYTHONPATH")]))
    status = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT,
                            env=dict(os.environ, PYTHONPATH=python_path)).returncode
  if status != 0:
    raise UserError(f"{name} failed (exit status {status}); "
                    f"see {log_path}")
  with open(results_path) as f:
    return json.load(f), False


def _cadence(eval_every):
  return f"every {eval_every} steps" if eval_every else "only at the end"


def mean_std(values):
  """(mean, sample standard deviation); the deviation is None for a single value."""
  return statistics.mean(values), statistics.stdev(values) if len(values) > 1 else None


def precision_of(group):
  """What a group of runs computed in: float32, bfloat16 or float16.

  From the dtype policy each run's results.json records; a run from before that
  record names the flag it was given (float32 when it had none).
  """
  recorded = sorted({results["dtype_policy"].removeprefix("mixed_") for results in group
                     if "dtype_policy" in results})
  if recorded:
    return "/".join(recorded)
  config = group[0]["config"]
  flags_given = [name for name in ("mixed_precision", "auto_mixed_precision")
                 if config.get(name)]
  return f"--{flags_given[0]}" if flags_given else "float32"


def _groups(runs):
  """The runs by (model, preset, precision flags), in first-seen order: one table row each."""
  groups = {}
  for results in runs:
    key = (results["model"], results["preset"], bool(results["config"].get("mixed_precision")),
           bool(results["config"].get("auto_mixed_precision")))
    groups.setdefault(key, []).append(results)
  return groups


def run_precisions(runs):
  """Each run's precision: its row's (`precision_of` its group), so runs and rows agree."""
  precision = {id(results): precision_of(group) for group in _groups(runs).values()
               for results in group}
  return [precision[id(results)] for results in runs]


def summarize(runs):
  """One row per (model, preset, precision flags), in first-seen order, from the runs' results."""
  rows = []
  for (model, preset, *_), group in _groups(runs).items():
    row = {"model": model, "preset": preset, "precision": precision_of(group),
           "seeds": [results["config"]["seed"] for results in group],
           "steps": sorted({results["steps"] for results in group}),
           "batch_size": group[0]["config"]["batch_size"],
           "test_examples": group[0]["metrics"]["test"]["num_examples"],
           "data_source": group[0]["config"].get("data_source", "bundled"),
           "wall_seconds": mean_std([results["wall_seconds"] for results in group])}
    for split in SPLITS:
      row[split] = mean_std([results["metrics"][split]["accuracy"] for results in group])
    rows.append(row)
  return rows


def _percent(mean, std):
  return f"{100 * mean:.2f}%" + (f" ± {100 * std:.2f}" if std is not None else "")


def _seconds(mean, std):
  return f"{mean:,.0f}" + (f" ± {std:,.0f}" if std is not None else "")


def markdown(rows, machine):
  """The Markdown table (with a line naming when and where it was measured)."""
  lines = [
      f"Measured {machine['date']} on {machine['cpu']} ({machine['cores']} cores), "
      f"TensorFlow {machine['tensorflow']}; {machine['trained']} run(s) trained in this call "
      f"(1-min load average {machine['load_before']:.1f} before, {machine['load_after']:.1f} "
      f"after), {machine['reused']} reused from earlier calls. Mean ± sample std over the "
      "seeds.",
      "",
      "| model | preset | precision | steps × batch | seeds | wall seconds "
      "| validation accuracy | test accuracy | published |",
      "|---|---|---|---|---|---|---|---|---|",
  ]
  for row in rows:
    steps = "/".join(f"{steps:,}" for steps in row["steps"])
    lines.append(
        f"| {row['model']} | `{row['preset']}` | {row['precision']} | "
        f"{steps} × {row['batch_size']} | "
        f"{len(row['seeds'])} | {_seconds(*row['wall_seconds'])} | "
        f"{_percent(*row['validation'])} | {_percent(*row['test'])} | "
        f"{_published(row)} |")
  return "\n".join(lines) + "\n"


def _published(row):
  """The table's last column: the published figure, or that the run used fake data."""
  if row.get("data_source") == "fake":
    return f"fake data ({row['test_examples']} test images), not MNIST"
  return PUBLISHED.get((row["model"], row["preset"]), "")


# What the table's last column shows beside each (model, preset): the tutorial's own
# figure for the `seed` presets, the published results of this class of CNN for the
# tuned cnn presets (see ANCHORS and docs/ACCURACY.md for the sources).
_CNN_ANCHORS = ("single small CNNs 99.6% (Simard et al. 2003), 99.64% (1,500-run mean), "
                "99.69% (An et al. 2020); committees of 7-35 CNNs 99.73-99.77%")
PUBLISHED = {
    ("softmax", "seed"): "tutorial ~92%",
    ("mlp", "seed"): "tutorial ~90%",
    ("cnn", "seed"): "tutorial ~99.2%",
    ("cnn", "seed_sgd"): "tutorial ~97.3%",
    ("cnn", "default"): _CNN_ANCHORS,
    ("cnn", "best"): _CNN_ANCHORS,
}


# Published test accuracies of CNNs of this class on MNIST (single models unless
# noted), drawn on the frontier for comparison: label -> test error, %.
ANCHORS = {
    "Simard et al. 2003 (elastic distortions)": 0.40,
    "1,500-run study, mean": 0.36,
    "An et al. 2020, final-epoch mean of 30 seeds": 0.31,
    "committees of 7-35 CNNs (0.27-0.23%)": 0.23,
}


def validation_curve(workdir):
  """[(step, validation accuracy)] of a run, from its eval/validation TensorBoard events."""
  tf = cli.import_tensorflow()  # Without TensorFlow's C++ start-up notices.
  from tensorflow.core.util import event_pb2  # pylint: disable=g-import-not-at-top
  points = {}
  for path in sorted(tf.io.gfile.glob(os.path.join(workdir, "eval", "validation",
                                                   "events.out.tfevents.*"))):
    for record in tf.data.TFRecordDataset(path):
      event = event_pb2.Event.FromString(record.numpy())
      for value in event.summary.value:
        if value.tag == "accuracy":
          points[event.step] = float(tf.make_ndarray(value.tensor))
  return sorted(points.items())


def _pyplot():
  try:
    import matplotlib  # pylint: disable=g-import-not-at-top
  except ImportError:
    raise UserError('--plots needs matplotlib: pip install -e ".[scripts]"') from None
  matplotlib.use("Agg")  # Files only, no display.
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  return plt


def _log_axes(axes, *names):
  """Log scale on the named axes, ticks at 1, 2, 3, 5 x 10^k written as plain numbers.

  (3 as well: the cnn's errors, 0.25-0.45%, fall between 0.2 and 0.5.)
  """
  from matplotlib import ticker  # pylint: disable=g-import-not-at-top
  for name in names:
    axis = getattr(axes, f"{name}axis")
    getattr(axes, f"set_{name}scale")("log")
    axis.set_major_locator(ticker.LogLocator(subs=(1.0, 2.0, 3.0, 5.0)))
    axis.set_major_formatter(ticker.FormatStrFormatter("%g"))
    axis.set_minor_formatter(ticker.NullFormatter())


def _error_percent(accuracy, examples):
  """100 * (1 - accuracy), a perfect score drawn at half an error of `examples`.

  A log axis has no place for 0 (matplotlib would drop the point and warn), and
  "under one error in `examples`" is what a perfect score on them says.
  """
  return max(100 * (1 - accuracy), 50 / examples)


def _label(model, preset, precision):
  """`model preset`, and the precision unless float32."""
  return f"{model} {preset}" + ("" if precision == "float32" else f" {precision}")


def plot_frontier(rows, path, machine):
  """Test error (%) against wall seconds per (model, preset): means, std bars, log axes."""
  plt = _pyplot()
  figure, axes = plt.subplots(figsize=(8, 5.5))
  for row in rows:
    seconds, seconds_std = row["wall_seconds"]
    accuracy, accuracy_std = row["test"]
    error = _error_percent(accuracy, row["test_examples"])
    axes.errorbar(seconds, error, xerr=seconds_std or 0, yerr=100 * (accuracy_std or 0),
                  fmt="o", capsize=3)
    label = _label(row["model"], row["preset"], row["precision"])
    axes.annotate(label + (" (no error)" if accuracy == 1 else ""), (seconds, error),
                  textcoords="offset points", xytext=(5, 4), fontsize=8)
  for label, error in ANCHORS.items():
    axes.axhline(error, linestyle=":", linewidth=0.8, color="grey")
    # x in axes coordinates (the left edge, away from the slow accurate runs at the
    # right), y in data coordinates.
    axes.text(0.01, error, label, transform=axes.get_yaxis_transform(), fontsize=7,
              color="grey", ha="left", va="bottom")
  _log_axes(axes, "x", "y")
  axes.set_xlabel("wall-clock seconds per run (whole process)")
  axes.set_ylabel("test error, % (mean over seeds, bars: sample std)")
  axes.set_title(f"Accuracy/time frontier, {machine['date']}, {machine['cpu']} "
                 f"({machine['cores']} cores)", fontsize=9)
  axes.grid(True, which="both", alpha=0.3)
  figure.tight_layout()
  figure.savefig(path, dpi=100)
  plt.close(figure)


def _train_examples(config):
  """The size of a run's training split (MNIST's 60,000 less the validation images)."""
  if config["data_source"] == "fake":
    return config["fake_examples"]
  return 60000 - config["validation_size"]


def plot_validation_curves(runs, curves, path):
  """Validation error (%) against epochs, one line per run, a colour per (model, preset)."""
  plt = _pyplot()
  figure, axes = plt.subplots(figsize=(8, 5.5))
  colours = {}
  perfect = False  # Any point with no error, drawn at half an error.
  for results, precision, curve in zip(runs, run_precisions(runs), curves):
    if not curve:
      continue
    key = _label(results["model"], results["preset"], precision)
    label = None if key in colours else key  # One legend entry per (model, preset).
    colour = colours.setdefault(key, f"C{len(colours) % 10}")
    steps, accuracies = zip(*curve)
    epochs_per_step = results["config"]["batch_size"] / _train_examples(results["config"])
    examples = results["metrics"]["validation"]["num_examples"]
    perfect = perfect or max(accuracies) == 1
    axes.plot([step * epochs_per_step for step in steps],
              [_error_percent(accuracy, examples) for accuracy in accuracies], "-o", markersize=2,
              color=colour, label=label, alpha=0.8)
  if colours:
    axes.legend(fontsize=8)
  _log_axes(axes, "y")
  axes.set_xlabel("epochs")
  axes.set_ylabel("validation error, %" + (" (no error: drawn at half an error)" if perfect
                                            else ""))
  axes.set_title("Validation error during training (one line per seed)", fontsize=9)
  axes.grid(True, which="both", alpha=0.3)
  figure.tight_layout()
  figure.savefig(path, dpi=100)
  plt.close(figure)


def _cpu_name():
  try:
    with open("/proc/cpuinfo") as f:
      for line in f:
        if line.startswith("model name"):
          return line.split(":", 1)[1].strip()
  except OSError:
    pass
  return platform.processor() or platform.machine()


def main(argv):
  del argv  # cli.run refuses positional arguments.
  try:
    runs_to_do = plan(FLAGS.models, FLAGS.presets, FLAGS.seeds, FLAGS.precisions)
    if FLAGS.plots:
      _pyplot()  # Refuse a missing matplotlib now, not after hours of training.
    if FLAGS.eval_every < 0:
      raise UserError(f"--eval_every must be non-negative, got {FLAGS.eval_every}")
    overrides = {**OVERRIDES, **({"eval_every": FLAGS.eval_every} if FLAGS.eval_every else {})}
    os.makedirs(FLAGS.output_dir, exist_ok=True)
    load_before = os.getloadavg()[0]
    start = time.time()
    done = [(planned, *run(*planned, FLAGS.output_dir, overrides, FLAGS.reuse_only))
            for planned in runs_to_do]
    runs_to_do = [planned for planned, results, _ in done if results is not None]
    if not runs_to_do:
      raise UserError(f"no finished run in {FLAGS.output_dir} (--reuse_only)")
    runs, reused = zip(*[(results, was_reused) for _, results, was_reused in done
                         if results is not None])
  except UserError as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)
  machine = {
      "date": datetime.date.today().isoformat(),
      "cpu": _cpu_name(),
      "cores": os.cpu_count(),
      "tensorflow": importlib.metadata.version("tensorflow"),
      "load_before": load_before,
      "load_after": os.getloadavg()[0],
      "trained": reused.count(False),
      "reused": reused.count(True),
      "total_seconds": round(time.time() - start, 1),
  }
  rows = summarize(runs)
  table = markdown(rows, machine)
  print(table)
  with open(os.path.join(FLAGS.output_dir, "results.md"), "w") as f:
    f.write(table)
  with open(os.path.join(FLAGS.output_dir, "results.json"), "w") as f:
    json.dump({"machine": machine, "rows": rows,
               "runs": [{key: results[key] for key in ("model", "preset", "steps",
                                                       "wall_seconds", "metrics")}
                        | {"seed": results["config"]["seed"], "precision": precision,
                           "workdir": workdir_of(FLAGS.output_dir, *planned)}
                        for planned, results, precision
                        in zip(runs_to_do, runs, run_precisions(runs))]},
              f, indent=2)
    f.write("\n")
  if FLAGS.plots:
    curves = [validation_curve(workdir_of(FLAGS.output_dir, *planned))
              for planned in runs_to_do]
    for name, draw in (("frontier.png", lambda path: plot_frontier(rows, path, machine)),
                       ("validation_curves.png",
                        lambda path: plot_validation_curves(runs, curves, path))):
      draw(os.path.join(FLAGS.output_dir, name))
      print(f"Wrote {os.path.join(FLAGS.output_dir, name)}")


if __name__ == "__main__":
  define_flags()
  cli.run_script(main, __doc__)
