"""Random distortions of training images: shift, rotation, zoom and elastic.

Stateless: every global batch's distortions are keyed by (seed, its first
position in the training stream), and each image's by its row in that global
batch, so a resumed run draws exactly what an uninterrupted one would, with no
RNG state to checkpoint, and a global batch split over replicas or workers is
distorted exactly as on one device. `augment_batch` runs in the tf.data
pipeline; `affine_transforms` and `warp` split the affine part in two for the
XLA training loop (trainer.XlaTrainer), which draws outside XLA and warps inside.
"""

import math
from typing import NamedTuple

import tensorflow as tf

from mnist_tf2.constants import IMAGE_SHAPE

# Salt of the augmentation keys, so that they never coincide with the
# shuffle's [seed, epoch].
_AUGMENT_STREAM = 1


class Augmentation(NamedTuple):
  """Strengths of the random distortions of training images; 0 turns one off."""
  shift: float = 0.0  # Largest shift, pixels, each axis.
  rotation: float = 0.0  # Largest rotation, degrees.
  scale: float = 0.0  # Zoom drawn from [1 - scale, 1 + scale].
  elastic_alpha: float = 0.0  # Simard et al.'s alpha, pixels.
  elastic_sigma: float = 4.0  # Smoothing of the displacement field, pixels.

  @classmethod
  def from_config(cls, config) -> "Augmentation | None":
    """The config's `augment_*` strengths, or None if `augment` is off."""
    if not config.augment:
      return None
    return cls(shift=config.augment_shift, rotation=config.augment_rotation,
               scale=config.augment_scale, elastic_alpha=config.augment_elastic_alpha,
               elastic_sigma=config.augment_elastic_sigma)


def augment_batch(images, seed, augmentation: Augmentation, rows=None, global_batch_size=None):
  """Randomly shifts, rotates, zooms and elastically distorts each image.

  The affine part alone is one fused kernel (ImageProjectiveTransformV3).
  With elastic distortion the affine map and the displacement field are added
  into one sampling grid, so an image is still interpolated, and blurred, once.
  Outside the image reads as zero (background).

  Args:
    images: float32 [batch, height, width, channels].
    seed: int32/int64 [2], the stateless key; the same key gives the same
      distortions.
    augmentation: the strengths.
    rows: int [batch], each image's row in the global batch that `seed` keys
      (default: 0, 1, ...: `images` is the whole global batch). The draws are
      made for the whole global batch and each image takes its row's, so one
      replica's share of a global batch is distorted as on a single device.
    global_batch_size: the size of that global batch (with `rows`).

  Returns:
    The distorted images, same shape and dtype.
  """
  batch = tf.shape(images)[0] if rows is None else global_batch_size
  height, width = images.shape[1], images.shape[2]
  affine_seed, elastic_seed = tf.unstack(tf.random.split(seed, 2))
  transforms = _affine_transforms(batch, height, width, affine_seed, augmentation, rows)
  if not augmentation.elastic_alpha:
    return tf.raw_ops.ImageProjectiveTransformV3(
        images=images, transforms=transforms, output_shape=[height, width],
        fill_value=0.0, interpolation="BILINEAR", fill_mode="CONSTANT")
  displacement_y, displacement_x = _elastic_displacements(
      batch, height, width, augmentation.elastic_alpha, augmentation.elastic_sigma,
      elastic_seed, rows)
  source_y, source_x = _affine_sources(transforms, height, width)
  return _bilinear_sample(images, source_y + displacement_y, source_x + displacement_x)


def augment_key(seed: int, first_position):
  """The stateless key of a batch's distortions, from its first stream position.

  A pure function of (seed, position) like the example indices: a run resumed
  at a step draws exactly the distortions an uninterrupted one would, with no
  RNG state to save. Key a global batch by its first position, whatever the
  replicas it is split over (see `augment_batch(rows=...)`).
  """
  return tf.random.fold_in(tf.constant([seed, _AUGMENT_STREAM], tf.int64), first_position)


def affine_transforms(batch_size: int, key, augmentation: Augmentation):
  """The shift/rotation/zoom `augment_batch(images, key, ...)` applies to a batch.

  For the XLA training loop (trainer.py): the random draws are made here, by
  the same kernels as in tf.data, and `warp` applies them inside XLA, which has
  no ImageProjectiveTransformV3. Elastic distortion is not covered.

  Returns:
    float32 [batch_size, 8], one ImageProjectiveTransformV3 row per image.
  """
  affine_seed, _ = tf.unstack(tf.random.split(key, 2))
  height, width = IMAGE_SHAPE[0], IMAGE_SHAPE[1]
  return _affine_transforms(batch_size, height, width, affine_seed, augmentation)


def warp(images, transforms):
  """ImageProjectiveTransformV3 (bilinear, zero outside) by gathers, which XLA compiles.

  Equal to it to float rounding (tested).
  """
  source_y, source_x = _affine_sources(transforms, images.shape[1], images.shape[2])
  return _bilinear_sample(images, source_y, source_x)


def _affine_transforms(batch, height, width, seed, augmentation, rows=None):
  draws = tf.random.stateless_uniform([batch, 4], seed, -1.0, 1.0)
  if rows is not None:
    draws = tf.gather(draws, rows)
  angle = draws[:, 0] * (augmentation.rotation * math.pi / 180.0)
  zoom = 1.0 + draws[:, 1] * augmentation.scale
  shift_x = draws[:, 2] * augmentation.shift
  shift_y = draws[:, 3] * augmentation.shift

  # The inverse of "zoom and rotate about the centre, then shift": the input
  # position (x', y') = (a0 x + a1 y + a2, b0 x + b1 y + b2) each output pixel
  # (x, y) reads, in ImageProjectiveTransformV3's row layout.
  center_x, center_y = (width - 1) / 2.0, (height - 1) / 2.0
  cos, sin = tf.cos(angle) / zoom, tf.sin(angle) / zoom
  from_x, from_y = center_x + shift_x, center_y + shift_y
  a0, a1, b0, b1 = cos, sin, -sin, cos
  a2 = center_x - a0 * from_x - a1 * from_y
  b2 = center_y - b0 * from_x - b1 * from_y
  no_projection = tf.zeros_like(a0)
  return tf.stack([a0, a1, a2, b0, b1, b2, no_projection, no_projection], axis=1)


def _affine_sources(transforms, height, width):
  """The input positions (y', x') [batch, height, width] each output pixel reads."""
  grid_y, grid_x = tf.meshgrid(tf.range(height, dtype=tf.float32),
                               tf.range(width, dtype=tf.float32), indexing="ij")
  a0, a1, a2, b0, b1, b2 = tf.unstack(transforms[:, :6, tf.newaxis, tf.newaxis], axis=1)
  return b0 * grid_x + b1 * grid_y + b2, a0 * grid_x + a1 * grid_y + a2


def _elastic_displacements(batch, height, width, alpha, sigma, seed, rows=None):
  """Simard et al. (2003): uniform(-1, 1) noise, Gaussian-smoothed, times alpha.

  The smoothed field holds nothing finer than about sigma pixels, so the noise
  is drawn and smoothed on a grid `step = floor(sigma)` pixels apart and then
  resized: about step^2 times less work. Smoothing white noise on a grid `step`
  times coarser leaves `step` times the standard deviation, hence the
  `1 / step`, which keeps alpha's meaning (in pixels) as in the paper.

  Returns:
    (dy, dx), each float32 [batch, height, width], in pixels.
  """
  step = max(1, int(sigma))
  coarse_sigma = sigma / step
  coarse_height, coarse_width = -(-height // step) + 1, -(-width // step) + 1
  radius = int(math.ceil(3 * coarse_sigma))
  # Noise on a margin of `radius` around the grid, so the VALID convolution
  # smooths every point with the full kernel (no weaker field at the borders).
  noise = tf.random.stateless_uniform(
      [batch, coarse_height + 2 * radius, coarse_width + 2 * radius, 2], seed, -1.0, 1.0)
  if rows is not None:  # Only the rows of this replica's images are smoothed.
    noise = tf.gather(noise, rows)
  taps = tf.range(-radius, radius + 1, dtype=tf.float32)
  kernel = tf.exp(-0.5 * tf.square(taps / coarse_sigma))
  kernel /= tf.reduce_sum(kernel)
  # The 2-D Gaussian is separable: one pass down the columns, one along the
  # rows, each displacement channel on its own.
  down = tf.tile(tf.reshape(kernel, [-1, 1, 1, 1]), [1, 1, 2, 1])
  along = tf.tile(tf.reshape(kernel, [1, -1, 1, 1]), [1, 1, 2, 1])
  field = tf.nn.depthwise_conv2d(noise, down, [1, 1, 1, 1], "VALID")
  field = tf.nn.depthwise_conv2d(field, along, [1, 1, 1, 1], "VALID")
  field = tf.image.resize(field, [height, width], method="bilinear") * (alpha / step)
  return field[..., 0], field[..., 1]


def _bilinear_sample(images, source_y, source_x):
  """Reads `images` [b, h, w, c] at float positions [b, h, w]; zero outside."""
  height, width, channels = images.shape[1], images.shape[2], images.shape[3]
  # A one-pixel zero border: a position outside the image is clamped onto it
  # and so reads zero, and one near the edge fades out as in the original.
  padded = tf.pad(images, [[0, 0], [1, 1], [1, 1], [0, 0]])
  padded_height, padded_width = height + 2, width + 2
  source_y = tf.clip_by_value(source_y + 1.0, 0.0, padded_height - 1.0)
  source_x = tf.clip_by_value(source_x + 1.0, 0.0, padded_width - 1.0)
  y0, x0 = tf.floor(source_y), tf.floor(source_x)
  weight_y = (source_y - y0)[..., tf.newaxis]
  weight_x = (source_x - x0)[..., tf.newaxis]
  y0, x0 = tf.cast(y0, tf.int32), tf.cast(x0, tf.int32)
  y1 = tf.minimum(y0 + 1, padded_height - 1)
  x1 = tf.minimum(x0 + 1, padded_width - 1)
  # One flat gather over all images is several times faster than gather_nd
  # with batch_dims.
  pixels = tf.reshape(padded, [-1, channels])
  first = tf.range(tf.shape(images)[0])[:, tf.newaxis, tf.newaxis] * (
      padded_height * padded_width)

  def at(y, x):
    return tf.gather(pixels, first + y * padded_width + x)

  top = at(y0, x0) * (1.0 - weight_x) + at(y0, x1) * weight_x
  bottom = at(y1, x0) * (1.0 - weight_x) + at(y1, x1) * weight_x
  return top * (1.0 - weight_y) + bottom * weight_y
