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
"""

import json
import os
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import time

from absl import app
from absl import flags

flags.DEFINE_string("model", "cnn", "Model: softmax, mlp or cnn.")
flags.DEFINE_list("presets", ["fast"], "Presets to time.")
flags.DEFINE_list("seeds", ["0", "1", "2"], "Seeds: one run of each preset per seed.")
flags.DEFINE_list("targets", ["0.99", "0.995"], "Test accuracies to time.")
flags.DEFINE_integer("eval_every", 0, "Evaluate the test set every N steps (0: as the preset "
                     "does, at its end).")
flags.DEFINE_list("extra_flags", [], "More flags for every run, e.g. --max_steps=10.")
flags.DEFINE_string("output", "", "Write the results as JSON to this file.")
FLAGS = flags.FLAGS

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ACCURACY = re.compile(r"Precision @ 1: ([0-9.]+)")


def cpu_seconds_of_children() -> float:
  usage = resource.getrusage(resource.RUSAGE_CHILDREN)
  return usage.ru_utime + usage.ru_stime


def time_run(model, preset, seed, eval_every, extra_flags):
  """Runs one training process; returns its timeline and figures."""
  workdir = tempfile.mkdtemp(prefix=f"tta-{model}-{preset}-{seed}-")
  command = [sys.executable, "-m", "mnist_tf2.train", f"--model={model}", f"--preset={preset}",
             f"--seed={seed}", f"--workdir={workdir}", *extra_flags]
  if eval_every:
    command += [f"--eval_every={eval_every}", "--eval_splits=test"]
  load_before = os.getloadavg()
  cpu_before = cpu_seconds_of_children()
  start = time.perf_counter()
  process = subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE,
                             stderr=subprocess.DEVNULL, text=True)
  timeline, in_test, lines = [], False, []
  for line in process.stdout:
    lines.append(line.rstrip())
    if line.startswith("Test Data Eval"):
      in_test = True
    elif in_test and (match := ACCURACY.search(line)):
      timeline.append((round(time.perf_counter() - start, 3), float(match.group(1))))
      in_test = False
  if process.wait():
    raise RuntimeError(f"{' '.join(command)} failed:\n" + "\n".join(lines[-10:]))
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
      run = time_run(FLAGS.model, preset, int(seed), FLAGS.eval_every, FLAGS.extra_flags)
      runs.append(run)
      print(f"{FLAGS.model} {preset} seed {seed}: test {run['final_test_accuracy']}, "
            f"{run['wall_seconds']:.1f} s wall, {run['cpu_seconds']:.1f} CPU s, load "
            f"{run['load_average_1_5_15'][0]} -> {run['load_average_1_5_15'][1]}", flush=True)
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
  app.run(main)
