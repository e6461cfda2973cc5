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

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

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


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--model", default="mlp", choices=("softmax", "mlp", "cnn"))
  parser.add_argument("--preset", default="default")
  parser.add_argument("--max_steps", type=int, default=3000)
  parser.add_argument("--repeats", type=int, default=3)
  args = parser.parse_args()

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


if __name__ == "__main__":
  main()
