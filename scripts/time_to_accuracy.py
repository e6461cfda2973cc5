"""Wall time from the command to a test accuracy, for presets, as a user would see it.

  python scripts/time_to_accuracy.py --model=cnn --presets=fast --seeds=0,1,2 \
      [--targets=0.99,0.995] [--eval_every=0] [--output=FILE.json]

Each (preset, seed) is one `python -m mnist_tf2.train` process, timed from its
start (the interpreter, `import tensorflow`, data loading and tracing count);
its stdout is read line by line and every "Test Data Eval" accuracy is stamped
with the seconds since the start. The time to a target is the stamp of the first
test evaluation at or above it. With --eval_every=0 the preset runs as users run
it (one final evaluation, so the time to a target is the whole run); with
--eval_every=N the test set is evaluated every N steps, and those evaluations
are part of the time. Also reported per run: the CPU seconds (user + system,
of the process and its children), a figure a busy machine distorts less than
the wall time, and the load average before and after. Medians are over seeds,
and only if every seed reached the target.

Each run trains in a temporary workdir (/tmp/tta-*, ~38 MB for the cnn), removed
when the run ends; --keep_workdirs keeps them and prints where. A run that
fails stops the script with one `error:` line that quotes the run's own error.
"""

import json
import os
import re
import resource
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

from absl import flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from mnist_tf2 import cli  # pylint: disable=g-import-not-at-top

flags.DEFINE_string("model", "cnn", "Model: softmax, mlp or cnn.")
flags.DEFINE_list("presets", ["fast"], "Presets to time.")
flags.DEFINE_list("seeds", ["0", "1", "2"], "Seeds: one run of each preset per seed.")
flags.DEFINE_list("targets", ["0.99", "0.995"], "Test accuracies to time.")
flags.DEFINE_integer("eval_every", 0, "Evaluate the test set every N steps (0: as the preset "
                     "does, at its end).")
flags.DEFINE_list("extra_flags", [], "More flags for every run, e.g. --max_steps=10.")
flags.DEFINE_string("output", "", "Write the results as JSON to this file.")
flags.DEFINE_bool("keep_workdirs", False, "Keep each run's temporary workdir (checkpoints, "
                  "config) and print where; by default it is removed when the run ends.")
FLAGS = flags.FLAGS

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ACCURACY = re.compile(r"Precision @ 1: ([0-9.]+)")
# A line that says what went wrong: our commands' `error: ...`, absl's flag errors,
# the last line of a Python traceback (`ValueError: ...`).
ERROR_LINE = re.compile(r"^(error\b|\w*(Error|Exception)\b|FATAL)", re.I)


class RunFailed(Exception):
  """A training run exited with a failure; the message is one line."""


def error_of(stderr: str, stdout_lines: list[str]) -> str:
  """The child's own words for why it failed: its last error line, else its last line."""
  lines = [line.strip() for line in stderr.splitlines() if line.strip()]
  errors = [line for line in lines if ERROR_LINE.match(line)]
  line = (errors or lines or [l for l in stdout_lines if l.strip()] or ["(no output)"])[-1]
  return re.sub(r"^error:\s*", "", line)


def cpu_seconds_of_children() -> float:
  usage = resource.getrusage(resource.RUSAGE_CHILDREN)
  return usage.ru_utime + usage.ru_stime


def time_run(model, preset, seed, eval_every, extra_flags, keep_workdir=False):
  """Runs one training process in a temporary workdir; returns its timeline and figures.

  The workdir is removed afterwards unless `keep_workdir`.

  Raises:
    RunFailed: the process failed; the message quotes its last error line.
  """
  workdir = tempfile.mkdtemp(prefix=f"tta-{model}-{preset}-{seed}-")
  try:
    run = _time_run_in(workdir, model, preset, seed, eval_every, extra_flags)
  except RunFailed as e:
    if keep_workdir:
      raise RunFailed(f"{e} (its workdir is kept: {workdir})") from None
    raise
  finally:
    if not keep_workdir:
      shutil.rmtree(workdir, ignore_errors=True)
  if keep_workdir:
    run["workdir"] = workdir
  return run


def _time_run_in(workdir, model, preset, seed, eval_every, extra_flags):
  command = [sys.executable, "-m", "mnist_tf2.train", f"--model={model}", f"--preset={preset}",
             f"--seed={seed}", f"--workdir={workdir}", *extra_flags]
  if eval_every:
    command += [f"--eval_every={eval_every}", "--eval_splits=test"]
  load_before = os.getloadavg()
  cpu_before = cpu_seconds_of_children()
  start = time.perf_counter()
  # stderr goes to a file, not a pipe: read only at the end, a pipe could fill
  # up and stall the run; kept to say why a run failed.
  with tempfile.TemporaryFile(mode="w+") as stderr:
    process = subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=stderr,
                               text=True)
    timeline, in_test, lines = [], False, []
    for line in process.stdout:
      lines.append(line.rstrip())
      if line.startswith("Test Data Eval"):
        in_test = True
      elif in_test and (match := ACCURACY.search(line)):
        timeline.append((round(time.perf_counter() - start, 3), float(match.group(1))))
        in_test = False
    if process.wait():
      stderr.seek(0)
      shown = shlex.join(["python", *command[1:]])
      raise RunFailed(f"{model} {preset} seed {seed} failed (exit status {process.returncode}): "
                      f"{error_of(stderr.read(), lines)}; the command was: {shown}")
  return {
      "seed": seed,
      "wall_seconds": round(time.perf_counter() - start, 3),
      "cpu_seconds": round(cpu_seconds_of_children() - cpu_before, 2),
      "test_timeline": timeline,
      "final_test_accuracy": timeline[-1][1] if timeline else None,
      "precision_line": next((l for l in lines if "dtype policy" in l), ""),
      "load_average_1_5_15": [[round(x, 2) for x in load]
                              for load in (load_before, os.getloadavg())],
  }


def first_at(timeline, target):
  return next((seconds for seconds, accuracy in timeline if accuracy >= target), None)


def summarize(runs, targets):
  """Per target: each seed's time to it, and their median if every seed got there."""
  summary = {}
  for target in targets:
    times = [first_at(run["test_timeline"], target) for run in runs]
    summary[f"{target:g}"] = {
        "seconds_per_seed": times,
        "median_seconds": statistics.median(times) if None not in times else None,
    }
  summary["median_wall_seconds"] = statistics.median(run["wall_seconds"] for run in runs)
  summary["median_cpu_seconds"] = statistics.median(run["cpu_seconds"] for run in runs)
  return summary


def main(argv):
  del argv
  targets = [float(t) for t in FLAGS.targets]
  results = {"model": FLAGS.model, "eval_every": FLAGS.eval_every, "presets": {}}
  for preset in FLAGS.presets:
    runs = []
    for seed in FLAGS.seeds:
      try:
        run = time_run(FLAGS.model, preset, int(seed), FLAGS.eval_every, FLAGS.extra_flags,
                       FLAGS.keep_workdirs)
      except RunFailed as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)
      runs.append(run)
      print(f"{FLAGS.model} {preset} seed {seed}: test {run['final_test_accuracy']}, "
            f"{run['wall_seconds']:.1f} s wall, {run['cpu_seconds']:.1f} CPU s, load "
            f"{run['load_average_1_5_15'][0]} -> {run['load_average_1_5_15'][1]}", flush=True)
      if FLAGS.keep_workdirs:
        print(f"  its workdir is kept: {run['workdir']}", flush=True)
    summary = summarize(runs, targets)
    results["presets"][preset] = {"runs": runs, "summary": summary}
    for target in targets:
      s = summary[f"{target:g}"]
      shown = (f"{s['median_seconds']:.1f} s (median)" if s["median_seconds"] is not None
               else f"not reached by every seed: {s['seconds_per_seed']}")
      print(f"{FLAGS.model} {preset}: time to {target:.1%} test: {shown}")
  if FLAGS.output:
    with open(FLAGS.output, "w") as f:
      json.dump(results, f, indent=2)
      f.write("\n")


if __name__ == "__main__":
  cli.run_script(main, __doc__)
