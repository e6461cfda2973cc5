"""tf.distribute: mirrored/one-device parity, cross-strategy resume, multi-worker, 16-bit, XLA."""

import json
import os
import re
import signal
import socket
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest
import tensorflow as tf

from conftest import REPO
from mnist_tf2 import config as config_lib
from mnist_tf2 import distribute
from mnist_tf2 import loop
from mnist_tf2.errors import UserError

# The mlp has no dropout: with dropout, each replica draws its own mask for its
# share of the batch, which cannot equal the one mask a single device draws.
PARITY = dict(deterministic=True, optimizer="sgd", learning_rate=0.1, batch_size=32)


def parity_config(workdir, max_steps, **overrides):
  return config_lib.resolve("mlp", "smoke", dict(PARITY, workdir=str(workdir),
                                                  max_steps=max_steps, **overrides))


def model_weights(workdir):
  path = tf.train.latest_checkpoint(os.path.join(workdir, "checkpoints"))
  return {name: tf.train.load_variable(path, name)
          for name, _ in tf.train.list_variables(path) if name.startswith("model/")}


def python(code, timeout):
  """Runs `code` in a fresh interpreter (logical CPU devices need a fresh TensorFlow)."""
  return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True,
                        text=True, timeout=timeout, cwd=REPO,
                        env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"))


def test_mirrored_two_replicas_match_one_device_and_checkpoints_cross_strategies(tmp_path):
  """2 replicas (2 logical CPUs) == 1 device within 1e-5, also across a resume.

  d: 20 steps on one device. m: 20 steps mirrored. dm: 10 steps on one device,
  resumed mirrored to 20. md: 10 steps mirrored, resumed on one device to 20.
  m2: 20 steps with --devices=/cpu:0,/cpu:1 (and --strategy=auto).
  (256 fake examples at batch 32: the resume is mid-way through the second epoch.)
  """
  loop.train_and_evaluate(parity_config(tmp_path / "dm", 10))
  result = python(f"""
      from mnist_tf2 import config as config_lib, loop
      from mnist_tf2.errors import UserError
      PARITY = {PARITY!r}
      def run(workdir, max_steps, **overrides):
        return loop.train_and_evaluate(config_lib.resolve("mlp", "smoke", dict(
            PARITY, workdir=workdir, max_steps=max_steps, strategy="mirrored",
            num_cpu_devices=2, **overrides)))
      try:
        run("{tmp_path}/odd", 20, batch_size=33)
      except UserError as e:
        print("refused:", e)
      run("{tmp_path}/m", 20)
      run("{tmp_path}/dm", 20)
      run("{tmp_path}/md", 10)
      print("--devices:")
      loop.train_and_evaluate(config_lib.resolve("mlp", "smoke", dict(
          PARITY, workdir="{tmp_path}/m2", max_steps=20, num_cpu_devices=2,
          devices="/cpu:0,/cpu:1")))
      """, timeout=180)
  assert result.returncode == 0, result.stderr[-3000:]
  out = result.stdout
  assert ("refused: --batch_size=33 is the global batch and must be divisible by the 2 "
          "replicas") in out
  assert not (tmp_path / "odd").exists()
  assert "global batch 32 = 2 replica(s) x 16" in out
  assert f"Resumed from {tmp_path}/dm/checkpoints/ckpt-10 at step 10" in out
  assert "Strategy MirroredStrategy" in out
  # --devices with --strategy=auto: mirrored over exactly those two.
  assert ("Strategy MirroredStrategy" in out.split("--devices:")[1]
          and "Devices: /cpu:0, /cpu:1 (2 replicas)" in out.split("--devices:")[1])

  loop.train_and_evaluate(parity_config(tmp_path / "md", 20))
  loop.train_and_evaluate(parity_config(tmp_path / "d", 20))
  expected = model_weights(tmp_path / "d")
  assert len(expected) == 6
  for run in ("m", "dm", "md", "m2"):
    weights = model_weights(tmp_path / run)
    assert tf.train.load_variable(tf.train.latest_checkpoint(tmp_path / run / "checkpoints"),
                                  "optimizer/_iterations/.ATTRIBUTES/VARIABLE_VALUE") == 20
    for name, value in expected.items():
      np.testing.assert_allclose(weights[name], value, rtol=0, atol=1e-5, err_msg=f"{run} {name}")
  # Steps 11-20 moved the weights far beyond the tolerance: the comparison means something.
  at_10 = str(tmp_path / "d" / "checkpoints" / "ckpt-10")
  moved = max(np.abs(tf.train.load_variable(at_10, n) - v).max() for n, v in expected.items())
  assert moved > 1e-3


def free_port():
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def test_multi_worker_two_processes_same_weights_chief_writes(tmp_path):
  """Two workers on 127.0.0.1: same weights, every example evaluated once, one workdir."""
  workdir = tmp_path / "workdir"
  cluster = {"worker": [f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"]}
  workers = []
  for index in range(2):
    tmpdir = tmp_path / f"tmp{index}"
    tmpdir.mkdir()
    env = dict(os.environ, TMPDIR=str(tmpdir), TF_CPP_MIN_LOG_LEVEL="2",
               TF_CONFIG=json.dumps({"cluster": cluster,
                                     "task": {"type": "worker", "index": index}}))
    # validation_size=1001 splits 501/500 between the workers: at 500 per
    # replica, worker 0 has one more (partial) batch than worker 1.
    args = ["--model=softmax", "--preset=seed", "--strategy=multi_worker", "--max_steps=20",
            "--log_every=10", "--checkpoint_every=10", "--validation_size=1001",
            "--eval_batch_size=1000", "--eval_every=0", f"--workdir={workdir}"]
    workers.append(subprocess.Popen(
        [sys.executable, "-m", "mnist_tf2.train", *args], cwd=REPO, env=env, text=True,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True))
  outputs = []
  try:
    for worker in workers:
      outputs.append(worker.communicate(timeout=180))
  finally:
    for worker in workers:
      if worker.poll() is None:
        os.killpg(worker.pid, signal.SIGKILL)
        worker.wait()
  for worker, (out, err) in zip(workers, outputs):
    assert worker.returncode == 0, err[-3000:]
    assert "global batch 100 = 2 replica(s) x 50" in out
    assert "Devices: /cpu:0 on each of 2 workers (2 replicas)" in out
    counts = re.findall(r"Num examples: (\d+)", out)
    assert counts == ["58999", "1001", "10000"], out
  digests = [re.search(r"^Weights SHA-256: ([0-9a-f]{64})$", out, re.M).group(1)
             for out, _ in outputs]
  assert digests[0] == digests[1]
  assert [out.count("Test Data Eval") for out, _ in outputs] == [1, 1]
  # Same evaluation on both, over the same (all-reduced) counts.
  assert outputs[0][0].split("Training Data Eval:")[1] == outputs[1][0].split(
      "Training Data Eval:")[1]

  results = json.loads((workdir / "results.json").read_text())
  assert results["weights_sha256"] == digests[0]
  assert results["metrics"]["validation"]["num_examples"] == 1001
  # (The workdir's own events file holds the config and command line as text.)
  assert sorted(f for f in os.listdir(workdir) if not f.startswith("events.out.tfevents.")) == [
      "checkpoints", "config.json", "eval", "hparams", "results.json", "train", "train.lock"]
  assert tf.train.latest_checkpoint(workdir / "checkpoints").endswith("ckpt-20")
  # The non-chief saved to a temporary directory and deleted it.
  assert os.listdir(tmp_path / "tmp1") == [] and os.listdir(tmp_path / "tmp0") == []


@pytest.mark.parametrize("tf_config, message", [
    (None, "needs the TF_CONFIG environment variable"),
    ("{cluster", "TF_CONFIG is not valid JSON"),
    ('{"task": {"type": "worker", "index": 0}}', 'TF_CONFIG needs "cluster"'),
    ('{"cluster": {"worker": "a:1"}, "task": {"type": "worker", "index": 0}}',
     "must be a list of \"host:port\" strings"),
    ('{"cluster": {"worker": ["a"]}, "task": {"type": "worker", "index": 0}}',
     "must be a list of \"host:port\" strings"),
    ('{"cluster": {"worker": ["a:1"], "ps": ["b:2"]}, "task": {"type": "worker", "index": 0}}',
     "job 'ps' is not supported"),
    ('{"cluster": {"worker": ["a:1", "b:2"]}}', 'TF_CONFIG needs "task"'),
    ('{"cluster": {"worker": ["a:1"]}, "task": {"type": "chief", "index": 0}}',
     'TF_CONFIG needs "task"'),
    ('{"cluster": {"worker": ["a:1", "b:2"]}, "task": {"type": "worker", "index": 2}}',
     "task index 2 is not in 0..1"),
])
def test_tf_config_is_validated_in_one_line(tf_config, message, monkeypatch):
  if tf_config is None:
    monkeypatch.delenv("TF_CONFIG", raising=False)
  else:
    monkeypatch.setenv("TF_CONFIG", tf_config)
  with pytest.raises(UserError) as excinfo:
    distribute.read_tf_config()
  assert message in str(excinfo.value) and "\n" not in str(excinfo.value)


def test_tf_config_with_chief_is_accepted(monkeypatch):
  spec = {"cluster": {"chief": ["a:1"], "worker": ["b:2"]}, "task": {"type": "chief", "index": 0}}
  monkeypatch.setenv("TF_CONFIG", json.dumps(spec))
  assert distribute.read_tf_config() == spec


def test_per_replica_batch_size():
  assert distribute.per_replica_batch_size(100, 4) == 25
  with pytest.raises(UserError, match="--batch_size=100 is the global batch and must be "
                                      "divisible by the 3 replicas"):
    distribute.per_replica_batch_size(100, 3)


@pytest.mark.parametrize("flag, log", [
    ("mixed_precision", "dtype policy mixed_bfloat16 (compute bfloat16, variables float32); "
                        "XLA off"),
    ("jit_compile", "dtype policy float32 (compute float32, variables float32); "
                    "XLA on (whole loop)"),
])
def test_mixed_precision_and_xla_learn_on_cpu(flag, log, tmp_path, capsys):
  """Softmax regression on the bundled MNIST: > 85% test in 300 steps."""
  config = config_lib.resolve("softmax", "seed", {
      "max_steps": 300, "log_every": 100, "validation_size": 0, "jit_compile": False, flag: True,
      "workdir": str(tmp_path)})
  results = loop.train_and_evaluate(config)
  assert log in capsys.readouterr().out
  assert results["metrics"]["test"]["num_examples"] == 10000
  assert results["metrics"]["test"]["accuracy"] > 0.85
  # results.json says what the run computed in (the table of scripts/reproduce.py).
  assert results["dtype_policy"] == log.split()[2]
  # The mixed policy applied to this model only, not to the rest of the process.
  assert keras.config.dtype_policy().name == "float32"
