"""Tests for mnist_tf2.idx and mnist_tf2.datasets."""

import gzip
import os
from pathlib import Path
import shutil
import socket
import struct
import time
import types

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from mnist_tf2 import augment
from mnist_tf2 import datasets
from mnist_tf2 import idx
from mnist_tf2.errors import DataError

# From the data README.
TRAIN_COUNTS = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
TEST_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
FIRST_TRAIN_LABELS = [5, 0, 4, 1, 9, 2, 1, 3, 1, 4]


@pytest.fixture(autouse=True)
def cache_home(tmp_path, monkeypatch):
  """Keeps verification stamps out of the real ~/.cache."""
  monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
  return tmp_path / "cache"


def make_config(**overrides):
  defaults = dict(data_source="bundled", data_dir=None, dataset="mnist",
                  tfds_data_dir=None, validation_size=5000, fake_examples=40,
                  seed=0)
  return types.SimpleNamespace(**{**defaults, **overrides})


def idx_bytes(array: np.ndarray) -> bytes:
  magic = {3: idx.IMAGES_MAGIC, 1: idx.LABELS_MAGIC}[array.ndim]
  header = struct.pack(f">{1 + array.ndim}I", magic, *array.shape)
  return header + array.astype(np.uint8).tobytes()


def write_idx_dir(directory: Path, *, dotted=False, gz=True, num_train=20,
                  num_test=8, size=28, sums=False) -> dict[str, np.ndarray]:
  """Writes four small IDX files; image i is filled with the value i."""
  directory.mkdir(parents=True, exist_ok=True)
  arrays = {
      datasets.TRAIN_IMAGES: np.broadcast_to(
          np.arange(num_train, dtype=np.uint8)[:, None, None],
          (num_train, size, size)),
      datasets.TRAIN_LABELS: np.arange(num_train) % 10,
      datasets.TEST_IMAGES: np.full((num_test, size, size), 200, np.uint8),
      datasets.TEST_LABELS: np.arange(num_test) % 10,
  }
  lines = []
  for name, array in arrays.items():
    content = idx_bytes(array)
    lines.append(f"{idx.content_sha256(content)}  {name}\n")
    filename = name.replace("-idx", ".idx") if dotted else name
    if gz:
      filename, content = filename + ".gz", gzip.compress(content)
    (directory / filename).write_bytes(content)
  if sums:
    (directory / "SHA256SUMS").write_text("".join(lines))
  return arrays


def closed_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


# --- Bundled data ------------------------------------------------------------


@pytest.fixture(scope="module")
def bundled(tmp_path_factory):
  with pytest.MonkeyPatch.context() as mp:
    mp.setenv("XDG_CACHE_HOME", str(tmp_path_factory.mktemp("cache")))
    return datasets.load_splits(make_config())


def test_bundled_split_sizes_and_types(bundled):
  for split, n in zip(bundled, [55_000, 5_000, 10_000]):
    assert split.images.shape == (n, 28, 28, 1)
    assert split.images.dtype == np.uint8
    assert split.labels.shape == (n,)
    assert split.labels.dtype == np.int32


def test_bundled_label_counts(bundled):
  train_and_validation = np.concatenate(
      [bundled.validation.labels, bundled.train.labels])
  np.testing.assert_array_equal(np.bincount(train_and_validation), TRAIN_COUNTS)
  np.testing.assert_array_equal(np.bincount(bundled.test.labels), TEST_COUNTS)


def test_validation_is_first_of_official_train(bundled):
  np.testing.assert_array_equal(bundled.validation.labels[:10],
                                FIRST_TRAIN_LABELS)
  official = idx.read_idx(datasets.BUNDLED_DIR / "train-labels-idx1-ubyte.gz")
  np.testing.assert_array_equal(official[:5000], bundled.validation.labels)
  np.testing.assert_array_equal(official[5000:], bundled.train.labels)


def test_bundled_files_match_sha256sums():
  sums = idx.read_sha256sums(datasets.BUNDLED_DIR / "SHA256SUMS")
  assert len(sums) == 4
  for name, expected in sums.items():
    content = idx.read_content(datasets.BUNDLED_DIR / (name + ".gz"))
    assert idx.content_sha256(content) == expected


# --- Checksums and the verification cache ------------------------------------


@pytest.mark.parametrize("source", ["bundled", "idx"])
def test_checksum_mismatch_is_refused(source, tmp_path, monkeypatch):
  data_dir = tmp_path / "mnist"
  shutil.copytree(datasets.BUNDLED_DIR, data_dir)
  target = data_dir / "t10k-labels-idx1-ubyte.gz"
  content = bytearray(gzip.decompress(target.read_bytes()))
  # Still a valid label: only the checksum can tell.
  content[8] = (content[8] + 1) % 10
  target.write_bytes(gzip.compress(bytes(content)))
  monkeypatch.setattr(datasets, "BUNDLED_DIR", data_dir)

  with pytest.raises(DataError) as e:
    datasets.load_splits(
        make_config(data_source=source, data_dir=str(data_dir)))
  message = str(e.value)
  assert "t10k-labels-idx1-ubyte.gz" in message
  assert idx.content_sha256(bytes(content)) in message
  assert idx.read_sha256sums(data_dir / "SHA256SUMS")[
      "t10k-labels-idx1-ubyte"] in message
  assert "\n" not in message


def test_verification_is_cached(tmp_path, monkeypatch, cache_home):
  data_dir = tmp_path / "mnist"
  write_idx_dir(data_dir, sums=True)
  calls = []
  real_sha256 = idx.content_sha256
  monkeypatch.setattr(idx, "content_sha256",
                      lambda content: calls.append(1) or real_sha256(content))
  config = make_config(data_source="idx", data_dir=str(data_dir),
                       validation_size=5)

  datasets.load_splits(config)
  assert len(calls) == 4
  assert (cache_home / "mnist_tf2" / "verified.json").is_file()
  datasets.load_splits(config)
  assert len(calls) == 4  # Nothing hashed the second time.

  # A changed file (new mtime) is verified again, the others are not.
  path = data_dir / "train-labels-idx1-ubyte.gz"
  os.utime(path, ns=(time.time_ns(), time.time_ns() + 10**9))
  datasets.load_splits(config)
  assert len(calls) == 5


def test_unwritable_cache_still_loads(tmp_path, monkeypatch):
  data_dir = tmp_path / "mnist"
  write_idx_dir(data_dir, sums=True)
  not_a_dir = tmp_path / "file"
  not_a_dir.write_text("")
  monkeypatch.setenv("XDG_CACHE_HOME", str(not_a_dir))
  splits = datasets.load_splits(
      make_config(data_source="idx", data_dir=str(data_dir), validation_size=5))
  assert len(splits.train.labels) == 15


# --- Reading IDX files -------------------------------------------------------


@pytest.mark.parametrize("gz", [True, False])
def test_truncated_file_is_refused(tmp_path, gz):
  content = idx_bytes(np.zeros((10, 28, 28), np.uint8))
  path = tmp_path / "images"
  if gz:
    compressed = gzip.compress(content)
    path.write_bytes(compressed[:len(compressed) // 2])
    match = "corrupt or truncated gzip"
  else:
    path.write_bytes(content[:-100])
    match = (f"expected {len(content)} bytes of content, "
             f"found {len(content) - 100}")
  with pytest.raises(DataError, match=match) as e:
    idx.read_idx(path)
  assert str(path) in str(e.value)


def test_overlong_file_is_refused(tmp_path):
  path = tmp_path / "labels"
  path.write_bytes(idx_bytes(np.zeros(10, np.uint8)) + b"\0")
  with pytest.raises(DataError, match="expected 18 bytes of content, found 19"):
    idx.read_idx(path)


def test_wrong_magic_is_refused(tmp_path):
  path = tmp_path / "images.gz"
  path.write_bytes(gzip.compress(struct.pack(">II", 0x00000804, 0)))
  with pytest.raises(DataError,
                     match=r"images.gz: bad magic number 0x00000804"):
    idx.read_idx(path)


def test_gzip_detected_by_content_not_name(tmp_path):
  labels = np.arange(10, dtype=np.uint8)
  raw_named_gz = tmp_path / "labels.gz"
  raw_named_gz.write_bytes(idx_bytes(labels))
  gz_named_raw = tmp_path / "labels"
  gz_named_raw.write_bytes(gzip.compress(idx_bytes(labels)))
  np.testing.assert_array_equal(idx.read_idx(raw_named_gz), labels)
  np.testing.assert_array_equal(idx.read_idx(gz_named_raw), labels)


# --- The idx source ----------------------------------------------------------


@pytest.mark.parametrize("dotted", [False, True])
@pytest.mark.parametrize("gz", [True, False])
def test_idx_source_naming_styles(tmp_path, dotted, gz):
  arrays = write_idx_dir(tmp_path, dotted=dotted, gz=gz)
  splits = datasets.load_splits(
      make_config(data_source="idx", data_dir=str(tmp_path), validation_size=5))
  assert [len(s.labels) for s in splits] == [15, 5, 8]
  # Image i is filled with i, so this checks the split boundary and order.
  np.testing.assert_array_equal(splits.validation.images[:, 0, 0, 0], range(5))
  np.testing.assert_array_equal(splits.train.images[:, 0, 0, 0], range(5, 20))
  np.testing.assert_array_equal(splits.test.labels,
                                arrays[datasets.TEST_LABELS])
  assert splits.train.images.shape[1:] == (28, 28, 1)


def test_idx_missing_file_lists_names(tmp_path):
  write_idx_dir(tmp_path)
  (tmp_path / "t10k-labels-idx1-ubyte.gz").unlink()
  with pytest.raises(DataError) as e:
    datasets.load_splits(make_config(data_source="idx", data_dir=str(tmp_path),
                                     validation_size=5))
  message = str(e.value)
  for name in ["t10k-labels-idx1-ubyte", "t10k-labels-idx1-ubyte.gz",
               "t10k-labels.idx1-ubyte", "t10k-labels.idx1-ubyte.gz"]:
    assert name in message
  assert "\n" not in message


@pytest.mark.parametrize("config, match", [
    (dict(data_dir=None), "needs --data_dir"),
    (dict(data_dir="/nonexistent/mnist"), "/nonexistent/mnist is not a dir"),
    (dict(data_source="nope"), "unknown data_source 'nope'"),
])
def test_bad_source_settings(config, match):
  with pytest.raises(DataError, match=match):
    datasets.load_splits(make_config(**{"data_source": "idx", **config}))


@pytest.mark.parametrize("kwargs, match", [
    (dict(size=32), "images are 32x32, expected 28x28"),
    (dict(validation_size=20), r"validation_size=20 must be in \[0, 20\)"),
])
def test_idx_bad_shapes(tmp_path, kwargs, match):
  validation_size = kwargs.pop("validation_size", 5)
  write_idx_dir(tmp_path, **kwargs)
  with pytest.raises(DataError, match=match):
    datasets.load_splits(make_config(data_source="idx", data_dir=str(tmp_path),
                                     validation_size=validation_size))


def test_idx_count_mismatch(tmp_path):
  write_idx_dir(tmp_path, gz=False)
  (tmp_path / datasets.TRAIN_LABELS).write_bytes(
      idx_bytes(np.zeros(19, np.uint8)))
  with pytest.raises(DataError, match="has 20 images but .* has 19 labels"):
    datasets.load_splits(make_config(data_source="idx", data_dir=str(tmp_path),
                                     validation_size=5))


# --- Fake data ---------------------------------------------------------------


def test_fake_data_shapes_and_determinism():
  splits = datasets.load_splits(make_config(data_source="fake", seed=1,
                                            fake_examples=12))
  other_seed = datasets.load_splits(make_config(data_source="fake", seed=2,
                                                fake_examples=12))
  assert [len(s.labels) for s in splits] == [12, 3, 3]
  for split, other in zip(splits, other_seed):
    assert split.images.dtype == np.uint8
    assert split.images.shape[1:] == (28, 28, 1)
    assert split.labels.dtype == np.int32
    np.testing.assert_array_equal(split.images, other.images)
    np.testing.assert_array_equal(split.labels, other.labels)
  assert not np.array_equal(splits.train.images[:3], splits.test.images)


def test_fake_data_is_learnable():
  splits = datasets.load_splits(make_config(data_source="fake",
                                            fake_examples=400))
  # A least-squares linear classifier stands in for softmax regression.
  def features(split):
    x = split.images.reshape(len(split.images), -1) / 255.0
    return np.concatenate([x, np.ones((len(x), 1))], axis=1)
  weights, *_ = np.linalg.lstsq(features(splits.train),
                                np.eye(10)[splits.train.labels], rcond=None)
  predictions = (features(splits.test) @ weights).argmax(axis=1)
  assert (predictions == splits.test.labels).mean() > 0.9


# --- tfds --------------------------------------------------------------------


def test_tfds_mock_same_split_semantics(tmp_path, monkeypatch):
  # mock_data never prepares files, so pretend the download host is reachable;
  # its no-op download_and_prepare keeps the test offline.
  monkeypatch.setattr(datasets, "_host_reachable", lambda: True)
  config = make_config(data_source="tfds", tfds_data_dir=str(tmp_path),
                       validation_size=5)
  with tfds.testing.mock_data(num_examples=20):
    splits = datasets.load_splits(config)
    full_train = tfds.as_numpy(tfds.load(
        "mnist", split="train", data_dir=str(tmp_path), as_supervised=True,
        batch_size=20))
    images, labels = next(iter(full_train))
  assert [len(s.labels) for s in splits] == [15, 5, 20]
  for split in splits:
    assert split.images.dtype == np.uint8
    assert split.images.shape[1:] == (28, 28, 1)
    assert split.labels.dtype == np.int32
  np.testing.assert_array_equal(splits.validation.images, images[:5])
  np.testing.assert_array_equal(splits.train.images, images[5:])
  np.testing.assert_array_equal(splits.train.labels, labels[5:])


def test_tfds_offline_fails_fast(tmp_path, monkeypatch):
  monkeypatch.setattr(datasets, "DOWNLOAD_HOST", ("127.0.0.1", closed_port()))
  start = time.monotonic()
  with pytest.raises(DataError) as e:
    datasets.load_splits(make_config(data_source="tfds",
                                     tfds_data_dir=str(tmp_path)))
  assert time.monotonic() - start < 10
  message = str(e.value)
  assert "--data_source=bundled" in message
  assert "not prepared" in message
  assert "\n" not in message


def test_tfds_unknown_dataset(tmp_path):
  with pytest.raises(DataError, match="unknown tfds dataset 'no_such_mnist'"):
    datasets.load_splits(make_config(
        data_source="tfds", dataset="no_such_mnist",
        tfds_data_dir=str(tmp_path)))


# --- Pipelines ---------------------------------------------------------------


def numbered_split(n: int) -> datasets.Split:
  """Example i has all pixels equal to i, so batches show their examples."""
  images = np.broadcast_to(np.arange(n, dtype=np.uint8)[:, None, None, None],
                           (n, 28, 28, 1))
  return datasets.Split(np.ascontiguousarray(images),
                        (np.arange(n) % 10).astype(np.int32))


def example_ids(images) -> np.ndarray:
  return np.round(images.numpy()[:, 0, 0, 0] * 255).astype(int)


def first_batches(ds, k=3):
  return [example_ids(images) for images, _ in ds.take(k)]


def test_normalize():
  x = datasets.normalize(np.array([0, 51, 255], np.uint8))
  assert x.dtype == tf.float32
  np.testing.assert_allclose(x.numpy(), [0.0, 0.2, 1.0])


def test_train_dataset_element_spec_and_values():
  split = numbered_split(20)
  ds = datasets.train_dataset(split, batch_size=8, seed=0)
  assert ds.element_spec == (
      tf.TensorSpec([8, 28, 28, 1], tf.float32), tf.TensorSpec([8], tf.int32))
  images, labels = next(iter(ds))
  assert 0.0 <= images.numpy().min() and images.numpy().max() <= 1.0
  np.testing.assert_array_equal(labels.numpy(), example_ids(images) % 10)


def test_train_dataset_epochs_are_permutations():
  split = numbered_split(20)
  ids = np.concatenate(first_batches(
      datasets.train_dataset(split, batch_size=5, seed=0), k=8))
  assert sorted(ids[:20]) == list(range(20))
  assert sorted(ids[20:]) == list(range(20))
  assert not np.array_equal(ids[:20], ids[20:])  # Reshuffled each epoch.


def test_train_dataset_seeded():
  split = numbered_split(50)
  batches = lambda seed: np.array(first_batches(
      datasets.train_dataset(split, batch_size=10, seed=seed)))
  np.testing.assert_array_equal(batches(1), batches(1))
  assert not np.array_equal(batches(1), batches(2))


def test_train_dataset_shards_are_disjoint():
  split = numbered_split(40)
  shards = [
      np.concatenate(first_batches(datasets.train_dataset(
          split, batch_size=4, seed=3,
          input_context=tf.distribute.InputContext(2, i, 2)), k=5))
      for i in range(2)]
  assert sorted(np.concatenate(shards)) == list(range(40))


@pytest.mark.parametrize("start", [0, 7, 20, 45])
def test_train_dataset_starts_at_a_position_of_the_same_stream(start):
  """start=k reads what an unstarted stream reads after k examples (across epochs too)."""
  split = numbered_split(20)
  stream = np.concatenate(first_batches(datasets.train_dataset(split, batch_size=1, seed=5),
                                        k=start + 12))
  resumed = np.concatenate(first_batches(
      datasets.train_dataset(split, batch_size=4, seed=5, start=start), k=3))
  np.testing.assert_array_equal(resumed, stream[start:])


def test_eval_dataset_covers_every_example_once():
  split = numbered_split(23)
  ds = datasets.eval_dataset(split, batch_size=5)
  assert ds.element_spec == (
      tf.TensorSpec([None, 28, 28, 1], tf.float32),
      tf.TensorSpec([None], tf.int32))
  batches = list(ds)
  assert [len(labels) for _, labels in batches] == [5, 5, 5, 5, 3]
  ids = np.concatenate([example_ids(images) for images, _ in batches])
  np.testing.assert_array_equal(ids, range(23))
  np.testing.assert_array_equal(
      np.concatenate([labels for _, labels in batches]), split.labels)


def test_eval_dataset_sharded_covers_every_example_once():
  split = numbered_split(23)
  ids = np.concatenate([
      example_ids(images)
      for i in range(3)
      for images, _ in datasets.eval_dataset(
          split, batch_size=4, input_context=tf.distribute.InputContext(3, i))])
  assert sorted(ids) == list(range(23))


def test_stream_indices_are_what_the_pipeline_reads_in_any_shape():
  """The in-memory XLA loop (trainer.py) gathers by stream_indices: the same examples."""
  split = numbered_split(20)
  stream = np.concatenate(first_batches(datasets.train_dataset(split, batch_size=4, seed=5),
                                        k=20))
  # A [steps, batch] grid spanning four epochs, starting mid-epoch.
  positions = 6 + np.arange(15 * 4).reshape(15, 4)
  indices = datasets.stream_indices(positions, 20, seed=5).numpy()
  assert indices.shape == (15, 4)
  np.testing.assert_array_equal(indices.ravel(), stream[6:66])
  assert not np.array_equal(indices, datasets.stream_indices(positions, 20, seed=6).numpy())


def test_warp_is_image_projective_transform_to_rounding_and_compiles_with_xla():
  """The XLA loop distorts with `warp`; tf.data with ImageProjectiveTransformV3."""
  images = datasets.normalize(np.random.default_rng(0).integers(0, 256, (16, 28, 28, 1),
                                                                dtype=np.uint8))
  augmentation = augment.Augmentation(shift=3.0, rotation=30.0, scale=0.3)
  key = augment.augment_key(7, 1234)
  expected = augment.augment_batch(images, key, augmentation).numpy()
  transforms = augment.affine_transforms(16, key, augmentation)
  np.testing.assert_allclose(augment.warp(images, transforms).numpy(), expected, atol=1e-5)
  compiled = tf.function(augment.warp, jit_compile=True)(images, transforms).numpy()
  np.testing.assert_allclose(compiled, expected, atol=1e-5)
  assert not np.allclose(expected, images.numpy(), atol=0.1)  # The images did move.
