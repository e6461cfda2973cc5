"""Train presets x seeds and tabulate accuracy as mean ± std over the seeds.

  python scripts/reproduce.py --models=softmax,mlp --presets=seed,default \
      --seeds=0,1,2 --output_dir=/tmp/mnist_tf2/reproduce

Each run is its own process, `python -m mnist_tf2.train --model=M --preset=P
--seed=S --workdir=OUTPUT_DIR/M-P-seedS --eval_splits=validation,test`, and is
read back from its results.json. The table (Markdown) goes to stdout and to OUTPUT_DIR/results.md,
every figure with the machine and its load to OUTPUT_DIR/results.json. Nothing
is selected here: the test figures are reported, never compared.

A run already finished in OUTPUT_DIR with the same config is reused, not
retrained, and an interrupted one resumes from its checkpoint, so a long
reproduction can be continued; a workdir that holds another config is refused.
"""

import datetime
import importlib.metadata
import json
import os
import platform
import statistics
import subprocess
import sys
import time

from absl import app
from absl import flags

# Run from a checkout: import mnist_tf2 from it, and have every training
# process import the very same package (not another installed copy).
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from mnist_tf2 import config as config_lib  # pylint: disable=g-import-not-at-top
from mnist_tf2.errors import UserError  # pylint: disable=g-import-not-at-top

flags.DEFINE_list("models", ["softmax", "mlp", "cnn"], "Models to run.")
flags.DEFINE_list("presets", ["seed", "default"], "Presets to run for every model that has "
                  "them (e.g. seed_sgd exists for the cnn only).")
flags.DEFINE_list("seeds", ["0", "1", "2"], "Seeds; every (model, preset) runs once each.")
flags.DEFINE_string("output_dir", "/tmp/mnist_tf2/reproduce", "Workdirs, logs and the "
                    "results.md / results.json tables go here.")
FLAGS = flags.FLAGS

SPLITS = ("validation", "test")
# Every run evaluates only what the table reports; the 55,000-image training
# split would cost more than the other two together.
OVERRIDES = {"eval_splits": ",".join(SPLITS)}


def plan(models, presets, seeds):
  """The (model, preset, seed) runs, in order; presets a model lacks are skipped.

  Raises:
    UserError: an unknown model, a bad seed, or a preset no chosen model has.
  """
  try:
    seeds = [int(seed) for seed in seeds]
  except ValueError:
    raise UserError(f"--seeds must be integers, got {','.join(seeds)}") from None
  available = {model: config_lib.load_presets(model) for model in models}
  for preset in presets:
    if not any(preset in names for names in available.values()):
      raise UserError(f"no chosen model has --presets={preset}")
  return [(model, preset, seed) for model in models for preset in presets
          if preset in available[model] for seed in seeds]


def workdir_of(output_dir, model, preset, seed):
  return os.path.join(output_dir, f"{model}-{preset}-seed{seed}")


def run(model, preset, seed, output_dir):
  """Trains one (model, preset, seed) unless it is already done.

  Returns:
    (the run's results.json, whether it was reused rather than trained now).
  """
  workdir = workdir_of(output_dir, model, preset, seed)
  config = config_lib.resolve(model, preset,
                              {"seed": seed, "workdir": workdir, **OVERRIDES}).to_dict()
  config_path = os.path.join(workdir, "config.json")
  results_path = os.path.join(workdir, "results.json")
  if os.path.exists(config_path):
    with open(config_path) as f:
      if json.load(f) != config:
        raise UserError(f"{workdir} holds a run of another config (was the preset edited?); "
                        "remove it or choose another --output_dir")
    if os.path.exists(results_path):
      print(f"{model} {preset} seed {seed}: reusing {results_path}", flush=True)
      with open(results_path) as f:
        return json.load(f), True
  log_path = f"{workdir}.log"
  command = [sys.executable, "-m", "mnist_tf2.train", f"--model={model}",
             f"--preset={preset}", f"--seed={seed}", f"--workdir={workdir}",
             *(f"--{name}={value}" for name, value in OVERRIDES.items())]
  print(f"{model} {preset} seed {seed}: {' '.join(command[1:])} > {log_path}", flush=True)
  with open(log_path, "w") as log:
    python_path = os.pathsep.join(filter(None, [REPO, os.environ.get("PYTHONPATH")]))
    status = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT,
                            env=dict(os.environ, PYTHONPATH=python_path)).returncode
  if status != 0:
    raise UserError(f"{model} {preset} seed {seed} failed (exit status {status}); "
                    f"see {log_path}")
  with open(results_path) as f:
    return json.load(f), False


def mean_std(values):
  """(mean, sample standard deviation); the deviation is None for a single value."""
  return statistics.mean(values), statistics.stdev(values) if len(values) > 1 else None


def summarize(runs):
  """One row per (model, preset), in first-seen order, from the runs' results."""
  groups = {}
  for results in runs:
    groups.setdefault((results["model"], results["preset"]), []).append(results)
  rows = []
  for (model, preset), group in groups.items():
    row = {"model": model, "preset": preset,
           "seeds": [results["config"]["seed"] for results in group],
           "steps": sorted({results["steps"] for results in group}),
           "batch_size": group[0]["config"]["batch_size"],
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
      "| model | preset | steps × batch | seeds | wall seconds | validation accuracy "
      "| test accuracy |",
      "|---|---|---|---|---|---|---|",
  ]
  for row in rows:
    steps = "/".join(f"{steps:,}" for steps in row["steps"])
    lines.append(
        f"| {row['model']} | `{row['preset']}` | {steps} × {row['batch_size']} | "
        f"{len(row['seeds'])} | {_seconds(*row['wall_seconds'])} | "
        f"{_percent(*row['validation'])} | {_percent(*row['test'])} |")
  return "\n".join(lines) + "\n"


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
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  try:
    runs_to_do = plan(FLAGS.models, FLAGS.presets, FLAGS.seeds)
    os.makedirs(FLAGS.output_dir, exist_ok=True)
    load_before = os.getloadavg()[0]
    start = time.time()
    runs, reused = zip(*[run(*planned, FLAGS.output_dir) for planned in runs_to_do])
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
                        | {"seed": results["config"]["seed"]} for results in runs]},
              f, indent=2)
    f.write("\n")


if __name__ == "__main__":
  app.run(main)
