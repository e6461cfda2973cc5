"""Export a trained model as a SavedModel: `python -m mnist_tf2.export --workdir=W --export_dir=E`.

The SavedModel's `serving_default` signature takes raw MNIST pixels and needs
nothing from this package to load (`tf.saved_model.load`, `saved_model_cli`,
TensorFlow Serving):

  images         uint8   [batch, 28, 28, 1]  0 = background, 255 = ink
  -> probabilities float32 [batch, 10]
     classes       int64   [batch]

An existing non-empty export directory is replaced only with `--overwrite`, and
only if it holds a SavedModel; the new export is written next to it and swapped
in, so a failed export never leaves a half-written or missing model behind.
"""

import os
import shutil
import tempfile

# Quieter TensorFlow start-up (no INFO lines); set before TensorFlow is imported.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app  # pylint: disable=g-import-not-at-top
from absl import flags
from absl import logging
import tensorflow as tf

from mnist_tf2 import datasets
from mnist_tf2.constants import IMAGE_SHAPE
from mnist_tf2 import models
from mnist_tf2 import restore
from mnist_tf2.errors import UserError
from mnist_tf2.errors import first_line
from mnist_tf2.errors import one_line_errors

SIGNATURE_KEY = "serving_default"
IMAGES_SPEC = tf.TensorSpec([None, *IMAGE_SHAPE], tf.uint8, name="images")


class ServingModule(tf.Module):
  """The model behind a serving signature that takes raw uint8 pixels."""

  def __init__(self, model):
    super().__init__()

    @tf.function(input_signature=[IMAGES_SPEC])
    def serve(images):
      # Normalised exactly as in training (datasets.normalize), inside the
      # graph, so clients send the pixels as they are.
      logits = model(datasets.normalize(images), training=False)
      # Mixed-precision models compute logits in 16 bits; serve float32.
      logits = tf.cast(logits, tf.float32)
      return {"probabilities": tf.nn.softmax(logits),
              "classes": tf.argmax(logits, axis=-1, output_type=tf.int64)}

    self.serve = serve
    # Track the TensorFlow variables the function reads rather than the Keras
    # model: a saved Keras 3 model object leaves its variables where the TF1
    # loader (saved_model_cli run, TensorFlow Serving) does not restore them,
    # and it fails with "Could not find variable ...".
    self.model_variables = list(serve.get_concrete_function().variables)


def is_saved_model(path: str) -> bool:
  """Whether directory `path` holds a SavedModel (its saved_model.pb or .pbtxt)."""
  return any(os.path.isfile(os.path.join(path, name))
             for name in ("saved_model.pb", "saved_model.pbtxt"))


def check_export_dir(export_dir: str, overwrite: bool = False) -> None:
  """Refuses an export dir we must not or cannot replace; cheap, run it before heavy work."""
  if not export_dir:
    raise UserError("--export_dir is empty; name the directory to export to")
  if os.path.lexists(export_dir) and not os.path.isdir(export_dir):
    raise UserError(f"--export_dir={export_dir} exists and is not a directory")
  if os.path.isdir(export_dir) and os.listdir(export_dir):
    if not overwrite:
      raise UserError(f"--export_dir={export_dir} is not empty; pass --overwrite to replace "
                      "the SavedModel there, or choose a new directory")
    if not is_saved_model(export_dir):
      # --overwrite replaces an earlier export, never unrelated files.
      raise UserError(f"--export_dir={export_dir} is not empty and holds no SavedModel; "
                      "refusing to replace it, even with --overwrite")
  parent = os.path.dirname(os.path.abspath(export_dir))
  try:
    os.makedirs(parent, exist_ok=True)
  except OSError as e:
    raise UserError(f"cannot create {parent} for --export_dir: {e.strerror or e}") from None
  if not os.access(parent, os.W_OK):
    raise UserError(f"cannot write to {parent} for --export_dir={export_dir}")


def export_model(model, config, export_dir: str, overwrite: bool = False) -> None:
  """Saves `model` (built from `config`) as a serving SavedModel in `export_dir`.

  Args:
    model: a trained model from `models.create_model(config)`; it may live in
      a distribution strategy's scope.
    config: the run's Config (for rebuilding the model outside any strategy).
    export_dir: the directory to create (or replace, see `overwrite`).
    overwrite: replace an existing SavedModel in `export_dir`.

  Raises:
    UserError: `export_dir` cannot be used (see `check_export_dir`) or written.
  """
  check_export_dir(export_dir, overwrite)
  # Export a plain copy: its variables are ordinary ones whatever strategy
  # trained the model, so saving is a purely local act (no collective ops
  # needed from other workers) and the SavedModel holds no distribution state.
  serving_model = models.create_model(config)
  serving_model.set_weights(model.get_weights())
  module = ServingModule(serving_model)

  export_dir = os.path.abspath(export_dir)
  parent, name = os.path.split(export_dir)
  staging = None
  try:
    os.makedirs(parent, exist_ok=True)
    staging = tempfile.mkdtemp(prefix=f".{name}.new-", dir=parent)
    tf.saved_model.save(module, staging, signatures={SIGNATURE_KEY: module.serve})
    _swap_in(staging, export_dir)
  except (OSError, tf.errors.OpError) as e:
    # tf.saved_model.save reports a full or unwritable disk as an OpError.
    reason = e.strerror if isinstance(e, OSError) and e.strerror else first_line(e)
    raise UserError(f"cannot write the SavedModel to {export_dir}: {reason}") from None
  finally:
    if staging:
      shutil.rmtree(staging, ignore_errors=True)


def _swap_in(staging: str, export_dir: str) -> None:
  """Moves the finished export in place; the old one is removed only once it is."""
  if not os.path.isdir(export_dir):
    os.rename(staging, export_dir)
    return
  if not os.listdir(export_dir):
    os.rmdir(export_dir)
    os.rename(staging, export_dir)
    return
  parent, name = os.path.split(export_dir)
  retired = tempfile.mkdtemp(prefix=f".{name}.old-", dir=parent)
  os.rmdir(retired)  # Only the unique name is wanted; rename needs it free.
  os.rename(export_dir, retired)
  try:
    os.rename(staging, export_dir)
  except OSError:
    os.rename(retired, export_dir)
    raise
  shutil.rmtree(retired, ignore_errors=True)


def export_workdir(workdir: str, export_dir: str, overwrite: bool = False):
  """Exports the newest checkpoint of the run in `workdir`; returns the `restore.Restored`."""
  if not workdir:
    raise UserError("--workdir is empty; name the training workdir to export from")
  check_export_dir(export_dir, overwrite)
  restored = restore.restore_model(workdir)
  export_model(restored.model, restored.config, export_dir, overwrite)
  return restored


def define_flags() -> None:
  # Defined only when run as the command: train.py defines flags of the same
  # names, and a process may import both modules.
  flags.DEFINE_string("workdir", "", "The training workdir (its config.json and checkpoints/).")
  flags.DEFINE_alias("train_dir", "workdir")
  flags.DEFINE_string("export_dir", "", "Where to write the SavedModel.")
  flags.DEFINE_bool("overwrite", False, "Replace an existing SavedModel in --export_dir.")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  logging.set_verbosity(logging.WARNING)
  flag_values = flags.FLAGS
  with one_line_errors():
    restored = export_workdir(flag_values.workdir, flag_values.export_dir,
                              flag_values.overwrite)
  step = "" if restored.step is None else f" (step {restored.step})"
  print(f"Exported the {restored.config.model} model of {restored.checkpoint}{step} to "
        f"{os.path.abspath(flag_values.export_dir)}")


if __name__ == "__main__":
  define_flags()
  app.run(main)
