"""Image files -> MNIST inputs: find a handwritten digit in a photo or scan and normalise it.

`prepare(source)` is the one entry point; `mnist_tf2.predict` and the web server
call it. It does what was done to the NIST scans to make MNIST, after first
undoing what a camera or scanner adds:

1. decode any colour mode or bit depth Pillow reads (1-bit, 8/16-bit greyscale
   whatever its range, palette with a transparent colour, LA, RGB(A), CMYK), apply
   the EXIF orientation; a drawing on a transparent background uses its alpha;
2. project the colours onto the direction that separates ink from paper (blue ink
   on yellow paper reads as well as black on white) and invert light-on-dark;
3. divide out the light: the paper's brightness is estimated by a large
   max-filter, so gradients, vignetting and broad shadows are not ink; ink is the
   fraction of light the pen took away, smoothed against sensor noise and JPEG
   artefacts;
4. threshold that adaptively (relative to the noise and to the strongest ink) and
   keep the connected components that make up the digit: the largest mark plus the
   pieces close to it, ignoring specks, paper texture and distant marks;
5. redraw the digit as MNIST's were made: its binary shape at 4x scale, the stroke
   width brought into the range MNIST's pens have (a fine pen's to their median),
   anti-aliased down to fit a 20x20 box, centre of mass at the centre of 28x28.

Image work is done with OpenCV (`opencv-python-headless`), imported on first use so
commands that never read an image (`--help`) do not pay for it.
"""

import io
import math
import os
import warnings

import numpy as np
from PIL import Image
from PIL import ImageOps
from PIL import UnidentifiedImageError

from mnist_tf2.constants import IMAGE_SHAPE
from mnist_tf2.errors import UserError
from mnist_tf2.errors import first_line

FORMATS = ("PNG", "JPEG", "BMP", "GIF", "TIFF", "WEBP")
# Far beyond any photo of a digit; refused before decoding, so a decompression
# bomb (a small file that decodes to gigabytes) costs nothing.
MAX_FILE_BYTES = 50 * 1024 * 1024
MAX_PIXELS = 50_000_000
# The digit is found in a copy at most this many pixels a side (a 12-megapixel
# photo is decoded at reduced size directly); a digit smaller than ~2% of the
# photo's side would be lost, one that small is not legible anyway.
ANALYSIS_SIZE = 1024

MNIST_SIZE = IMAGE_SHAPE[0]  # the image
MNIST_BOX = 20  # the box the digit's bounding box is scaled into
CANVAS_SCALE = 4  # the digit's shape is redrawn at this multiple of the MNIST scale
# Stroke width (2 * area / perimeter of the binary shape) in MNIST pixels when the
# digit fills the 20x20 box: the 5th, 50th and 95th percentiles over the MNIST
# training digits (3,000 of them: `python scripts/predict_eval.py --measure_strokes
# --num_digits=3000`). Narrower strokes are widened to the median, wider ones
# thinned to the high end.
MNIST_STROKE = (1.55, 2.30, 3.25)

# A digit is ink at least this many noise standard deviations, and this fraction
# of the light, above the paper.
MIN_SNR = 6.0
MIN_CONTRAST = 0.06
# Components: parts of the digit are at least this fraction of its largest part
# (inside its box) or NEAR_PART (outside it, within NEAR_GAP of its size).
INSIDE_PART = 0.01
NEAR_PART = 0.03
NEAR_GAP = 0.3
# A mark smaller than this fraction of the image's longer side is a speck, not a digit.
MIN_SIZE = 0.04


def _cv2():
  import cv2  # pylint: disable=g-import-not-at-top
  return cv2


# --- Decoding --------------------------------------------------------------------------------


def _file_bytes(source) -> io.BytesIO | str:
  """A path (checked) or the bytes of a file-like object, within MAX_FILE_BYTES."""
  if isinstance(source, (str, os.PathLike)):
    path = os.fspath(source)
    if not os.path.exists(path):
      raise UserError("no such file")
    if not os.path.isfile(path):
      raise UserError("not a regular file")
    size = os.path.getsize(path)
  else:
    data = bytes(source) if isinstance(source, (bytes, bytearray, memoryview)) else (
        source.read(MAX_FILE_BYTES + 1))
    if not isinstance(data, bytes):
      raise UserError(f"expected the file's bytes, got {type(data).__name__} "
                      "(open it in binary mode)")
    size, path = len(data), io.BytesIO(data)
  if size == 0:
    raise UserError("the file is empty")
  if size > MAX_FILE_BYTES:
    raise UserError(f"the file is {size / 2**20:.0f} MiB, more than the "
                    f"{MAX_FILE_BYTES // 2**20} MiB limit")
  return path


def read_image(source) -> tuple[Image.Image, tuple[int, int]]:
  """Decodes an image file: (the image, EXIF orientation applied, maybe reduced; its full size).

  Args:
    source: a path, a binary file-like object, or bytes.

  Returns:
    The loaded PIL image (a JPEG is decoded at 1/2, 1/4 or 1/8 scale when larger
    than ANALYSIS_SIZE) and the (width, height) of the whole image as displayed.

  Raises:
    UserError: the file is missing, empty, too large, not a supported image or
      cannot be decoded; the message is one line.
  """
  target = _file_bytes(source)
  try:
    # Pillow's own decompression-bomb check warns (or raises) only far above
    # MAX_PIXELS; make its warning an error, then apply the stricter limit.
    with warnings.catch_warnings():
      warnings.simplefilter("error", Image.DecompressionBombWarning)
      with Image.open(target, formats=FORMATS) as image:
        width, height = image.size
        if width * height > MAX_PIXELS:
          raise UserError(f"{width}x{height} pixels is more than the {MAX_PIXELS:,} pixel limit")
        if image.getexif().get(0x0112, 1) in (5, 6, 7, 8):  # Stored sideways.
          width, height = height, width
        image.draft(None, (ANALYSIS_SIZE, ANALYSIS_SIZE))
        image.load()  # A GIF's or TIFF's first frame.
        return ImageOps.exif_transpose(image), (width, height)
  except UnidentifiedImageError:
    raise UserError(f"not a {', '.join(FORMATS[:-1])} or {FORMATS[-1]} image") from None
  except (Image.DecompressionBombError, Image.DecompressionBombWarning):
    raise UserError(f"more than the {MAX_PIXELS:,} pixel limit") from None
  except PermissionError:
    raise UserError("permission denied") from None
  except (OSError, SyntaxError, ValueError, EOFError, KeyError) as e:
    # Pillow reports broken and truncated files with any of these.
    raise UserError(f"cannot decode the image: {first_line(e)}") from None


def _deep_to_8_bit(pixels: np.ndarray) -> np.ndarray:
  """16/32-bit or float greyscale -> float [0, 255] by its bit depth in use.

  A 16-bit file may hold 8, 10, 12 or 16 significant bits: the smallest depth
  that holds the brightest pixel is taken as white, so a 12-bit scan is not
  read as nearly black and a blank page stays blank (no stretching of noise).
  """
  floating = np.issubdtype(pixels.dtype, np.floating)
  pixels = pixels.astype(np.float32)
  if not np.isfinite(pixels).all():
    raise UserError("the image has pixels that are not finite numbers")
  pixels -= min(0.0, float(pixels.min()))
  peak = float(pixels.max())
  if floating and peak <= 1.0:  # Floating-point images are usually in [0, 1].
    return pixels * 255.0
  bits = max(8, math.ceil(math.log2(peak + 1.0)))
  return pixels * (255.0 / (2.0**bits - 1.0))


def to_arrays(image: Image.Image) -> tuple[np.ndarray, np.ndarray | None]:
  """A decoded image as float32 pixels [H, W, C] in [0, 255] (C is 1 or 3) and alpha [H, W] or None.

  Images larger than ANALYSIS_SIZE a side are area-averaged down to it.
  """
  if image.mode.startswith(("I", "F")):
    pixels = np.asarray(image)
    if pixels.ndim != 2:  # Pillow versions differ in what they give for I;16 modes.
      pixels = np.asarray(image.convert("I"))
    return _shrink(_deep_to_8_bit(pixels)[..., np.newaxis], ANALYSIS_SIZE), None
  has_alpha = "A" in image.mode or "a" in image.mode or "transparency" in image.info
  bilevel = image.mode == "1"
  if has_alpha:
    image = image.convert("RGBA")  # Also resolves a palette's transparent colour.
  elif image.mode not in ("L", "RGB"):
    image = image.convert("L" if image.mode == "1" else "RGB")  # palette, CMYK, YCbCr, LAB...
  if max(image.size) > ANALYSIS_SIZE:
    image = image.copy()
    image.thumbnail((ANALYSIS_SIZE, ANALYSIS_SIZE), Image.Resampling.BOX)
  pixels = np.asarray(image, np.float32)
  if bilevel:  # Grey levels back from a 1-bit scan's dots (dithered or thresholded).
    pixels = _cv2().GaussianBlur(pixels, (0, 0), max(1.0, max(pixels.shape) / 600))
  pixels = pixels[..., np.newaxis] if pixels.ndim == 2 else pixels
  colour, alpha = (pixels[..., :3], pixels[..., 3]) if has_alpha else (pixels, None)
  if colour.shape[-1] == 3 and all(np.abs(colour[..., 0] - colour[..., c]).max() < 2
                                   for c in (1, 2)):
    colour = colour[..., :1]  # Grey stored as colour: one channel is quicker.
  return np.ascontiguousarray(colour), alpha


# --- Ink on paper ----------------------------------------------------------------------------


def _border_mask(shape: tuple[int, ...]) -> np.ndarray:
  """bool [H, W]: the outer band of the image (5% of its size, at least 1 pixel)."""
  band = max(1, round(0.05 * min(shape[:2])))
  border = np.ones(shape[:2], bool)
  border[band:-band, band:-band] = False
  return border


def _flatten_alpha(colour: np.ndarray, alpha: np.ndarray | None) -> np.ndarray:
  """Pixels [H, W, C] with transparency resolved by compositing onto paper.

  Opaque paper (a translucent stroke on it): its own colour, that of the border.
  Transparent paper: the colour its transparent pixels hold when that stands
  out from what was drawn (a palette's transparent entry usually is the page's
  colour), else white under dark strokes and black under light ones (a canvas
  export's transparent pixels are often black, whatever the ink).
  """
  if alpha is None:
    return colour
  border = _border_mask(alpha.shape)
  if np.median(alpha[border]) >= 128:
    paper = np.median(colour[border], axis=0)
  else:
    drawn = colour[alpha >= 128]
    drawn = np.median(drawn, axis=0) if len(drawn) else np.zeros(colour.shape[-1])
    paper = np.median(colour[alpha < 128], axis=0)
    if np.abs(paper - drawn).sum() < 96:
      paper = np.full(colour.shape[-1], 255.0 if drawn.mean() < 128 else 0.0, np.float32)
  opacity = alpha[..., np.newaxis] / 255.0
  return colour * opacity + paper * (1.0 - opacity)


def _shrink(pixels: np.ndarray, size: int) -> np.ndarray:
  """Area-averages float [H, W, C] so neither side exceeds `size`."""
  height, width = pixels.shape[:2]
  if max(height, width) <= size:
    return pixels
  scale = size / max(height, width)
  shape = (max(1, round(width * scale)), max(1, round(height * scale)))
  shrunk = _cv2().resize(pixels, shape, interpolation=_cv2().INTER_AREA)
  return shrunk.reshape(shrunk.shape[:2] + (pixels.shape[2],))


def _coarse(pixels: np.ndarray, fraction: float) -> tuple[np.ndarray, int]:
  """[H, W] area-averaged to ~128 pixels a side, and an odd window size of `fraction` of that."""
  height, width = pixels.shape
  factor = max(1, round(max(height, width) / 128))
  small = _cv2().resize(pixels, (max(1, width // factor), max(1, height // factor)),
                        interpolation=_cv2().INTER_AREA)
  return small, 2 * max(1, round(max(small.shape) * fraction / 2)) + 1


def _is_light_on_dark(grey: np.ndarray) -> bool:
  """Whether the strokes of [H, W] are lighter than the paper around them.

  Paper is what most pixels of every neighbourhood are: the pixels that differ
  most from their neighbourhood's median (at ~128 pixels, over 1/3 of the
  image) are the strokes, and their sign is the polarity. A shadow or a dark
  table is its own neighbourhood's majority, so it does not decide.
  """
  cv2 = _cv2()
  small, size = _coarse(grey, 1 / 3)
  small = np.clip(small, 0, 255).astype(np.uint8)
  deviation = small.astype(np.float32) - cv2.medianBlur(small, size)
  return bool(np.quantile(deviation, 0.995) > np.quantile(-deviation, 0.995))


def ink_darkness(colour: np.ndarray) -> tuple[np.ndarray, bool]:
  """float [H, W, C] -> (float [H, W] where ink is darker than paper, whether it was inverted).

  The channels are weighted by how much the paper (the median colour) and the
  ink (the median of the 1% of pixels farthest from it) differ in each, so
  coloured ink on coloured paper keeps its contrast. Light strokes on a dark
  background (chalk, an MNIST image) are inverted: an even border is paper,
  else the polarity is that of the strokes, not of the largest areas.

  Raises:
    UserError: the image has a single colour.
  """
  pixels = colour.reshape(-1, colour.shape[-1])
  sample = pixels[::max(1, len(pixels) // 100_000)]
  paper = np.median(sample, axis=0)
  distance = np.abs(sample - paper).sum(axis=1)
  ink = np.median(sample[distance >= np.quantile(distance, 0.99)], axis=0)
  weights = np.abs(paper - ink)
  if weights.max() < 1.0:
    raise UserError("no digit found: the image is blank or has no contrast")
  grey = colour @ (weights / weights.sum()).astype(np.float32)
  border = grey[_border_mask(grey.shape)]
  low, high = np.quantile(border, [0.05, 0.95])
  darkest, lightest = np.quantile(grey.ravel()[::max(1, grey.size // 100_000)], [0.005, 0.995])
  if high - low < 0.2 * (lightest - darkest):
    # An even border is paper (a drawing, a scan, a crop): its side of the range says.
    inverted = bool(np.median(border) < (darkest + lightest) / 2)
  else:  # Shadows, vignetting, noise or ink on the border: the strokes say.
    inverted = _is_light_on_dark(grey)
  return (255.0 - grey if inverted else grey), inverted


def paper_level(darkness: np.ndarray, window: float = 1 / 6) -> np.ndarray:
  """float [H, W]: the brightness the paper has under each pixel, ink removed.

  A morphological closing (max- then min-filter) over `window` of the image's
  longer side, at ~128 pixels: every stroke narrower than that is replaced by
  the paper around it, while light gradients, vignetting and even the sharp
  edge of a shadow are kept, so they do not read as ink.
  """
  cv2 = _cv2()
  height, width = darkness.shape
  small, size = _coarse(darkness, window)
  kernel = cv2.getStructuringElement(cv2.MORPH_RECT, (size, size))
  paper = cv2.morphologyEx(small, cv2.MORPH_CLOSE, kernel, borderType=cv2.BORDER_REPLICATE)
  return cv2.resize(paper, (width, height), interpolation=cv2.INTER_LINEAR)


def ink_map(darkness: np.ndarray, paper: np.ndarray) -> tuple[np.ndarray, float]:
  """(float [H, W] in [0, 1]: the fraction of light the ink absorbed; the map's noise std).

  `paper` is paper_level's. Sensor noise and JPEG artefacts are smoothed by a
  Gaussian whose width grows with the image (a pixel of a large photo is a
  small part of a stroke).
  """
  cv2 = _cv2()
  ink = (paper - darkness) / np.maximum(paper, 1.0)
  sigma = max(darkness.shape) / 600
  if sigma >= 0.5:
    ink = cv2.GaussianBlur(ink, (0, 0), sigma)
  sample = ink.ravel()[::max(1, ink.size // 100_000)]
  level = float(np.median(sample))
  noise = 1.4826 * float(np.median(np.abs(sample - level)))
  return np.clip(ink - level, 0.0, 1.0), noise


# --- Finding the digit -----------------------------------------------------------------------


def _grow(boxes: np.ndarray, areas: np.ndarray, main: int, inner: np.ndarray) -> np.ndarray:
  """bool [N]: the component `main` plus those inside its box or near it, repeatedly.

  What lies along the image's edge (`inner` false: a shadow, a table) is not
  part of it.
  """
  keep = np.zeros(len(areas), bool)
  keep[main] = True
  box = boxes[main]
  while True:
    size = max(box[2] - box[0], box[3] - box[1])
    inside = (boxes[:, :2] >= box[:2]).all(1) & (boxes[:, 2:] <= box[2:]).all(1)
    gap_x = np.maximum(0, np.maximum(boxes[:, 0], box[0]) - np.minimum(boxes[:, 2], box[2]))
    gap_y = np.maximum(0, np.maximum(boxes[:, 1], box[1]) - np.minimum(boxes[:, 3], box[3]))
    near = np.hypot(gap_x, gap_y) <= NEAR_GAP * size
    add = inner & ~keep & ((inside & (areas >= INSIDE_PART * areas[main]))
                   | (near & (areas >= NEAR_PART * areas[main])))
    if not add.any():
      return keep
    keep |= add
    box = np.concatenate([boxes[keep, :2].min(0), boxes[keep, 2:].max(0)])


def _off_the_edge(labels: np.ndarray, boxes: np.ndarray) -> np.ndarray:
  """bool [N]: which components are not lying along the image's edge.

  A digit cropped tightly touches the edge at a few pixels; a shadow, the
  page's edge or a table runs along it.
  """
  edge = np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]])
  on_edge = np.bincount(edge, minlength=len(boxes) + 1)[1:]
  return on_edge < 0.2 * np.maximum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1])


def find_digit(ink: np.ndarray, noise: float) -> tuple[np.ndarray, np.ndarray, int]:
  """The digit's components in an ink map.

  Thresholds the map at 40% of the strong ink level (and well above the noise),
  takes the largest component not lying along the image's edge (if there is
  one: a shadow's edge, a table; else the largest: a tight crop), then
  adds the components inside its box or near it, growing the box, so a digit
  drawn in several strokes or broken by a faint pen stays whole while specks,
  texture and distant marks stay out.

  Returns:
    (bool [H, W] mask of the digit's components, its box (left, top, right,
    bottom) exclusive, how many other marks of 4 pixels or more were ignored).

  Raises:
    UserError: nothing stands out from the paper, or only specks do.
  """
  cv2 = _cv2()
  if float(ink.max()) < max(MIN_CONTRAST, MIN_SNR * noise):
    raise UserError("no digit found: the image is blank or has no contrast")
  significant = ink[ink > max(4.0 * noise, 0.5 * MIN_CONTRAST)]
  strong = float(np.quantile(significant, 0.9))
  mask = (ink > max(0.4 * strong, 4.0 * noise)).astype(np.uint8)
  count, labels, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=8)
  if count < 2:
    raise UserError("no digit found: the image is blank or has no contrast")
  areas = stats[1:, cv2.CC_STAT_AREA].astype(np.float64)
  boxes = np.stack([stats[1:, 0], stats[1:, 1], stats[1:, 0] + stats[1:, 2],
                    stats[1:, 1] + stats[1:, 3]], axis=1)
  height, width = ink.shape
  inner = _off_the_edge(labels, boxes)
  if not inner.any():  # Cropped so tightly that the digit runs along the edge.
    inner = np.ones_like(inner)
  main = int(np.argmax(np.where(inner, areas, -1.0)))
  keep = _grow(boxes, areas, main, inner)
  box = np.concatenate([boxes[keep, :2].min(0), boxes[keep, 2:].max(0)])
  size = max(box[2] - box[0], box[3] - box[1])
  if size < max(4, MIN_SIZE * max(height, width)):
    raise UserError(f"no digit found: the largest mark is {size} pixels across, a speck")
  digit = np.isin(labels, np.flatnonzero(keep) + 1)
  return digit, box, int(np.sum(~keep & (areas >= 4)))


def locate(darkness: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
  """ink_map() then find_digit(), the paper's window widened while strokes fill it.

  A stroke wider than the window reads as paper with an outline (a bold digit
  cropped tightly): the paper found under it is then nearly as dark as the ink.
  A wider window follows shadows less closely, so it is widened only then.

  Returns:
    (ink map, digit mask, box, ignored marks) as ink_map and find_digit give them.
  """
  window = 1 / 6
  while True:
    paper = paper_level(darkness, window)
    ink, noise = ink_map(darkness, paper)
    digit, box, ignored = find_digit(ink, noise)
    region = (slice(box[1], box[3]), slice(box[0], box[2]))
    pen = float(np.quantile(darkness[digit], 0.1))
    under = paper[region]
    if window >= 1 or under.min() > pen + 0.25 * (under.max() - pen):
      return ink, digit, box, ignored
    window = min(1.0, 2 * window)


# --- Redrawing it as MNIST's were made ---------------------------------------------------------


def stroke_width(shape: np.ndarray) -> float:
  """The mean stroke width of a binary uint8 [H, W] shape, in its pixels: 2 * area / perimeter."""
  cv2 = _cv2()
  contours, _ = cv2.findContours(shape, cv2.RETR_LIST, cv2.CHAIN_APPROX_NONE)
  perimeter = sum(cv2.arcLength(c, True) for c in contours)
  return 2.0 * float(np.count_nonzero(shape)) / max(perimeter, 1.0)


def _set_stroke_width(shape: np.ndarray, width: float) -> np.ndarray:
  """Dilates or erodes a canvas shape whose stroke `width` (MNIST pixels) is outside MNIST's.

  Strokes thinner than MNIST's thinnest are widened to its median width, not
  just to that thinnest: a fine pen says nothing about how wide the digit's
  writer would have drawn it with MNIST's pens, and the median is what the
  model has seen most (thin strokes widened only to the edge of the range are
  read markedly worse: docs/PHOTOS.md). Strokes wider than its widest are
  thinned to that widest.
  """
  cv2 = _cv2()
  low, median, high = MNIST_STROKE
  change = (median - width if width < low else high - width if width > high else 0.0)
  radius = round(abs(change) * CANVAS_SCALE / 2)
  if radius == 0:
    return shape
  kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius + 1, 2 * radius + 1))
  if change > 0:
    return cv2.dilate(shape, kernel)
  thinner = cv2.erode(shape, kernel)
  return thinner if np.count_nonzero(thinner) > 0.3 * np.count_nonzero(shape) else shape


def digit_shape(ink: np.ndarray, digit: np.ndarray, box: np.ndarray) -> np.ndarray:
  """The digit's binary shape, uint8 [h, w] in {0, 1}, its longer side CANVAS_SCALE * 20.

  The ink inside the box (only the digit's components, with a margin for their
  soft edges) is resized to the canvas, then cut at half the digit's ink level,
  the edge of a stroke, whatever the pen's darkness.
  """
  cv2 = _cv2()
  height, width = ink.shape
  left, top = max(box[0] - 2, 0), max(box[1] - 2, 0)
  right, bottom = min(box[2] + 2, width), min(box[3] + 2, height)
  near = cv2.dilate(digit[top:bottom, left:right].astype(np.uint8), np.ones((5, 5), np.uint8))
  crop = ink[top:bottom, left:right] * near
  level = float(np.quantile(ink[digit], 0.9))
  scale = CANVAS_SCALE * MNIST_BOX / max(box[2] - box[0], box[3] - box[1])
  size = (max(1, round((right - left) * scale)), max(1, round((bottom - top) * scale)))
  crop = cv2.resize(crop, size, interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_CUBIC)
  return (crop > 0.5 * level).astype(np.uint8)


def centre_in_mnist(shape: np.ndarray) -> np.ndarray:
  """Anti-aliases a binary shape into a 20x20 box, its centre of mass at the centre of 28x28.

  Returns:
    uint8 [28, 28], background 0, strokes up to 255.
  """
  cv2 = _cv2()
  rows, cols = np.flatnonzero(shape.any(1)), np.flatnonzero(shape.any(0))
  shape = shape[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1].astype(np.float32) * 255.0
  scale = MNIST_BOX / max(shape.shape)
  size = (max(1, round(shape.shape[1] * scale)), max(1, round(shape.shape[0] * scale)))
  digit = cv2.resize(shape, size, interpolation=cv2.INTER_AREA).reshape(size[::-1])
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
  return np.round(np.clip(image, 0, 255)).astype(np.uint8)


# --- The entry point -------------------------------------------------------------------------


def prepare(source) -> tuple[np.ndarray, dict]:
  """Reads an image file and makes the MNIST model's input from the digit in it.

  Args:
    source: a path (str or os.PathLike), a binary file-like object (e.g.
      io.BytesIO of an upload) or bytes: a PNG, JPEG, BMP, GIF, TIFF or WebP of any
      size up to MAX_FILE_BYTES and MAX_PIXELS, colour mode and bit depth.

  Returns:
    (image, info): image is uint8 [28, 28, 1], 0 the background and up to 255
    the ink, as the exported model's `images` input takes it; info is a dict:
      "box": [left, top, right, bottom], where the digit was found, in pixels of
        the image as displayed (EXIF orientation applied), right/bottom exclusive;
      "image_size": [width, height] of that image;
      "inverted": whether the ink was lighter than the paper;
      "stroke_width": the digit's stroke width in MNIST pixels as found (before
        being brought into MNIST's range);
      "ignored_marks": how many other marks (specks, texture, distant writing)
        were left out.

  Raises:
    UserError: a one-line message: the file is missing, empty, too large, not an
      image or broken, or holds no digit (blank, no contrast, only specks).
  """
  image, (width, height) = read_image(source)
  colour, alpha = to_arrays(image)
  darkness, inverted = ink_darkness(_shrink(_flatten_alpha(colour, alpha), ANALYSIS_SIZE))
  ink, digit, box, ignored = locate(darkness)
  shape = digit_shape(ink, digit, box)
  width_found = stroke_width(shape) / CANVAS_SCALE
  mnist = centre_in_mnist(_set_stroke_width(shape, width_found))
  scale_x, scale_y = width / ink.shape[1], height / ink.shape[0]
  found = [math.floor(box[0] * scale_x), math.floor(box[1] * scale_y),
           min(width, math.ceil(box[2] * scale_x)), min(height, math.ceil(box[3] * scale_y))]
  info = {"box": found, "image_size": [width, height], "inverted": inverted,
          "stroke_width": round(width_found, 2), "ignored_marks": ignored}
  return mnist[..., np.newaxis], info
