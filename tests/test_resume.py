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
      flags = dict(deterministic=True, seed=3, max_steps=12, batch_size=64, warmup_steps=0,
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
