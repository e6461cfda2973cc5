"""Measures what the TensorBoard summaries cost: defaults vs --summaries=false.

Runs the same training in one process, alternating the two settings
(on, off, off, on, on, off, ...) so drifting machine load hits both alike, and
reports per setting:

  train ex/s  examples per second over the training log windows after the
              first (which holds tracing and compilation); histogram writes,
              which happen inside windows, are included
  run s       wall seconds of the whole train_and_evaluate call: start-up,
              graph trace, text/hparams, final evaluation and the end-of-run
              pictures (which predict the test set once more) included
  run cpu s   CPU seconds of this process over that call: what the work costs,
              less disturbed than wall time when other jobs share the cores

Then, since wall time on a shared machine is noisy, the steady-state cost in
CPU seconds of this process: a thousand training steps in log_every chunks,
with and without the gradient norm, alternating, plus one histogram step and
the scalar writes that a thousand steps bring with the defaults.

  python scripts/summary_overhead.py --model=mlp --max_steps=3000 --repeats=3
  python scripts/summary_overhead.py --model=cnn --max_steps=1000 --repeats=2
"""

import argparse
import contextlib
import io
import os
import re
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from mnist_tf2 import cli  # pylint: disable=wrong-import-position
# TensorFlow as the package's commands load it: no C++ start-up notices.
cli.import_tensorflow()
from mnist_tf2 import config as config_lib  # pylint: disable=wrong-import-position
from mnist_tf2 import loop  # pylint: disable=wrong-import-position

STEP_LINE = re.compile(r"^Step (\d+): loss = \S+ \((\d+\.\d+) sec\)$", re.M)
SETTINGS = {"summaries on (defaults)": {}, "summaries off": {"summaries": False}}


def one_run(model, preset, overrides):
  """Returns (training examples/sec after the first log window, run seconds, CPU seconds)."""
  with tempfile.TemporaryDirectory() as workdir:
    config = config_lib.resolve(model, preset, {"workdir": workdir, **overrides})
    out = io.StringIO()
    start, cpu_start = time.perf_counter(), time.process_time()
    with contextlib.redirect_stdout(out):
      loop.train_and_evaluate(config)
    seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu_start
  windows = [(int(step), float(sec)) for step, sec in STEP_LINE.findall(out.getvalue())]
  # Each line gives the mean seconds per step since the previous line.
  steps = [b[0] - a[0] for a, b in zip(windows, windows[1:])]
  train_seconds = sum(n * sec for n, (_, sec) in zip(steps, windows[1:]))
  return sum(steps) * config.batch_size / train_seconds, seconds, cpu_seconds


def cpu_seconds(fn, *args):
  start = time.process_time()
  fn(*args)
  return time.process_time() - start


def steady_state_cpu(model_name, preset, repeats, steps=1000):
  """CPU seconds per 1000 steps: (summaries off, summaries on) with the defaults."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  from mnist_tf2 import datasets  # pylint: disable=g-import-not-at-top
  from mnist_tf2.metrics import Metrics  # pylint: disable=g-import-not-at-top
  from mnist_tf2 import summaries as summaries_lib  # pylint: disable=g-import-not-at-top
  from mnist_tf2 import trainer as trainer_lib  # pylint: disable=g-import-not-at-top
  with tempfile.TemporaryDirectory() as workdir:
    base = config_lib.resolve(model_name, preset, {"workdir": workdir})
    splits = datasets.load_splits(base)
    strategy = tf.distribute.get_strategy()
    model, optimizer = trainer_lib.build_model_and_optimizer(base)
    trainers = {on: trainer_lib.Trainer(base.replace(summaries=on), strategy, model, optimizer)
                for on in (False, True)}
    iterator = iter(datasets.train_dataset(splits.train, batch_size=base.batch_size, seed=0))
    chunk = tf.constant(base.log_every, tf.int64)
    chunks = steps // base.log_every
    for trainer in trainers.values():
      trainer.train(iterator, chunk)  # Trace and warm up.
    summaries = summaries_lib.Summaries(workdir, histogram_every=base.histogram_every)
    summaries.run_start(0, base, model, splits.train, ["summary_overhead"])
    per_1000 = {False: [], True: []}
    for repeat in range(repeats):
      for on in ((False, True) if repeat % 2 == 0 else (True, False)):
        per_1000[on].append(1000 / steps * sum(
            cpu_seconds(trainers[on].train, iterator, chunk) for _ in range(chunks)))
    out = trainers[True].train(iterator, chunk)
    window = Metrics().update(out)
    histogram = statistics.median(
        cpu_seconds(summaries.model_state, 1000 * (i + 1), model) for i in range(3))
    scalars = statistics.median(cpu_seconds(summaries.train_scalars, i, {
        "loss": window.loss, "accuracy": window.accuracy,
        "gradient_norm": out["gradient_norm"], "learning_rate": optimizer.learning_rate,
        "examples_per_sec": 1.0}) for i in range(10))
  off, on = statistics.median(per_1000[False]), statistics.median(per_1000[True])
  writes = 1000 // base.log_every
  print(f"steady state, CPU seconds per 1000 steps ({repeats} alternating measurements, "
        f"medians): training {off:.3f} without the gradient norm, {on:.3f} with; "
        f"+ one histogram step {histogram:.3f}; + {writes} scalar writes {writes * scalars:.3f}")
  total = on + histogram + writes * scalars
  print(f"  overhead: {100 * (total / off - 1):+.1f}% "
        f"(gradient norm {100 * (on / off - 1):+.1f}%, histograms {100 * histogram / off:+.1f}%, "
        f"scalars {100 * writes * scalars / off:+.1f}%)")


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--model", default="mlp", choices=("softmax", "mlp", "cnn"))
  parser.add_argument("--preset", default="default")
  parser.add_argument("--max_steps", type=int, default=3000)
  parser.add_argument("--repeats", type=int, default=3)
  parser.add_argument("--steady_repeats", type=int, default=5)
  parser.add_argument("--steady_steps", type=int, default=1000,
                      help="Steps per steady-state measurement (scaled to 1000).")
  parser.add_argument("--skip_runs", action="store_true", help="Only the steady-state part.")
  args = parser.parse_args()
  if args.skip_runs:
    steady_state_cpu(args.model, args.preset, args.steady_repeats, args.steady_steps)
    return

  names = list(SETTINGS)
  results = {name: [] for name in names}
  for repeat in range(args.repeats):
    for name in (names if repeat % 2 == 0 else names[::-1]):
      run = one_run(args.model, args.preset, {"max_steps": args.max_steps, **SETTINGS[name]})
      results[name].append(run)
      print(f"  {name:24} train {run[0]:9.0f} ex/s   run {run[1]:6.1f} s   "
            f"run cpu {run[2]:6.1f} s", flush=True)
  print(f"{args.model} --preset={args.preset} --max_steps={args.max_steps}, "
        f"{args.repeats} runs each (medians):")
  medians = {name: [statistics.median(v[i] for v in runs) for i in (0, 1, 2)]
             for name, runs in results.items()}
  for name, (throughput, seconds, cpu_seconds) in medians.items():
    print(f"  {name:24} train {throughput:9.0f} ex/s   run {seconds:6.1f} s   "
          f"run cpu {cpu_seconds:6.1f} s")
  (on_throughput, on_seconds, on_cpu), (off_throughput, off_seconds, off_cpu) = medians.values()
  print(f"  overhead of the medians: training throughput "
        f"{100 * (1 - on_throughput / off_throughput):+.1f}%, "
        f"run time {100 * (on_seconds / off_seconds - 1):+.1f}%, "
        f"run CPU {100 * (on_cpu / off_cpu - 1):+.1f}%")
  # Each repeat ran both settings back to back: their ratio is the least
  # disturbed by load that drifts over minutes.
  on_runs, off_runs = results.values()
  paired = [1 - on[0] / off[0] for on, off in zip(on_runs, off_runs)]
  print(f"  overhead per back-to-back pair: training throughput "
        f"{', '.join(f'{100 * p:+.1f}%' for p in paired)} "
        f"(median {100 * statistics.median(paired):+.1f}%)")
  steady_state_cpu(args.model, args.preset, args.steady_repeats, args.steady_steps)


if __name__ == "__main__":
  main()
