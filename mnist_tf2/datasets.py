"""MNIST sources, the train/validation/test splits and the tf.data pipelines.

Four sources give the same thing, uint8 arrays in memory:

* `bundled`: the IDX files shipped inside the package, checksum-verified.
* `idx`: the four IDX files in a directory of the user's choosing.
* `tfds`: a TensorFlow Datasets dataset (`mnist`, `fashion_mnist`, `kmnist`).
* `fake`: a few learnable synthetic digits, for tests.

The splits follow the original tutorial's `input_data.read_data_sets`: the
validation split is the FIRST `validation_size` images of the official
training set, train is the rest, test is the official test set.

The pipelines keep those arrays in memory and shuffle *indices*, gathering and
normalising a whole batch at a time: cheap per step. The order is a function of
the seed alone (`stream_indices`), so a resumed run starts reading at the
position the checkpoint's count of examples read gives (see
`train_dataset(start=...)`): nothing of the pipeline needs checkpointing, and
the XLA training loop (trainer.py) can gather the very same batches itself.
Training batches may be randomly distorted (`augment.Augmentation`: shift,
rotation, zoom, elastic), with stateless randomness
keyed by (seed, position in the stream) so that a resumed run sees the same
distortions (see `augment`); evaluation batches never are.
"""

import socket
import threading
from pathlib import Path
from typing import NamedTuple

import numpy as np
import tensorflow as tf

from mnist_tf2 import augment
from mnist_tf2 import idx
from mnist_tf2.constants import IMAGE_SHAPE
from mnist_tf2.constants import NUM_CLASSES
from mnist_tf2.errors import DataError

BUNDLED_DIR = Path(__file__).parent / "data" / "mnist"

# The four files of the official release, by their canonical names.
TRAIN_IMAGES = "train-images-idx3-ubyte"
TRAIN_LABELS = "train-labels-idx1-ubyte"
TEST_IMAGES = "t10k-images-idx3-ubyte"
TEST_LABELS = "t10k-labels-idx1-ubyte"

# Where tfds downloads MNIST from; probed before a download so that an offline
# machine fails in seconds instead of retrying for minutes.
DOWNLOAD_HOST = ("storage.googleapis.com", 443)
PROBE_TIMEOUT_SECONDS = 3.0

# The fake data must be the same whatever config.seed is, so runs with
# different seeds differ only in what the seed controls.
_FAKE_DATA_SEED = 1234


class Split(NamedTuple):
  images: np.ndarray  # uint8 [N, 28, 28, 1]
  labels: np.ndarray  # int32 [N]


class Splits(NamedTuple):
  train: Split
  validation: Split
  test: Split


def load_splits(config) -> Splits:
  """Loads the train, validation and test splits named by `config`.

  Args:
    config: any object with `data_source`, `data_dir`, `dataset`,
      `tfds_data_dir`, `validation_size` and `fake_examples`. (The seed does
      not matter here: even fake data is the same for every seed.)

  Returns:
    The three splits as in-memory uint8 images and int32 labels. Arrays read
    from IDX files are read-only views of the file content.

  Raises:
    DataError: the source is unknown, missing, offline or fails validation.
  """
  source = config.data_source
  if source == "fake":
    return _fake_splits(config.fake_examples)
  if source == "bundled":
    train, test = _read_idx_dir(BUNDLED_DIR, "bundled MNIST")
  elif source == "idx":
    if not config.data_dir:
      raise DataError("--data_source=idx needs --data_dir=DIR with the four "
                      "MNIST IDX files")
    train, test = _read_idx_dir(Path(config.data_dir), "--data_dir")
  elif source == "tfds":
    train, test = _load_tfds(config.dataset, config.tfds_data_dir)
  else:
    raise DataError(f"unknown data_source {source!r}, expected one of "
                    "bundled, idx, tfds, fake")
  return _split_off_validation(train, test, config.validation_size)


def _split_off_validation(train: Split, test: Split,
                          validation_size: int) -> Splits:
  n = len(train.labels)
  if not 0 <= validation_size < n:
    raise DataError(f"validation_size={validation_size} must be in [0, {n}) "
                    f"for a training set of {n} examples")
  return Splits(
      train=Split(train.images[validation_size:],
                  train.labels[validation_size:]),
      validation=Split(train.images[:validation_size],
                       train.labels[:validation_size]),
      test=test)


# --- IDX directories (bundled and idx sources) -------------------------------


def _find_file(data_dir: Path, name: str, what: str) -> Path:
  """Finds `name` in either naming style, gzipped or raw."""
  # The files circulate as e.g. train-images-idx3-ubyte(.gz) (LeCun's site)
  # and train-images.idx3-ubyte (some unpacked archives).
  dotted = name.replace("-idx", ".idx")
  candidates = [name, name + ".gz", dotted, dotted + ".gz"]
  for candidate in candidates:
    if (data_dir / candidate).is_file():
      return data_dir / candidate
  raise DataError(f"{what} {data_dir}: no {name.split('-idx')[0]} file, "
                  f"looked for {', '.join(candidates)}")


def _read_idx_dir(data_dir: Path, what: str) -> tuple[Split, Split]:
  """Reads and validates the official train and test splits from a directory.

  If the directory holds a `SHA256SUMS` (hashes of the decompressed files by
  canonical name), every file must match it.
  """
  if not data_dir.is_dir():
    raise DataError(f"{what} {data_dir} is not a directory")
  sums_path = data_dir / "SHA256SUMS"
  sums = idx.read_sha256sums(sums_path) if sums_path.is_file() else None

  def read(name: str) -> tuple[Path, np.ndarray]:
    path = _find_file(data_dir, name, what)
    if sums is None:
      return path, idx.read_idx(path)
    if name not in sums:
      raise DataError(f"{sums_path} has no entry for {name}")
    return path, idx.read_idx_verified(path, sums[name])

  return (_check_pair(*read(TRAIN_IMAGES), *read(TRAIN_LABELS)),
          _check_pair(*read(TEST_IMAGES), *read(TEST_LABELS)))


def _check_pair(images_path: Path, images: np.ndarray, labels_path: Path,
                labels: np.ndarray) -> Split:
  """Checks that an images file and a labels file belong together."""
  if images.ndim != 3:
    raise DataError(f"{images_path}: expected an images file "
                    f"[count, rows, cols], found a labels file")
  if labels.ndim != 1:
    raise DataError(f"{labels_path}: expected a labels file [count], "
                    f"found an images file")
  if images.shape[1:] != IMAGE_SHAPE[:2]:
    raise DataError(f"{images_path}: images are {images.shape[1]}x"
                    f"{images.shape[2]}, expected 28x28")
  if len(images) != len(labels):
    raise DataError(f"{images_path} has {len(images)} images but "
                    f"{labels_path} has {len(labels)} labels")
  if len(labels) and labels.max() >= NUM_CLASSES:
    raise DataError(f"{labels_path}: found label {labels.max()}, expected "
                    f"labels 0-{NUM_CLASSES - 1}")
  return Split(images[..., np.newaxis], labels.astype(np.int32))


# --- TensorFlow Datasets -----------------------------------------------------


def _host_reachable() -> bool:
  """Whether `DOWNLOAD_HOST` accepts a TCP connection within the timeout."""
  result = []

  def connect():
    try:
      socket.create_connection(DOWNLOAD_HOST, PROBE_TIMEOUT_SECONDS).close()
      result.append(True)
    except OSError:
      pass

  # The connect timeout does not cover the DNS lookup, which can hang on a
  # half-configured network; a daemon thread bounds the whole probe.
  thread = threading.Thread(target=connect, daemon=True)
  thread.start()
  thread.join(PROBE_TIMEOUT_SECONDS)
  return bool(result)


def _load_tfds(name: str, data_dir: str | None) -> tuple[Split, Split]:
  """Loads the official train and test splits of a tfds dataset as arrays."""
  # Imported here: tensorflow_datasets takes seconds to import and only this
  # source needs it.
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

  try:
    builder = tfds.builder(name, data_dir=data_dir)
  except tfds.core.DatasetNotFoundError:
    raise DataError(f"unknown tfds dataset {name!r}; try mnist, "
                    "fashion_mnist or kmnist") from None
  if not builder.is_prepared() and not _host_reachable():
    raise DataError(
        f"tfds dataset {name!r} is not prepared in {builder.data_dir} and "
        f"{DOWNLOAD_HOST[0]} is unreachable; use --data_source=bundled or "
        "--data_source=idx --data_dir=DIR")
  # In the canonical tfds order (shuffle_files=False). Read in chunks rather
  # than with batch_size=-1: that sizes one batch from the split metadata, which
  # `tfds.testing.mock_data` leaves at 0, and the batch op then aborts the
  # process instead of raising.
  train, test = tfds.as_numpy(tfds.load(
      name, split=["train", "test"], data_dir=data_dir, batch_size=10_000,
      as_supervised=True, shuffle_files=False))
  return _tfds_split(name, train), _tfds_split(name, test)


def _tfds_split(name: str, batches) -> Split:
  batches = list(batches)
  if not batches:
    raise DataError(f"tfds dataset {name!r} has an empty split")
  images = np.concatenate([images for images, _ in batches])
  labels = np.concatenate([labels for _, labels in batches])
  if images.dtype != np.uint8 or images.shape[1:] != IMAGE_SHAPE:
    raise DataError(
        f"tfds dataset {name!r} has {images.dtype} images of shape "
        f"{list(images.shape[1:])}, expected uint8 [28, 28, 1]")
  return Split(images, labels.astype(np.int32))


# --- Fake data ---------------------------------------------------------------


def _fake_split(prototypes: np.ndarray, num_examples: int,
                stream: int) -> Split:
  rng = np.random.default_rng([_FAKE_DATA_SEED, stream])
  labels = rng.integers(0, NUM_CLASSES, num_examples).astype(np.int32)
  noise = rng.normal(0.0, 40.0, (num_examples, *IMAGE_SHAPE))
  images = np.clip(prototypes[labels] + noise, 0, 255).astype(np.uint8)
  return Split(images, labels)


def _fake_splits(num_examples: int) -> Splits:
  """Noisy copies of one fixed random pattern per class: easy to learn."""
  if num_examples < 1:
    raise DataError(f"fake_examples={num_examples} must be at least 1")
  rng = np.random.default_rng(_FAKE_DATA_SEED)
  prototypes = (rng.random((NUM_CLASSES, *IMAGE_SHAPE)) < 0.3) * 200.0
  held_out = max(1, num_examples // 4)
  return Splits(train=_fake_split(prototypes, num_examples, stream=1),
                validation=_fake_split(prototypes, held_out, stream=2),
                test=_fake_split(prototypes, held_out, stream=3))


# --- tf.data pipelines -------------------------------------------------------


def normalize(images):
  """Maps uint8 pixels to float32 in [0, 1]; the one place this is done."""
  return tf.cast(images, tf.float32) / 255.0


def _gather_fn(split: Split):
  """Returns `gather(batch_indices) -> (images float32 in [0, 1], labels)`."""
  images = tf.constant(split.images)
  labels = tf.constant(split.labels)

  def gather(batch_indices):
    return (normalize(tf.gather(images, batch_indices)),
            tf.gather(labels, batch_indices))

  return gather


def stream_indices(positions, num_examples: int, seed: int):
  """The example at each position of the seeded, endless training stream.

  Position p reads example `index_shuffle(p mod N)` of the permutation keyed by
  (seed, epoch = p div N): every epoch a fresh permutation of all N examples.
  A pure function of the position, keyed by `seed` alone (not TensorFlow's
  global seed), with no shuffle buffer: any position can be computed, which is
  how a resumed run finds its place, and how both the tf.data pipeline and the
  in-memory XLA loop (trainer.py) read the same stream.

  Args:
    positions: int64 tensor of stream positions, any shape; may span epochs.
    num_examples: N, the size of the training split.
    seed: the shuffle seed.

  Returns:
    int64 tensor of example indices, the shape of `positions`.
  """
  positions = tf.convert_to_tensor(positions, tf.int64)
  flat = tf.reshape(positions, [-1])  # index_shuffle takes vectors only.
  epochs = flat // num_examples
  offsets = flat % num_examples
  seed = tf.constant(seed, tf.int64)

  def permuted(epoch):
    return tf.random.experimental.index_shuffle(
        offsets, seed=tf.stack([seed, epoch]), max_index=num_examples - 1)

  # One vectorised shuffle per epoch the positions touch (usually one or two).
  first, last = tf.reduce_min(epochs), tf.reduce_max(epochs)
  _, indices = tf.while_loop(
      lambda epoch, _: epoch <= last,
      lambda epoch, indices: (epoch + 1, tf.where(epochs == epoch, permuted(epoch), indices)),
      (first + 1, permuted(first)))
  return tf.reshape(indices, tf.shape(positions))


def train_dataset(split: Split, *, batch_size: int, seed: int, start: int = 0,
                  input_context: tf.distribute.InputContext | None = None,
                  augmentation: augment.Augmentation | None = None) -> tf.data.Dataset:
  """An endless, seeded, shuffled stream of training batches.

  The stream of example indices is `stream_indices`, a pure function of `seed`,
  so the position `start` in it stands for the whole input state: a resumed run
  starts at the number of examples read before and reads what an uninterrupted
  run would, whatever the number of replicas or workers (or the batch size)
  before and after.

  Args:
    split: the training split.
    batch_size: examples per batch; the per-replica batch size when
      `input_context` is given.
    seed: shuffle and augmentation seed. Every input pipeline must get the
      same one, since the shards are disjoint only if all pipelines shuffle
      alike.
    start: position in the (global, unsharded) index stream to begin at.
    input_context: from `strategy.distribute_datasets_from_function`; each
      input pipeline then reads its own shard.
    augmentation: if given, every batch is randomly distorted by
      `augment.augment_batch` (see there).

  Returns:
    A dataset of `(images float32 [batch_size, 28, 28, 1] in [0, 1],
    labels int32 [batch_size])`, reshuffled every epoch.
  """
  num_examples = len(split.labels)
  # Pipeline i of n takes positions start + i, start + i + n, ... of the stream;
  # with every pipeline batching its per-replica share, one step's replicas
  # together see exactly the global batch a single device would.
  pipelines, pipeline = ((input_context.num_input_pipelines, input_context.input_pipeline_id)
                         if input_context else (1, 0))
  replicas = input_context.num_replicas_in_sync if input_context else 1
  gather = _gather_fn(split)

  def batch(k):
    # The positions of this pipeline's k-th batch, computed as a whole: one
    # vectorised shuffle per batch, far cheaper than one per example.
    positions = start + pipeline + pipelines * (
        k * batch_size + tf.range(batch_size, dtype=tf.int64))
    images, labels = gather(stream_indices(positions, num_examples, seed))
    if augmentation is not None:
      images = _augment(images, positions, k)
    return images, labels

  def _augment(images, positions, k):
    if replicas == 1:
      return augment.augment_batch(images, augment.augment_key(seed, positions[0]),
                                   augmentation)
    # A pipeline's consecutive batches go to its replicas in turn: batch k is
    # part of global batch k // (replicas per pipeline), which is keyed by its
    # first position, each image by its row in it, as on a single device.
    global_batch = batch_size * replicas
    first = start + k // (replicas // pipelines) * global_batch
    return augment.augment_batch(images, augment.augment_key(seed, first), augmentation,
                                 rows=positions - first, global_batch_size=global_batch)

  return (tf.data.Dataset.counter()
          .map(batch, num_parallel_calls=tf.data.AUTOTUNE)
          .prefetch(tf.data.AUTOTUNE))


def eval_dataset(split: Split, *, batch_size: int,
                 input_context: tf.distribute.InputContext | None = None
                 ) -> tf.data.Dataset:
  """Every example of `split` once, in order, never distorted.

  The last batch may be short.
  """
  indices = tf.data.Dataset.range(len(split.labels))
  if input_context:
    indices = indices.shard(input_context.num_input_pipelines,
                            input_context.input_pipeline_id)
  # A plain map: a gather is cheap next to the model, and a parallel one is what
  # tf.data rewrites to a sequential MapDataset under op determinism (logging
  # an E-line "NodeDef mentions attribute use_unbounded_threadpool").
  return (indices.batch(batch_size)
          .map(_gather_fn(split))
          .prefetch(tf.data.AUTOTUNE))
