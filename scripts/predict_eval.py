"""How well `predict` reads photos and scans: accuracy per condition against the clean digits.

  python scripts/predict_eval.py --export_dir=/tmp/mnist_model [--num_digits=1000]

Every condition renders the same official MNIST test digits (a seeded sample) as
image files the way a camera or a scanner would give them (light gradients,
vignetting, shadows, noise, blur, JPEG, specks, paper texture, coloured ink and
paper, faint and thin or thick strokes, rotations and margins, and the file
kinds: 16-bit, palette with transparency, LA, CMYK, 1-bit), each digit drawn at
~10x MNIST's size on a page. Each file goes through `mnist_tf2.preprocess.prepare`
from its encoded bytes, exactly what `predict` reads, and the model's accuracy on
the results is printed next to its accuracy on the same digits as clean 28x28
arrays. `--timing` also times `prepare` on a 12-megapixel JPEG.

`--save_examples=DIR` writes the first file of each condition and the 28x28 input
it became. `--measure_strokes` prints the stroke-width percentiles of the MNIST
training digits that `preprocess.MNIST_STROKE` holds.
"""

import datetime
import io
import os
import sys
import time

from absl import flags
import numpy as np
from PIL import Image

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from mnist_tf2 import cli  # pylint: disable=g-import-not-at-top
from mnist_tf2 import preprocess  # pylint: disable=g-import-not-at-top
from mnist_tf2.errors import UserError  # pylint: disable=g-import-not-at-top



def define_flags() -> None:
  flags.DEFINE_string("export_dir", "", "The SavedModel to measure (from mnist_tf2.export).")
  flags.DEFINE_integer("num_digits", 1000, "Test digits per condition (a seeded sample).")
  flags.DEFINE_integer("seed", 0, "Seed of the sample and of every rendering.")
  flags.DEFINE_list("conditions", [], "Only these conditions (default: all).")
  flags.DEFINE_bool("timing", True, "Also time prepare() on a 12-megapixel JPEG.")
  flags.DEFINE_string("save_examples", "", "Write each condition's first file and its 28x28 "
                      "input here.")
  flags.DEFINE_bool("measure_strokes", False, "Print MNIST's stroke-width percentiles and exit.")


DIGIT_PX = 160  # the digit's 20-pixel MNIST box becomes this many pixels
PAGE_PX = 360


# --- Rendering ----------------------------------------------------------------------------------


def _cv2():
  import cv2  # pylint: disable=g-import-not-at-top
  return cv2


def digit_ink(digit: np.ndarray, digit_px: int = DIGIT_PX, stroke: float = 0.0,
              pen: float = 0.0) -> np.ndarray:
  """float [S, S] in [0, 1]: a 28x28 MNIST digit enlarged so its 20-pixel box is `digit_px`.

  `stroke` > 0 dilates (a marker), < 0 erodes, by that fraction of the box.
  `pen` > 0 redraws the digit with a pen that wide (a fraction of the box): its
  centre line (the shape's skeleton) traced by an anti-aliased round nib, so a
  thin pen draws the same connected strokes, only narrower; erosion would break
  the digit's thinner parts apart, which no pen does.
  """
  cv2 = _cv2()
  size = round(28 * digit_px / 20)
  ink = cv2.resize(digit.astype(np.float32) / 255.0, (size, size), interpolation=cv2.INTER_CUBIC)
  ink = np.clip(ink, 0.0, 1.0)
  if stroke:
    radius = max(1, round(abs(stroke) * digit_px))
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius + 1,) * 2)
    ink = (cv2.erode if stroke < 0 else cv2.dilate)(ink, kernel)
  if pen:
    line = skeleton(ink > 0.5)
    distance = cv2.distanceTransform((~line).astype(np.uint8), cv2.DIST_L2, 5)
    ink = np.clip(pen * digit_px / 2 + 0.5 - distance, 0.0, 1.0).astype(np.float32)
  return ink


def skeleton(shape: np.ndarray) -> np.ndarray:
  """bool [H, W]: the one-pixel, 8-connected centre line of a bool shape (Zhang-Suen thinning).

  Connected parts of the shape stay connected, loops stay closed.
  """
  image = np.pad(shape, 1).astype(np.uint8)
  while True:
    changed = False
    for step in (0, 1):
      p = np.pad(image, 1)
      # Neighbours P2..P9 clockwise from north.
      n = [p[:-2, 1:-1], p[:-2, 2:], p[1:-1, 2:], p[2:, 2:], p[2:, 1:-1], p[2:, :-2],
           p[1:-1, :-2], p[:-2, :-2]]
      count = sum(n)
      transitions = sum(((n[i] == 0) & (n[(i + 1) % 8] == 1)).astype(np.uint8) for i in range(8))
      if step == 0:
        far = (n[0] * n[2] * n[4] == 0) & (n[2] * n[4] * n[6] == 0)
      else:
        far = (n[0] * n[2] * n[6] == 0) & (n[0] * n[4] * n[6] == 0)
      remove = (image == 1) & (count >= 2) & (count <= 6) & (transitions == 1) & far
      if remove.any():
        image[remove] = 0
        changed = True
    if not changed:
      return image[1:-1, 1:-1].astype(bool)


def place(ink: np.ndarray, page: tuple[int, int], rng, angle: float = 0.0) -> np.ndarray:
  """The digit's ink rotated by `angle` degrees at a random place on a page [H, W]."""
  cv2 = _cv2()
  if angle:
    centre = (ink.shape[1] / 2, ink.shape[0] / 2)
    ink = cv2.warpAffine(ink, cv2.getRotationMatrix2D(centre, angle, 1.0), ink.shape[::-1],
                         flags=cv2.INTER_LINEAR)
  height, width = page
  out = np.zeros(page, np.float32)
  top = int(rng.integers(0, max(1, height - ink.shape[0])))
  left = int(rng.integers(0, max(1, width - ink.shape[1])))
  h, w = min(ink.shape[0], height - top), min(ink.shape[1], width - left)
  out[top:top + h, left:left + w] = ink[:h, :w]
  return out


def light_gradient(page, rng, low=0.78):
  """Light falling linearly from 1 to `low` across the page in a random direction."""
  height, width = page
  angle = rng.uniform(0, 2 * np.pi)
  ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
  t = (xs - width / 2) * np.cos(angle) + (ys - height / 2) * np.sin(angle)
  t = (t - t.min()) / (t.max() - t.min())
  return 1.0 - (1.0 - low) * t


def vignetting(page, rng, corner=0.5):
  height, width = page
  cy, cx = rng.uniform(0.3, 0.7) * height, rng.uniform(0.3, 0.7) * width
  ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
  r2 = ((ys - cy) ** 2 + (xs - cx) ** 2) / (0.5 * max(height, width)) ** 2
  return np.maximum(corner, 1.0 - (1.0 - corner) * r2 / 2)


def shadow(page, rng, depth=0.55):
  """A soft-edged shadow (a hand, a phone) over the page on one side of a random line."""
  cv2 = _cv2()
  height, width = page
  angle = rng.uniform(0, 2 * np.pi)
  ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
  offset = rng.uniform(-0.3, 0.3) * min(height, width)
  side = ((xs - width / 2) * np.cos(angle) + (ys - height / 2) * np.sin(angle)) > offset
  light = np.where(side, depth, 1.0).astype(np.float32)
  return cv2.GaussianBlur(light, (0, 0), 0.02 * max(height, width))


def texture(page, rng, amount=0.06):
  """Paper: fibres (fine noise) and cockling (smooth blotches), reflectance changes of ~`amount`."""
  cv2 = _cv2()
  fine = cv2.GaussianBlur(rng.normal(0, 1, page).astype(np.float32), (0, 0), 1.0)
  coarse = cv2.GaussianBlur(rng.normal(0, 1, page).astype(np.float32), (0, 0), 12.0)
  return 1.0 + amount * (fine / fine.std() + coarse / coarse.std()) / 2


def specks(page, rng, keep_clear: np.ndarray, count=(5, 25)):
  """float [H, W]: small dark dots (dust, pen taps), none on the digit's box."""
  cv2 = _cv2()
  out = np.zeros(page, np.float32)
  for _ in range(int(rng.integers(*count))):
    radius = int(rng.integers(1, 5))
    y, x = int(rng.integers(0, page[0])), int(rng.integers(0, page[1]))
    margin = radius + 6
    if not keep_clear[max(0, y - margin):y + margin, max(0, x - margin):x + margin].any():
      cv2.circle(out, (x, y), radius, 1.0, -1)
  return out


def photograph(ink, rng, *, paper=235.0, pen=25.0, light=None, reflectance=None, noise=0.0,
               blur=0.0) -> np.ndarray:
  """float [H, W, C]: the page's brightness; `paper` and `pen` are grey levels or RGB triples."""
  cv2 = _cv2()
  paper = np.atleast_1d(np.asarray(paper, np.float32))
  pen = np.atleast_1d(np.asarray(pen, np.float32))
  a = ink[..., np.newaxis]
  image = paper * (1 - a) + pen * a
  if reflectance is not None:
    image = image * reflectance[..., np.newaxis]
  if light is not None:
    image = image * light[..., np.newaxis]
  if blur:
    image = cv2.GaussianBlur(image, (0, 0), blur).reshape(image.shape)
  if noise:
    image = image + rng.normal(0, noise, image.shape)
  return np.clip(image, 0, 255)


def encode(pixels: np.ndarray, fmt: str = "PNG", mode: str | None = None, **options) -> bytes:
  """float [H, W, C] in [0, 255] as a file's bytes."""
  array = np.round(pixels).astype(np.uint8)
  image = Image.fromarray(array[..., 0] if array.shape[-1] == 1 else array)
  if mode:
    image = image.convert(mode)
  buffer = io.BytesIO()
  image.save(buffer, fmt, **options)
  return buffer.getvalue()


def _page(digit, rng, page=(PAGE_PX, PAGE_PX), **ink_options):
  return place(digit_ink(digit, **ink_options), page, rng)


def _deep(pixels: np.ndarray, bits: int) -> bytes:
  """A 16-bit greyscale PNG using `bits` significant bits."""
  scaled = np.round(pixels[..., 0] / 255.0 * (2**bits - 1)).astype(np.uint16)
  buffer = io.BytesIO()
  Image.fromarray(scaled).save(buffer, "PNG")
  return buffer.getvalue()


def _palette_transparent(ink: np.ndarray, rng) -> bytes:
  """A palette PNG, the paper its transparent colour, the digit in a few shades of blue."""
  pixels = photograph(ink, rng, paper=(255, 255, 255), pen=(20, 40, 170))
  image = Image.fromarray(np.round(pixels).astype(np.uint8)).quantize(8)
  paper_index = int(np.bincount(np.asarray(image).ravel()).argmax())
  buffer = io.BytesIO()
  image.save(buffer, "PNG", transparency=paper_index)
  return buffer.getvalue()


def _la(ink: np.ndarray, rng) -> bytes:
  """Greyscale with alpha: ink opaque, the page transparent (an exported drawing)."""
  alpha = np.round(255 * ink).astype(np.uint8)
  grey = np.full_like(alpha, 30)
  buffer = io.BytesIO()
  Image.fromarray(np.stack([grey, alpha], -1), "LA").save(buffer, "PNG")
  return buffer.getvalue()


INK_COLOURS = [  # (paper, pen): ballpoints, felt tips and pencil on white, cream and coloured paper
    ((245, 245, 240), (20, 40, 150)), ((245, 245, 240), (170, 25, 30)),
    ((250, 240, 190), (25, 25, 30)), ((250, 240, 160), (30, 50, 170)),
    ((235, 225, 200), (110, 105, 100)), ((200, 225, 245), (20, 20, 60)),
    ((255, 220, 230), (20, 110, 40)), ((245, 245, 245), (200, 120, 20)),
]

CONDITIONS = {
    "clean_page": lambda d, r: encode(photograph(_page(d, r), r)),
    "light_gradient_noise4": lambda d, r: encode(photograph(
        _page(d, r, page=(600, 600), digit_px=200), r, paper=235, light=light_gradient(
            (600, 600), r), noise=4), "JPEG", quality=90),
    "vignetting": lambda d, r: encode(photograph(
        _page(d, r), r, light=vignetting((PAGE_PX, PAGE_PX), r), noise=2), "JPEG", quality=90),
    "shadow": lambda d, r: encode(photograph(
        _page(d, r), r, light=shadow((PAGE_PX, PAGE_PX), r), noise=2), "JPEG", quality=90),
    "noise8": lambda d, r: encode(photograph(_page(d, r), r, noise=8)),
    "noise16": lambda d, r: encode(photograph(_page(d, r), r, noise=16)),
    "blur3": lambda d, r: encode(photograph(_page(d, r), r, blur=3.0, noise=1)),
    "jpeg_q30": lambda d, r: encode(photograph(_page(d, r), r, noise=3), "JPEG", quality=30),
    "jpeg_q10": lambda d, r: encode(photograph(_page(d, r), r, noise=3), "JPEG", quality=10),
    "specks": lambda d, r: _specks(d, r),
    "paper_texture": lambda d, r: encode(photograph(
        _page(d, r), r, reflectance=texture((PAGE_PX, PAGE_PX), r), noise=3), "JPEG", quality=85),
    "ink_paper_colours": lambda d, r: encode(photograph(
        _page(d, r), r, **dict(zip(("paper", "pen"), INK_COLOURS[r.integers(len(INK_COLOURS))])),
        noise=3), "JPEG", quality=90),
    "low_contrast": lambda d, r: encode(photograph(_page(d, r), r, paper=200, pen=150, noise=2)),
    "thin_strokes": lambda d, r: encode(photograph(_page(d, r, pen=0.05), r, noise=2)),
    "thick_strokes": lambda d, r: encode(photograph(_page(d, r, stroke=0.03), r, noise=2)),
    "rotation_margins": lambda d, r: encode(photograph(place(
        digit_ink(d, digit_px=int(r.integers(60, 330))), (480, 400), r,
        angle=r.uniform(-12, 12)), r, noise=2), "JPEG", quality=90),
    "chalk_on_board": lambda d, r: encode(photograph(
        _page(d, r), r, paper=45, pen=215, light=vignetting((PAGE_PX, PAGE_PX), r, 0.7),
        noise=4), "JPEG", quality=90),
    "png16_full_range": lambda d, r: _deep(photograph(_page(d, r), r, noise=2), 16),
    "png16_12_bit": lambda d, r: _deep(photograph(_page(d, r), r, noise=2), 12),
    "palette_transparent": lambda d, r: _palette_transparent(_page(d, r), r),
    "la_transparent": lambda d, r: _la(_page(d, r), r),
    "cmyk_jpeg": lambda d, r: encode(photograph(
        _page(d, r), r, paper=(240, 240, 235), pen=(30, 30, 90), noise=2), "JPEG", "CMYK",
                                     quality=90),
    "bilevel_scan": lambda d, r: encode(photograph(_page(d, r), r, noise=20), "PNG", "1"),
}


def _specks(digit, rng) -> bytes:
  ink = _page(digit, rng)
  dots = specks(ink.shape, rng, ink > 0.05)
  return encode(photograph(np.maximum(ink, dots), rng, noise=2))


# --- Measuring ----------------------------------------------------------------------------------


def _png(digit: np.ndarray) -> bytes:
  return encode(digit.astype(np.float32)[..., np.newaxis])


def measure_strokes(num_digits: int, seed: int) -> None:
  """Prints percentiles of the stroke width prepare() finds in MNIST training digits."""
  train = _mnist("train")[0]
  sample = np.random.default_rng(seed).choice(len(train), num_digits, replace=False)
  widths = [preprocess.prepare(_png(train[i]))[1]["stroke_width"] for i in sample]
  print(f"MNIST training digits ({num_digits}): stroke width percentiles 5/50/95 = "
        + " / ".join(f"{np.percentile(widths, q):.2f}" for q in (5, 50, 95)))


def _mnist(split: str) -> tuple[np.ndarray, np.ndarray]:
  """(uint8 [N, 28, 28], int64 [N]) of the bundled MNIST `split` ("train" or "t10k")."""
  from mnist_tf2 import idx  # pylint: disable=g-import-not-at-top
  folder = os.path.join(REPO, "mnist_tf2", "data", "mnist")
  images = idx.read_idx(os.path.join(folder, f"{split}-images-idx3-ubyte.gz"))
  labels = idx.read_idx(os.path.join(folder, f"{split}-labels-idx1-ubyte.gz"))
  return images, labels.astype(np.int64)


def render_suite(condition: str, digits: np.ndarray, seed: int):
  """Yields each digit of `digits` rendered as a file under `condition` (seeded per digit)."""
  index = list(CONDITIONS).index(condition)
  for i, digit in enumerate(digits):
    yield CONDITIONS[condition](digit, np.random.default_rng([seed, index, i]))


def run_condition(condition, digits, classifier, seed, save_dir=""):
  """(predicted classes, -1 where prepare() refused; mean milliseconds per prepare())."""
  inputs, ok, seconds = [], [], 0.0
  for i, data in enumerate(render_suite(condition, digits, seed)):
    start = time.perf_counter()
    try:
      image, _ = preprocess.prepare(io.BytesIO(data))
      ok.append(True)
    except UserError:
      image = np.zeros((28, 28, 1), np.uint8)
      ok.append(False)
    seconds += time.perf_counter() - start
    inputs.append(image)
    if save_dir and i == 0:
      with open(os.path.join(save_dir, f"{condition}.file"), "wb") as f:
        f.write(data)
      Image.fromarray(image[..., 0]).save(os.path.join(save_dir, f"{condition}.28x28.png"))
  predicted = classifier.probabilities(np.stack(inputs)).argmax(-1)
  return np.where(ok, predicted, -1), 1000 * seconds / len(digits)


def time_large_jpeg(seed: int, repeats: int = 5) -> float:
  """Median seconds of prepare() on a 4000x3000 (12-megapixel) colour JPEG photo of a digit."""
  rng = np.random.default_rng(seed)
  ink = place(digit_ink(_mnist("t10k")[0][0], digit_px=1400), (3000, 4000), rng)
  page = photograph(ink, rng, paper=(235, 230, 220), pen=(30, 35, 60),
                    light=light_gradient((3000, 4000), rng), noise=3)
  data = encode(page, "JPEG", quality=90)
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    preprocess.prepare(io.BytesIO(data))
    times.append(time.perf_counter() - start)
  return float(np.median(times))


def evaluate(export_dir, num_digits, seed, conditions, save_dir="") -> None:
  cli.import_tensorflow()  # Without TensorFlow's start-up notices, as the commands.
  from mnist_tf2 import predict  # pylint: disable=g-import-not-at-top
  images, labels = _mnist("t10k")
  sample = np.sort(np.random.default_rng(seed).choice(len(images), num_digits, replace=False))
  digits, labels = images[sample], labels[sample]
  classifier = predict.Classifier(export_dir)
  clean = float(np.mean(classifier.probabilities(digits[..., np.newaxis]).argmax(-1) == labels))
  print(f"{datetime.date.today()}  model {export_dir}  {num_digits} test digits per condition, "
        f"seed {seed}, load {os.getloadavg()[0]:.1f}")
  print(f"clean 28x28 accuracy: {100 * clean:.2f}%\n")
  print("| condition | predict accuracy | vs clean | no digit found | ms per file |")
  print("|---|---|---|---|---|")
  for condition in conditions:
    predicted, ms = run_condition(condition, digits, classifier, seed, save_dir)
    accuracy = float(np.mean(predicted == labels))
    print(f"| {condition} | {100 * accuracy:.2f}% | {100 * (accuracy - clean):+.2f} | "
          f"{int(np.sum(predicted < 0))} | {ms:.0f} |", flush=True)


def main(argv):
  del argv
  options = flags.FLAGS
  if options.measure_strokes:
    measure_strokes(options.num_digits, options.seed)
    return
  unknown = sorted(set(options.conditions) - set(CONDITIONS))
  if unknown or not options.export_dir:
    sys.exit(f"error: unknown conditions {unknown}; known: {', '.join(CONDITIONS)}" if unknown
             else "error: --export_dir is empty; name the SavedModel from mnist_tf2.export")
  if options.save_examples:
    os.makedirs(options.save_examples, exist_ok=True)
  evaluate(options.export_dir, options.num_digits, options.seed,
           options.conditions or list(CONDITIONS), options.save_examples)
  if options.timing:
    print(f"\n12-megapixel JPEG: prepare() takes {time_large_jpeg(options.seed):.2f} s "
          "(median of 5)")


if __name__ == "__main__":
  define_flags()
  cli.run_script(main, __doc__)
