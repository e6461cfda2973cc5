"""Saving and restoring training state so that no work is lost.

`Checkpointer` wraps a `tf.train.CheckpointManager`:

* restore: the newest checkpoint that can be read; an unreadable one (truncated
  or missing file) is reported and the previous one used; a checkpoint of
  another model is refused; none usable is refused rather than silently
  starting over.
* save: never writes non-finite weights; reads every tensor of the new
  checkpoint back before it is recorded as the newest, and only then lets the
  manager delete the oldest, so a verified checkpoint always remains.

`PreemptionWatcher` turns SIGTERM/SIGINT into a flag the loop checks between
compiled chunks of steps, so it can save at the step reached and stop.
"""

import glob
import os
import re
import shutil
import signal
import threading

import tensorflow as tf

from mnist_tf2.errors import UserError
from mnist_tf2.errors import first_line

# What a truncated or missing file raises while reading a checkpoint: an OpError
# (NotFound, DataLoss, ...) from the index or a CRC check, or IndexError ("Read
# less bytes than requested") from a short data file.
UNREADABLE_ERRORS = (tf.errors.OpError, IndexError)
# What restoring a readable checkpoint of another model raises: ValueError for a
# shape mismatch, AssertionError (assert_existing_objects_matched) for variables
# the file does not hold.
MISMATCH_ERRORS = (ValueError, AssertionError)
# Checkpoints are <directory>/ckpt-<step>.{index,data-*}.
CHECKPOINT_NAME = "ckpt"


class CheckpointMismatch(UserError):
  """A readable checkpoint that does not hold this model (or optimizer)."""

  def __init__(self, path, reason):
    super().__init__(f"checkpoint {path} does not fit this model ({reason}); "
                     "use a new --workdir")
    self.path = path
    self.reason = reason


def read_all_tensors(path) -> None:
  """Reads every tensor of checkpoint `path`; raises if a file is short or corrupt.

  The data file's tensors carry CRC32C checksums that the read verifies.
  RestoreV2 is used rather than a CheckpointReader: one op reads everything,
  and it reads any dtype (a variant, such as a tf.data iterator's state, has no
  numpy form for the reader to return).
  """
  dtypes = tf.train.load_checkpoint(path).get_variable_to_dtype_map()
  names = sorted(dtypes)
  tf.raw_ops.RestoreV2(prefix=path, tensor_names=names, shape_and_slices=[""] * len(names),
                       dtypes=[dtypes[name] for name in names])


def checkpoint_step(path) -> int:
  return int(re.search(r"-(\d+)$", path).group(1))


class Checkpointer:
  """Restore-or-initialise on start, verified saves every N steps and at the end.

  The checkpoint holds the model, the optimizer with its slot variables and the
  global step (`optimizer.iterations`). Dropout seeds and the input position
  are derived from the step, so the step is the whole RNG and input state, and
  a checkpoint restores under any tf.distribute strategy.

  Build the optimizer before `restore_or_initialize`. Keras 3 creates slots
  lazily; TensorFlow's deferred restoration would fill them in when created,
  but `assert_existing_objects_matched` can only check the slots that exist:
  with an unbuilt optimizer, a checkpoint without Adam moments (say, of an SGD
  run) would be accepted and the moments silently start at zero.
  """

  def __init__(self, directory, max_to_keep, restore_directory=None, optional=(),
               **trackables):
    """Saves to `directory`; restores from `restore_directory` (default: the same).

    A non-chief worker saves to a directory of its own but restores the chief's.
    `optional` names trackables that older checkpoints lack: those are restored
    without them, and `missing` lists them.
    """
    self.directory = directory
    self.restore_directory = restore_directory or directory
    self.trackables = trackables
    self.optional = optional
    self.missing = []
    self.checkpoint = tf.train.Checkpoint(**trackables)
    self.manager = tf.train.CheckpointManager(self.checkpoint, directory,
                                              max_to_keep=max_to_keep,
                                              checkpoint_name=CHECKPOINT_NAME)
    # The newest checkpoint known to be good (restored or saved and verified).
    self.latest = None

  @property
  def latest_step(self):
    return checkpoint_step(self.latest) if self.latest else None

  def candidates(self) -> list[str]:
    """Checkpoint prefixes in `restore_directory` to try, newest first.

    The list comes from the `checkpoint` state file, which TensorFlow replaces
    atomically and updates only after a checkpoint is written (and, in `save`,
    verified). If that file is missing or unreadable, the checkpoint files
    themselves are listed, so existing work is not silently ignored.
    """
    state = tf.train.get_checkpoint_state(self.restore_directory)
    if state and state.all_model_checkpoint_paths:
      return list(state.all_model_checkpoint_paths)[::-1]
    found = [path[:-len(".index")]
             for path in glob.glob(os.path.join(self.restore_directory, "*.index"))]
    found = [path for path in found if re.search(r"-\d+$", path)]
    if found:
      print(f"The checkpoint list {self.restore_directory}/checkpoint is missing or "
            f"unreadable; trying the checkpoint files found there", flush=True)
    return sorted(found, key=checkpoint_step, reverse=True)

  def restore_or_initialize(self, partial=False, retries=3):
    """Restores the newest readable checkpoint, if there is any.

    Args:
      partial: the file may hold more than we restore (export and evaluate
        restore the model alone, not the optimizer); everything we hold must
        still be found in it.
      retries: how often to list the checkpoints again when the one being read
        was deleted meanwhile (a run training in the directory rotates them).

    Returns:
      The path restored, or None if the directory holds no checkpoint.

    Raises:
      CheckpointMismatch: the newest readable checkpoint belongs to another
        model.
      UserError: there are checkpoints but none can be read.
    """
    candidates = self.candidates()
    for i, path in enumerate(candidates):
      try:
        read_all_tensors(path)
      except UNREADABLE_ERRORS as e:
        if retries and self._rotated_away(path):
          return self.restore_or_initialize(partial, retries - 1)
        fallback = (f"falling back to {os.path.basename(candidates[i + 1])}"
                    if i + 1 < len(candidates) else "no older checkpoint is left")
        print(f"Checkpoint {path} is unreadable ({first_line(e)}); {fallback}", flush=True)
        continue
      try:
        # assert_existing_objects_matched: everything we hold must be in the
        # file, so a checkpoint of another model is refused, not half-loaded.
        status = self._checkpoint_for(path).restore(path)
        if partial:
          status.expect_partial()
        status.assert_existing_objects_matched()
      except MISMATCH_ERRORS as e:
        raise CheckpointMismatch(path, first_line(e)) from None
      except tf.errors.NotFoundError:
        if retries and self._rotated_away(path):
          return self.restore_or_initialize(partial, retries - 1)
        raise
      self.latest = path
      return path
    if candidates:
      raise UserError(f"no usable checkpoint in {self.restore_directory}: "
                      f"{', '.join(os.path.basename(p) for p in candidates)} cannot be read; "
                      "move them away to start over, or use a new --workdir")
    return None

  def _rotated_away(self, path) -> bool:
    """Whether `path` was deleted by its manager (no longer listed), not lost or damaged."""
    return not os.path.exists(f"{path}.index") and path not in self.candidates()

  def _checkpoint_for(self, path):
    """The checkpoint object to restore `path` with: without the optional entries it lacks."""
    names = tf.train.load_checkpoint(path).get_variable_to_dtype_map()
    self.missing = [name for name in self.optional
                    if not any(key.startswith(f"{name}/") for key in names)]
    if not self.missing:
      return self.checkpoint
    return tf.train.Checkpoint(**{name: trackable for name, trackable in self.trackables.items()
                                  if name not in self.missing})

  def save(self, step):
    """Saves a verified checkpoint at `step`; returns its path.

    Does nothing if the newest good checkpoint is already at `step`.

    Raises:
      UserError: a variable is not finite (nothing is written), or the
        checkpoint cannot be written or read back (read-only or full disk); the
        partial files are removed and the previous checkpoint stays the newest.
    """
    if self.latest_step == step:
      return self.latest
    self.check_finite(step)
    prefix = os.path.join(self.directory, f"{CHECKPOINT_NAME}-{step}")
    # Callbacks run in order after the write and before the manager's own,
    # which records the new checkpoint as the newest and deletes the oldest: a
    # checkpoint that fails to read back is never recorded, nothing is deleted.
    options = tf.train.CheckpointOptions(experimental_write_callbacks=[read_all_tensors])
    try:
      path = self.manager.save(checkpoint_number=step, options=options)
    except (*UNREADABLE_ERRORS, OSError) as e:
      self._remove_partial(prefix)
      raise UserError(f"cannot write checkpoint {prefix} ({first_line(e)}); "
                      f"the last good checkpoint is {self.latest or 'none'}") from None
    self.latest = path
    return path

  def check_finite(self, step) -> None:
    """Refuses to save weights or optimizer state holding NaN or Inf."""
    for trackable in self.trackables.values():
      for variable in getattr(trackable, "variables", ()):
        if (tf.as_dtype(variable.dtype).is_floating
            and not bool(tf.reduce_all(tf.math.is_finite(variable.value)))):
          raise UserError(f"not saving a checkpoint at step {step}: {variable.path} is not "
                          f"finite; the last good checkpoint is {self.latest or 'none'}")

  def _remove_partial(self, prefix) -> None:
    """Deletes what a failed save left: its temporary directory and files."""
    shutil.rmtree(f"{prefix}_temp", ignore_errors=True)
    for path in glob.glob(f"{prefix}.index") + glob.glob(f"{prefix}.data-*"):
      os.remove(path)


class PreemptionWatcher:
  """Turns SIGTERM and SIGINT into a request to save and stop.

  A Python signal handler runs only between bytecodes of the main thread, never
  inside a compiled `tf.function` call, so the handler just records the signal
  and the loop checks `requested` between chunks of steps: the checkpoint is
  then at the step reached, 0 steps lost. A second signal acts as if there were
  no watcher (SIGINT raises KeyboardInterrupt, SIGTERM kills).

  `tf.distribute.experimental.PreemptionCheckpointHandler` is built for
  multi-worker training, where the workers must agree on the step to save at;
  in a single process it watches only SIGTERM, adds its own counter to the
  checkpoint, restores on construction (bypassing the fallback and mismatch
  checks above) and exits from inside `run`. This watcher is the single-process
  part of that job, in a few lines.

  Use as a context manager; the previous handlers come back on exit. Outside
  the main thread, or with `enabled=False`, it installs nothing.
  """

  SIGNALS = (signal.SIGTERM, signal.SIGINT)

  def __init__(self, enabled=True):
    self.enabled = enabled and threading.current_thread() is threading.main_thread()
    self.signum = None
    self._previous = {}

  @property
  def requested(self) -> bool:
    return self.signum is not None

  @property
  def signal_name(self) -> str:
    return signal.Signals(self.signum).name if self.signum else ""

  def _handle(self, signum, unused_frame):
    if self.signum is not None:
      previous = self._previous[signum]
      signal.signal(signum, signal.SIG_DFL if previous is None else previous)
      signal.raise_signal(signum)
      return
    self.signum = signum
    # os.write, not print: a handler may interrupt a print in progress.
    os.write(2, f"\nReceived {signal.Signals(signum).name}: saving a checkpoint after the "
                f"current steps, then stopping (a second signal stops at once)\n".encode())

  def __enter__(self):
    if self.enabled:
      for signum in self.SIGNALS:
        self._previous[signum] = signal.signal(signum, self._handle)
    return self

  def __exit__(self, *exc_info):
    for signum, handler in self._previous.items():
      signal.signal(signum, handler)
    self._previous = {}
