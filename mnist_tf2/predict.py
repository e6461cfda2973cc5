"""Read digits from image files: `python -m mnist_tf2.predict --export_dir=E FILE...`.

Needs only the exported SavedModel (see `mnist_tf2.export`), not the workdir.
Each PNG, JPEG, BMP, GIF, TIFF or WebP, a clean drawing or a photo or scan of a
digit on paper, is turned into an MNIST-style 28x28 image by
`mnist_tf2.preprocess.prepare` (found on the page, normalised the way the MNIST
digits were made).

Prints `FILE: 7 (p=0.998)` per file (`--top_k` for more guesses, `--json` for
one JSON object per line, with where the digit was found; `--save_inputs=DIR`
writes the 28x28 image the model saw as DIR/NAME.mnist.png). A file that
cannot be read gets one error line on stderr; the others are still answered,
and the exit status is 2 if any failed.
"""

import json
import os
import sys

from absl import flags
import numpy as np
from PIL import Image

from mnist_tf2 import cli
from mnist_tf2 import devices
from mnist_tf2.constants import NUM_CLASSES
from mnist_tf2.errors import UserError
from mnist_tf2.errors import first_line
from mnist_tf2.export import is_saved_model
from mnist_tf2.preprocess import MNIST_SIZE
from mnist_tf2.preprocess import prepare

PREDICT_BATCH = 256


# --- The SavedModel ------------------------------------------------------------------------


def check_saved_model(export_dir: str) -> None:
  """Raises a one-line UserError unless `export_dir` holds a SavedModel."""
  if not is_saved_model(export_dir):
    raise UserError(f"--export_dir={export_dir} holds no SavedModel (no saved_model.pb); "
                    "create one with python -m mnist_tf2.export")


class Classifier:
  """The uint8 signature of an exported model (`serving_uint8`, see mnist_tf2.export)."""

  def __init__(self, export_dir: str):
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
    check_saved_model(export_dir)
    try:
      # Kept on self: the signature's variables live only as long as this object.
      self.loaded = tf.saved_model.load(export_dir)
    except (OSError, ValueError, tf.errors.OpError) as e:
      raise UserError(f"cannot load the SavedModel in {export_dir}: {first_line(e)}") from None
    # Exports before serving_uint8 existed took uint8 in serving_default.
    self.signature = next(filter(_takes_uint8_images, (
        self.loaded.signatures.get(key) for key in ("serving_uint8", "serving_default"))), None)
    if self.signature is None:
      raise UserError(f"the SavedModel in {export_dir} has no signature taking images uint8 "
                      "[batch, 28, 28, 1] (serving_uint8)")

  def probabilities(self, images: np.ndarray) -> np.ndarray:
    """uint8 [N, 28, 28, 1] -> float32 [N, 10]."""
    batches = [self.signature(images=images[start:start + PREDICT_BATCH])["probabilities"]
               for start in range(0, len(images), PREDICT_BATCH)]
    return np.concatenate([np.asarray(b) for b in batches])


def _takes_uint8_images(signature) -> bool:
  if signature is None:
    return False
  spec = signature.structured_input_signature[1].get("images")
  return (spec is not None and spec.dtype.name == "uint8"
          and spec.shape.as_list()[1:] == [MNIST_SIZE, MNIST_SIZE, 1])


# --- The command ---------------------------------------------------------------------------


def top_classes(probabilities: np.ndarray, k: int) -> list[tuple[int, float]]:
  """The `k` most probable (class, probability) pairs, most probable first."""
  order = np.argsort(-probabilities, kind="stable")[:k]
  return [(int(c), float(probabilities[c])) for c in order]


def predict_files(classifier: Classifier, paths: list[str], top_k: int = 1,
                  save_inputs: str = "") -> list[dict]:
  """One record per path, in order.

  Returns:
    [{"file", "top_k": [(class, p), ...], "found": prepare()'s info dict,
    and "input_png" when `save_inputs` names a directory}, or {"file", "error"}].
  """
  records = []
  images = []
  taken = {os.path.abspath(p) for p in paths}  # never written over
  for path in paths:
    try:
      image, found = prepare(path)
      images.append(image)
      records.append({"file": path, "found": found})
    except UserError as e:
      records.append({"file": path, "error": str(e)})
      continue
    if save_inputs:
      records[-1]["input_png"] = save_input(image, path, save_inputs, taken)
  if images:
    answered = iter(classifier.probabilities(np.stack(images)))
    for record in records:
      if "error" not in record:
        record["top_k"] = top_classes(next(answered), top_k)
  return records


def save_input(image: np.ndarray, path: str, directory: str, taken: set[str]) -> str:
  """Writes uint8 [28, 28, 1] as DIRECTORY/NAME.mnist.png; returns the path written.

  A target in `taken` (absolute paths: the inputs, the pictures already written
  in this run) gets -2, -3, ... instead, so no picture replaces an input or
  another file's picture; the path written is added to `taken`.

  Raises:
    UserError: the file cannot be written.
  """
  stem = os.path.splitext(os.path.basename(path))[0] or "image"
  target, n = os.path.join(directory, f"{stem}.mnist.png"), 1
  while os.path.abspath(target) in taken:
    n += 1
    target = os.path.join(directory, f"{stem}-{n}.mnist.png")
  try:
    Image.fromarray(image[..., 0]).save(target)
  except OSError as e:
    raise UserError(f"cannot write {target}: {e.strerror or e}") from None
  taken.add(os.path.abspath(target))
  return target


def format_record(record: dict) -> str:
  guesses = ", ".join(f"{c} (p={p:.3f})" for c, p in record["top_k"])
  return f"{record['file']}: {guesses}"


# Decimals of the probabilities in --json: a float32's 0.9673320651054382 is noise
# past the fourth (the text output shows three).
JSON_DECIMALS = 4


def json_record(record: dict) -> str:
  if "error" in record:
    return json.dumps({"file": record["file"], "error": record["error"]})
  best, p = record["top_k"][0]
  answer = {"file": record["file"], "class": best, "probability": round(float(p), JSON_DECIMALS),
            "top_k": [{"class": c, "probability": round(float(q), JSON_DECIMALS)}
                      for c, q in record["top_k"]],
            **record.get("found", {})}
  if "input_png" in record:
    answer["input_png"] = record["input_png"]
  return json.dumps(answer)


def report(records: list[dict], as_json: bool = False) -> bool:
  """Prints the answers on stdout, one error line per failed file on stderr.

  Returns:
    Whether any file failed.
  """
  for record in records:
    if "error" in record:
      print(f"error: {record['file']}: {record['error']}", file=sys.stderr)
    if as_json:
      print(json_record(record))
    elif "error" not in record:
      print(format_record(record))
  return any("error" in record for record in records)


def make_directory(path: str) -> None:
  try:
    os.makedirs(path, exist_ok=True)
  except OSError as e:
    raise UserError(f"--save_inputs={path}: cannot create the directory: "
                    f"{e.strerror or e}") from None


def define_flags() -> None:
  flags.DEFINE_string("export_dir", "", "The SavedModel written by mnist_tf2.export.")
  flags.DEFINE_bool("json", False, "Print one JSON object per file instead of text "
                    f"(probabilities to {JSON_DECIMALS} decimals).")
  flags.DEFINE_integer("top_k", 1, "How many of the most probable digits to print (1-10).")
  flags.DEFINE_string("save_inputs", "", "Write the 28x28 image the model saw for each file "
                      "as DIR/NAME.mnist.png (created if missing).")
  devices.define_log_device_placement_flag()


def main(argv):
  flag_values = flags.FLAGS
  paths = argv[1:]
  if not flag_values.export_dir:
    raise UserError("--export_dir is empty; name the SavedModel from mnist_tf2.export")
  if not paths:
    raise UserError("no image files given: python -m mnist_tf2.predict --export_dir=E FILE...")
  if not 1 <= flag_values.top_k <= NUM_CLASSES:
    raise UserError(f"--top_k must be in 1..{NUM_CLASSES}, got {flag_values.top_k}")
  check_saved_model(flag_values.export_dir)  # Before TensorFlow loads: a typo answers at once.
  if flag_values.save_inputs:
    make_directory(flag_values.save_inputs)
  cli.import_tensorflow()
  devices.set_log_device_placement(flag_values.log_device_placement)
  records = predict_files(Classifier(flag_values.export_dir), paths, flag_values.top_k,
                          flag_values.save_inputs)
  if report(records, flag_values.json):
    sys.exit(2)


if __name__ == "__main__":
  define_flags()
  cli.run(main, positional=True, help_text=lambda: cli.command_help(
      __doc__, ["export_dir", "json", "top_k", "save_inputs", "log_device_placement"]))
