"""Read digits from image files: `python -m mnist_tf2.predict --export_dir=E FILE...`.

Needs only the exported SavedModel (see `mnist_tf2.export`), not the workdir.
Each PNG, JPEG, BMP or GIF, of any size and colour mode, is turned into an
MNIST-style image the way the MNIST digits were made:

1. greyscale; a drawing on a transparent background uses its alpha as the ink;
2. inverted if the background (the image border) is light, so the digit is
   light on black as in MNIST; the background level is subtracted and the
   contrast stretched;
3. the digit's bounding box is scaled to fit a 20x20 box, keeping its aspect
   ratio, and placed in a 28x28 image with its centre of mass at the centre.

Prints `FILE: 7 (p=0.998)` per file (`--top_k` for more guesses, `--json` for
one JSON object per line). A file that cannot be read gets one error line on
stderr; the others are still answered, and the exit status is 2 if any failed.
"""

import json
import os
import sys
import warnings

# Quieter TensorFlow start-up (no INFO lines); set before TensorFlow is imported.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app  # pylint: disable=g-import-not-at-top
from absl import flags
from absl import logging
import numpy as np
from PIL import Image
from PIL import ImageOps
from PIL import UnidentifiedImageError
import tensorflow as tf

from mnist_tf2.constants import NUM_CLASSES
from mnist_tf2.errors import UserError
from mnist_tf2.errors import first_line
from mnist_tf2.errors import one_line_errors
from mnist_tf2.export import is_saved_model

FORMATS = ("PNG", "JPEG", "BMP", "GIF")
# Far beyond any photo of a digit; refused before decoding, so a decompression
# bomb (a small file that decodes to gigabytes) costs nothing.
MAX_FILE_BYTES = 50 * 1024 * 1024
MAX_PIXELS = 50_000_000
WORKING_SIZE = 2048  # larger images are shrunk to this many pixels a side first

MNIST_SIZE = 28  # the image
MNIST_BOX = 20  # the box the digit's bounding box is scaled into
# Ink below this fraction of the darkest stroke is noise (JPEG artefacts, paper
# texture, uneven light), not part of the digit.
NOISE_FLOOR = 0.1
# A peak contrast below this many grey levels (of 255) is taken as a blank image.
MIN_CONTRAST = 24
PREDICT_BATCH = 256


# --- Image files -> MNIST images -----------------------------------------------------------


def read_image(path: str) -> tuple[np.ndarray, np.ndarray | None]:
  """Reads an image file as float32 greyscale [H, W] in [0, 255] plus its alpha or None.

  Raises:
    UserError: the file is missing, empty, too large, not a supported image or
      cannot be decoded; the message is one line.
  """
  if not os.path.exists(path):
    raise UserError("no such file")
  if not os.path.isfile(path):
    raise UserError("not a regular file")
  size = os.path.getsize(path)
  if size == 0:
    raise UserError("the file is empty")
  if size > MAX_FILE_BYTES:
    raise UserError(f"the file is {size / 2**20:.0f} MiB, more than the "
                    f"{MAX_FILE_BYTES // 2**20} MiB limit")
  try:
    # Pillow's own decompression-bomb check warns (or raises) only far above
    # MAX_PIXELS; make its warning an error, then apply the stricter limit.
    with warnings.catch_warnings():
      warnings.simplefilter("error", Image.DecompressionBombWarning)
      with Image.open(path, formats=FORMATS) as image:
        width, height = image.size
        if width * height > MAX_PIXELS:
          raise UserError(f"{width}x{height} pixels is more than the {MAX_PIXELS:,} pixel limit")
        # JPEG can decode at 1/2, 1/4 or 1/8 scale directly: far quicker for photos.
        image.draft(None, (WORKING_SIZE, WORKING_SIZE))
        image.load()  # A GIF's first frame.
        image = ImageOps.exif_transpose(image)  # Photos stored sideways.
        return _greyscale(image)
  except UnidentifiedImageError:
    raise UserError(f"not a {', '.join(FORMATS[:-1])} or {FORMATS[-1]} image") from None
  except (Image.DecompressionBombError, Image.DecompressionBombWarning):
    raise UserError(f"more than the {MAX_PIXELS:,} pixel limit") from None
  except PermissionError:
    raise UserError("permission denied") from None
  except (OSError, SyntaxError, ValueError, EOFError) as e:
    # Pillow reports broken and truncated files with any of these.
    raise UserError(f"cannot decode the image: {first_line(e)}") from None


def _greyscale(image: Image.Image) -> tuple[np.ndarray, np.ndarray | None]:
  scale = 1.0
  has_alpha = "A" in image.mode or "transparency" in image.info
  if image.mode.startswith("I"):
    # 16-bit greyscale (PNG): Pillow's conversion to "L" clips instead of scaling.
    image, scale, has_alpha = image.convert("F"), 255.0 / 65535.0, False
  elif has_alpha:
    image = image.convert("RGBA")  # Also resolves a palette's transparent colour.
  else:
    image = image.convert("L")
  # The digit ends up 20 pixels tall: a few thousand pixels a side lose nothing
  # and keep the float copies below small (50 megapixels would need gigabytes).
  image.thumbnail((WORKING_SIZE, WORKING_SIZE), Image.Resampling.BOX)
  alpha = np.asarray(image.getchannel("A"), np.float32) if has_alpha else None
  grey = np.asarray(image if image.mode == "F" else image.convert("L"), np.float32) * scale
  return grey, alpha


def _border(pixels: np.ndarray) -> np.ndarray:
  """The pixels of the outer band of the image (5% of its size, at least 1)."""
  band = max(1, round(0.05 * min(pixels.shape)))
  border = np.ones(pixels.shape, bool)
  border[band:-band, band:-band] = False
  return pixels[border]


def to_ink(grey: np.ndarray, alpha: np.ndarray | None = None) -> np.ndarray:
  """Maps an image to ink in [0, 255] on a 0 background, whatever its colours.

  Raises:
    UserError: the image has no contrast (no digit to read).
  """
  if alpha is not None and np.median(_border(alpha)) < 128:
    # Drawn on a transparent background: what was drawn is what is opaque,
    # whatever its colour.
    ink = alpha
  else:
    if alpha is not None:
      # Opaque background with translucent strokes: flatten onto it.
      background = np.median(_border(grey))
      grey = grey * (alpha / 255.0) + background * (1.0 - alpha / 255.0)
    # MNIST is light on dark; a light border means dark ink on light paper.
    ink = 255.0 - grey if np.median(_border(grey)) > 127.5 else grey
    ink = ink - np.median(_border(ink))
  ink = np.clip(ink, 0.0, None)
  peak = ink.max()
  if peak < MIN_CONTRAST:
    raise UserError("no digit found: the image is blank or has no contrast")
  ink = ink * (255.0 / peak)
  ink[ink < NOISE_FLOOR * 255.0] = 0.0
  return ink


def fit_to_mnist(ink: np.ndarray) -> np.ndarray:
  """Scales the digit's bounding box into 20x20 and centres its mass in 28x28.

  Args:
    ink: float [H, W] in [0, 255], background 0, with some ink.

  Returns:
    uint8 [28, 28].
  """
  rows = np.flatnonzero(ink.any(axis=1))
  cols = np.flatnonzero(ink.any(axis=0))
  digit = ink[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1].astype(np.float32)
  height, width = digit.shape
  scale = MNIST_BOX / max(height, width)
  size = (max(1, round(width * scale)), max(1, round(height * scale)))
  # Lanczos filters over the whole footprint when shrinking (anti-aliased, as
  # the MNIST digits were) and interpolates smoothly when enlarging.
  digit = np.asarray(Image.fromarray(digit).resize(size, Image.Resampling.LANCZOS))
  digit = np.clip(digit, 0.0, 255.0)
  if digit.max() > 0:
    # Thin strokes fade when a large image shrinks; MNIST strokes peak at 255.
    digit *= 255.0 / digit.max()
  else:
    digit[:] = 255.0  # A stroke thinner than one pixel everywhere: keep a dot.

  # The centre of mass goes to pixel (14, 14), by a whole-pixel shift: that is
  # where it lies in the MNIST images themselves (mean 14.00, within 13.5-14.5).
  total = digit.sum()
  ys, xs = np.indices(digit.shape)
  top = int(round(MNIST_SIZE // 2 - float((digit * ys).sum() / total)))
  left = int(round(MNIST_SIZE // 2 - float((digit * xs).sum() / total)))
  image = np.zeros((MNIST_SIZE, MNIST_SIZE), np.float32)
  # Paste, clipping whatever the shift pushes off the canvas (lopsided digits).
  y0, x0 = max(top, 0), max(left, 0)
  y1 = min(top + digit.shape[0], MNIST_SIZE)
  x1 = min(left + digit.shape[1], MNIST_SIZE)
  image[y0:y1, x0:x1] = digit[y0 - top:y1 - top, x0 - left:x1 - left]
  return np.round(image).astype(np.uint8)


def prepare(path: str) -> np.ndarray:
  """An image file as an MNIST image, uint8 [28, 28, 1]; raises a one-line UserError."""
  grey, alpha = read_image(path)
  return fit_to_mnist(to_ink(grey, alpha))[..., np.newaxis]


# --- The SavedModel ------------------------------------------------------------------------


class Classifier:
  """The `serving_default` signature of an exported model."""

  def __init__(self, export_dir: str):
    if not is_saved_model(export_dir):
      raise UserError(f"--export_dir={export_dir} holds no SavedModel (no saved_model.pb); "
                      "create one with python -m mnist_tf2.export")
    try:
      # Kept on self: the signature's variables live only as long as this object.
      self.loaded = tf.saved_model.load(export_dir)
    except (OSError, ValueError, tf.errors.OpError) as e:
      raise UserError(f"cannot load the SavedModel in {export_dir}: {first_line(e)}") from None
    signature = self.loaded.signatures.get("serving_default")
    inputs = signature.structured_input_signature[1] if signature is not None else {}
    spec = inputs.get("images")
    if (spec is None or spec.dtype != tf.uint8
        or spec.shape.as_list()[1:] != [MNIST_SIZE, MNIST_SIZE, 1]):
      raise UserError(f"the SavedModel in {export_dir} has no serving_default signature "
                      "taking images uint8 [batch, 28, 28, 1]")
    self.signature = signature

  def probabilities(self, images: np.ndarray) -> np.ndarray:
    """uint8 [N, 28, 28, 1] -> float32 [N, 10]."""
    batches = [self.signature(images=images[start:start + PREDICT_BATCH])["probabilities"]
               for start in range(0, len(images), PREDICT_BATCH)]
    return np.concatenate([np.asarray(b) for b in batches])


# --- The command ---------------------------------------------------------------------------


def top_classes(probabilities: np.ndarray, k: int) -> list[tuple[int, float]]:
  """The `k` most probable (class, probability) pairs, most probable first."""
  order = np.argsort(-probabilities, kind="stable")[:k]
  return [(int(c), float(probabilities[c])) for c in order]


def predict_files(classifier: Classifier, paths: list[str], top_k: int = 1) -> list[dict]:
  """One record per path, in order: {"file", "top_k": [(class, p), ...]} or {"file", "error"}."""
  records = []
  images = []
  for path in paths:
    try:
      images.append(prepare(path))
      records.append({"file": path})
    except UserError as e:
      records.append({"file": path, "error": str(e)})
  if images:
    answered = iter(classifier.probabilities(np.stack(images)))
    for record in records:
      if "error" not in record:
        record["top_k"] = top_classes(next(answered), top_k)
  return records


def format_record(record: dict) -> str:
  guesses = ", ".join(f"{c} (p={p:.3f})" for c, p in record["top_k"])
  return f"{record['file']}: {guesses}"


def json_record(record: dict) -> str:
  if "error" in record:
    return json.dumps({"file": record["file"], "error": record["error"]})
  best, p = record["top_k"][0]
  return json.dumps({"file": record["file"], "class": best, "probability": p,
                     "top_k": [{"class": c, "probability": q} for c, q in record["top_k"]]})


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


def define_flags() -> None:
  flags.DEFINE_string("export_dir", "", "The SavedModel written by mnist_tf2.export.")
  flags.DEFINE_bool("json", False, "Print one JSON object per file instead of text.")
  flags.DEFINE_integer("top_k", 1, "How many of the most probable digits to print (1-10).")


def main(argv):
  logging.set_verbosity(logging.WARNING)
  flag_values = flags.FLAGS
  paths = argv[1:]
  with one_line_errors():
    if not flag_values.export_dir:
      raise UserError("--export_dir is empty; name the SavedModel from mnist_tf2.export")
    if not paths:
      raise UserError("no image files given: python -m mnist_tf2.predict --export_dir=E FILE...")
    if not 1 <= flag_values.top_k <= NUM_CLASSES:
      raise UserError(f"--top_k must be in 1..{NUM_CLASSES}, got {flag_values.top_k}")
    records = predict_files(Classifier(flag_values.export_dir), paths, flag_values.top_k)
  if report(records, flag_values.json):
    sys.exit(2)


if __name__ == "__main__":
  define_flags()
  app.run(main)
