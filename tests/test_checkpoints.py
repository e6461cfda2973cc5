"""Checkpoints that never lose work.

Exact resume (optimizer slots, bit-identical weights after SIGKILL), preemption
by SIGTERM/SIGINT, the non-finite guard, unreadable and mismatched checkpoints,
and workdirs that cannot be written.
"""

import hashlib
import os
import re
import resource
import shutil
import signal
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

from conftest import REPO, run_module
from mnist_tf2 import checkpoints
from mnist_tf2 import config as config_lib
from mnist_tf2 import loop
from mnist_tf2 import models
from mnist_tf2 import optimizers
from mnist_tf2 import trainer as trainer_lib
from mnist_tf2.errors import Preempted
from mnist_tf2.errors import UserError

# The CNN with dropout: the strongest case for exact resume (dropout masks,
# Adam moments, the shuffle order across 3 epochs of 8 batches).
CNN_FLAGS = {"deterministic": True, "max_steps": 24, "checkpoint_every": 6,
             "steps_per_loop": 3, "log_every": 3}


def cli_args(model, flags, workdir):
  return [f"--model={model}", "--preset=smoke", f"--workdir={workdir}",
          *(f"--{name}={value}" for name, value in flags.items())]


def checkpoint_values(path) -> dict:
  """The model and optimizer tensors of a checkpoint."""
  reader = tf.train.load_checkpoint(str(path))
  return {name: reader.get_tensor(name) for name in reader.get_variable_to_shape_map()
          if name.startswith(("model/", "optimizer/"))}


def assert_bit_identical(a, b):
  assert sorted(a) == sorted(b)
  different = [name for name in a
               if a[name].dtype != b[name].dtype or a[name].tobytes() != b[name].tobytes()]
  assert not different, f"{len(different)} of {len(a)} tensors differ, e.g. {different[0]}"


def snapshot(directory) -> dict:
  """{relative path: sha256} of every file under `directory`."""
  files = {}
  for root, _, names in os.walk(directory):
    for name in names:
      path = os.path.join(root, name)
      with open(path, "rb") as f:
        files[os.path.relpath(path, directory)] = hashlib.sha256(f.read()).hexdigest()
  return files


def latest(workdir):
  return tf.train.latest_checkpoint(os.path.join(workdir, "checkpoints"))


def step_of(path):
  return int(tf.train.load_variable(path, "optimizer/_iterations/.ATTRIBUTES/VARIABLE_VALUE"))


@pytest.fixture(scope="module")
def cnn_reference(tmp_path_factory):
  """An uninterrupted deterministic CNN run, in this process: its final tensors."""
  workdir = tmp_path_factory.mktemp("cnn_reference")
  loop.train_and_evaluate(config_lib.resolve("cnn", "smoke", {"workdir": str(workdir),
                                                              **CNN_FLAGS}))
  assert latest(workdir).endswith(f"ckpt-{CNN_FLAGS['max_steps']}")
  return checkpoint_values(latest(workdir))


@pytest.fixture(scope="module")
def finished_mlp(tmp_path_factory):
  """A finished mlp smoke run: checkpoints at steps 10 and 20."""
  workdir = tmp_path_factory.mktemp("finished_mlp")
  results = loop.train_and_evaluate(config_lib.resolve("mlp", "smoke",
                                                       {"workdir": str(workdir)}))
  return workdir, results


@pytest.fixture
def mlp_copy(finished_mlp, tmp_path):
  """A copy of the finished mlp run to damage; returns (workdir, config, results)."""
  source, results = finished_mlp
  workdir = tmp_path / "w"
  shutil.copytree(source, workdir)
  return workdir, config_lib.resolve("mlp", "smoke", {"workdir": str(workdir)}), results


# --- exact resume -------------------------------------------------------------------------

build = trainer_lib.build_model_and_optimizer


def test_optimizer_slots_round_trip(tmp_path):
  config = config_lib.resolve("mlp", "smoke", {})
  model, optimizer = build(config)
  images = tf.random.stateless_uniform([8, 28, 28, 1], seed=[1, 2])
  for _ in range(3):
    with tf.GradientTape() as tape:
      loss = tf.reduce_mean(model(images) ** 2)
    grads = tape.gradient(loss, model.trainable_variables)
    optimizer.apply_gradients(zip(grads, model.trainable_variables))
  checkpoints.Checkpointer(tmp_path, 2, model=model, optimizer=optimizer).save(3)

  model2, optimizer2 = build(config)
  restored = checkpoints.Checkpointer(tmp_path, 2, model=model2, optimizer=optimizer2)
  assert restored.restore_or_initialize().endswith("ckpt-3")
  assert int(optimizer2.iterations) == 3
  slots = [(a, b) for a, b in zip(optimizer.variables, optimizer2.variables)
           if "momentum" in a.path or "velocity" in a.path]
  assert len(slots) == 2 * len(model.trainable_variables)  # Adam: m and v per weight.
  for before, after in slots:
    assert before.path.split("/")[1:] == after.path.split("/")[1:]  # adam/..., adam_1/...
    assert np.any(before.numpy() != 0), before.path  # So that equality means something.
    assert before.numpy().tobytes() == after.numpy().tobytes(), before.path


def test_restore_checks_slots_only_of_a_built_optimizer(tmp_path):
  """Why the optimizer is built before restoring: only then are missing slots refused."""
  sgd_config = config_lib.resolve("mlp", "smoke", {"optimizer": "sgd"})
  model, optimizer = build(sgd_config)
  checkpoints.Checkpointer(tmp_path, 2, model=model, optimizer=optimizer).save(0)
  adam_config = config_lib.resolve("mlp", "smoke", {"optimizer": "adam"})

  # Unbuilt Adam: the checkpoint without moments passes the check...
  model2 = models.create_model(adam_config)
  unbuilt = optimizers.create_optimizer(adam_config)
  checkpoint = tf.train.Checkpoint(model=model2, optimizer=unbuilt)
  checkpoint.restore(str(tmp_path / "ckpt-0")).assert_existing_objects_matched()
  # ...and the moments silently start at zero.
  unbuilt.build(model2.trainable_variables)
  assert all(not np.any(v.numpy()) for v in unbuilt.variables if "momentum" in v.path)

  # Built Adam (what the loop does): refused.
  model3, built = build(adam_config)
  with pytest.raises(UserError, match=r"ckpt-0 does not fit this model \(.*\); use a new"):
    checkpoints.Checkpointer(tmp_path, 2, model=model3, optimizer=built).restore_or_initialize()


def test_two_deterministic_runs_give_bit_identical_weights(tmp_path):
  values = []
  for name, seed in (("a", 0), ("b", 0), ("c", 1)):
    config = config_lib.resolve("mlp", "smoke", {"workdir": str(tmp_path / name),
                                                 "deterministic": True, "seed": seed})
    loop.train_and_evaluate(config)
    values.append(checkpoint_values(latest(config.workdir)))
  assert_bit_identical(values[0], values[1])
  # Another seed gives other weights: the comparison above can fail.
  kernel = "model/hidden1/_kernel/.ATTRIBUTES/VARIABLE_VALUE"
  assert not np.array_equal(values[0][kernel], values[2][kernel])


def test_sigkill_and_rerun_gives_bit_identical_weights(cnn_reference, tmp_path):
  args = ["-m", "mnist_tf2.train", *cli_args("cnn", CNN_FLAGS, tmp_path)]
  env = dict(os.environ, PYTHONUNBUFFERED="1")
  process = subprocess.Popen([sys.executable, *args], stdout=subprocess.PIPE,
                             stderr=subprocess.DEVNULL, text=True, cwd=REPO, env=env)
  try:
    for line in process.stdout:
      if line.startswith("Step 9:"):  # ckpt-6 is written; ckpt-12 may be on its way.
        break
    process.kill()
  finally:
    process.kill()
    process.wait(timeout=60)
  assert process.returncode == -signal.SIGKILL
  assert not latest(tmp_path).endswith(f"ckpt-{CNN_FLAGS['max_steps']}")

  result = run_module(*args[1:], env={"PYTHONUNBUFFERED": "1"}, timeout=240)
  assert result.returncode == 0, result.stderr
  resumed = re.search(r"^Resumed from \S+/ckpt-(\d+) at step (\d+)$", result.stdout, re.M)
  assert resumed and resumed.group(1) == resumed.group(2), result.stdout
  assert 6 <= int(resumed.group(2)) < CNN_FLAGS["max_steps"]
  assert_bit_identical(checkpoint_values(latest(tmp_path)), cnn_reference)


# --- preemption ---------------------------------------------------------------------------

def test_sigterm_saves_at_the_step_reached_and_resume_is_exact(cnn_reference, tmp_path):
  # No periodic checkpoints: any checkpoint found is the one the signal caused.
  flags = dict(CNN_FLAGS, checkpoint_every=1000)
  process = subprocess.Popen(
      [sys.executable, "-m", "mnist_tf2.train", *cli_args("cnn", flags, tmp_path)],
      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO,
      env=dict(os.environ, PYTHONUNBUFFERED="1"))
  try:
    for line in process.stdout:
      if line.startswith("Step 3:"):
        process.send_signal(signal.SIGTERM)
        break
    stdout, stderr = process.communicate(timeout=120)
  finally:
    process.kill()
  assert process.returncode == 128 + signal.SIGTERM, stderr
  stopped = re.search(r"^Stopped by SIGTERM at step (\d+): saved (\S+); run the same command "
                      r"again to resume$", stdout, re.M)
  assert stopped, stdout
  step, path = int(stopped.group(1)), stopped.group(2)
  assert 3 <= step < flags["max_steps"]
  assert latest(tmp_path) == path and path.endswith(f"ckpt-{step}")
  assert step_of(path) == step  # 0 steps lost.
  assert "Data Eval" not in stdout and "Received SIGTERM" in stderr

  loop.train_and_evaluate(config_lib.resolve("cnn", "smoke", {"workdir": str(tmp_path),
                                                              **flags}))
  assert_bit_identical(checkpoint_values(latest(tmp_path)), cnn_reference)


def test_sigint_saves_and_stops_in_process(tmp_path, monkeypatch):
  handler_before = signal.getsignal(signal.SIGINT)
  train = loop.Controller.train

  def interrupt_after_first_chunk(self, until):
    step = train(self, until)
    signal.raise_signal(signal.SIGINT)  # As Ctrl-C would, between two chunks.
    return step

  monkeypatch.setattr(loop.Controller, "train", interrupt_after_first_chunk)
  config = config_lib.resolve("mlp", "smoke", {"workdir": str(tmp_path)})
  with pytest.raises(Preempted) as stopped:
    loop.train_and_evaluate(config)
  assert stopped.value.exit_code == 130
  assert latest(tmp_path).endswith(f"ckpt-{config.steps_per_loop}")
  assert step_of(latest(tmp_path)) == config.steps_per_loop
  assert signal.getsignal(signal.SIGINT) is handler_before


# --- non-finite values --------------------------------------------------------------------

def test_nonfinite_loss_stops_and_keeps_the_previous_checkpoint(mlp_copy):
  workdir, config, _ = mlp_copy
  before = snapshot(workdir / "checkpoints")
  exploding = config.replace(learning_rate=1e30, max_steps=40)
  with pytest.raises(UserError) as error:
    loop.train_and_evaluate(exploding)
  message = str(error.value)
  match = re.fullmatch(r"loss is not finite at step (\d+); stopped without saving; the last "
                       r"good checkpoint is (\S+)", message)
  assert match, message
  assert 20 < int(match.group(1)) <= 40
  assert match.group(2) == latest(workdir) and match.group(2).endswith("ckpt-20")
  assert snapshot(workdir / "checkpoints") == before


def test_save_refuses_nonfinite_weights(tmp_path):
  model, optimizer = build(config_lib.resolve("mlp", "smoke", {}))
  checkpointer = checkpoints.Checkpointer(tmp_path, 2, model=model, optimizer=optimizer)
  good = checkpointer.save(1)
  before = snapshot(tmp_path)
  model.trainable_variables[0].assign(tf.fill(model.trainable_variables[0].shape, np.inf))
  with pytest.raises(UserError, match=rf"not saving a checkpoint at step 2: "
                                      rf"{model.trainable_variables[0].path} is not finite; "
                                      rf"the last good checkpoint is {good}$"):
    checkpointer.save(2)
  assert snapshot(tmp_path) == before
  assert tf.train.latest_checkpoint(tmp_path) == good


# --- unreadable checkpoints ---------------------------------------------------------------

def truncate_data(prefix):
  data = f"{prefix}.data-00000-of-00001"
  os.truncate(data, os.path.getsize(data) // 2)


def remove_index(prefix):
  os.remove(f"{prefix}.index")


@pytest.mark.parametrize("damage", [truncate_data, remove_index])
def test_unreadable_newest_checkpoint_falls_back_to_the_previous(mlp_copy, damage, capsys):
  workdir, config, results = mlp_copy
  newest = latest(workdir)
  expected = checkpoint_values(newest)
  damage(newest)
  again = loop.train_and_evaluate(config)
  out = capsys.readouterr().out
  assert re.search(rf"^Checkpoint {newest} is unreadable \(.+\); falling back to ckpt-10$",
                   out, re.M), out
  assert f"Resumed from {workdir}/checkpoints/ckpt-10 at step 10\n" in out
  # The lost steps are redone exactly.
  assert again["metrics"] == results["metrics"]
  assert_bit_identical(checkpoint_values(latest(workdir)), expected)


def test_no_readable_checkpoint_is_refused(mlp_copy):
  workdir, config, _ = mlp_copy
  truncate_data(f"{workdir}/checkpoints/ckpt-20")
  remove_index(f"{workdir}/checkpoints/ckpt-10")
  before = snapshot(workdir)
  with pytest.raises(UserError, match=rf"^no usable checkpoint in {workdir}/checkpoints: "
                                      r"ckpt-20, ckpt-10 cannot be read; move them away"):
    loop.train_and_evaluate(config)
  assert snapshot(workdir) == before


def test_missing_checkpoint_list_uses_the_checkpoint_files(mlp_copy, capsys):
  workdir, config, results = mlp_copy
  os.remove(workdir / "checkpoints" / "checkpoint")
  again = loop.train_and_evaluate(config)
  out = capsys.readouterr().out
  assert "checkpoint is missing or unreadable; trying the checkpoint files" in out
  assert f"Resumed from {workdir}/checkpoints/ckpt-20 at step 20\n" in out
  assert "Step " not in out and again["metrics"] == results["metrics"]


# --- mismatch -----------------------------------------------------------------------------

@pytest.mark.parametrize("overrides, saved, given", [
    ({"hidden1": 64, "hidden2": 16}, "hidden1=128, hidden2=32", "hidden1=64, hidden2=16"),
    ({"optimizer": "sgd"}, "optimizer='adam'", "optimizer='sgd'"),
])
def test_other_shapes_or_optimizer_are_refused_and_nothing_changes(mlp_copy, overrides, saved,
                                                                   given):
  workdir, config, _ = mlp_copy
  before = snapshot(workdir)
  with pytest.raises(UserError) as error:
    loop.train_and_evaluate(config.replace(**overrides))
  assert str(error.value) == (
      f"--workdir={workdir} holds a run with {saved} ({workdir}/config.json), this run has "
      f"{given}; use a new --workdir (nothing was changed)")
  assert snapshot(workdir) == before


def test_checkpoint_of_another_model_is_refused_without_config_json(mlp_copy):
  workdir, _, _ = mlp_copy
  os.remove(workdir / "config.json")
  before = snapshot(workdir)
  with pytest.raises(UserError, match=r"checkpoints/ckpt-20 does not fit this model \("
                                      r".*incompatible.*\); use a new --workdir$"):
    loop.train_and_evaluate(config_lib.resolve("softmax", "smoke", {"workdir": str(workdir)}))
  assert snapshot(workdir) == before  # Not even config.json was written.


# --- where it cannot write ----------------------------------------------------------------

def make_read_only(path):
  """chmod, or for root (whom chmod does not stop) the immutable attribute."""
  os.chmod(path, 0o555)
  try:
    open(os.path.join(path, ".probe"), "w").close()
  except OSError:
    return lambda: os.chmod(path, 0o755)
  os.remove(os.path.join(path, ".probe"))
  os.chmod(path, 0o755)
  if subprocess.run(["chattr", "+i", str(path)], capture_output=True).returncode != 0:
    pytest.skip("running as root without CAP_LINUX_IMMUTABLE: cannot make a read-only dir")
  return lambda: subprocess.run(["chattr", "-i", str(path)], check=True)


def test_read_only_workdir_is_refused(mlp_copy):
  workdir, config, _ = mlp_copy
  before = snapshot(workdir)
  undo = make_read_only(workdir)
  try:
    with pytest.raises(UserError, match=rf"^cannot write to --workdir={workdir}: "):
      loop.train_and_evaluate(config)
  finally:
    undo()
  assert snapshot(workdir) == before


def test_full_disk_leaves_the_previous_checkpoint_the_newest(mlp_copy):
  workdir, _, _ = mlp_copy
  expected = checkpoint_values(latest(workdir))
  limit = os.path.getsize(f"{latest(workdir)}.data-00000-of-00001") // 2

  def small_disk():
    # Files may grow to `limit` bytes: the checkpoint data file cannot be
    # written, as on a full disk. (Python ignores SIGXFSZ, so writes fail
    # with EFBIG instead of killing the process.)
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

  result = subprocess.run(
      [sys.executable, "-m", "mnist_tf2.train",
       *cli_args("mlp", {"max_steps": 30}, workdir)],
      capture_output=True, text=True, cwd=REPO, timeout=240, preexec_fn=small_disk)
  assert result.returncode == 2, result.stderr
  assert re.search(rf"^error: cannot write checkpoint {workdir}/checkpoints/ckpt-30 \(.+\); "
                   rf"the last good checkpoint is {workdir}/checkpoints/ckpt-20$",
                   result.stderr, re.M), result.stderr
  assert latest(workdir).endswith("ckpt-20")
  assert not [name for name in os.listdir(workdir / "checkpoints") if "ckpt-30" in name]
  assert_bit_identical(checkpoint_values(latest(workdir)), expected)


def test_checkpoint_that_does_not_read_back_is_not_recorded(tmp_path, monkeypatch):
  model, optimizer = build(config_lib.resolve("mlp", "smoke", {}))
  checkpointer = checkpoints.Checkpointer(tmp_path, 2, model=model, optimizer=optimizer)
  checkpointer.save(1)
  good = checkpointer.save(2)
  before = snapshot(tmp_path)

  def unreadable(path):
    raise tf.errors.DataLossError(None, None, f"{path}: checksum does not match")

  monkeypatch.setattr(checkpoints, "read_all_tensors", unreadable)
  with pytest.raises(UserError, match=rf"cannot write checkpoint {tmp_path}/ckpt-3 \(.*checksum "
                                      rf"does not match\); the last good checkpoint is {good}$"):
    checkpointer.save(3)
  # ckpt-1 is not rotated out for an unverified ckpt-3, which is removed.
  assert snapshot(tmp_path) == before
  assert tf.train.latest_checkpoint(tmp_path) == good
