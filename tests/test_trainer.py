"""The compiled multi-step loop: loss averaging and the non-finite stop."""

import numpy as np
import tensorflow as tf

from mnist_tf2 import config as config_lib
from mnist_tf2 import trainer as trainer_lib
from mnist_tf2.metrics import Metrics


def _trainer(config):
  strategy = tf.distribute.get_strategy()
  model, optimizer = trainer_lib.build_model_and_optimizer(config)
  return trainer_lib.Trainer(config, strategy, model, optimizer)


def _batches(config, num_batches, nan_batch=None):
  """Fixed batches; the images of batch `nan_batch` (1-based) are NaN."""
  rng = np.random.default_rng(0)
  images = rng.random((num_batches, config.batch_size, 28, 28, 1)).astype(np.float32)
  labels = rng.integers(0, 10, (num_batches, config.batch_size)).astype(np.int32)
  if nan_batch:
    images[nan_batch - 1] = np.nan
  return tf.data.Dataset.from_tensor_slices((images, labels))


def test_loop_stops_at_the_first_nonfinite_step_and_reports_it(tmp_path):
  config = config_lib.resolve("softmax", "smoke", {"workdir": str(tmp_path), "batch_size": 8})
  trainer = _trainer(config)
  iterator = iter(_batches(config, 10, nan_batch=4))
  out = trainer.train(iterator, tf.constant(3, tf.int64))
  assert int(out["steps"]) == 3 and int(out["nonfinite_step"]) == -1
  assert np.isfinite(float(out["loss_sum"]))
  out = trainer.train(iterator, tf.constant(5, tf.int64))
  # Step 4 went non-finite: the loop stops there and names it.
  assert int(out["steps"]) == 1
  assert int(out["nonfinite_step"]) == 4
  assert int(trainer.optimizer.iterations) == 4


def test_loop_averages_loss_and_accuracy_over_its_finite_steps(tmp_path):
  config = config_lib.resolve("softmax", "smoke", {"workdir": str(tmp_path), "batch_size": 8,
                                                   "learning_rate": 1e-9})
  trainer = _trainer(config)
  # Random weights, so that every batch has its own loss.
  trainer.model.logits.kernel.assign(tf.random.stateless_normal([784, 10], seed=[1, 2]))
  dataset = _batches(config, 3, nan_batch=3)
  # Near-zero learning rate: the loss of each batch is that of the initial model.
  expected = [float(trainer_lib.cross_entropy(labels, trainer.model(images)).numpy().mean())
              for images, labels in dataset.take(2)]
  out = trainer.train(iter(dataset), tf.constant(3, tf.int64))
  assert int(out["nonfinite_step"]) == 3 and int(out["steps"]) == 3
  metrics = Metrics().update(out)
  np.testing.assert_allclose(metrics.loss, np.mean(expected), rtol=1e-5)
  assert 0.0 <= metrics.accuracy <= 1.0
  assert metrics.num_examples == 2 * config.batch_size
