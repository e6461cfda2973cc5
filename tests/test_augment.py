"""Data augmentation: stateless, resume-exact, training only, and it looks right."""

import re

import numpy as np
import pytest
import tensorflow as tf

from mnist_tf2 import augment
from mnist_tf2 import config as config_lib
from mnist_tf2 import datasets
from mnist_tf2 import loop
from mnist_tf2.errors import UserError

AFFINE = augment.Augmentation(shift=2.0, rotation=10.0, scale=0.1)
FULL = augment.Augmentation(shift=2.0, rotation=10.0, scale=0.1, elastic_alpha=34.0,
                             elastic_sigma=4.0)


@pytest.fixture(scope="module")
def digits():
  """The first 200 real training digits (validation excluded)."""
  splits = datasets.load_splits(config_lib.resolve("cnn", "default"))
  return datasets.Split(splits.train.images[:200], splits.train.labels[:200])


def batches(split, augmentation, seed=0, count=3, batch_size=50):
  data = datasets.train_dataset(split, batch_size=batch_size, seed=seed,
                                augmentation=augmentation)
  return [(images.numpy(), labels.numpy()) for images, labels in data.take(count)]


def correlation(a, b):
  return np.corrcoef(a.reshape(len(a), -1), b.reshape(len(b), -1))[:len(a), len(a):].diagonal()


@pytest.mark.parametrize("augmentation", [AFFINE, FULL], ids=["affine", "elastic"])
def test_same_shapes_dtypes_range_and_labels(digits, augmentation):
  plain = batches(digits, None)
  distorted = batches(digits, augmentation)
  for (images, labels), (augmented, augmented_labels) in zip(plain, distorted):
    assert augmented.shape == images.shape == (50, 28, 28, 1)
    assert augmented.dtype == images.dtype == np.float32
    assert augmented.min() >= 0.0 and augmented.max() <= 1.0 + 1e-6
    np.testing.assert_array_equal(augmented_labels, labels)
    assert not np.allclose(augmented, images, atol=0.05)


@pytest.mark.parametrize("augmentation", [AFFINE, FULL], ids=["affine", "elastic"])
def test_changed_but_still_resembles_the_digit(digits, augmentation):
  (images, _), = batches(digits, None, count=1, batch_size=200)
  (augmented, _), = batches(digits, augmentation, count=1, batch_size=200)
  same_digit = correlation(augmented, images)
  other_digit = correlation(augmented, np.roll(images, 1, axis=0))
  assert np.all(same_digit < 0.999)  # Every image is distorted ...
  # ... but still looks like itself, clearly more than like another digit. (A
  # two-pixel shift of thin strokes alone takes pixel correlation to ~0.6.)
  assert np.median(same_digit) > 0.4
  assert np.median(same_digit) > np.median(other_digit) + 0.2


@pytest.mark.parametrize("augmentation", [AFFINE, FULL], ids=["affine", "elastic"])
def test_deterministic_under_a_seed_and_seeds_differ(digits, augmentation):
  first, again = batches(digits, augmentation), batches(digits, augmentation)
  for (a, _), (b, _) in zip(first, again):
    np.testing.assert_array_equal(a, b)
  images = datasets.normalize(digits.images[:50])
  one = augment.augment_batch(images, tf.constant([1, 0], tf.int64), augmentation)
  two = augment.augment_batch(images, tf.constant([2, 0], tf.int64), augmentation)
  assert np.all(correlation(one.numpy(), two.numpy()) < 0.999)


def test_every_batch_draws_afresh(digits):
  # One digit 40 times: all batches hold the same images, so only fresh
  # distortions can tell them apart.
  same = datasets.Split(np.repeat(digits.images[:1], 40, axis=0), np.zeros(40, np.int32))
  (first, _), (second, _) = batches(same, FULL, count=2, batch_size=40)
  assert np.all(correlation(first, second) < 0.999)
  # Nor do two input pipelines' shares of one step distort alike.
  shares = [next(iter(datasets.train_dataset(
      same, batch_size=20, seed=0, augmentation=FULL,
      input_context=tf.distribute.InputContext(2, pipeline, 2))))[0].numpy()
            for pipeline in (0, 1)]
  assert np.all(correlation(*shares) < 0.999)


def test_ignores_global_and_stateful_rng(digits):
  tf.random.set_seed(1)
  first = batches(digits, FULL)
  tf.random.set_seed(2)
  tf.random.uniform([7])
  for (a, _), (b, _) in zip(first, batches(digits, FULL)):
    np.testing.assert_array_equal(a, b)


def test_resumed_stream_draws_the_same_distortions(digits):
  # A run resumed at step 7 restarts the pipeline at position 7 * batch_size.
  whole = batches(digits, FULL, seed=3, count=11, batch_size=40)
  resumed = datasets.train_dataset(digits, batch_size=40, seed=3, start=7 * 40,
                                   augmentation=FULL)
  for (expected, _), (images, _) in zip(whole[7:], resumed.take(4)):  # Past an epoch end.
    np.testing.assert_array_equal(images.numpy(), expected)


def test_zero_strengths_are_the_identity(digits):
  images = datasets.normalize(digits.images[:20])
  seed = tf.constant([0, 0], tf.int64)
  identity = augment.augment_batch(images, seed, augment.Augmentation())
  np.testing.assert_allclose(identity.numpy(), images.numpy(), atol=1e-6)


def test_fused_affine_and_sampling_grid_agree(digits):
  # With a negligible elastic field the general path (own sampling grid) must
  # reproduce the fused ImageProjectiveTransformV3 path: same geometry.
  images = datasets.normalize(digits.images[:50])
  seed = tf.constant([5, 6], tf.int64)
  fused = augment.augment_batch(images, seed, AFFINE)
  grid = augment.augment_batch(images, seed, AFFINE._replace(elastic_alpha=1e-6))
  np.testing.assert_allclose(grid.numpy(), fused.numpy(), atol=1e-4)


def test_evaluation_is_never_distorted(digits, tmp_path, monkeypatch):
  evaluated = np.concatenate([images.numpy() for images, _ in
                              datasets.eval_dataset(digits, batch_size=64)])
  np.testing.assert_array_equal(evaluated, datasets.normalize(digits.images).numpy())
  # The loop hands the config's augmentation to the training pipeline only.
  passed = []
  train_dataset = datasets.train_dataset
  monkeypatch.setattr(datasets, "train_dataset", lambda *args, **kwargs: (
      passed.append(kwargs["augmentation"]), train_dataset(*args, **kwargs))[1])
  config = config_lib.resolve("softmax", "smoke", {
      "workdir": str(tmp_path), "augment": True, "augment_elastic_alpha": 8.0})
  results = loop.train_and_evaluate(config)
  # The training stream and the TensorBoard input grid both show distorted images.
  assert passed and all(augmentation == augment.Augmentation(2.0, 10.0, 0.1, 8.0, 4.0)
                        for augmentation in passed)
  assert results["steps"] == config.max_steps


def test_off_unless_asked():
  assert augment.Augmentation.from_config(config_lib.resolve("cnn", "smoke")) is None


@pytest.mark.parametrize("overrides, message", [
    ({"augment_shift": -1.0}, "--augment_shift must be >= 0"),
    ({"augment_rotation": 200.0}, "--augment_rotation must be in [0, 180]"),
    ({"augment_scale": 1.0}, "--augment_scale must be in [0, 1)"),
    ({"augment_elastic_alpha": -2.0}, "--augment_elastic_alpha must be >= 0"),
    ({"augment_elastic_sigma": 0.0}, "--augment_elastic_sigma must be in (0, 14]"),
    ({"augment_elastic_sigma": 30.0}, "--augment_elastic_sigma must be in (0, 14]"),
])
def test_bad_strengths_are_refused(overrides, message):
  with pytest.raises(UserError, match=re.escape(message)):
    config_lib.resolve("cnn", "default", overrides)


def test_strength_without_augment_is_refused():
  with pytest.raises(UserError, match="--augment_rotation has no effect without --augment"):
    config_lib.resolve("cnn", "seed", {"augment_rotation": 5.0})
  assert config_lib.resolve("cnn", "seed", {"augment": True, "augment_rotation": 5.0}).augment
