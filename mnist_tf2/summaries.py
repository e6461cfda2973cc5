"""TensorBoard summaries for a run.

Runs are sibling directories under the workdir, all using the same tag names
(`loss`, `accuracy`), so TensorBoard overlays their curves:

  train/             running means over the training minibatches
  eval/train/        a full evaluation pass over the training split
  eval/validation/   ... over the validation split
  eval/test/         ... over the test split
"""

import os

import tensorflow as tf


class Summaries:
  """Owns the summary writers; every method is a no-op off the chief."""

  def __init__(self, workdir, enabled=True):
    self.workdir = workdir
    self.enabled = enabled
    self._writers = {}

  def writer(self, run):
    """The writer for run directory `run` (e.g. "train", "eval/test")."""
    if run not in self._writers:
      self._writers[run] = tf.summary.create_file_writer(os.path.join(self.workdir, run))
    return self._writers[run]

  def scalars(self, run, step, scalars):
    if not self.enabled:
      return
    with self.writer(run).as_default(step=step):
      for name, value in scalars.items():
        tf.summary.scalar(name, value)

  def train_scalars(self, step, scalars):
    """`scalars`: loss, accuracy, learning_rate, examples_per_sec."""
    self.scalars("train", step, scalars)

  def eval_scalars(self, step, split, metrics):
    """Loss and accuracy of one evaluated split, under `eval/<split>`."""
    self.scalars(f"eval/{split}", step, {"loss": metrics["loss"],
                                          "accuracy": metrics["accuracy"]})

  def flush(self):
    for writer in self._writers.values():
      writer.flush()
