"""Export a trained model as a SavedModel: `python -m mnist_tf2.export --workdir=W --export_dir=E`.

The SavedModel needs nothing from this package to load (`tf.saved_model.load`,
`saved_model_cli`, TensorFlow Serving). Its signatures, the contract a client
(or a REST front end) relies on:

  serving_default   the default, what TF Serving and saved_model_cli call
    images          float32 [batch, 28, 28, 1]  pixels in [0, 1]: 0 = background,
                    1 = ink (MNIST's 0-255 grey levels divided by 255), digits
                    white on black, centred as in MNIST
  serving_uint8     the same model fed MNIST's own bytes
    images          uint8   [batch, 28, 28, 1]  0 = background, 255 = ink

  both return
    probabilities   float32 [batch, 10]  softmax over the digits 0-9
    classes         int64   [batch]      the most probable digit

`serving_default` refuses input outside [0, 1] (or NaN): the call fails with
InvalidArgumentError "images must be float32 pixels in [0, 1] ...". Why a float
default that checks its range: a standard client converts whatever it sends to
the input's dtype before the model sees it. With a uint8 input, `saved_model_cli
run --inputs images=X.npy` with X float32 in [0, 1] (what Keras and the
tutorials feed a model) truncates every pixel to 0 and answers "5" for every
image, and the model cannot tell. With a float input, the usual mistake the
other way (0-255 grey levels sent unscaled, e.g. as JSON numbers over TF
Serving's REST API) arrives as values above 1 and is refused. Clients that hold
raw bytes use `serving_uint8`, whose every value is in range.

An existing non-empty export directory is replaced only with `--overwrite`, and
only if it holds a SavedModel; the new export is written next to it and swapped
in, so a failed export never leaves a half-written or missing model behind.
"""

import os
import shutil
import tempfile

from absl import flags

from mnist_tf2 import cli
from mnist_tf2.constants import IMAGE_SHAPE
from mnist_tf2.ensemble import check_directories
from mnist_tf2.ensemble import parse_workdirs
from mnist_tf2.errors import UserError
from mnist_tf2.errors import first_line

SIGNATURE_KEY = "serving_default"
UINT8_SIGNATURE_KEY = "serving_uint8"
# What the export message says of any SavedModel it wrote, one model's or an ensemble's.
SIGNATURES_SHOWN = (f"(signatures {SIGNATURE_KEY}: float32 pixels in [0, 1]; "
                    f"{UINT8_SIGNATURE_KEY}: uint8 0-255)")
OUT_OF_RANGE = ("images must be float32 pixels in [0, 1] (0 = background, 1 = ink); "
                "divide 0-255 grey levels by 255, or send uint8 to the "
                f"{UINT8_SIGNATURE_KEY} signature")


def serving_module(model):
  """A `tf.Module` whose `serve` and `serve_uint8` are the signatures (see the module doc)."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  from mnist_tf2 import datasets  # pylint: disable=g-import-not-at-top

  def predict(pixels):
    logits = model(pixels, training=False)
    # Mixed-precision models compute logits in 16 bits; serve float32.
    logits = tf.cast(logits, tf.float32)
    return {"probabilities": tf.nn.softmax(logits),
            "classes": tf.argmax(logits, axis=-1, output_type=tf.int64)}

  @tf.function(input_signature=[tf.TensorSpec([None, *IMAGE_SHAPE], tf.float32,
                                              name="images")])
  def serve(images):
    # NaN fails both comparisons, so it is refused too.
    in_range = tf.reduce_all((images >= 0.0) & (images <= 1.0))
    with tf.control_dependencies([tf.debugging.Assert(in_range, [OUT_OF_RANGE])]):
      return predict(tf.identity(images))

  @tf.function(input_signature=[tf.TensorSpec([None, *IMAGE_SHAPE], tf.uint8,
                                              name="images")])
  def serve_uint8(images):
    # Normalised exactly as in training (datasets.normalize), inside the graph.
    return predict(datasets.normalize(images))

  module = tf.Module()
  module.serve = serve
  module.serve_uint8 = serve_uint8
  # Track the TensorFlow variables the functions read rather than the Keras
  # model: a saved Keras 3 model object leaves its variables where the TF1
  # loader (saved_model_cli run, TensorFlow Serving) does not restore them,
  # and it fails with "Could not find variable ...".
  module.model_variables = list(serve.get_concrete_function().variables)
  return module


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
  from mnist_tf2 import models  # pylint: disable=g-import-not-at-top
  serving_model = models.create_model(config)
  serving_model.set_weights(model.get_weights())
  save_serving_module(serving_module(serving_model), export_dir)


def save_serving_module(module, export_dir: str) -> None:
  """Writes `serving_module(...)`'s module as a SavedModel beside `export_dir`, then swaps it in.

  Raises:
    UserError: the SavedModel cannot be written.
  """
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  export_dir = os.path.abspath(export_dir)
  parent, name = os.path.split(export_dir)
  staging = None
  try:
    os.makedirs(parent, exist_ok=True)
    staging = tempfile.mkdtemp(prefix=f".{name}.new-", dir=parent)
    # mkdtemp makes the directory private (0700); a model for serving is not.
    chmod_as_created(staging, 0o777)
    tf.saved_model.save(module, staging, signatures={
        SIGNATURE_KEY: module.serve, UINT8_SIGNATURE_KEY: module.serve_uint8})
    _swap_in(staging, export_dir)
  except (OSError, tf.errors.OpError) as e:
    # tf.saved_model.save reports a full or unwritable disk as an OpError.
    reason = e.strerror if isinstance(e, OSError) and e.strerror else first_line(e)
    raise UserError(f"cannot write the SavedModel to {export_dir}: {reason}") from None
  finally:
    if staging:
      shutil.rmtree(staging, ignore_errors=True)


def chmod_as_created(path: str, mode: int) -> None:
  """Gives `path` the permissions `open`/`mkdir` would: `mode` less the process umask.

  For files made private by `tempfile` (0600 / 0700) that others, such as a
  model server running as another user, must read. (The umask can only be read
  by setting it, hence the set-and-restore.)
  """
  umask = os.umask(0)
  os.umask(umask)
  os.chmod(path, mode & ~umask)


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
  from mnist_tf2 import restore  # pylint: disable=g-import-not-at-top  (TensorFlow)
  restored = restore.restore_model(workdir)
  export_model(restored.model, restored.config, export_dir, overwrite)
  return restored


def export_ensemble(workdirs, export_dir: str, overwrite: bool = False):
  """Exports the ensemble of the newest checkpoints of `workdirs` as one SavedModel.

  The SavedModel has a single model's signatures, whose `probabilities` are
  the mean of the members' probabilities, so `predict` and serving use it
  unchanged.

  Returns:
    The members' `restore.Restored`, in the order of `workdirs`.

  Raises:
    UserError: `export_dir` cannot be used, a run cannot be restored, or the
      runs trained on different data.
  """
  check_export_dir(export_dir, overwrite)
  # pylint: disable=g-import-not-at-top  (TensorFlow)
  from mnist_tf2 import ensemble as ensemble_lib
  from mnist_tf2 import models
  members = ensemble_lib.restore_members(workdirs)
  # restore_model builds plain float32 models outside any strategy, as
  # export_model's copy is: whatever precision the members trained in, the
  # ensemble computes in float32.
  ensemble = models.Ensemble([member.model for member in members])
  save_serving_module(serving_module(ensemble), export_dir)
  return members


def define_flags() -> None:
  # Defined only when run as the command: train.py defines flags of the same
  # names, and a process may import both modules.
  cli.define_workdir_flag("The training workdir (its config.json and checkpoints/); several, "
                          "comma-separated, export their ensemble (the mean of their "
                          "probabilities) as one SavedModel.")
  flags.DEFINE_string("export_dir", "", "Where to write the SavedModel.")
  flags.DEFINE_bool("overwrite", False, "Replace an existing SavedModel in --export_dir.")
  flags.DEFINE_enum("format", "saved_model", ["saved_model", "litert"],
                    "saved_model, or litert: a .tflite file in --export_dir (mnist_tf2.litert).")
  flags.DEFINE_enum("quantize", "none", ["none", "int8"],
                    "For --format=litert: none (float32) or int8 (post-training, calibrated "
                    "on training images).")


def main(argv):
  del argv  # cli.run refused positional arguments.
  flag_values = flags.FLAGS
  if flag_values.format == "litert":
    if len(parse_workdirs(flag_values.workdir)) > 1:
      raise UserError("an ensemble (several --workdir) exports as a SavedModel only; "
                      "leave out --format=litert")
    cli.import_tensorflow()
    from mnist_tf2 import litert  # pylint: disable=g-import-not-at-top
    litert.main(flag_values)
    return
  if flag_values.quantize != "none":
    raise UserError("--quantize applies to --format=litert only")
  workdirs = parse_workdirs(flag_values.workdir)
  check_directories(workdirs)
  check_export_dir(flag_values.export_dir, flag_values.overwrite)
  cli.import_tensorflow()
  if len(workdirs) > 1:
    members = export_ensemble(workdirs, flag_values.export_dir, flag_values.overwrite)
    print(f"Exported the ensemble of {len(members)} models "
          f"({', '.join(member.checkpoint for member in members)}) to "
          f"{os.path.abspath(flag_values.export_dir)} {SIGNATURES_SHOWN}")
    return
  restored = export_workdir(workdirs[0], flag_values.export_dir, flag_values.overwrite)
  step = "" if restored.step is None else f" (step {restored.step})"
  print(f"Exported the {restored.config.model} model of {restored.checkpoint}{step} to "
        f"{os.path.abspath(flag_values.export_dir)} {SIGNATURES_SHOWN}")


if __name__ == "__main__":
  define_flags()
  cli.run(main, help_text=lambda: cli.command_help(
      __doc__, ["workdir", "export_dir", "overwrite", "format", "quantize"]))
