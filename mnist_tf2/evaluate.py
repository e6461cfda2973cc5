"""Evaluate a trained model: `python -m mnist_tf2.evaluate --workdir=W [--splits=test]`.

Restores the newest checkpoint of the run in the workdir and, for each chosen
split of the data the run trained on, prints the tutorial's evaluation lines
and the 10x10 confusion matrix (rows: true label, columns: predicted label).
"""

import os

# Quieter TensorFlow start-up (no INFO lines); set before TensorFlow is imported.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app  # pylint: disable=g-import-not-at-top
from absl import flags
from absl import logging
import numpy as np
import tensorflow as tf

from mnist_tf2 import datasets
from mnist_tf2 import loop
from mnist_tf2 import restore
from mnist_tf2.errors import UserError
from mnist_tf2.errors import one_line_errors
from mnist_tf2.models import NUM_CLASSES

SPLITS = ("train", "validation", "test")


def parse_splits(text: str) -> list[str]:
  """'test,train' -> ['test', 'train'], refusing unknown or no names."""
  names = [name.strip() for name in text.split(",") if name.strip()]
  if not names:
    raise UserError(f"--splits={text!r} names no split; choose from {', '.join(SPLITS)}")
  for name in names:
    if name not in SPLITS:
      raise UserError(f"unknown split {name!r} in --splits; choose from {', '.join(SPLITS)}")
  return list(dict.fromkeys(names))  # Drops repeats, keeps the order given.


def confusion_matrix(model, dataset: tf.data.Dataset) -> np.ndarray:
  """Counts (label, prediction) pairs over a finite dataset of (images, labels)."""

  @tf.function
  def count(dataset):
    matrix = tf.zeros([NUM_CLASSES, NUM_CLASSES], tf.int64)
    for images, labels in dataset:
      predictions = tf.argmax(model(images, training=False), axis=-1, output_type=tf.int32)
      matrix += tf.math.confusion_matrix(labels, predictions, num_classes=NUM_CLASSES,
                                         dtype=tf.int64)
    return matrix

  return count(dataset).numpy()


def metrics_from_confusion(matrix: np.ndarray) -> dict:
  """The counts `loop.format_eval` prints: examples, correct (the diagonal), accuracy."""
  num_examples = int(matrix.sum())
  num_correct = int(np.trace(matrix))
  return {"num_examples": num_examples, "num_correct": num_correct,
          "accuracy": num_correct / max(num_examples, 1)}


def format_confusion(matrix: np.ndarray) -> str:
  """A text table: one row per true label, one column per predicted label."""
  width = max(5, len(str(int(matrix.max()))) + 1)
  lines = ["  Confusion matrix (rows: label, columns: prediction):",
           "     " + "".join(f"{p:>{width}}" for p in range(NUM_CLASSES))]
  for label, row in enumerate(matrix):
    lines.append(f"  {label:>2} " + "".join(f"{int(n):>{width}}" for n in row))
  return "\n".join(lines)


def evaluate_workdir(workdir: str, splits=SPLITS) -> dict:
  """Evaluates the newest checkpoint of `workdir` on `splits`, printing as it goes.

  Returns:
    {split: {"num_examples", "num_correct", "accuracy", "confusion_matrix"}}
    for every requested split that has examples.
  """
  restored = restore.restore_model(workdir)
  config = restored.config
  step = "" if restored.step is None else f" (step {restored.step})"
  print(f"Evaluating the {config.model} model of {restored.checkpoint}{step} on "
        f"--data_source={config.data_source}")
  data = datasets.load_splits(config)._asdict()
  results = {}
  for name in splits:
    split = data[name]
    if not len(split.labels):
      print(f"{loop.SPLIT_TITLES[name]} Data Eval: the split is empty, skipped")
      continue
    matrix = confusion_matrix(restored.model, datasets.eval_dataset(
        split, batch_size=config.eval_batch_size))
    results[name] = {**metrics_from_confusion(matrix), "confusion_matrix": matrix.tolist()}
    print(loop.format_eval(name, results[name]))
    print(format_confusion(matrix), flush=True)
  return results


def define_flags() -> None:
  # Defined only when run as the command: train.py defines a --workdir too, and
  # a process may import both modules.
  flags.DEFINE_string("workdir", "", "The training workdir (its config.json and checkpoints/).")
  flags.DEFINE_alias("train_dir", "workdir")
  flags.DEFINE_string("splits", ",".join(SPLITS),
                      "Comma-separated splits to evaluate: train, validation, test.")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  logging.set_verbosity(logging.WARNING)
  flag_values = flags.FLAGS
  with one_line_errors():
    splits = parse_splits(flag_values.splits)
    if not flag_values.workdir:
      raise UserError("--workdir is empty; name the training workdir to evaluate")
    evaluate_workdir(flag_values.workdir, splits)


if __name__ == "__main__":
  define_flags()
  app.run(main)
