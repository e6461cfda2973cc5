"""Model shapes and exact parameter counts (the tutorials' architectures)."""

import types

import numpy as np
import pytest
import tensorflow as tf

from mnist_tf2 import models

CONFIG = types.SimpleNamespace(hidden1=128, hidden2=32, dropout_rate=0.4)


@pytest.mark.parametrize("name, params", [
    ("softmax", 784 * 10 + 10),                                          # 7,850
    ("mlp", (784 * 128 + 128) + (128 * 32 + 32) + (32 * 10 + 10)),       # 104,938
    ("cnn", (5 * 5 * 32 + 32) + (5 * 5 * 32 * 64 + 64) + (7 * 7 * 64 * 1024 + 1024)
     + (1024 * 10 + 10)),                                                # 3,274,634
])
def test_parameter_count(name, params):
  model = models.create_model(types.SimpleNamespace(model=name, **vars(CONFIG)))
  assert model.count_params() == params
  assert {"softmax": 7850, "mlp": 104938, "cnn": 3274634}[name] == params


@pytest.mark.parametrize("name", sorted(models.MODELS))
def test_logits_shape_and_dtype(name):
  model = models.create_model(types.SimpleNamespace(model=name, **vars(CONFIG)))
  logits = model(tf.random.uniform([5, 28, 28, 1]), training=True,
                 dropout_seed=tf.constant([1, 2], tf.int64))
  assert logits.shape == (5, 10) and logits.dtype == tf.float32


def test_mlp_hidden_sizes_follow_config():
  model = models.create_model(types.SimpleNamespace(model="mlp", hidden1=64, hidden2=16,
                                                    dropout_rate=0.0))
  assert model.count_params() == (784 * 64 + 64) + (64 * 16 + 16) + (16 * 10 + 10)


def test_mlp_initialisation_is_the_tutorials():
  model = models.create_model(types.SimpleNamespace(model="mlp", **vars(CONFIG)))
  kernel = model.hidden1.kernel.numpy()
  # truncated_normal(stddev=1/sqrt(784)) before truncation: all within 2 stddev.
  stddev = 1 / np.sqrt(784)
  assert np.abs(kernel).max() <= 2 * stddev + 1e-7
  assert 0.7 * stddev < kernel.std() < 1.0 * stddev
  assert not model.hidden1.bias.numpy().any()


def test_cnn_dropout_only_in_training_and_keyed_by_seed():
  model = models.create_model(types.SimpleNamespace(model="cnn", **vars(CONFIG)))
  images = tf.random.uniform([4, 28, 28, 1], seed=1)
  eval_a, eval_b = model(images), model(images)
  np.testing.assert_array_equal(eval_a, eval_b)
  seed = tf.constant([0, 7], tf.int64)
  train_a = model(images, training=True, dropout_seed=seed)
  train_b = model(images, training=True, dropout_seed=seed)
  train_c = model(images, training=True, dropout_seed=tf.constant([0, 8], tf.int64))
  np.testing.assert_array_equal(train_a, train_b)
  assert not np.allclose(train_a, train_c)
  assert not np.allclose(train_a, eval_a)
  with pytest.raises(ValueError, match="dropout_seed"):
    model(images, training=True)
