"""--devices, --gpu_memory_growth, --log_device_placement (logical CPUs stand in for GPUs)."""

import os
import re
import types

import pytest
import tensorflow as tf

from conftest import run_module
from mnist_tf2 import config as config_lib
from mnist_tf2 import devices
from mnist_tf2 import distribute
from mnist_tf2.errors import UserError


@pytest.mark.parametrize("text, expected", [
    ("", ()),
    ("/gpu:2", ("/gpu:2",)),
    ("/device:GPU:1, /gpu:0", ("/gpu:1", "/gpu:0")),
    ("cpu:1,/CPU:0", ("/cpu:1", "/cpu:0")),
])
def test_parse_names(text, expected):
  assert devices.parse(text) == expected


@pytest.mark.parametrize("text, error", [
    ("/gpu", "'/gpu' is not a device name like /cpu:0, /gpu:1 or /device:GPU:1"),
    ("/gpu:0,", "'' is not a device name"),
    ("/job:worker/task:1/device:GPU:0", "is not a device name"),
    ("/gpu:1,/device:GPU:1", "names a device twice"),
    ("/cpu:0,/gpu:0", "mixes CPUs and GPUs"),
])
def test_parse_refuses(text, error):
  with pytest.raises(UserError, match=re.escape(error)):
    devices.parse(text)


@pytest.mark.parametrize("overrides, error", [
    ({"strategy": "default", "devices": "/cpu:0"}, "--strategy=default leaves placement"),
    ({"strategy": "one_device", "devices": "/gpu:0,/gpu:1"}, "--strategy=one_device runs one"),
    ({"strategy": "multi_worker", "devices": "/cpu:1"}, "can only choose GPUs there"),
    ({"strategy": "tpu", "devices": "/gpu:0"}, "runs on the TPU's cores"),
    ({"devices": "gpu"}, "'gpu' is not a device name"),
])
def test_config_refuses_devices_the_strategy_cannot_use(overrides, error):
  with pytest.raises(UserError, match=re.escape(error)):
    config_lib.resolve("mlp", "smoke", overrides)


def test_missing_devices_are_one_line_errors_naming_the_devices_here(tmp_path):
  # This process's CPU is not split, and it has no GPU.
  for text, error in [
      ("/gpu:0", "--devices=/gpu:0: this machine has no GPU that TensorFlow can use; its "
                 "devices are /cpu:0"),
      ("/cpu:7", "--devices: no device /cpu:7 here; the devices are /cpu:0 "
                 "(--num_cpu_devices=N splits the CPU into N logical devices)")]:
    config = config_lib.resolve("mlp", "smoke", {"devices": text, "workdir": str(tmp_path)})
    with pytest.raises(UserError) as raised:
      distribute.create_strategy(config)
    assert str(raised.value) == error
  # The command: one line, exit 2, before the workdir is made.
  workdir = tmp_path / "run"
  result = run_module("mnist_tf2.train", "--model=mlp", "--preset=smoke", "--num_cpu_devices=2",
                      "--devices=/cpu:0,/cpu:7", f"--workdir={workdir}", timeout=120)
  assert result.returncode == 2, result.stderr[-2000:]
  assert result.stderr.strip().splitlines()[-1] == (
      "error: --devices: no device /cpu:7 here; the devices are /cpu:0, /cpu:1")
  assert not workdir.exists()


class FakeGpus:
  """Four physical GPUs as far as tf.config is concerned (the machine has none)."""

  def __init__(self, monkeypatch):
    self.gpus = [tf.config.PhysicalDevice(f"/physical_device:GPU:{i}", "GPU") for i in range(4)]
    self.visible, self.growth = None, []
    physical = tf.config.list_physical_devices
    monkeypatch.setattr(tf.config, "list_physical_devices",
                        lambda kind=None: self.gpus if kind == "GPU" else physical(kind))
    monkeypatch.setattr(tf.config, "set_visible_devices",
                        lambda found, kind: setattr(self, "visible", list(found)))
    monkeypatch.setattr(tf.config.experimental, "set_memory_growth",
                        lambda gpu, enable: self.growth.append(gpu.name))


def test_gpus_not_chosen_are_hidden_and_renamed(monkeypatch):
  """Only on paper: the calls made for a 4-GPU machine, and the names shown."""
  fake = FakeGpus(monkeypatch)
  chosen = devices.parse("/gpu:3,/gpu:1")
  devices.check_exist(chosen)
  with pytest.raises(UserError, match=re.escape(
      "no device /gpu:4 here; the devices are /cpu:0, /gpu:0, /gpu:1, /gpu:2, /gpu:3")):
    devices.check_exist(("/gpu:4",))
  devices.configure_gpus(chosen, memory_growth=True)
  assert [d.name for d in fake.visible] == ["/physical_device:GPU:1", "/physical_device:GPU:3"]
  assert fake.growth == ["/physical_device:GPU:1", "/physical_device:GPU:3"]
  assert devices.tensorflow_names(chosen) == ["/gpu:1", "/gpu:0"]
  strategy = types.SimpleNamespace(num_replicas_in_sync=2, extended=types.SimpleNamespace(
      worker_devices=("/job:localhost/replica:0/task:0/device:GPU:1",
                      "/job:localhost/replica:0/task:0/device:GPU:0")))
  assert devices.describe(strategy, chosen) == (
      "Devices: /gpu:3, /gpu:1 (2 replicas; TensorFlow calls them /gpu:1, /gpu:0, the other "
      "GPUs being hidden)")
  # 16-bit compute follows the devices chosen, not the GPUs the machine has.
  for text, policy in [("/gpu:2", "mixed_float16"), ("/cpu:0", "mixed_bfloat16")]:
    config = config_lib.resolve("mlp", "smoke", {"devices": text, "mixed_precision": True})
    assert distribute.precision_policy(config) == policy
  # CPUs chosen: every GPU is hidden; no --devices: all stay, growth on each.
  fake.growth.clear()
  devices.configure_gpus(("/cpu:0",), memory_growth=False)
  assert fake.visible == [] and fake.growth == []
  fake.visible = None
  devices.configure_gpus((), memory_growth=True)
  assert fake.visible is None and len(fake.growth) == 4


def placements(text):
  """'name: (OpType): /job:.../device:CPU:1' lines -> [(name, device)]."""
  return re.findall(r"^(\S+): \(\w+\): /job:localhost/replica:0/task:0/device:(\w+:\d+)$",
                    text, re.M)


def test_train_step_and_variables_on_the_chosen_cpu(tmp_path):
  """--devices=/cpu:1 of 2: TensorFlow's own placement log puts the step and variables there.

  Then evaluate --log_device_placement on the same workdir prints its placements too.
  """
  result = run_module(
      "mnist_tf2.train", "--model=mlp", "--preset=smoke", "--data_source=fake",
      "--fake_examples=64", "--num_cpu_devices=2", "--devices=/cpu:1", "--log_device_placement",
      "--max_steps=2", "--steps_per_loop=2", "--log_every=2", "--eval_splits=test",
      "--histogram_every=0", f"--workdir={tmp_path / 'run'}", timeout=180,
      env={"TF_CPP_MIN_LOG_LEVEL": "2"})
  assert result.returncode == 0, result.stderr[-3000:]
  assert "Devices: /cpu:1 (1 replica)" in result.stdout
  placed = placements(result.stdout)
  # Forward and backward pass of the train step (its gradient tape).
  backward = [device for name, device in placed if "gradient_tape/" in name]
  assert len(backward) >= 10 and set(backward) == {"CPU:1"}
  # Reads of the model's weights in the step: a resource op runs where its
  # variable lives, so the weights are on CPU:1.
  reads = [device for name, device in placed
           if re.search(r"mlp\w*/hidden1\w*/.*ReadVariableOp$", name)]
  assert reads and set(reads) == {"CPU:1"}
  # The host CPU runs the input pipeline: the log does name both devices.
  assert "CPU:0" in {device for _, device in placed}
  # Eager ops (creating the variables) go to TensorFlow's INFO log, which the
  # flag lets through even with TF_CPP_MIN_LOG_LEVEL=2 in the environment.
  created = re.findall(r"Executing op VarHandleOp in device \S+/device:(\w+:\d+)",
                       result.stderr)
  assert created.count("CPU:1") >= 6, created

  # evaluate (one device, TensorFlow's choice): its confusion-matrix step's placements.
  result = run_module("mnist_tf2.evaluate", f"--workdir={tmp_path / 'run'}", "--splits=test",
                      "--log_device_placement", timeout=120, env={"TF_CPP_MIN_LOG_LEVEL": "2"})
  assert result.returncode == 0, result.stderr[-3000:]
  assert "Test Data Eval:" in result.stdout
  matmuls = [device for name, device in placements(result.stdout) if name.endswith("MatMul")]
  assert matmuls and set(matmuls) == {"CPU:0"}
  assert re.search(r"Executing op \w+ in device \S+/device:CPU:0", result.stderr)


def test_a_run_on_chosen_devices_prints_no_python_warning(tmp_path):
  # A distributed tf.data pipeline warned (UserWarning on stderr) on the first screen.
  result = run_module("mnist_tf2.train", "--model=mlp", "--preset=smoke", "--fake_data",
                      "--max_steps=4", "--num_cpu_devices=2", "--devices=/cpu:0,/cpu:1",
                      f"--workdir={tmp_path}", timeout=300)
  assert result.returncode == 0, result.stderr[-2000:]
  assert "Devices: /cpu:0, /cpu:1 (2 replicas)" in result.stdout
  assert "Warning" not in result.stderr, result.stderr
