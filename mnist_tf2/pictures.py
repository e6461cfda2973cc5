"""Pictures for the TensorBoard images dashboard, drawn with numpy and Pillow.

Every function returns one uint8 RGB image `[1, height, width, 3]`, ready for
`tf.summary.image`. Images come in as MNIST does: `[n, 28, 28, 1]`, either
uint8 pixels or floats in [0, 1].
"""

import numpy as np
from PIL import Image
from PIL import ImageDraw
from PIL import ImageFont

BACKGROUND = 255  # White between tiles, so the black MNIST backgrounds stand apart.
CAPTION_HEIGHT = 12


def _to_uint8_rgb(images) -> np.ndarray:
  images = np.asarray(images)
  if images.dtype != np.uint8:
    images = (np.clip(images, 0.0, 1.0) * 255.0).round().astype(np.uint8)
  if images.shape[-1] == 1:
    images = np.repeat(images, 3, axis=-1)
  return images


def _upscale(images: np.ndarray, factor: int) -> np.ndarray:
  return images.repeat(factor, axis=1).repeat(factor, axis=2)


def _tile(tiles: np.ndarray, columns: int, border: int = 2) -> np.ndarray:
  """Lays `[n, h, w, 3]` tiles out in rows of `columns`, with white borders."""
  n, height, width, _ = tiles.shape
  rows = -(-n // columns)
  grid = np.full((rows * (height + border) + border, columns * (width + border) + border, 3),
                 BACKGROUND, np.uint8)
  for i, tile in enumerate(tiles):
    top = border + (i // columns) * (height + border)
    left = border + (i % columns) * (width + border)
    grid[top:top + height, left:left + width] = tile
  return grid


def _captioned(tiles: np.ndarray, captions) -> np.ndarray:
  """Adds a white strip with a line of text under every tile."""
  n, height, width, _ = tiles.shape
  out = np.full((n, height + CAPTION_HEIGHT, width, 3), BACKGROUND, np.uint8)
  out[:, :height] = tiles
  font = ImageFont.load_default()
  for tile, caption in zip(out, captions):
    strip = Image.fromarray(tile[height:])
    ImageDraw.Draw(strip).text((2, 0), caption, fill=(0, 0, 0), font=font)
    tile[height:] = np.asarray(strip)
  return out


def image_grid(images, columns: int = 8) -> np.ndarray:
  """A grid of images, e.g. a batch of training inputs."""
  return _tile(_to_uint8_rgb(images), columns)[np.newaxis]


def misclassified_grid(images, predicted, labels, columns: int = 8,
                       scale: int = 3) -> np.ndarray:
  """Images enlarged `scale` times, each captioned "<predicted> (true <label>)"."""
  tiles = _upscale(_to_uint8_rgb(images), scale)
  captions = [f"{p} (true {t})" for p, t in zip(predicted, labels)]
  return _tile(_captioned(tiles, captions), columns)[np.newaxis]


def confusion_matrix_image(matrix, cell: int = 30) -> np.ndarray:
  """The confusion matrix with counts: rows are true classes, columns predictions.

  Cells are shaded by their share of the row (the true class): the diagonal in
  blue, mistakes in red; the square root of the share makes rare mistakes
  visible next to the diagonal's thousands.
  """
  matrix = np.asarray(matrix, np.int64)
  classes = len(matrix)
  share = np.sqrt(matrix / np.maximum(matrix.sum(axis=1, keepdims=True), 1))
  margin = 40  # Room for the class numbers and the "pred"/"true" axis names.
  size = margin + classes * cell
  picture = Image.new("RGB", (size, size), (255, 255, 255))
  draw = ImageDraw.Draw(picture)
  font = ImageFont.load_default()
  draw.text((2, 8), "pred", fill=(0, 0, 0), font=font)  # On the row of column numbers.
  draw.text((2, 24), "true", fill=(0, 0, 0), font=font)  # Above the row numbers.
  for i in range(classes):
    draw.text((margin + i * cell + cell // 3, 8), str(i), fill=(0, 0, 0), font=font)
    draw.text((margin - 14, margin + i * cell + cell // 3), str(i), fill=(0, 0, 0), font=font)
    for j in range(classes):
      fade = int(255 * (1.0 - share[i, j]))
      colour = (fade, fade, 255) if i == j else (255, fade, fade)
      box = (margin + j * cell, margin + i * cell, margin + (j + 1) * cell - 1,
             margin + (i + 1) * cell - 1)
      draw.rectangle(box, fill=colour, outline=(220, 220, 220))
      if matrix[i, j]:
        ink = (255, 255, 255) if share[i, j] > 0.6 else (0, 0, 0)
        draw.text((box[0] + 2, box[1] + cell // 3), str(matrix[i, j]), fill=ink, font=font)
  return np.asarray(picture)[np.newaxis]


def class_weights_image(kernel, scale: int = 3) -> np.ndarray:
  """The tutorial's picture of softmax regression: one 28x28 map per class.

  `kernel` is the `[784, classes]` weight matrix; blue marks positive weights
  (evidence for the class), red negative ones, on one scale for all classes.
  """
  kernel = np.asarray(kernel, np.float32)
  maps = kernel.T.reshape(-1, 28, 28) / max(float(np.abs(kernel).max()), 1e-12)
  positive, negative = np.clip(maps, 0, 1), np.clip(-maps, 0, 1)
  rgb = np.stack([1.0 - positive, 1.0 - positive - negative, 1.0 - negative], axis=-1)
  tiles = _upscale(_to_uint8_rgb(rgb), scale)
  captions = [str(digit) for digit in range(len(tiles))]
  return _tile(_captioned(tiles, captions), columns=5)[np.newaxis]
