"""Saving and restoring training state with tf.train.CheckpointManager."""

import tensorflow as tf

from mnist_tf2.errors import UserError


class Checkpointer:
  """Restore-or-initialise on start, save every N steps and at the end.

  The checkpoint holds the model, the optimizer (with its slot variables: the
  optimizer must be built before `restore_or_initialize`, since Keras 3 creates
  slots lazily and a restore into an unbuilt optimizer silently drops them),
  and the global step (`optimizer.iterations`). Dropout seeds and the input
  position are derived from the step, so the step is the whole RNG and input
  state, and a checkpoint restores under any tf.distribute strategy.
  """

  def __init__(self, directory, max_to_keep, restore_directory=None, **trackables):
    """Saves to `directory`; restores from `restore_directory` (default: the same).

    A non-chief worker saves to a directory of its own but restores the chief's.
    """
    self.checkpoint = tf.train.Checkpoint(**trackables)
    self.manager = tf.train.CheckpointManager(self.checkpoint, directory,
                                              max_to_keep=max_to_keep)
    self.restore_directory = restore_directory or directory

  @property
  def latest(self):
    return self.manager.latest_checkpoint

  def restore_or_initialize(self):
    """Restores the newest checkpoint if there is one; returns its path or None."""
    path = tf.train.latest_checkpoint(self.restore_directory)
    if path is None:
      return None
    try:
      # assert_existing_objects_matched: everything we hold must be in the file,
      # so a checkpoint of another model is refused instead of half-loaded.
      self.checkpoint.restore(path).assert_existing_objects_matched()
    except (tf.errors.OpError, ValueError, AssertionError) as e:
      first_line = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
      raise UserError(f"cannot restore checkpoint {path}: {first_line}") from None
    return path

  def save(self, step):
    return self.manager.save(checkpoint_number=step)
