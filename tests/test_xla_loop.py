"""The whole-loop XLA path: --jit_compile on one replica, batches gathered from memory."""

import keras
import numpy as np
import pytest
import tensorflow as tf
from tensorflow.python.framework import config as tf_config  # Op determinism off/on.

from mnist_tf2 import augment
from mnist_tf2 import config as config_lib
from mnist_tf2 import datasets
from mnist_tf2 import loop
from mnist_tf2 import trainer as trainer_lib
from mnist_tf2.errors import UserError
from mnist_tf2.metrics import Metrics


@pytest.fixture
def no_op_determinism():
  """Other tests turn op determinism on for the whole process; XLA's max-pool
  gradient refuses to run under it (and config.validate refuses the pair)."""
  was_on = tf_config.is_op_determinism_enabled()
  tf_config.disable_op_determinism()
  yield
  if was_on:
    tf_config.enable_op_determinism()


def _trainer(config, initial_weights=None, trainer_class=None):
  """The trainer `create_trainer` picks for `config`, or a `trainer_class` one."""
  model, optimizer = trainer_lib.build_model_and_optimizer(config)
  if initial_weights is not None:
    model.set_weights(initial_weights)
  strategy = tf.distribute.get_strategy()
  if trainer_class:
    return trainer_class(config, strategy, model, optimizer)
  return trainer_lib.create_trainer(config, strategy, model, optimizer)


def in_xla(trainer):
  return isinstance(trainer, trainer_lib.XlaTrainer)


def train(trainer, inputs, num_steps):
  """`num_steps` steps of `trainer` on `inputs`, as the loop runs a chunk."""
  return trainer.train(trainer.chunk_inputs(inputs, num_steps), tf.constant(num_steps, tf.int64))


def _split(config):
  return datasets.load_splits(config).train


def test_only_one_replica_without_augmentation_runs_the_loop_in_xla(tmp_path):
  base = {"workdir": str(tmp_path)}
  assert in_xla(_trainer(config_lib.resolve("mlp", "smoke", {**base, "jit_compile": True})))
  assert not in_xla(_trainer(config_lib.resolve("mlp", "smoke", base)))
  assert in_xla(_trainer(config_lib.resolve("mlp", "smoke", {
      **base, "jit_compile": True, "augment": True})))
  # Elastic distortion smooths its field with a convolution: tf.data keeps it.
  assert not in_xla(_trainer(config_lib.resolve("mlp", "smoke", {
      **base, "jit_compile": True, "augment": True, "augment_elastic_alpha": 8.0})))
  # On a CPU, XLA's convolutions inside a loop are slow (README, Performance):
  # the cnn keeps the tf.data loop (XLA then compiles each replica's forward
  # and backward).
  assert not in_xla(_trainer(config_lib.resolve("cnn", "smoke", {**base, "jit_compile": True})))


@pytest.mark.parametrize("model, augmented", [("mlp", False), ("mlp", True), ("cnn", False)])
def test_xla_loop_trains_like_the_tf_data_loop(model, augmented, tmp_path, no_op_determinism):
  """Same examples in the same order, same distortions and updates (to float rounding).

  (SGD: Adam would magnify float rounding in near-zero gradients. Without
  dropout: XLA's Philox generator draws other masks than TensorFlow's
  kernel for the same stateless seed.)
  """
  overrides = {"workdir": str(tmp_path), "optimizer": "sgd", "learning_rate": 0.05,
               "steps_per_loop": 5, "augment": augmented,
               **({"dropout_rate": 0.0} if model == "cnn" else {})}
  plain = config_lib.resolve(model, "smoke", overrides)
  xla = config_lib.resolve(model, "smoke", {**overrides, "jit_compile": True})
  split = _split(plain)
  keras.utils.set_random_seed(0)  # The same initial weights whatever ran before.
  reference = _trainer(plain)
  initial_weights = reference.model.get_weights()
  # (The cnn runs this path on GPUs only; it is built directly here.)
  fused = _trainer(xla, initial_weights, trainer_lib.XlaTrainer)
  chosen = trainer_lib.create_trainer(xla, fused.strategy, fused.model, fused.optimizer)
  assert in_xla(chosen) == (model == "mlp") and not in_xla(reference)
  iterator = iter(datasets.train_dataset(split, batch_size=plain.batch_size, seed=plain.seed,
                                         augmentation=augment.Augmentation.from_config(plain)))
  images, labels = tf.constant(split.images), tf.constant(split.labels)
  for num_steps in (5, 3, 5):  # Chunks of several lengths: one XLA program for all.
    a = reference.train(iterator, tf.constant(num_steps, tf.int64))
    b = train(fused, (images, labels), num_steps)
    assert int(a["steps"]) == int(b["steps"]) == num_steps
    a, b = Metrics().update(a), Metrics().update(b)
    np.testing.assert_allclose(b.loss, a.loss, rtol=1e-4)
    assert b.accuracy == pytest.approx(a.accuracy, abs=1e-6)
  assert int(fused.optimizer.iterations) == 13
  # The two paths round differently (XLA's kernels vs oneDNN's), so compare
  # how far each moved the weights: their difference as a fraction of the
  # distance trained. Measured: mlp 3e-7, cnn 0.016 (rounding tips max-pool
  # choices); the stream shifted by one step: mlp 0.20, cnn 0.41.
  flat = lambda weights: np.concatenate([w.ravel() for w in weights])
  initial, a, b = (flat(w) for w in (initial_weights, reference.model.get_weights(),
                                     fused.model.get_weights()))
  tolerance = {"mlp": 1e-3, "cnn": 0.08}[model]
  assert np.linalg.norm(b - a) <= tolerance * np.linalg.norm(a - initial)


def test_xla_loop_stops_at_the_first_nonfinite_step(tmp_path):
  config = config_lib.resolve("softmax", "smoke", {"workdir": str(tmp_path),
                                                   "jit_compile": True})
  split = _split(config)
  trainer = _trainer(config)
  images, labels = tf.constant(split.images), tf.constant(split.labels)
  out = train(trainer, (images, labels), 3)
  assert int(out["steps"]) == 3 and int(out["nonfinite_step"]) == -1
  trainer.model.logits.bias.assign(tf.fill([10], np.nan))
  out = train(trainer, (images, labels), 5)
  assert int(out["steps"]) == 1 and int(out["nonfinite_step"]) == 4
  assert int(trainer.optimizer.iterations) == 4


def test_a_chunk_longer_than_steps_per_loop_is_refused(tmp_path):
  config = config_lib.resolve("softmax", "smoke", {"workdir": str(tmp_path),
                                                   "jit_compile": True, "steps_per_loop": 4})
  split = _split(config)
  trainer = _trainer(config)
  with pytest.raises(ValueError, match="longer than --steps_per_loop=4"):
    train(trainer, trainer.inputs(split), 5)
  assert int(trainer.optimizer.iterations) == 0


def test_xla_loop_resumes_exactly(tmp_path, capsys):
  """20 steps straight = 10 steps, stop, resume to 20: bit-identical weights."""
  flags = {"jit_compile": True, "max_steps": 20, "checkpoint_every": 10}
  straight = loop.train_and_evaluate(config_lib.resolve(
      "mlp", "smoke", {**flags, "workdir": str(tmp_path / "straight")}))
  assert "XLA on (whole loop)" in capsys.readouterr().out
  loop.train_and_evaluate(config_lib.resolve(
      "mlp", "smoke", {**flags, "max_steps": 10, "workdir": str(tmp_path / "resumed")}))
  resumed = loop.train_and_evaluate(config_lib.resolve(
      "mlp", "smoke", {**flags, "workdir": str(tmp_path / "resumed")}))
  assert "Resumed from" in capsys.readouterr().out
  assert resumed["weights_sha256"] == straight["weights_sha256"]
  other = loop.train_and_evaluate(config_lib.resolve(
      "mlp", "smoke", {**flags, "seed": 1, "workdir": str(tmp_path / "other")}))
  assert other["weights_sha256"] != straight["weights_sha256"]


def test_deterministic_xla_cnn_is_refused(tmp_path):
  with pytest.raises(UserError, match=r"--deterministic=True \(command line\) and "
                     r"--jit_compile=True \(command line\) cannot be combined"):
    config_lib.resolve("cnn", "smoke", {"workdir": str(tmp_path), "deterministic": True,
                                        "jit_compile": True})
  config_lib.resolve("mlp", "smoke", {"workdir": str(tmp_path), "deterministic": True,
                                      "jit_compile": True})


def test_xla_loop_measures_the_gradient_norm_of_its_last_step(tmp_path):
  # SGD: no optimizer state to reset between the two runs below.
  config = config_lib.resolve("mlp", "smoke", {"workdir": str(tmp_path), "jit_compile": True,
                                               "optimizer": "sgd", "learning_rate": 0.1})
  split = _split(config)
  trainer = _trainer(config)
  model, batch = trainer.model, config.batch_size
  images, labels = tf.constant(split.images), tf.constant(split.labels)
  initial = model.get_weights()
  # The third step reads stream positions 2 * batch .. 3 * batch - 1.
  third = datasets.stream_indices(2 * batch + np.arange(batch), len(split.labels), config.seed)
  third_images = datasets.normalize(tf.gather(images, third))

  def norm_now():
    with tf.GradientTape() as tape:
      loss = tf.reduce_mean(trainer_lib.cross_entropy(tf.gather(labels, third),
                                                      model(third_images)))
    return float(tf.linalg.global_norm(tape.gradient(loss, model.trainable_variables)))

  before = norm_now()
  train(trainer, (images, labels), 2)
  expected = norm_now()
  model.set_weights(initial)
  trainer.optimizer.iterations.assign(0)
  trainer.examples_consumed.assign(0)  # The input position, rewound with the step.
  out = train(trainer, (images, labels), 3)
  np.testing.assert_allclose(float(out["gradient_norm"]), expected, rtol=1e-4)
  assert abs(before - expected) > 1e-3 * before  # Two steps of training changed it.
