"""Resuming with changed flags (docs/RESUMING.md) and the same data on any number of replicas."""

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import tensorflow as tf

from conftest import REPO, read_events
from mnist_tf2 import augment
from mnist_tf2 import config as config_lib
from mnist_tf2 import datasets
from mnist_tf2 import loop
from mnist_tf2 import optimizers
from mnist_tf2.errors import UserError


def preset_augmentation(model):
  return augment.Augmentation.from_config(config_lib.resolve(model, "default", {}))


# --- the same distortions whatever the replica or worker split -----------------------------


def split_global_batches(split, augmentation, global_batch, pipelines, replicas, steps, start):
  """The global batches as `pipelines` input pipelines feeding `replicas` replicas see them.

  A pipeline's consecutive per-replica batches go to its replicas in turn;
  replica r of pipeline i holds stream positions i, i + pipelines, ... of its share.
  """
  per_replica = global_batch // replicas
  local = replicas // pipelines
  outputs = []
  for pipeline in range(pipelines):
    context = tf.distribute.InputContext(num_input_pipelines=pipelines,
                                         input_pipeline_id=pipeline,
                                         num_replicas_in_sync=replicas)
    data = datasets.train_dataset(split, batch_size=per_replica, seed=3, start=start,
                                  input_context=context, augmentation=augmentation)
    outputs.append([images.numpy() for images, _ in data.take(steps * local)])
  batches = []
  for step in range(steps):
    images = np.zeros((global_batch, 28, 28, 1), np.float32)
    for pipeline in range(pipelines):
      share = np.concatenate(outputs[pipeline][step * local:(step + 1) * local])
      images[pipeline::pipelines] = share
    batches.append(images)
  return batches


@pytest.mark.parametrize("model,pipelines,replicas", [("mlp", 1, 2), ("cnn", 2, 2),
                                                      ("mlp", 2, 4)])
def test_split_global_batch_is_distorted_as_on_one_device(model, pipelines, replicas):
  """The default presets' distortions: 1 pipeline x 2 replicas (mirrored), 2 workers x 1,
  2 workers x 2 replicas each, == one device, from a start that is no multiple of the batch."""
  split = datasets.load_splits(config_lib.resolve(model, "smoke", {})).train
  augmentation = preset_augmentation(model)
  single = datasets.train_dataset(split, batch_size=8, seed=3, start=5,
                                  augmentation=augmentation)
  expected = [images.numpy() for images, _ in single.take(3)]
  got = split_global_batches(split, augmentation, 8, pipelines, replicas, 3, start=5)
  for want, have in zip(expected, got):
    np.testing.assert_array_equal(have, want)


def test_elastic_distortion_of_a_split_batch_is_the_same():
  split = datasets.load_splits(config_lib.resolve("mlp", "smoke", {})).train
  augmentation = augment.Augmentation(shift=2.0, rotation=10.0, scale=0.1, elastic_alpha=8.0)
  single = datasets.train_dataset(split, batch_size=8, seed=3, augmentation=augmentation)
  expected = [images.numpy() for images, _ in single.take(2)]
  got = split_global_batches(split, augmentation, 8, 1, 2, 2, start=0)
  for want, have in zip(expected, got):
    # The smoothing convolution rounds differently on a batch of another size;
    # other draws would differ by tenths.
    np.testing.assert_allclose(have, want, atol=1e-5)


def python(code, timeout=240):
  """Runs `code` in a fresh interpreter (logical CPU devices need a fresh TensorFlow)."""
  return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True,
                        text=True, timeout=timeout, cwd=REPO,
                        env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"))


def test_mirrored_default_presets_train_like_one_device(tmp_path):
  """The issue's run on fake data: mlp default (augmented, XLA loop on one device) under
  the default strategy and mirrored on 2 CPUs end with the same weights; and the
  cnn default's augmented inputs reach the 2 replicas as the single device's batch."""
  result = python(f"""
      import numpy as np, tensorflow as tf
      from mnist_tf2 import config as config_lib, datasets, distribute, loop, trainer
      flags = dict(deterministic=True, seed=3, max_steps=8, batch_size=64, warmup_steps=0,
                   data_source="fake", fake_examples=256, steps_per_loop=4, eval_every=0,
                   eval_splits="test", summaries=False)
      weights = []
      for strategy in ("default", "mirrored"):
        config = config_lib.resolve("mlp", "default", dict(
            flags, workdir="{tmp_path}/" + strategy, strategy=strategy, num_cpu_devices=2))
        loop.train_and_evaluate(config)
        path = tf.train.latest_checkpoint("{tmp_path}/" + strategy + "/checkpoints")
        weights.append([tf.train.load_variable(path, name)
                        for name, _ in tf.train.list_variables(path) if name.startswith("model/")])
      print("weights", max(np.abs(a - b).max() for a, b in zip(*weights)))
      config = config_lib.resolve("cnn", "default", dict(
          flags, batch_size=16, strategy="mirrored", num_cpu_devices=2))
      strategy = distribute.create_strategy(config)
      split = datasets.load_splits(config).train
      model, optimizer = trainer.build_model_and_optimizer(config, strategy)
      inputs = trainer.Trainer(config, strategy, model, optimizer).inputs(split)
      single = iter(datasets.train_dataset(split, batch_size=16, seed=3,
          augmentation=trainer.augment.Augmentation.from_config(config)))
      for _ in range(2):
        images, _ = next(inputs)
        both = np.concatenate([t.numpy() for t in strategy.experimental_local_results(images)])
        print("cnn", np.abs(both - next(single)[0].numpy()).max())
      """)
  assert result.returncode == 0, result.stderr[-3000:]
  lines = dict(line.split(" ", 1) for line in result.stdout.splitlines()
               if line.startswith(("weights ", "cnn ")))
  assert "Strategy MirroredStrategy" in result.stdout
  assert float(lines["weights"]) < 1e-5, result.stdout
  cnn = [float(line.split()[1]) for line in result.stdout.splitlines() if line.startswith("cnn ")]
  assert len(cnn) == 2 and max(cnn) == 0.0, result.stdout


# --- resuming with changed flags ------------------------------------------------------------

RUN = {"max_steps": 6, "checkpoint_every": 3, "log_every": 3, "steps_per_loop": 3,
       "batch_size": 16, "lr_schedule": "cosine", "eval_splits": "test",
       "deterministic": True}


def run(workdir, **flags):
  return loop.train_and_evaluate(config_lib.resolve("mlp", "smoke", dict(
      RUN, workdir=str(workdir), **flags)))


def snapshot(directory) -> dict:
  """{relative path: file content} of every file under `directory`."""
  return {os.path.relpath(os.path.join(root, name), directory):
          open(os.path.join(root, name), "rb").read()
          for root, _, names in os.walk(directory) for name in names}


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
  """A finished 6-step mlp smoke run (cosine schedule): checkpoints at 3 and 6."""
  workdir = tmp_path_factory.mktemp("finished")
  run(workdir)
  return workdir


@pytest.fixture
def copy(finished, tmp_path):
  import shutil
  shutil.copytree(finished, tmp_path / "w")
  return tmp_path / "w"


def interrupted_at_3(workdir, step=3, last=6):
  """Makes the workdir look like a run stopped at `step` (as after a preemption)."""
  directory = workdir / "checkpoints"
  for path in directory.glob(f"ckpt-{last}.*"):
    path.unlink()
  (workdir / "results.json").unlink()
  tf.compat.v1.train.update_checkpoint_state(str(directory), str(directory / f"ckpt-{step}"),
                                             [str(directory / f"ckpt-{step}")])


def controller(workdir, **flags):
  """A Controller resumed in `workdir` with `flags` changed (nothing trained)."""
  from mnist_tf2 import checkpoints, distribute, lock
  config = config_lib.resolve("mlp", "smoke", dict(RUN, workdir=str(workdir), **flags))
  return loop.Controller(config, distribute.create_strategy(config), str(workdir),
                         checkpoints.PreemptionWatcher(enabled=False),
                         lock.WorkdirLock(str(workdir)))


def checkpoint_value(workdir, name):
  path = tf.train.latest_checkpoint(str(workdir / "checkpoints"))
  return tf.train.load_variable(path, f"{name}/.ATTRIBUTES/VARIABLE_VALUE")


@pytest.mark.parametrize("jit_compile", [False, True])
def test_changed_batch_size_continues_with_the_next_unread_example(copy, capsys, jit_compile):
  """3 steps at batch 16 read positions 0-47: resumed at batch 32, position 48 is next
  (not 3 x 32 = 96), on the tf.data and on the in-memory XLA path."""
  interrupted_at_3(copy)
  assert checkpoint_value(copy, "examples_consumed") == 48
  resumed = controller(copy, batch_size=32, max_steps=5, jit_compile=jit_compile)
  assert "Input: 48 examples read at --batch_size=16; continuing with the next unread " \
         "one, 32 a step" in capsys.readouterr().out
  split = resumed.splits.train
  expected = split.labels[datasets.stream_indices(48 + np.arange(64), len(split.labels),
                                                  resumed.config.seed)]
  if jit_compile:
    indices, _ = resumed.trainer._chunk_examples(len(split.labels))
    labels = split.labels[indices.numpy()[:2].ravel()]
  else:
    labels = np.concatenate([next(resumed.inputs)[1].numpy() for _ in range(2)])
  np.testing.assert_array_equal(labels, expected)


def test_checkpoint_without_examples_count_falls_back_to_step_times_batch(copy, capsys):
  """A checkpoint written before the count existed: step x config.json's --batch_size."""
  from mnist_tf2 import trainer as trainer_lib
  interrupted_at_3(copy)
  config = config_lib.resolve("mlp", "smoke", dict(RUN, workdir=str(copy)))
  model, optimizer = trainer_lib.build_model_and_optimizer(config)
  checkpoint = tf.train.Checkpoint(model=model, optimizer=optimizer)
  checkpoint.restore(str(copy / "checkpoints" / "ckpt-3")).expect_partial()
  for path in (copy / "checkpoints").glob("ckpt-3.*"):
    path.unlink()
  tf.train.CheckpointManager(checkpoint, str(copy / "checkpoints"), 2,
                             checkpoint_name="ckpt").save(checkpoint_number=3)
  resumed = controller(copy, batch_size=8)
  assert "Input: 48 examples read at --batch_size=16" in capsys.readouterr().out
  assert int(resumed.trainer.examples_consumed.numpy()) == 48


def test_longer_run_continues_the_learning_rate_reached(copy, capsys):
  """Stopped at step 3 of a 6-step cosine (rate peak/2), resumed with --max_steps=12:
  the rate goes on from peak/2 (re-stretched, it would jump to 0.85 peak)."""
  interrupted_at_3(copy)
  peak = config_lib.resolve("mlp", "smoke", {}).learning_rate
  # A preset's warm-up scaled to the new length (here 0 -> 1) does not matter once over.
  resumed = controller(copy, max_steps=12, warmup_steps=1)
  out = capsys.readouterr().out
  assert f"Learning rate: continues from the rate reached, decaying to the new --max_steps " \
         f"(was 6): {peak / 2:.3g} at step 4, " in out
  assert float(resumed.optimizer.learning_rate) == pytest.approx(peak / 2, rel=1e-6)
  schedule = optimizers.schedule_of(resumed.optimizer)
  rates = [float(schedule(step)) for step in range(3, 12)]
  assert rates == sorted(rates, reverse=True) and rates[-1] < peak / 20


def test_finished_cosine_run_extended_restarts_and_says_so(copy, capsys):
  peak = config_lib.resolve("mlp", "smoke", {}).learning_rate
  run(copy, max_steps=12)
  out = capsys.readouterr().out
  assert f"Learning rate: the cosine decay had ended: warm restart from the peak: " \
         f"{peak:.3g} at step 7" in out
  assert list(checkpoint_value(copy, "lr_restart")) == [6.0, pytest.approx(peak)]
  # Stopped at step 9 and resumed with the same flags, the restart is kept.
  interrupted_at_3(copy, step=9, last=12)
  resumed = controller(copy, max_steps=12)
  assert "Learning rate: continues its schedule" in capsys.readouterr().out
  restarted = optimizers.WarmupSchedule(peak, 12, 0, "cosine")
  restarted.restart_at(6, peak)
  assert float(resumed.optimizer.learning_rate) == pytest.approx(float(restarted(9)), rel=1e-6)
  assert float(restarted(9)) > 1.5 * float(optimizers.WarmupSchedule(peak, 12, 0, "cosine")(9))


def test_other_data_or_seed_is_refused_and_nothing_changes(copy):
  before = snapshot(copy)
  for flags, message in (
      ({"data_source": "bundled"}, "holds a run with data_source='fake'"),
      ({"fake_examples": 128}, "fake_examples=256"),
      ({"seed": 4}, "seed=0")):
    with pytest.raises(UserError, match=message + ".*use a new --workdir"):
      run(copy, **flags)
  assert snapshot(copy) == before


def test_finished_run_is_never_rewritten(copy, tmp_path, capsys):
  before = snapshot(copy)
  with pytest.raises(UserError, match="holds a run at step 6, past --max_steps=4; nothing "
                                      "was changed"):
    run(copy, max_steps=4, warmup_steps=1)
  results = run(copy, learning_rate=0.5)  # Re-run: evaluates, changes nothing.
  assert "The run finished at step 6" in capsys.readouterr().out
  assert results["metrics"]["test"]["accuracy"] >= 0
  assert snapshot(copy) == before
  run(copy, export_dir=str(tmp_path / "export"))
  assert (tmp_path / "export" / "saved_model.pb").exists()
  assert snapshot(copy) == before


def test_hparams_describe_the_resumed_configuration(copy):
  """Resumed with another batch size and length: the one HParams session is the new one."""
  from tensorboard.plugins.hparams import plugin_data_pb2
  run(copy, max_steps=8, batch_size=32)
  sessions = [value.metadata.plugin_data.content
              for path in (copy / "hparams").glob("events.out.tfevents.*")
              for record in tf.data.TFRecordDataset(str(path))
              for value in tf.compat.v1.Event.FromString(record.numpy()).summary.value
              if value.tag == "_hparams_/session_start_info"]
  assert len(sessions) == 1
  hparams = plugin_data_pb2.HParamsPluginData.FromString(sessions[0]).session_start_info.hparams
  assert (hparams["batch_size"].number_value, hparams["max_steps"].number_value) == (32, 8)
  final = read_events(copy / "hparams")["test/accuracy"]
  assert [step for step, _, _ in final] == [8]
