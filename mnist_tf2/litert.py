"""LiteRT (TensorFlow Lite) models for phones and microcontrollers.

`python -m mnist_tf2.export --workdir=W --export_dir=E --format=litert [--quantize=int8]`
writes `E/model.tflite` (float32) or `E/model_int8.tflite` with TensorFlow's own
converter (`tf.lite.TFLiteConverter`) from the SavedModel signature that takes
MNIST's bytes (SIGNATURE_KEY): input images uint8 [batch, 28, 28, 1] (0 =
background, 255 = ink), outputs probabilities float32 [batch, 10] and classes
int64 [batch].

int8 is full-integer post-training quantization: the weights and activations
are int8, their ranges calibrated on CALIBRATION_IMAGES training images (never
test images); input and output types stay as in the signature.

When the LiteRT interpreter is installed (`pip install -e ".[litert]"`, the
`ai-edge-litert` package) the export is checked at once: the .tflite file and
the SavedModel classify the test set, and the command prints both accuracies
and how many classes differ.
"""

import os
import tempfile
import warnings

import numpy as np
import tensorflow as tf

from mnist_tf2 import datasets
from mnist_tf2 import export
from mnist_tf2 import restore
from mnist_tf2.errors import UserError
from mnist_tf2.errors import first_line
from mnist_tf2.errors import one_line_errors

QUANTIZATIONS = ("none", "int8")
# The SavedModel signature converted: the one taking MNIST's uint8 bytes (a
# phone's camera or canvas gives bytes, and int8 quantization keeps them).
SIGNATURE_KEY = export.UINT8_SIGNATURE_KEY
CALIBRATION_IMAGES = 1000
FILE_NAMES = {"none": "model.tflite", "int8": "model_int8.tflite"}


def convert(saved_model_dir: str, quantize: str = "none",
            calibration_images: np.ndarray | None = None) -> bytes:
  """The SIGNATURE_KEY signature of a SavedModel as a .tflite flatbuffer.

  Args:
    saved_model_dir: a SavedModel from `mnist_tf2.export`.
    quantize: "none" (float32) or "int8" (full-integer post-training quantization).
    calibration_images: uint8 [N, 28, 28, 1] for "int8": representative inputs
      whose activation ranges set the quantization scales.
  """
  converter = tf.lite.TFLiteConverter.from_saved_model(
      saved_model_dir, signature_keys=[SIGNATURE_KEY])
  if quantize == "int8":
    if calibration_images is None or not len(calibration_images):
      raise ValueError("int8 quantization needs calibration images")

    def representative_dataset():
      for image in calibration_images:
        yield {"images": image[np.newaxis]}

    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = representative_dataset
    # Every op in int8, or the conversion fails (no silent float fall-back).
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
  elif quantize != "none":
    raise UserError(f"--quantize={quantize!r} is not one of: {', '.join(QUANTIZATIONS)}")
  return converter.convert()


def calibration_set(config, count: int = CALIBRATION_IMAGES, seed: int = 0) -> np.ndarray:
  """`count` training images (uint8 [count, 28, 28, 1]), a fixed random sample."""
  train = datasets.load_splits(config).train
  rng = np.random.default_rng(seed)
  picked = rng.choice(len(train.images), size=min(count, len(train.images)), replace=False)
  return np.asarray(train.images[np.sort(picked)])


def export_workdir(workdir: str, export_dir: str, quantize: str = "none",
                   overwrite: bool = False) -> tuple[str, restore.Restored]:
  """Converts the newest checkpoint of `workdir`; returns (the .tflite path, Restored).

  The file is written next to its final name and renamed into place, so an
  existing one is replaced whole or not at all (and only with `overwrite`).

  Raises:
    UserError: bad flags, an unusable workdir or export dir, or a failed conversion.
  """
  if quantize not in QUANTIZATIONS:
    raise UserError(f"--quantize={quantize!r} is not one of: {', '.join(QUANTIZATIONS)}")
  if not workdir:
    raise UserError("--workdir is empty; name the training workdir to export from")
  if not export_dir:
    raise UserError("--export_dir is empty; name the directory to write the .tflite file to")
  path = os.path.join(export_dir, FILE_NAMES[quantize])
  if os.path.lexists(export_dir) and not os.path.isdir(export_dir):
    raise UserError(f"--export_dir={export_dir} exists and is not a directory")
  if os.path.exists(path) and not overwrite:
    raise UserError(f"{path} exists; pass --overwrite to replace it")
  restored = restore.restore_model(workdir)
  calibration = calibration_set(restored.config) if quantize == "int8" else None
  with tempfile.TemporaryDirectory(prefix="mnist_tf2-litert-") as staging:
    saved_model = os.path.join(staging, "saved_model")
    export.export_model(restored.model, restored.config, saved_model)
    try:
      with warnings.catch_warnings():
        # int8 calibration runs TF's own deprecated tf.lite.Interpreter, which warns.
        warnings.simplefilter("ignore", UserWarning)
        flatbuffer = convert(saved_model, quantize, calibration)
    except Exception as e:  # pylint: disable=broad-except
      # The converter raises ConverterError, RuntimeError or ValueError.
      raise UserError(f"the LiteRT converter failed: {first_line(e)}") from None
  _write_atomically(path, flatbuffer)
  return path, restored


def _write_atomically(path: str, data: bytes) -> None:
  directory = os.path.dirname(os.path.abspath(path))
  try:
    os.makedirs(directory, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=directory, prefix=".model-", suffix=".tflite",
                                     delete=False) as f:
      f.write(data)
    # NamedTemporaryFile makes the file private (0600); a model file is not.
    export.chmod_as_created(f.name, 0o666)
    os.replace(f.name, path)
  except OSError as e:
    raise UserError(f"cannot write {path}: {e.strerror or e}") from None


# --- Checking a .tflite file with the LiteRT interpreter ------------------------------------


def interpreter_available() -> bool:
  try:
    import ai_edge_litert.interpreter  # pylint: disable=g-import-not-at-top,unused-import
  except ImportError:
    return False
  return True


class LiteRTClassifier:
  """A .tflite file's SIGNATURE_KEY signature in the LiteRT interpreter."""

  def __init__(self, path: str, batch_size: int = 1):
    from ai_edge_litert import interpreter as litert  # pylint: disable=g-import-not-at-top
    self.interpreter = litert.Interpreter(model_path=path)
    self.runner = self.interpreter.get_signature_runner(SIGNATURE_KEY)
    self.batch_size = batch_size

  def classes(self, images: np.ndarray) -> np.ndarray:
    """uint8 [N, 28, 28, 1] -> int64 [N]."""
    # The signature was converted with a dynamic batch; fixed chunks avoid a
    # tensor re-allocation per call.
    chunks = []
    for start in range(0, len(images), self.batch_size):
      chunk = np.ascontiguousarray(images[start:start + self.batch_size])
      chunks.append(self.runner(images=chunk)["classes"])
    return np.concatenate(chunks).astype(np.int64)


def compare_with_saved_model(tflite_path: str, restored: restore.Restored,
                             split: str = "test") -> dict:
  """Classes of the .tflite model and of the SavedModel export on a whole split.

  Returns:
    {"examples", "litert_accuracy", "saved_model_accuracy", "differing_classes"}.
  """
  data = getattr(datasets.load_splits(restored.config), split)
  with tempfile.TemporaryDirectory(prefix="mnist_tf2-litert-") as staging:
    export.export_model(restored.model, restored.config, staging + "/saved_model")
    serve = tf.saved_model.load(staging + "/saved_model").signatures[SIGNATURE_KEY]
    reference = np.concatenate([
        serve(images=tf.constant(data.images[i:i + 1000]))["classes"].numpy()
        for i in range(0, len(data.images), 1000)])
  litert_classes = LiteRTClassifier(tflite_path, batch_size=100).classes(data.images)
  return {"examples": len(data.labels),
          "litert_accuracy": float(np.mean(litert_classes == data.labels)),
          "saved_model_accuracy": float(np.mean(reference == data.labels)),
          "differing_classes": int(np.sum(litert_classes != reference))}


def main(flag_values) -> None:
  """`mnist_tf2.export --format=litert`: convert, then check with the interpreter if present."""
  with one_line_errors():
    path, restored = export_workdir(flag_values.workdir, flag_values.export_dir,
                                    flag_values.quantize, flag_values.overwrite)
  kind = "int8" if flag_values.quantize == "int8" else "float32"
  print(f"Exported the {restored.config.model} model of {restored.checkpoint} as {kind} "
        f"LiteRT to {os.path.abspath(path)} ({os.path.getsize(path) / 1024:.0f} KiB)")
  if not interpreter_available():
    print("To check it, install the LiteRT interpreter: pip install -e \".[litert]\"")
    return
  check = compare_with_saved_model(path, restored)
  print(f"Checked with the LiteRT interpreter on {check['examples']:,} test images: "
        f"accuracy {100 * check['litert_accuracy']:.2f}% (SavedModel "
        f"{100 * check['saved_model_accuracy']:.2f}%), {check['differing_classes']} "
        + ("class differs" if check["differing_classes"] == 1 else "classes differ"))
