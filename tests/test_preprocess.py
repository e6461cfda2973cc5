"""mnist_tf2.preprocess: finding a digit in a drawing, photo or scan and making MNIST's input of it.

Model-free: the inputs it makes are compared with MNIST's conventions and with
what the clean drawing of the same digit gives. Reading them with a trained
model is in test_serving.py (test_photo_conditions_are_read_as_the_clean_digit).
"""

import functools
import importlib.util
import io
import os

import cv2
import numpy as np
import pytest
from PIL import Image

from conftest import REPO
from mnist_tf2 import idx
from mnist_tf2 import preprocess
from mnist_tf2.errors import UserError


@functools.cache
def load_predict_eval():
  """scripts/predict_eval.py as a module: its renderers make the photo-like files."""
  spec = importlib.util.spec_from_file_location(
      "predict_eval", os.path.join(REPO, "scripts", "predict_eval.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


@pytest.fixture(scope="module")
def test_digits():
  folder = os.path.join(REPO, "mnist_tf2", "data", "mnist")
  return (idx.read_idx(os.path.join(folder, "t10k-images-idx3-ubyte.gz")),
          idx.read_idx(os.path.join(folder, "t10k-labels-idx1-ubyte.gz")))


def _file(array: np.ndarray, fmt: str = "PNG", mode: str | None = None, **options) -> io.BytesIO:
  image = Image.fromarray(array)
  if mode:
    image = image.convert(mode)
  buffer = io.BytesIO()
  image.save(buffer, fmt, **options)
  buffer.seek(0)
  return buffer


def _stroke_image(size, background, ink, box):
  """A thick 'L'-shaped stroke inside `box` (top, left, bottom, right) of an image."""
  image = np.full(size, background, np.uint8)
  top, left, bottom, right = box
  image[top:bottom, left:left + (right - left) // 4] = ink
  image[bottom - (bottom - top) // 5:bottom, left:right] = ink
  return image


def _check_mnist_like(image):
  """Bounding box longer side ~20, centre of mass at (14, 14), ink light on 0."""
  assert image.shape == (28, 28) and image.dtype == np.uint8
  assert image.max() == 255 and image[0].max() == 0 and image[:, 0].max() == 0
  rows = np.flatnonzero((image > 25).any(1))
  cols = np.flatnonzero((image > 25).any(0))
  assert max(rows[-1] - rows[0], cols[-1] - cols[0]) + 1 in (20, 21)
  ys, xs = np.indices(image.shape)
  total = image.sum()
  assert abs((image * ys).sum() / total - 14) <= 0.5
  assert abs((image * xs).sum() / total - 14) <= 0.5


def _overlap(a: np.ndarray, b: np.ndarray) -> float:
  """Intersection over union of two 28x28 inputs' strokes."""
  a, b = a[..., 0] > 64, b[..., 0] > 64
  return float((a & b).sum() / (a | b).sum())


# --- Clean drawings ---------------------------------------------------------------------------


@pytest.mark.parametrize("background, ink", [(0, 255), (255, 0), (230, 40), (20, 200)])
def test_off_centre_digit_in_a_large_image(background, ink):
  image, info = preprocess.prepare(_file(_stroke_image((300, 500), background, ink,
                                                       (20, 380, 220, 480))))
  _check_mnist_like(image[..., 0])
  assert info["box"] == [380, 20, 480, 220] and info["image_size"] == [500, 300]
  assert info["inverted"] == (ink > background)


def test_alpha_is_the_ink_when_drawn_on_a_transparent_background():
  for colour in (0, 255):  # black or white ink on transparent black pixels, as canvases export
    alpha = _stroke_image((120, 90), 0, 255, (10, 10, 100, 70))
    rgba = np.zeros((120, 90, 4), np.uint8)
    rgba[..., :3] = colour
    rgba[..., 3] = alpha
    _check_mnist_like(preprocess.prepare(_file(rgba))[0][..., 0])


def test_source_may_be_a_path_a_file_object_or_bytes(tmp_path):
  path = tmp_path / "digit.png"
  Image.fromarray(_stroke_image((64, 64), 255, 0, (5, 5, 60, 40))).save(path)
  results = [preprocess.prepare(s)[0] for s in (str(path), path, open(path, "rb"),
                                                path.read_bytes())]
  for result in results[1:]:
    np.testing.assert_array_equal(result, results[0])


def test_mnist_digits_are_left_nearly_as_they_are(test_digits):
  # MNIST digits already are normalised: preparing them again moves few pixels.
  images = test_digits[0][:100]
  prepared = np.stack([preprocess.prepare(_file(im))[0][..., 0] for im in images])
  moved = np.abs(prepared.astype(int) - images).mean()
  assert moved < 10, moved


# --- Thin and thick pens ------------------------------------------------------------------------


def _parts(mask: np.ndarray) -> int:
  """How many 8-connected pieces a bool shape has."""
  return cv2.connectedComponents(mask.astype(np.uint8), connectivity=8)[0] - 1


def test_the_thin_pen_of_predict_eval_draws_connected_strokes(test_digits):
  # A thin pen draws the digit's strokes narrower, never in pieces (eroding the
  # digit, as predict_eval once did, broke more than half of them apart).
  predict_eval = load_predict_eval()
  for digit in test_digits[0][:30]:
    clean = predict_eval.digit_ink(digit) > 0.5
    thin = predict_eval.digit_ink(digit, pen=0.05) > 0.5
    assert _parts(thin) <= _parts(clean)
    width = 2 * thin.sum() / sum(cv2.arcLength(c, True) for c in cv2.findContours(
        thin.astype(np.uint8), cv2.RETR_LIST, cv2.CHAIN_APPROX_NONE)[0])
    assert 0.7 * 8 < width < 1.3 * 8, width  # 0.05 of the 160-pixel box


def test_skeleton_keeps_a_ring_closed_and_a_bar_whole():
  predict_eval = load_predict_eval()
  ring = np.zeros((60, 60), np.uint8)
  cv2.circle(ring, (30, 30), 20, 1, 7)
  line = predict_eval.skeleton(ring.astype(bool))
  assert _parts(line) == 1 and line.sum() < 0.3 * ring.sum()
  contours, hierarchy = cv2.findContours(line.astype(np.uint8), cv2.RETR_CCOMP,
                                           cv2.CHAIN_APPROX_NONE)
  assert sum(h[3] >= 0 for h in hierarchy[0]) == 1  # still one hole
  bar = np.zeros((40, 80), bool)
  bar[15:25, 10:70] = True
  line = predict_eval.skeleton(bar)
  assert _parts(line) == 1 and line.any(0).sum() >= 45 and line.any(1).sum() <= 2


def test_a_thin_pen_digit_gets_the_ink_of_the_same_digit_drawn_clean(test_digits):
  # A fine pen's strokes are widened to MNIST's median width: the input holds
  # about as much ink as the clean drawing's (widened only to MNIST's thinnest,
  # it held ~0.7 of it and the model misread 2.5 points more of them).
  predict_eval = load_predict_eval()
  ratios = []
  for i, digit in enumerate(test_digits[0][:8]):
    pages = [predict_eval.photograph(predict_eval._page(digit, np.random.default_rng(i), **pen),
                                     np.random.default_rng(i), noise=2)
             for pen in ({"pen": 0.05}, {})]
    (thin, info), (clean, _) = [preprocess.prepare(predict_eval.encode(p)) for p in pages]
    _check_mnist_like(thin[..., 0])
    assert info["stroke_width"] < preprocess.MNIST_STROKE[0]
    ratios.append(thin.astype(float).sum() / clean.astype(float).sum())
  assert 0.85 < np.mean(ratios) < 1.2, ratios


# --- Bit depths and colour modes ----------------------------------------------------------------


def _modes(digit: np.ndarray) -> dict:
  """The same dark-on-light digit page in every mode Pillow reads (as file objects)."""
  page = np.full((140, 140), 240, np.uint8)
  page[20:132, 14:126] = 240 - (np.asarray(Image.fromarray(digit).resize(
      (112, 112), Image.Resampling.BICUBIC)).astype(np.int32) * 215 // 255)
  deep = page.astype(np.uint16)
  rgba = np.zeros((140, 140, 4), np.uint8)
  rgba[..., 2] = 160
  rgba[..., 3] = 255 - page
  palette = Image.fromarray(np.stack([page, page, np.full_like(page, 200)], -1)).quantize(16)
  white = int(np.argmax(np.asarray(palette.getpalette()[:48]).reshape(16, 3).sum(1)))
  return {
      "L": _file(page), "1": _file(page, mode="1"), "RGB_jpeg": _file(page, "JPEG", "RGB"),
      "CMYK_jpeg": _file(page, "JPEG", "CMYK"), "CMYK_tiff": _file(page, "TIFF", "CMYK"),
      "I;16_full_range": _file(deep * 257), "I;16_12_bit": _file(deep * 16 + 7),
      "I;16_8_bit": _file(deep), "I_tiff": _file(page.astype(np.int32) * 1000, "TIFF"),
      "F_tiff": _file(page.astype(np.float32) / 255, "TIFF"),
      "LA_transparent": _file(np.stack([np.zeros_like(page), 255 - page], -1), mode="LA"),
      "LA_opaque": _file(np.stack([page, np.full_like(page, 255)], -1), mode="LA"),
      "RGBA_transparent": _file(rgba), "P": _file(np.asarray(palette.convert("RGB"))),
      "P_transparent": _p_transparent(palette, white), "GIF": _file(page, "GIF"),
      "BMP": _file(page, "BMP"), "WEBP": _file(page, "WEBP", "RGB", quality=90),
  }


def _p_transparent(palette: Image.Image, index: int) -> io.BytesIO:
  buffer = io.BytesIO()
  palette.save(buffer, "PNG", transparency=index)
  buffer.seek(0)
  return buffer


def test_every_bit_depth_and_colour_mode_gives_the_same_input(test_digits):
  digit = test_digits[0][0]
  files = _modes(digit)
  reference, _ = preprocess.prepare(files.pop("L"))
  _check_mnist_like(reference[..., 0])
  for name, file in files.items():
    image, info = preprocess.prepare(file)
    assert _overlap(image, reference) > 0.8, name
    assert not info["inverted"], name
    assert info["box"][0] in range(14, 40) and info["box"][2] in range(100, 127), (name, info)


def test_a_blank_16_bit_page_has_no_digit():
  with pytest.raises(UserError, match="^no digit found"):
    preprocess.prepare(_file(np.full((50, 50), 40000, np.uint16)))
  noisy = np.random.default_rng(0).normal(40000, 30, (200, 200)).astype(np.uint16)
  with pytest.raises(UserError, match="^no digit found"):
    preprocess.prepare(_file(noisy))


# --- Photos without a digit, and bad input ------------------------------------------------------


@pytest.mark.parametrize("page", ["shadow", "vignetting", "light_gradient", "texture", "noise",
                                  "specks"])
def test_a_photo_of_paper_without_a_digit_says_so(page):
  predict_eval = load_predict_eval()
  size = (360, 360)
  for seed in range(4):
    rng = np.random.default_rng(seed)
    blank = np.zeros(size, np.float32)
    options = {
        "shadow": lambda: {"light": predict_eval.shadow(size, rng), "noise": 2},
        "vignetting": lambda: {"light": predict_eval.vignetting(size, rng), "noise": 2},
        "light_gradient": lambda: {"light": predict_eval.light_gradient(size, rng), "noise": 4},
        "texture": lambda: {"reflectance": predict_eval.texture(size, rng), "noise": 3},
        "noise": lambda: {"noise": 16},
        "specks": lambda: {"noise": 2},
    }[page]()
    if page == "specks":
      blank = predict_eval.specks(size, rng, np.zeros(size, bool))
    data = predict_eval.encode(predict_eval.photograph(blank, rng, **options), "JPEG", quality=90)
    with pytest.raises(UserError, match="^no digit found: "):
      preprocess.prepare(data)


@pytest.mark.parametrize("source, message", [
    (io.StringIO("text"), "expected the file's bytes, got str (open it in binary mode)"),
    (io.BytesIO(b""), "the file is empty"),
    (_file(np.arange(4096, dtype=np.uint8).reshape(64, 64)).getvalue()[:80],
     "cannot decode the image: "),
    (b"%PDF-1.4 not an image", "not a PNG, JPEG, BMP, GIF, TIFF or WEBP image"),
], ids=["text_mode", "empty", "truncated_png", "pdf"])
def test_bad_file_objects_are_one_line_errors(source, message):
  with pytest.raises(UserError) as error:
    preprocess.prepare(source)
  assert str(error.value).startswith(message) and "\n" not in str(error.value)
