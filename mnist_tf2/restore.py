"""Rebuilding a trained model from a workdir: its config.json and newest checkpoint.

Used by the commands that work on a finished (or running) training run, such as
`mnist_tf2.export` and `mnist_tf2.evaluate`. Only the model's weights are
restored, by the same code as training's (with its fallback past an unreadable
checkpoint); the optimizer state in the checkpoint is ignored.
"""

import contextlib
import gc
import logging
import os
from typing import NamedTuple

import keras
import tensorflow as tf

from mnist_tf2 import checkpoints
from mnist_tf2 import config as config_lib
from mnist_tf2 import models
from mnist_tf2 import workdir as workdir_lib
from mnist_tf2.errors import UserError

# Where the training checkpoint keeps the global step (optimizer.iterations).
STEP_KEY = "optimizer/_iterations/.ATTRIBUTES/VARIABLE_VALUE"


class Restored(NamedTuple):
  config: config_lib.Config  # the run's config, as written to config.json
  model: keras.Model  # weights from `checkpoint`
  checkpoint: str  # the checkpoint path (prefix) the weights came from
  step: int | None  # the global step of that checkpoint, if it records one


def restore_model(workdir: str) -> Restored:
  """Builds the run's model and loads the weights of its newest readable checkpoint.

  The restore is training's (`checkpoints.Checkpointer`): an unreadable newest
  checkpoint is reported and the previous one used.

  Raises:
    UserError: no workdir, no or unreadable config.json, no (readable)
      checkpoint, or a checkpoint that does not hold this model's weights.
  """
  config = workdir_lib.load_config(workdir)
  checkpoint_dir = os.path.join(workdir, "checkpoints")
  model = models.create_model(config)
  # Only the model is asked for: the optimizer state in the file is
  # deliberately left unread (partial), but every weight of the model must be
  # found there, so a checkpoint of another model is refused instead of
  # half-loaded.
  checkpointer = checkpoints.Checkpointer(checkpoint_dir, max_to_keep=2, model=model)
  failure = None
  with tf_warnings_silenced():
    try:
      path = checkpointer.restore_or_initialize(partial=True)
    except checkpoints.CheckpointMismatch as e:
      failure = e
    # A restore that failed half-way (a shape mismatch) never got its
    # expect_partial(): its deleter would list every unread checkpoint value
    # as warnings after our one-line error. Collect it here, in silence.
    gc.collect()
  if failure:
    raise UserError(f"cannot restore the {config.model} model from {failure.path}: "
                    f"{failure.reason}")
  if path is None:
    raise UserError(f"no checkpoint in {checkpoint_dir}; train first "
                    f"(python -m mnist_tf2.train --workdir={workdir})")
  return Restored(config, model, path, _global_step(path))


@contextlib.contextmanager
def tf_warnings_silenced():
  """TensorFlow's Python WARNING lines off (ERROR and above still show) while inside."""
  logger = tf.get_logger()
  level = logger.level
  logger.setLevel(logging.ERROR)
  try:
    yield
  finally:
    logger.setLevel(level)


def _global_step(path: str) -> int | None:
  try:
    return int(tf.train.load_variable(path, STEP_KEY))
  except (tf.errors.OpError, ValueError):
    return None
