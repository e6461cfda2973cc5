"""Fault injection: kill trainings at random, restart them, and check nothing changed.

  nice -n 15 python scripts/chaos.py --runs=20 --modes=single,multi --seed=0

Each run trains a small deterministic model (the mlp on fake data with
--deterministic) in a fresh workdir, as one process (`single`) or as two
workers on 127.0.0.1 (`multi`: --strategy=multi_worker). A random process of
the run gets a random signal (SIGKILL, SIGTERM or SIGINT) at a random moment
of an attempt (a quarter of them during the start, the others once a random
step has been logged), up to --faults faults per run; after every attempt the same
command is started again (on every worker) until the run finishes. Its final
`weights_sha256` (results.json) must equal that of an uninterrupted run of the
same mode.

Every exit status is checked as well: a signalled process exits with 128 +
the signal (or dies of it, if it came before the handlers were installed),
its peer with the same preemption status, or with one `error: lost worker ...`
line after a SIGKILL; anything else (a traceback, a hang) is an anomaly.

Prints a Markdown table (faults injected, restarts, steps redone, runs
identical, ...) and writes it with every attempt's details to
--output_dir/chaos.json. Exits 1 if any run differs or any anomaly occurred.
"""

import collections
import json
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import time

from absl import flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from mnist_tf2 import cli  # pylint: disable=g-import-not-at-top

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

flags.DEFINE_integer("runs", 20, "Runs in all, spread over --modes in turn.")
flags.DEFINE_list("modes", ["single", "multi"], "single: one process; multi: two workers.")
flags.DEFINE_integer("seed", 0, "Seed of the fault schedule (victim, signal, moment).")
flags.DEFINE_integer("faults", 2, "At most this many faults per run (each run draws 1..N).")
flags.DEFINE_integer("max_steps", 300, "Training steps of every run.")
flags.DEFINE_integer("steps_per_loop", 10, "Steps per compiled chunk (and per log line).")
flags.DEFINE_integer("checkpoint_every", 50, "Steps between periodic checkpoints.")
flags.DEFINE_float("cluster_timeout", 15, "--cluster_timeout of the multi-worker runs.")
flags.DEFINE_string("output_dir", "/tmp/mnist_tf2/chaos", "Workdirs, logs and chaos.json.")
FLAGS = flags.FLAGS

SIGNALS = (signal.SIGKILL, signal.SIGTERM, signal.SIGINT)
STEP_LINE = re.compile(r"^(?:Step (\d+):|Stopped by \S+ .*at step (\d+))", re.M)
RESUMED_LINE = re.compile(r"^Resumed from \S+ at step (\d+)$", re.M)


def free_ports(count):
  sockets = [socket.socket() for _ in range(count)]
  for s in sockets:
    s.bind(("127.0.0.1", 0))
  ports = [s.getsockname()[1] for s in sockets]
  for s in sockets:
    s.close()
  return ports


def train_args(workdir):
  return ["--model=mlp", "--preset=smoke", "--deterministic", f"--max_steps={FLAGS.max_steps}",
          f"--steps_per_loop={FLAGS.steps_per_loop}", f"--log_every={FLAGS.steps_per_loop}",
          f"--checkpoint_every={FLAGS.checkpoint_every}", f"--workdir={workdir}"]


class Attempt:
  """The processes of one attempt of a run: 1, or 2 workers sharing `ports`."""

  live = []  # Every attempt's processes, killed if this script stops early.

  def __init__(self, mode, workdir, ports, log_prefix):
    self.logs = []
    self.procs = []
    Attempt.live.append(self)
    count = 2 if mode == "multi" else 1
    for index in range(count):
      env = dict(os.environ, PYTHONUNBUFFERED="1", TF_CPP_MIN_LOG_LEVEL="2")
      args = [sys.executable, "-m", "mnist_tf2.train", *train_args(workdir)]
      if mode == "multi":
        env["TF_CONFIG"] = json.dumps({
            "cluster": {"worker": [f"127.0.0.1:{port}" for port in ports]},
            "task": {"type": "worker", "index": index}})
        args += ["--strategy=multi_worker", f"--cluster_timeout={FLAGS.cluster_timeout:g}"]
      log = f"{log_prefix}.w{index}.log"
      with open(log, "w") as f:
        # Own session: a signal reaches the chosen process only.
        self.procs.append(subprocess.Popen(args, cwd=REPO, env=env, stdout=f,
                                           stderr=subprocess.STDOUT, start_new_session=True))
      self.logs.append(log)

  def running(self):
    return any(p.poll() is None for p in self.procs)

  def wait(self, timeout):
    """Exit statuses, or None for a process still running after `timeout` (then killed)."""
    deadline = time.time() + timeout
    while self.running() and time.time() < deadline:
      time.sleep(0.1)
    statuses = [p.poll() for p in self.procs]
    for p in self.procs:
      if p.poll() is None:
        p.kill()
        p.wait()
    return statuses

  def text(self, index):
    with open(self.logs[index], errors="replace") as f:
      return f.read()


def wait_until(attempt, condition):
  while attempt.running() and not condition():
    time.sleep(0.02)


def last_step(text):
  """The last step a log shows reached (a `Step N:` or `Stopped by ... at step N` line)."""
  return max((int(a or b) for a, b in STEP_LINE.findall(text)), default=0)


def expected_status(status, text, signum, victim):
  """Whether an exit status is one the design promises (see the module docstring)."""
  if status == 0:
    return True
  if victim:
    return (status in (-signum, 128 + signum)
            or (signum == signal.SIGINT and status == 1 and "KeyboardInterrupt" in text))
  if status in (128 + signal.SIGTERM, 128 + signal.SIGINT):
    return "Stopped by" in text
  if status == 2:
    return "error: lost " in text or "did not report its flags" in text
  return status == -signal.SIGKILL and "did not form" in text


def run(mode, workdir, rng, faults_wanted, duration):
  """Trains one run to the end under faults; returns its record."""
  shutil.rmtree(workdir, ignore_errors=True)
  os.makedirs(workdir)
  ports = free_ports(2)
  record = collections.Counter()
  record.update(faults=0, restarts=0, steps_redone=0)
  anomalies, stops, reached = [], [], None
  for number in range(3 * faults_wanted + 3):
    attempt = Attempt(mode, workdir, ports, os.path.join(workdir, f"attempt{number}"))
    fault = None
    if record["faults"] < faults_wanted:
      victim, signum = rng.randrange(len(attempt.procs)), rng.choice(SIGNALS)
      # A quarter of the faults strike at a random moment of the start (TensorFlow's import,
      # the cluster forming, the restore), the others once a random step is logged.
      if rng.random() < 0.25:
        wait_until(attempt, lambda start=time.time(), delay=rng.uniform(0, duration):
                   time.time() - start > delay)
      else:
        wait_until(attempt, lambda target=rng.randrange(1, FLAGS.max_steps):
                   last_step(attempt.text(0)) >= target)
      if attempt.procs[victim].poll() is None:
        os.kill(attempt.procs[victim].pid, signum)
        fault = (victim, signum, time.time())
        record["faults"] += 1
        record[signal.Signals(signum).name] += 1
    statuses = attempt.wait(timeout=3 * duration + 4 * FLAGS.cluster_timeout + 60)
    if fault and len(statuses) > 1:
      stops.append(time.time() - fault[2])
    texts = [attempt.text(i) for i in range(len(attempt.procs))]
    resumed = RESUMED_LINE.search(texts[0])
    if resumed or last_step(texts[0]):  # Else it stopped before its restore: nothing redone.
      start = int(resumed.group(1)) if resumed else 0
      record["steps_redone"] += max(0, (reached or 0) - start)
      reached = max(last_step(texts[0]), start)
    for index, (status, text) in enumerate(zip(statuses, texts)):
      is_victim = bool(fault) and fault[0] == index
      if (status is None or "Traceback" in text and "KeyboardInterrupt" not in text
          or not expected_status(status, text, fault[1] if fault else 0, is_victim)):
        anomalies.append(f"{attempt.logs[index]}: status {status}: "
                         f"{text.strip().splitlines()[-1] if text.strip() else ''}")
    if all(status == 0 for status in statuses):
      break
    record["restarts"] += 1
  results_path = os.path.join(workdir, "results.json")
  digest = None
  if os.path.exists(results_path):
    with open(results_path) as f:
      digest = json.load(f)["weights_sha256"]
  return dict(record, anomalies=anomalies, weights_sha256=digest,
              slowest_stop=max(stops, default=None))


def reference(mode, workdir):
  """An uninterrupted run: (weights_sha256, wall seconds)."""
  shutil.rmtree(workdir, ignore_errors=True)
  os.makedirs(workdir)
  start = time.time()
  attempt = Attempt(mode, workdir, free_ports(2), os.path.join(workdir, "attempt"))
  statuses = attempt.wait(timeout=600)
  if statuses != [0] * len(statuses):
    sys.exit(f"the uninterrupted {mode} run failed ({statuses}); see {attempt.logs}")
  with open(os.path.join(workdir, "results.json")) as f:
    return json.load(f)["weights_sha256"], time.time() - start


def table(rows):
  lines = ["| mode | runs | faults injected (SIGKILL/SIGTERM/SIGINT) | restarts | steps redone "
           "| slowest stop of a peer after a fault (s) | anomalies | runs identical |",
           "|---|---|---|---|---|---|---|---|"]
  for mode, records in rows.items():
    total = collections.Counter()
    for r in records:
      total.update({k: v for k, v in r.items() if isinstance(v, int)})
    stops = [r["slowest_stop"] for r in records if r["slowest_stop"] is not None]
    lines.append(
        f"| {mode} | {len(records)} | {total['faults']} ({total['SIGKILL']}/{total['SIGTERM']}/"
        f"{total['SIGINT']}) | {total['restarts']} | {total['steps_redone']} | "
        f"{f'{max(stops):.1f}' if stops else '-'} | {sum(len(r['anomalies']) for r in records)} | "
        f"{sum(r['identical'] for r in records)}/{len(records)} |")
  return "\n".join(lines)


def write_report(rows):
  with open(os.path.join(FLAGS.output_dir, "chaos.json"), "w") as f:
    json.dump({"flags": {k: FLAGS[k].value for k in ("runs", "modes", "seed", "faults",
                                                    "max_steps", "steps_per_loop",
                                                    "checkpoint_every", "cluster_timeout")},
               "runs": rows, "table": table({m: r for m, r in rows.items() if r})}, f, indent=2)


def kill_all():
  for attempt in Attempt.live:
    for p in attempt.procs:
      if p.poll() is None:
        p.kill()
        p.wait()


def main(argv):
  del argv
  signal.signal(signal.SIGTERM, lambda *unused: sys.exit(143))
  try:
    _main()
  finally:
    kill_all()


def _main():
  unknown = set(FLAGS.modes) - {"single", "multi"}
  if unknown or FLAGS.runs < 1 or FLAGS.faults < 1:
    sys.exit("error: --modes must be single and/or multi, --runs and --faults positive")
  rng = random.Random(FLAGS.seed)
  os.makedirs(FLAGS.output_dir, exist_ok=True)
  references = {}
  for mode in FLAGS.modes:
    references[mode] = reference(mode, os.path.join(FLAGS.output_dir, f"{mode}-reference"))
    print(f"{mode}: uninterrupted run {references[mode][1]:.1f} s, weights_sha256 "
          f"{references[mode][0][:16]}...", flush=True)
  rows = {mode: [] for mode in FLAGS.modes}
  for i in range(FLAGS.runs):
    mode = FLAGS.modes[i % len(FLAGS.modes)]
    digest, duration = references[mode]
    record = run(mode, os.path.join(FLAGS.output_dir, f"{mode}-{i}"), rng,
                 rng.randint(1, FLAGS.faults), duration)
    record["identical"] = int(record["weights_sha256"] == digest)
    rows[mode].append(record)
    print(f"run {i} ({mode}): {record['faults']} fault(s), {record['restarts']} restart(s), "
          f"{record['steps_redone']} step(s) redone, "
          f"{'identical' if record['identical'] else 'DIFFERENT'}"
          + "".join(f"\n  anomaly: {a}" for a in record["anomalies"]), flush=True)
    write_report(rows)  # After every run: a long session stopped early keeps its table.
  print(table(rows))
  failed = any(not r["identical"] or r["anomalies"] for records in rows.values() for r in records)
  sys.exit(1 if failed else 0)


if __name__ == "__main__":
  cli.run_script(main, __doc__)
