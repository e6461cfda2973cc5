"""The three models of the TensorFlow MNIST tutorials, as Keras 3 subclasses.

Every model maps normalised images, float32 `[batch, 28, 28, 1]` in [0, 1], to
logits `[batch, 10]`; the loss (softmax cross-entropy from logits) lives in the
trainer. Look a model up by name with `create_model(config)`.
"""

import math

import keras
import tensorflow as tf

from mnist_tf2.constants import NUM_CLASSES


class SoftmaxRegression(keras.Model):
  """"MNIST for ML Beginners": one affine layer, 784 -> 10, zero-initialised."""

  def __init__(self, **kwargs):
    super().__init__(**kwargs)
    self.flatten = keras.layers.Flatten()
    # The tutorial starts W and b at zero; softmax regression is convex, so
    # symmetric initialisation is harmless and keeps the weight pictures clean.
    self.logits = keras.layers.Dense(NUM_CLASSES, kernel_initializer="zeros", name="logits")

  def call(self, images, training=False, dropout_seed=None):
    del training, dropout_seed  # No dropout in this model.
    return self.logits(self.flatten(images))


def _tutorial_dense(units, fan_in, activation, name):
  """A dense layer initialised as in "TensorFlow Mechanics 101".

  mnist.py used truncated_normal(stddev=1/sqrt(fan_in)) weights and zero biases.
  """
  return keras.layers.Dense(
      units,
      activation=activation,
      kernel_initializer=keras.initializers.TruncatedNormal(stddev=1.0 / math.sqrt(fan_in)),
      bias_initializer="zeros",
      name=name,
  )


class MLP(keras.Model):
  """"TensorFlow Mechanics 101": 784 -> hidden1 ReLU -> hidden2 ReLU -> 10."""

  def __init__(self, hidden1=128, hidden2=32, **kwargs):
    super().__init__(**kwargs)
    self.flatten = keras.layers.Flatten()
    self.hidden1 = _tutorial_dense(hidden1, 28 * 28, "relu", "hidden1")
    self.hidden2 = _tutorial_dense(hidden2, hidden1, "relu", "hidden2")
    self.logits = _tutorial_dense(NUM_CLASSES, hidden2, None, "softmax_linear")

  def call(self, images, training=False, dropout_seed=None):
    del training, dropout_seed  # No dropout in this model.
    return self.logits(self.hidden2(self.hidden1(self.flatten(images))))


class CNN(keras.Model):
  """The layers/"Deep MNIST for Experts" CNN.

  conv 32 5x5 same ReLU -> maxpool 2x2/2 -> conv 64 5x5 same ReLU ->
  maxpool 2x2/2 -> dense 1024 ReLU -> dropout -> dense 10.
  """

  def __init__(self, dropout_rate=0.4, **kwargs):
    super().__init__(**kwargs)
    self.dropout_rate = dropout_rate
    self.conv1 = keras.layers.Conv2D(32, 5, padding="same", activation="relu", name="conv1")
    self.pool1 = keras.layers.MaxPooling2D(2, 2, name="pool1")
    self.conv2 = keras.layers.Conv2D(64, 5, padding="same", activation="relu", name="conv2")
    self.pool2 = keras.layers.MaxPooling2D(2, 2, name="pool2")
    self.flatten = keras.layers.Flatten()
    self.dense = keras.layers.Dense(1024, activation="relu", name="dense")
    self.logits = keras.layers.Dense(NUM_CLASSES, name="logits")

  def call(self, images, training=False, dropout_seed=None):
    x = self.pool1(self.conv1(images))
    x = self.pool2(self.conv2(x))
    x = self.dense(self.flatten(x))
    if training and self.dropout_rate > 0:
      # Dropout is stateless, keyed by a seed the trainer derives from
      # (seed, step, replica). keras.layers.Dropout keeps its RNG state in a
      # SeedGenerator that tf.train.Checkpoint does not save, and it draws the
      # same mask on every replica; this way a resumed run and every replica
      # see exactly the masks an uninterrupted run would.
      if dropout_seed is None:
        raise ValueError("CNN(training=True) needs a dropout_seed (shape [2] int32/int64).")
      x = tf.nn.experimental.stateless_dropout(x, rate=self.dropout_rate, seed=dropout_seed)
    return self.logits(x)


# Log-probabilities are taken of at least this (float32's smallest normal
# number), so that a member certain enough to give a class probability 0 does
# not make an ensemble logit -inf.
_TINY = 1.1754944e-38


class Ensemble(keras.Model):
  """The mean of the members' softmax probabilities, returned as logits.

  Maps normalised images, float32 `[batch, 28, 28, 1]`, to `log(mean_m
  softmax(logits_m))`, float32 `[batch, 10]`. These are logits of the averaged
  distribution (their softmax is the mean of the members' probabilities, and
  their argmax its most probable class), so everything written for one model's
  logits (evaluation, the serving signature) serves an ensemble unchanged.
  """

  def __init__(self, members, **kwargs):
    super().__init__(**kwargs)
    if not members:
      raise ValueError("an ensemble needs at least one member")
    self.members = list(members)

  def member_probabilities(self, images):
    """float32 `[members, batch, 10]`: each member's softmax probabilities."""
    return tf.stack([tf.nn.softmax(tf.cast(member(images, training=False), tf.float32))
                     for member in self.members])

  def call(self, images, training=False, dropout_seed=None):
    del training, dropout_seed  # An ensemble is for inference only.
    mean = tf.reduce_mean(self.member_probabilities(images), axis=0)
    return tf.math.log(tf.maximum(mean, _TINY))


# Name -> constructor from a config; the name is the `--model` flag.
MODELS = {
    "softmax": lambda config: SoftmaxRegression(name="softmax"),
    "mlp": lambda config: MLP(config.hidden1, config.hidden2, name="mlp"),
    "cnn": lambda config: CNN(config.dropout_rate, name="cnn"),
}


def create_model(config):
  """Builds `MODELS[config.model]` from the config, weights created."""
  model = MODELS[config.model](config)
  # Create the weights now: the optimizer must be built on them before a
  # checkpoint is restored (Keras 3 creates optimizer slots lazily).
  model(tf.zeros([1, 28, 28, 1]))
  return model
