"""The optimizer and its learning-rate schedule, from the config."""

import math

import keras
import tensorflow as tf


class WarmupSchedule(keras.optimizers.schedules.LearningRateSchedule):
  """Linear warm-up from 0 to `peak`, then constant, cosine or linear decay to 0.

  The step is the optimizer's own `iterations`, so the rate is a pure function
  of the step and a resumed run follows the same curve.
  """

  def __init__(self, peak, total_steps, warmup_steps=0, decay="constant"):
    super().__init__()
    self.peak = float(peak)
    self.total_steps = int(total_steps)
    self.warmup_steps = int(warmup_steps)
    self.decay = decay
    self.restart = None  # (step, rate): see restart_at.

  def restart_at(self, step, rate):
    """From `step` on, decay from `rate` to 0 at `total_steps` (a resumed run's
    schedule, resume.continue_schedule); set it before the training step is traced."""
    self.restart = (int(step), float(rate))

  def __call__(self, step):
    step = tf.cast(step, tf.float32)
    warmup = max(self.warmup_steps, 1)
    warmup_factor = tf.minimum(1.0, (step + 1.0) / warmup) if self.warmup_steps else 1.0
    decay_steps = float(max(self.total_steps - self.warmup_steps, 1))
    progress = tf.clip_by_value((step - self.warmup_steps) / decay_steps, 0.0, 1.0)
    rate = self.peak * warmup_factor * self._decay_factor(progress)
    if self.restart is None:
      return rate
    start, start_rate = self.restart
    progress = tf.clip_by_value((step - start) / float(max(self.total_steps - start, 1)),
                                0.0, 1.0)
    return tf.where(step >= start, start_rate * self._decay_factor(progress), rate)

  def _decay_factor(self, progress):
    if self.decay == "cosine":
      return 0.5 * (1.0 + tf.cos(math.pi * progress))
    if self.decay == "linear":
      return 1.0 - progress
    return 1.0

  def get_config(self):
    return {"peak": self.peak, "total_steps": self.total_steps,
            "warmup_steps": self.warmup_steps, "decay": self.decay}


def schedule_of(optimizer) -> WarmupSchedule:
  """The schedule an optimizer of `create_optimizer` follows (also under loss scaling)."""
  optimizer = getattr(optimizer, "inner_optimizer", optimizer)
  return optimizer._learning_rate  # pylint: disable=protected-access


def create_schedule(config) -> WarmupSchedule:
  return WarmupSchedule(config.learning_rate, config.max_steps, config.warmup_steps,
                        config.lr_schedule)


# Name -> constructor(learning_rate, config, weight_decay); the name is --optimizer.
OPTIMIZERS = {
    "sgd": lambda lr, config, wd: keras.optimizers.SGD(lr, weight_decay=wd),
    "momentum": lambda lr, config, wd: keras.optimizers.SGD(
        lr, momentum=config.momentum, weight_decay=wd),
    "adam": lambda lr, config, wd: keras.optimizers.Adam(lr, weight_decay=wd),
    "adamw": lambda lr, config, wd: keras.optimizers.AdamW(lr, weight_decay=wd or 0.0),
}


def create_optimizer(config) -> keras.optimizers.Optimizer:
  """Returns the Keras optimizer named by `config.optimizer`, not yet built."""
  weight_decay = config.weight_decay or None
  optimizer = OPTIMIZERS[config.optimizer](create_schedule(config), config, weight_decay)
  if weight_decay:
    # Decay the weights, not the biases (the usual practice: biases are few and
    # decaying them only hurts).
    optimizer.exclude_from_weight_decay(var_names=["bias"])
  return optimizer
