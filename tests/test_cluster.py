"""Faults a cluster inflicts: preempted and killed workers, bad starts, two runs in one workdir."""

import json
import os
import re
import signal
import socket
import subprocess
import sys
import textwrap
import time

import pytest
import tensorflow as tf

from conftest import REPO
from test_distribute import free_port
from mnist_tf2 import checkpoints
from mnist_tf2 import cluster
from mnist_tf2 import config as config_lib
from mnist_tf2 import lock
from mnist_tf2 import loop
from mnist_tf2 import trainer as trainer_lib
from mnist_tf2 import workdir as workdir_lib
from mnist_tf2.errors import UserError

# A tiny deterministic 2-worker run: 10 steps a chunk, one log line a chunk.
RUN_ARGS = ["--model=mlp", "--preset=smoke", "--deterministic", "--max_steps=400",
            "--steps_per_loop=10", "--log_every=10", "--checkpoint_every=50",
            "--eval_splits=validation", "--strategy=multi_worker", "--cluster_timeout=20"]


def free_ports(count):
  ports = set()
  while len(ports) < count:
    ports.add(free_port())
  return sorted(ports)


class Workers:
  """Two `train` processes on 127.0.0.1, each with its own TMPDIR and log file."""

  def __init__(self, tmp_path, name, workdir, ports, args=(), indices=(0, 1)):
    self.procs, self.logs = {}, {}
    for index in indices:
      tmpdir = tmp_path / f"tmp{index}"
      tmpdir.mkdir(exist_ok=True)
      env = dict(os.environ, TMPDIR=str(tmpdir), TF_CPP_MIN_LOG_LEVEL="2", PYTHONUNBUFFERED="1",
                 TF_CONFIG=json.dumps({
                     "cluster": {"worker": [f"127.0.0.1:{port}" for port in ports]},
                     "task": {"type": "worker", "index": index}}))
      self.logs[index] = tmp_path / f"{name}.w{index}.log"
      with open(self.logs[index], "w") as log:
        self.procs[index] = subprocess.Popen(
            [sys.executable, "-m", "mnist_tf2.train", *RUN_ARGS, f"--workdir={workdir}", *args],
            cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)

  def text(self, index):
    return self.logs[index].read_text()

  def wait_for(self, index, pattern, timeout=120):
    deadline = time.time() + timeout
    while time.time() < deadline:
      match = re.search(pattern, self.text(index), re.M)
      if match:
        return match
      assert self.procs[index].poll() is None, self.text(index)[-3000:]
      time.sleep(0.05)
    raise AssertionError(f"no {pattern!r} in {self.logs[index]}")

  def wait(self, timeout=120):
    try:
      return {index: proc.wait(timeout) for index, proc in self.procs.items()}
    finally:
      for proc in self.procs.values():
        if proc.poll() is None:
          os.killpg(proc.pid, signal.SIGKILL)
          proc.wait()


def results_digest(workdir):
  return json.loads((workdir / "results.json").read_text())["weights_sha256"]


def test_sigterm_to_one_worker_then_kill_9_resume_to_the_uninterrupted_weights(tmp_path):
  """SIGTERM: both save one checkpoint and exit 143; kill -9: the other stops with one line."""
  ref_dir, workdir = tmp_path / "reference", tmp_path / "workdir"
  ports = free_ports(2)
  reference = Workers(tmp_path, "reference", ref_dir, free_ports(2))
  run = Workers(tmp_path, "run1", workdir, ports)
  run.wait_for(1, r"^Step 60:")
  os.kill(run.procs[1].pid, signal.SIGTERM)
  assert run.wait() == {0: 143, 1: 143}
  stopped = [re.search(r"^Stopped by SIGTERM to worker 1 at step (\d+): saved (\S+); run the "
                       r"same command on every worker to resume$", run.text(i), re.M)
             for i in (0, 1)]
  assert stopped[0] and stopped[1], run.text(0)[-2000:] + run.text(1)[-2000:]
  step = int(stopped[0].group(1))
  assert stopped[1].group(1) == str(step) and 60 < step < 400
  assert stopped[0].group(2) == stopped[1].group(2) == f"{workdir}/checkpoints/ckpt-{step}"
  assert tf.train.latest_checkpoint(workdir / "checkpoints").endswith(f"ckpt-{step}")

  run = Workers(tmp_path, "run2", workdir, ports)
  assert run.wait_for(0, r"^Resumed from (\S+) at step (\d+)$").group(2) == str(step)
  run.wait_for(0, rf"^Step {(step // 50 + 1) * 50 + 20}:")  # past a periodic checkpoint
  os.kill(run.procs[0].pid, signal.SIGKILL)
  killed = time.time()
  statuses = run.wait(timeout=60)
  assert statuses == {0: -signal.SIGKILL, 1: 2}
  assert time.time() - killed < 40  # --cluster_timeout=20; on one host, at once
  last = run.text(1).strip().splitlines()[-1]
  latest = tf.train.latest_checkpoint(workdir / "checkpoints")
  assert re.fullmatch(rf"error: lost worker 0 \(127\.0\.0\.1:{ports[0]}\): .*; this worker 1 "
                      rf"stopped; the last checkpoint is {re.escape(latest)}; run the same "
                      r"command on every worker to resume", last), last

  run = Workers(tmp_path, "run3", workdir, ports)
  assert run.wait() == {0: 0, 1: 0}, run.text(0)[-3000:]
  assert "Note: took over" in run.text(0)  # the lock of the killed chief
  assert f"Resumed from {latest} at step" in run.text(1)
  assert reference.wait() == {0: 0, 1: 0}
  assert results_digest(workdir) == results_digest(ref_dir)
  # Every non-chief removed its temporary directory, also the one that failed.
  assert os.listdir(tmp_path / "tmp1") == []


def test_a_lone_worker_or_workers_that_differ_say_so_in_one_line(tmp_path):
  """All at once: a worker alone; two with different clusters; two with different flags."""
  ports = free_ports(5)
  alone = Workers(tmp_path, "alone", tmp_path / "alone", free_ports(2),
                  args=["--cluster_timeout=3"], indices=(1,))
  cluster_1 = Workers(tmp_path, "cluster", tmp_path / "w1", ports[:2], indices=(1,))
  cluster_0 = Workers(tmp_path, "cluster", tmp_path / "w1", [ports[0], ports[2]], indices=(0,))
  flags_1 = Workers(tmp_path, "flags", tmp_path / "w2", ports[3:], args=["--max_steps=7"],
                    indices=(1,))
  flags_0 = Workers(tmp_path, "flags", tmp_path / "w2", ports[3:], indices=(0,))

  assert alone.wait(timeout=120) == {1: -signal.SIGKILL}
  text = alone.text(1)
  assert re.search(r"^Waiting for the other workers of TF_CONFIG to join \(worker 0 at "
                   r"127\.0\.0\.1:\d+: not running\); giving up after 3 s", text, re.M), text
  assert re.search(r"^error: the cluster did not form within 3 s \(--cluster_timeout\): worker 0 "
                   r"at 127\.0\.0\.1:\d+: not running; .*\(this is worker 1\)$", text, re.M), text

  assert cluster_1.wait() == {1: 2} and cluster_0.wait() == {0: 2}
  assert re.search(r"^error: worker 0 has another TF_CONFIG cluster \(.*\) than this worker 1",
                   cluster_1.text(1), re.M), cluster_1.text(1)[-2000:]
  assert flags_1.wait() == {1: 2} and flags_0.wait() == {0: 2}
  assert ("error: worker 0 runs with other flags than this worker 1: --max_steps=400 there, 7 "
          "here; start every worker with the same flags") in flags_1.text(1)
  assert not (tmp_path / "w2" / "checkpoints").exists()


def hold_lock(workdir):
  """A process (without TensorFlow) holding the workdir's lock until killed."""
  proc = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
      import sys, time
      from mnist_tf2 import lock
      lock.WorkdirLock({str(workdir)!r}).acquire()  # Held until this process ends.
      print("locked", flush=True)
      time.sleep(600)
      """)], cwd=REPO, stdout=subprocess.PIPE, text=True)
  assert proc.stdout.readline() == "locked\n"
  return proc


def test_one_run_per_workdir_and_a_dead_runs_lock_is_taken_over(tmp_path, capsys):
  workdir = tmp_path / "workdir"
  workdir.mkdir()
  holder = hold_lock(workdir)
  try:
    with pytest.raises(UserError) as excinfo:
      loop.train_and_evaluate(config_lib.resolve("mlp", "smoke", {"workdir": str(workdir)}))
    message = str(excinfo.value)
    assert f"is in use by another training run (PID {holder.pid} on host " \
           f"{socket.gethostname()}, started " in message and "\n" not in message
    assert sorted(os.listdir(workdir)) == ["checkpoints", "train.lock"]  # nothing written
  finally:
    holder.kill()
    holder.wait()
  with lock.WorkdirLock(str(workdir)) as workdir_lock:
    workdir_lock.acquire()
    assert f"took over {workdir}/train.lock from PID {holder.pid} on host" in \
        capsys.readouterr().out
    assert json.loads((workdir / "train.lock").read_text())["pid"] == os.getpid()
  assert (workdir / "train.lock").read_text() == ""  # released cleanly: no note next time
  with lock.WorkdirLock(str(workdir)) as workdir_lock:
    workdir_lock.acquire()
  assert "took over" not in capsys.readouterr().out


def test_lost_worker_names_the_peer_from_the_collective_error(tmp_path):
  tf_config = {"cluster": {"worker": ["10.0.0.1:2222", "10.0.0.2:2222"]},
               "task": {"type": "worker", "index": 0}}
  config = config_lib.resolve("mlp", "smoke", {"workdir": str(tmp_path)})
  error = tf.errors.UnavailableError(None, None, textwrap.dedent("""\
      Graph execution error:
      Collective ops is aborted by: Error reported from /job:worker/task:1: The following \
tasks are unhealthy (stopped sending heartbeats):
      /job:worker/replica:0/task:1
      The tasks have crashed."""))
  message = str(cluster.lost_worker(error, config, tf_config))
  assert message == ("lost worker 1 (10.0.0.2:2222): Error reported from /job:worker/task:1: The "
                     "following tasks are unhealthy (stopped sending heartbeats):; this worker 0 "
                     "stopped; the last checkpoint is none; run the same command on every "
                     "worker to resume")
  # The chief (the coordination service's host) silent: named though no task is in the text.
  tf_config["task"]["index"] = 1
  error = tf.errors.DeadlineExceededError(None, None, "Collective ops is aborted by: Deadline "
                                          "Exceeded\nRPC: /tensorflow.CoordinationService/Heartbeat")
  assert str(cluster.lost_worker(error, config, tf_config)).startswith(
      "lost worker 0 (10.0.0.1:2222): Deadline Exceeded;")
  # Anything else is not a lost worker.
  other = tf.errors.InvalidArgumentError(None, None, "Incompatible shapes")
  assert cluster.lost_worker(other, config, tf_config) is other


def test_temporary_dirs_of_dead_workers_are_removed(tmp_path, monkeypatch):
  monkeypatch.setattr("tempfile.tempdir", str(tmp_path))
  dead = subprocess.Popen([sys.executable, "-c", ""])
  dead.wait()
  (tmp_path / f"mnist_tf2_worker1_pid{dead.pid}_abc").mkdir()
  (tmp_path / f"mnist_tf2_worker2_pid{os.getpid()}_def").mkdir()
  (tmp_path / "unrelated_pid1_x").mkdir()
  workdir_lib.remove_stale_worker_dirs()
  assert sorted(os.listdir(tmp_path)) == [f"mnist_tf2_worker2_pid{os.getpid()}_def",
                                          "unrelated_pid1_x"]


def test_chaos_short(tmp_path):
  """scripts/chaos.py, 2 runs of one process: random faults, restarts, identical weights."""
  result = subprocess.run(
      [sys.executable, "scripts/chaos.py", "--runs=2", "--modes=single", "--faults=1",
       "--max_steps=100", "--seed=3", f"--output_dir={tmp_path}"],
      cwd=REPO, capture_output=True, text=True, timeout=900)
  assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
  assert re.search(r"^\| single \| 2 \| \d \(\d/\d/\d\) \| \d+ \| \d+ \| - \| 0 \| 2/2 \|$",
                   result.stdout, re.M), result.stdout
  report = json.loads((tmp_path / "chaos.json").read_text())
  assert all(run["weights_sha256"] for run in report["runs"]["single"])
  assert sum(run["faults"] for run in report["runs"]["single"]) >= 1


def test_a_reader_gets_a_complete_checkpoint_while_a_run_rotates_them(tmp_path, capsys,
                                                                     monkeypatch):
  """evaluate/export restore while training saves: the checkpoint being read is deleted
  (rotated out by max_to_keep) mid-read; the reader lists again and gets the newest."""
  config = config_lib.resolve("mlp", "smoke", {})
  model, optimizer = trainer_lib.build_model_and_optimizer(config, tf.distribute.get_strategy())
  writer = checkpoints.Checkpointer(str(tmp_path), 2, model=model, optimizer=optimizer)
  writer.save(1)
  writer.save(2)
  reader = checkpoints.Checkpointer(str(tmp_path), 2, model=model)
  read = checkpoints.read_all_tensors

  def read_while_the_run_saves(path):
    if path.endswith("ckpt-2"):  # The run saves twice more: ckpt-1 and ckpt-2 are deleted.
      writer.save(3)
      writer.save(4)
    read(path)

  monkeypatch.setattr(checkpoints, "read_all_tensors", read_while_the_run_saves)
  assert reader.restore_or_initialize(partial=True) == str(tmp_path / "ckpt-4")
  assert "unreadable" not in capsys.readouterr().out


def test_a_run_refused_an_instant_after_the_holder_locked_still_names_it(tmp_path):
  # Two runs started together: the loser may read the lock before the winner wrote its record.
  import fcntl
  import threading
  path = tmp_path / "train.lock"
  fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
  fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
  record = json.dumps({"pid": 4242, "host": "h1", "started": time.time()}) + "\n"
  writer = threading.Timer(0.2, lambda: os.pwrite(fd, record.encode(), 0))
  writer.start()
  try:
    with pytest.raises(UserError, match=r"\(PID 4242 on host h1, started "):
      lock.WorkdirLock(str(tmp_path)).acquire()
  finally:
    writer.join()
    os.close(fd)
