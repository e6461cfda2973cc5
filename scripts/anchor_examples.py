"""Time to a test accuracy of the PyTorch and Keras MNIST examples, run as shipped, on this CPU.

  python scripts/anchor_examples.py --example=torch [--output=FILE.json]
  python scripts/anchor_examples.py --example=keras [--output=FILE.json]
  # quick check: python scripts/anchor_examples.py --example=keras --train_examples=2000 --epochs=1

The README's anchors (issue 17): what a CPU user gets from the two frameworks'
own MNIST examples, as the wall time from the command to 99.0% test accuracy.
Each example is reproduced as shipped except for where the data comes from: both
read the MNIST copy bundled in this package (mnist_tf2/data/mnist, the official
IDX files), since this machine is offline.

`--example=torch`: pytorch/examples, mnist/main.py. Net: conv 1->32 3x3, ReLU,
conv 32->64 3x3, ReLU, 2x2 max pool, dropout 0.25, linear 9216->128, ReLU,
dropout 0.5, linear 128->10, log-softmax; NLL loss; Adadelta(lr=1.0) with
StepLR(step_size=1, gamma=0.7) stepped after each epoch; batches of 64 (test
1000); torch.manual_seed(seed) (the example's default seed is 1); 14 epochs; the
full 60,000 training images; the test set evaluated after every epoch. Its data
path on a CPU is kept: a torch.utils.data.DataLoader in the main process
(num_workers=0) over a dataset that does per image what torchvision's
datasets.MNIST with ToTensor() and Normalize((0.1307,), (0.3081,)) does (a PIL
image, then a float tensor / 255, then the normalisation), collated into
batches. Only torchvision itself is replaced (not installed here, and it would
download the data): the class below repeats its per-image work line for line,
so the per-batch Python cost of the shipped example is still paid. Note that on
a CPU the example does not shuffle: its `shuffle=True` (with `num_workers=1`
and `pin_memory`) is passed only when an accelerator is present, so on a CPU
every epoch reads the training set in file order; that is kept too. torch's
default threading is used (torch.get_num_threads() is recorded).

`--example=keras`: keras.io/examples/vision/mnist_convnet ("Simple MNIST
convnet"). Input 28x28x1, Conv2D(32, 3, relu), MaxPooling2D(2), Conv2D(64, 3,
relu), MaxPooling2D(2), Flatten, Dropout(0.5), Dense(10, softmax);
categorical cross-entropy, "adam" (defaults), pixels / 255, one-hot labels,
`model.fit(batch_size=128, epochs=15, validation_split=0.1)` (so it trains on
the first 54,000 images and validates on the last 6,000 every epoch, as
shipped). The example evaluates the test set once, after training; to time the
test accuracy per epoch a callback runs the same `model.evaluate(x_test,
y_test)` at the end of every epoch, and that time is part of the time to the
target, as the torch example's per-epoch test is. The seed is set with
keras.utils.set_random_seed (the example sets none).

Both: after each epoch one line "epoch N: test accuracy A, T s since start";
at the end "time to 99.0% test: T s (epoch N)". By default a run stops after
the first epoch at or above --stop_at (0.99), so a measurement need not run all
epochs; --stop_at=0 runs them all. The clock starts when the process started:
its start time is read from /proc/self/stat, so the interpreter's start-up, the
imports of torch or TensorFlow and the data loading all count, as they do for
a user who types the command. Where /proc is not available the clock starts at
this module's first line (the interpreter's start-up, some 20-50 ms, is then
not counted; the JSON says which). A parent can instead pass its own start
time: --start_time=$(date +%s.%N).

What differs from the originals, and in which direction:
* Data: read from the bundled gzipped IDX files instead of torchvision's
  (raw IDX files, converted to tensors on first use) or Keras' mnist.npz. The
  same 60,000 + 10,000 images; loading takes a fraction of a second either way.
* torch: OMP_WAIT_POLICY=PASSIVE is set (unless already set), as
  scripts/benchmark.py does: PyTorch's OpenMP threads otherwise busy-wait
  between parallel regions, and on a machine shared with other processes they
  then fight for the cores (eager PyTorch ran 20-50x slower here). On an idle
  machine it should change little; --noomp_passive leaves the environment as
  given, i.e. stock (libgomp's default: spin a while, then sleep). The example's "Train Epoch" log line every 10 batches
  and its "Test set" line are replaced by the one line per epoch above.
* keras: TF_ENABLE_ONEDNN_OPTS=1 is set (unless already set), as
  mnist_tf2/__init__.py does for this project's own runs, so the two compare on
  the same kernels. TensorFlow on its own turns oneDNN on only on CPUs with
  AVX-512 VNNI or newer; on others (e.g. AVX2 only) a stock user gets Eigen's
  convolutions (this project's cnn trained 1.9x faster with oneDNN on an AVX2
  machine; docs/PERFORMANCE.md), so there this anchor is the Keras example at
  its better setting; `TF_ENABLE_ONEDNN_OPTS=0` in the environment gives the
  stock behaviour on such CPUs. `fit` runs with verbose=0 (no progress bar)
  and the per-epoch test evaluation is added (above). The Keras backend is
  whatever KERAS_BACKEND says (TensorFlow by default), and recorded.

--train_examples and --test_examples (the first N images) are for quick checks
only; a measurement uses the defaults.
"""

import os
import time

# Taken first, before any heavy import, so the clock can start at the process's start.
_MODULE_PERF = time.perf_counter()
_MODULE_WALL = time.time()
_LOAD_BEFORE = os.getloadavg()
# The settings this script may default (see the docstring), as the caller gave them.
_ENVIRONMENT = ("OMP_WAIT_POLICY", "OMP_NUM_THREADS", "TF_ENABLE_ONEDNN_OPTS", "KERAS_BACKEND")
_GIVEN_ENVIRONMENT = {name: os.environ.get(name) for name in _ENVIRONMENT}


def _seconds_since_process_start():
  """How long this process had run when the module started; None if unknown.

  /proc/self/stat's field 22 is the process's start in clock ticks after boot;
  /proc/uptime is now on the same clock; both have 10 ms resolution.
  """
  try:
    with open("/proc/self/stat") as f:
      # The command name (field 2) may hold spaces or ')': split after its last ')'.
      start_ticks = int(f.read().rsplit(")", 1)[1].split()[19])
    with open("/proc/uptime") as f:
      uptime = float(f.read().split()[0])
    seconds = uptime - start_ticks / os.sysconf("SC_CLK_TCK")
  except (OSError, ValueError, IndexError):
    return None
  # A clock mismatch (some containers) shows as a negative or absurd value: then unknown.
  return seconds if 0 <= seconds < 60 else None


_ALREADY_RUNNING = _seconds_since_process_start()

import json  # pylint: disable=g-import-not-at-top,g-bad-import-order
import math
import platform
import resource
import sys

from absl import flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from mnist_tf2 import cli  # pylint: disable=g-import-not-at-top
from mnist_tf2 import hardware  # pylint: disable=g-import-not-at-top
from mnist_tf2 import idx  # reads the bundled IDX files without importing TensorFlow

flags.DEFINE_enum("example", None, ["torch", "keras"], "Which example to run.")
flags.DEFINE_integer("epochs", 0, "Epochs at most (0: as shipped, 14 for torch, 15 for keras).")
flags.DEFINE_float("stop_at", 0.99, "Stop after the first epoch whose test accuracy is at "
                   "least this (0: run every epoch).")
flags.DEFINE_float("target", 0.99, "The test accuracy whose time is reported.")
flags.DEFINE_integer("seed", 1, "Random seed (torch.manual_seed / keras.utils.set_random_seed).")
flags.DEFINE_integer("train_examples", 0, "Train on the first N training images (0: all "
                     "60,000, as shipped). For quick checks.")
flags.DEFINE_integer("test_examples", 0, "Test on the first N test images (0: all 10,000). "
                     "For quick checks.")
flags.DEFINE_float("start_time", None, "The run's start as seconds since the epoch "
                   "(e.g. $(date +%s.%N) in the parent); default: this process's start.")
flags.DEFINE_bool("omp_passive", True, "torch: set OMP_WAIT_POLICY=PASSIVE unless it is set "
                  "(see the docstring); --noomp_passive: leave the environment as given.")
flags.DEFINE_string("output", "", "Write the timeline and the machine's figures as JSON here.")
flags.mark_flag_as_required("example")
FLAGS = flags.FLAGS

MNIST_DIR = os.path.join(os.path.dirname(os.path.abspath(idx.__file__)), "data", "mnist")
SHIPPED_EPOCHS = {"torch": 14, "keras": 15}
SOURCES = {"torch": "github.com/pytorch/examples mnist/main.py",
           "keras": "keras.io/examples/vision/mnist_convnet"}


def load_mnist(train_examples, test_examples):
  """(train images, train labels, test images, test labels): uint8, [N, 28, 28] and [N]."""
  def read(name, count):
    array = idx.read_idx(os.path.join(MNIST_DIR, f"{name}.gz"))
    return array[:count] if count else array
  return (read("train-images-idx3-ubyte", train_examples),
          read("train-labels-idx1-ubyte", train_examples),
          read("t10k-images-idx3-ubyte", test_examples),
          read("t10k-labels-idx1-ubyte", test_examples))


class Timeline:
  """Test accuracies stamped with the seconds since the start; prints one line each."""

  def __init__(self, start, target, stop_at):
    self.start, self.target, self.stop_at = start, target, stop_at
    self.epochs = []

  def seconds(self):
    return time.perf_counter() - self.start

  def record(self, epoch, accuracy, loss, **extra) -> bool:
    """Records an epoch's test figures; returns whether to stop here."""
    seconds = self.seconds()
    self.epochs.append({"epoch": epoch, "test_accuracy": accuracy, "test_loss": loss,
                        "seconds_since_start": round(seconds, 3), **extra})
    print(f"epoch {epoch}: test accuracy {accuracy:.4f}, {seconds:.1f} s since start",
          flush=True)
    return bool(self.stop_at) and accuracy >= self.stop_at

  def reached(self):
    """The first epoch at or above the target, or None."""
    return next((e for e in self.epochs if e["test_accuracy"] >= self.target), None)


def run_torch(load_data, epochs, seed, timeline):
  """pytorch/examples mnist/main.py on a CPU; returns figures for the JSON."""
  if FLAGS.omp_passive:
    # Read by the OpenMP runtime when torch loads it: before the import (see the docstring).
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
  try:
    import torch  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    print(f"anchor_examples: --example=torch needs PyTorch, which is not installed ({e}).",
          file=sys.stderr)
    sys.exit(1)
  from torch import nn  # pylint: disable=g-import-not-at-top
  from torch.nn import functional as F  # pylint: disable=g-import-not-at-top
  from PIL import Image  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top

  class MNIST:
    """torchvision.datasets.MNIST's item with ToTensor() and Normalize((0.1307,), (0.3081,)).

    Repeats torchvision's per-image work, so the DataLoader costs what it costs
    in the example: the image as a PIL image, copied back to a uint8 tensor,
    reshaped to [1, 28, 28], divided by 255 as float32, then normalised on a copy.
    """

    def __init__(self, images, labels):
      self.data = torch.from_numpy(np.array(images))  # uint8 [N, 28, 28], as torchvision
      self.targets = torch.from_numpy(labels.astype(np.int64))
      self.mean, self.std = torch.as_tensor((0.1307,)), torch.as_tensor((0.3081,))

    def __getitem__(self, index):
      img, target = self.data[index], int(self.targets[index])
      # torchvision passes mode="L", which Pillow 11.3+ deprecates; a 2-D uint8 array is "L".
      img = Image.fromarray(img.numpy())
      # ToTensor: a copy of the pixels, HWC -> CHW, float / 255.
      tensor = torch.from_numpy(np.array(img, np.uint8, copy=True))
      tensor = tensor.view(img.size[1], img.size[0], 1).permute((2, 0, 1)).contiguous()
      tensor = tensor.to(dtype=torch.get_default_dtype()).div(255)
      # Normalize (not in place: torchvision clones first).
      tensor = tensor.clone()
      tensor.sub_(self.mean.view(-1, 1, 1)).div_(self.std.view(-1, 1, 1))
      return tensor, target

    def __len__(self):
      return len(self.data)

  class Net(nn.Module):

    def __init__(self):
      super().__init__()
      self.conv1 = nn.Conv2d(1, 32, 3, 1)
      self.conv2 = nn.Conv2d(32, 64, 3, 1)
      self.dropout1 = nn.Dropout(0.25)
      self.dropout2 = nn.Dropout(0.5)
      self.fc1 = nn.Linear(9216, 128)
      self.fc2 = nn.Linear(128, 10)

    def forward(self, x):
      x = F.relu(self.conv1(x))
      x = F.relu(self.conv2(x))
      x = self.dropout1(F.max_pool2d(x, 2))
      x = torch.flatten(x, 1)
      x = self.dropout2(F.relu(self.fc1(x)))
      return F.log_softmax(self.fc2(x), dim=1)

  # After the imports, as in the example (and a missing torch fails before the data is read).
  torch.manual_seed(seed)
  train_images, train_labels, test_images, test_labels = load_data()
  # As main.py builds them on a CPU: only the batch size (no shuffle, no workers).
  train_loader = torch.utils.data.DataLoader(MNIST(train_images, train_labels), batch_size=64)
  test_loader = torch.utils.data.DataLoader(MNIST(test_images, test_labels), batch_size=1000)
  model = Net()
  optimizer = torch.optim.Adadelta(model.parameters(), lr=1.0)
  scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.7)
  training_start = timeline.seconds()
  for epoch in range(1, epochs + 1):
    model.train()
    for data_batch, target in train_loader:
      optimizer.zero_grad()
      loss = F.nll_loss(model(data_batch), target)
      loss.backward()
      optimizer.step()
    model.eval()
    test_loss, correct = 0.0, 0
    with torch.no_grad():
      for data_batch, target in test_loader:
        output = model(data_batch)
        test_loss += F.nll_loss(output, target, reduction="sum").item()
        pred = output.argmax(dim=1, keepdim=True)
        correct += pred.eq(target.view_as(pred)).sum().item()
    stop = timeline.record(epoch, correct / len(test_loader.dataset),
                           test_loss / len(test_loader.dataset))
    scheduler.step()
    if stop:
      break
  return {"seconds_at_training_start": round(training_start, 3),
          "versions": {"torch": torch.__version__, "numpy": np.__version__},
          "threads": torch.get_num_threads(),
          "train_examples": len(train_loader.dataset),
          "test_examples": len(test_loader.dataset)}


def run_keras(load_data, epochs, seed, timeline):
  """keras.io's Simple MNIST convnet, with the test set evaluated each epoch."""
  # Before TensorFlow is imported (see the docstring); mnist_tf2/__init__.py does the same.
  os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")
  import keras  # pylint: disable=g-import-not-at-top
  from keras import layers  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top

  keras.utils.set_random_seed(seed)
  num_classes = 10
  x_train, y_train, x_test, y_test = load_data()
  x_train = np.expand_dims(x_train.astype("float32") / 255, -1)
  x_test = np.expand_dims(x_test.astype("float32") / 255, -1)
  y_train = keras.utils.to_categorical(y_train, num_classes)
  y_test = keras.utils.to_categorical(y_test, num_classes)
  model = keras.Sequential([
      keras.Input(shape=(28, 28, 1)),
      layers.Conv2D(32, kernel_size=(3, 3), activation="relu"),
      layers.MaxPooling2D(pool_size=(2, 2)),
      layers.Conv2D(64, kernel_size=(3, 3), activation="relu"),
      layers.MaxPooling2D(pool_size=(2, 2)),
      layers.Flatten(),
      layers.Dropout(0.5),
      layers.Dense(num_classes, activation="softmax"),
  ])
  model.compile(loss="categorical_crossentropy", optimizer="adam", metrics=["accuracy"])

  class TestEachEpoch(keras.callbacks.Callback):
    """The example's final `model.evaluate(x_test, y_test)`, after every epoch."""

    def on_epoch_end(self, epoch, logs=None):
      # Runs after fit's own validation, so the epoch's logs are complete here.
      score = self.model.evaluate(x_test, y_test, verbose=0, return_dict=True)
      fit_logs = {k: round(float(v), 5) for k, v in (logs or {}).items()}
      if timeline.record(epoch + 1, round(float(score["accuracy"]), 6), float(score["loss"]),
                         fit_logs=fit_logs):
        self.model.stop_training = True

  training_start = timeline.seconds()
  model.fit(x_train, y_train, batch_size=128, epochs=epochs, validation_split=0.1,
            verbose=0, callbacks=[TestEachEpoch()])
  versions = {"keras": keras.__version__, "numpy": np.__version__}
  if keras.backend.backend() == "tensorflow":
    import tensorflow as tf  # pylint: disable=g-import-not-at-top  (already loaded by keras)
    versions["tensorflow"] = tf.__version__
  return {"seconds_at_training_start": round(training_start, 3),
          "versions": versions,
          "keras_backend": keras.backend.backend(),
          # fit's split: the first ceil(90%) train, the rest validate.
          "train_examples": math.ceil(len(x_train) * 0.9),
          "validation_examples": len(x_train) - math.ceil(len(x_train) * 0.9),
          "test_examples": len(x_test)}


def main(argv):
  del argv
  if FLAGS.start_time is not None:
    start, measured_from = _MODULE_PERF - (_MODULE_WALL - FLAGS.start_time), "--start_time"
  elif _ALREADY_RUNNING is not None:
    start, measured_from = _MODULE_PERF - _ALREADY_RUNNING, "process start (/proc/self/stat)"
  else:
    start, measured_from = _MODULE_PERF, "module start (interpreter start-up not counted)"
  example = FLAGS.example
  epochs = FLAGS.epochs or SHIPPED_EPOCHS[example]
  timeline = Timeline(start, FLAGS.target, FLAGS.stop_at)
  run = run_torch if example == "torch" else run_keras
  figures = run(lambda: load_mnist(FLAGS.train_examples, FLAGS.test_examples), epochs,
                FLAGS.seed, timeline)
  wall_seconds = timeline.seconds()
  reached = timeline.reached()
  if reached:
    print(f"time to {FLAGS.target:.1%} test: {reached['seconds_since_start']:.1f} s "
          f"(epoch {reached['epoch']})")
  else:
    print(f"time to {FLAGS.target:.1%} test: not reached in {len(timeline.epochs)} epochs")
  if FLAGS.output:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    results = {
        "example": example,
        "source": SOURCES[example],
        "epochs": epochs,
        "epochs_run": len(timeline.epochs),
        "stop_at": FLAGS.stop_at,
        "seed": FLAGS.seed,
        "target": FLAGS.target,
        "time_to_target_seconds": reached["seconds_since_start"] if reached else None,
        "target_epoch": reached["epoch"] if reached else None,
        "timeline": timeline.epochs,
        "wall_seconds": round(wall_seconds, 3),
        "cpu_seconds": round(usage.ru_utime + usage.ru_stime, 2),
        "start_measured_from": measured_from,
        "seconds_before_module": round(_MODULE_PERF - start, 3),
        **figures,
        "python": platform.python_version(),
        "cpu_model": hardware.cpu_model(),
        "cpu_flags": hardware.cpu_flags(),
        "cpu_count": os.cpu_count(),
        # As run, and as given (None: unset); mnist_tf2's import sets TF_ENABLE_ONEDNN_OPTS
        # for the torch run too, where nothing reads it.
        "environment": {name: os.environ.get(name) for name in _ENVIRONMENT},
        "environment_given": _GIVEN_ENVIRONMENT,
        "load_average_1_5_15": [[round(x, 2) for x in load]
                                for load in (_LOAD_BEFORE, os.getloadavg())],
    }
    with open(FLAGS.output, "w") as f:
      json.dump(results, f, indent=2)
      f.write("\n")


if __name__ == "__main__":
  cli.run_script(main, __doc__)
