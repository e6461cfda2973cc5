"""Evaluate a trained model: `python -m mnist_tf2.evaluate --workdir=W [--splits=test]`.

Restores the newest checkpoint of the run in the workdir and, for each chosen
split of the data the run trained on, prints the tutorial's evaluation lines
and the 10x10 confusion matrix (rows: true label, columns: predicted label).
"""

import sys

from absl import flags

from mnist_tf2 import cli
from mnist_tf2 import devices
from mnist_tf2.constants import NUM_CLASSES
from mnist_tf2.constants import SPLIT_TITLES
from mnist_tf2.constants import SPLITS
from mnist_tf2.ensemble import check_directories
from mnist_tf2.ensemble import parse_workdirs
from mnist_tf2.errors import UserError
from mnist_tf2.metrics import Metrics
from mnist_tf2.metrics import format_confusion
from mnist_tf2.metrics import format_eval


def parse_splits(text: str) -> list[str]:
  """'test,train' -> ['test', 'train'], refusing unknown or no names."""
  names = [name.strip() for name in text.split(",") if name.strip()]
  if not names:
    raise UserError(f"--splits={text!r} names no split; choose from {', '.join(SPLITS)}")
  for name in names:
    if name not in SPLITS:
      raise UserError(f"unknown split {name!r} in --splits; choose from {', '.join(SPLITS)}")
  return list(dict.fromkeys(names))  # Drops repeats, keeps the order given.


class Evaluator:
  """Evaluates a model on every example of a finite dataset exactly once.

  Training calls it on its distributed evaluation datasets, this command on
  a plain one (the default strategy). (TensorFlow is imported in the methods,
  so that the command's --help does not load it.)
  """

  def __init__(self, model, strategy=None):
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
    self.model = model
    self.strategy = strategy or tf.distribute.get_strategy()
    self._run = tf.function(self._run)

  def __call__(self, dataset) -> Metrics:
    """Returns the `Metrics` of `dataset`, with its confusion matrix."""
    loss_sum, matrix = self._run(dataset)
    return Metrics.from_confusion(loss_sum.numpy(), matrix.numpy())

  def eval_step(self, images, labels):
    """This replica's summed loss and confusion matrix on one batch."""
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
    from mnist_tf2 import trainer as trainer_lib  # pylint: disable=g-import-not-at-top
    logits = tf.cast(self.model(images, training=False), tf.float32)
    loss = tf.reduce_sum(trainer_lib.cross_entropy(labels, logits))
    predictions = tf.argmax(logits, -1, output_type=tf.int32)
    matrix = tf.math.confusion_matrix(labels, predictions, num_classes=NUM_CLASSES,
                                      dtype=tf.int64)
    return loss, matrix

  def _run(self, dataset):
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
    loss_sum = tf.constant(0.0)
    matrix = tf.zeros([NUM_CLASSES, NUM_CLASSES], tf.int64)
    for images, labels in dataset:
      batch_loss, batch_matrix = (
          self.strategy.reduce(tf.distribute.ReduceOp.SUM, value, axis=None)
          for value in self.strategy.run(self.eval_step, args=(images, labels)))
      loss_sum += batch_loss
      matrix += batch_matrix
    return loss_sum, matrix


def evaluate_workdir(workdir: str, splits=SPLITS) -> dict:
  """Evaluates the newest checkpoint of `workdir` on `splits`, printing as it goes.

  Returns:
    {split: {"num_examples", "num_correct", "accuracy", "confusion_matrix"}}
    for every requested split that has examples.
  """
  # pylint: disable=g-import-not-at-top  (TensorFlow: imported after the flags)
  from mnist_tf2 import datasets
  from mnist_tf2 import restore
  restored = restore.restore_model(workdir)
  config = restored.config
  step = "" if restored.step is None else f" (step {restored.step})"
  print(f"Evaluating the {config.model} model of {restored.checkpoint}{step} on "
        f"--data_source={config.data_source}")
  data = datasets.load_splits(config)._asdict()
  evaluator = Evaluator(restored.model)
  results = {}
  for name in splits:
    split = data[name]
    if not len(split.labels):
      print(f"{SPLIT_TITLES[name]} Data Eval: the split is empty, skipped")
      continue
    metrics = evaluator(datasets.eval_dataset(split, batch_size=config.eval_batch_size))
    results[name] = {"num_examples": metrics.num_examples, "num_correct": metrics.num_correct,
                     "accuracy": metrics.accuracy,
                     "confusion_matrix": metrics.confusion_matrix.tolist()}
    print(format_eval(name, results[name]))
    print(format_confusion(metrics.confusion_matrix), flush=True)
  return results


def evaluate_ensemble(workdirs, splits=SPLITS) -> dict:
  """Evaluates the ensemble of the newest checkpoints of `workdirs`, and each member.

  The ensemble averages the members' probabilities (`models.Ensemble`). Prints,
  per split, the ensemble's eval lines and confusion matrix, then each member's
  eval lines. Every evaluation sees every example of the split once.

  Returns:
    {split: {"ensemble": report, "members": [report, ...]}}, each report as
    `evaluate_workdir`'s, members in the order of `workdirs`.

  Raises:
    UserError: a run cannot be restored, or the runs trained on different data.
  """
  # pylint: disable=g-import-not-at-top  (TensorFlow: imported after the flags)
  from mnist_tf2 import datasets
  from mnist_tf2 import ensemble as ensemble_lib
  from mnist_tf2 import models
  from mnist_tf2 import restore
  members = ensemble_lib.restore_members(workdirs)
  ensemble = models.Ensemble([member.model for member in members])
  config = members[0].config
  print(f"Evaluating an ensemble of {len(members)} models (the mean of their probabilities) "
        f"on --data_source={config.data_source}:")
  for number, member in enumerate(members, 1):
    step = "" if member.step is None else f" (step {member.step})"
    print(f"  member {number}: the {member.config.model} model of {member.checkpoint}{step}")
  evaluators = [Evaluator(model) for model in (ensemble, *ensemble.members)]
  data = datasets.load_splits(config)._asdict()
  results = {}
  for name in splits:
    if not len(data[name].labels):
      print(f"{SPLIT_TITLES[name]} Data Eval: the split is empty, skipped")
      continue
    dataset = datasets.eval_dataset(data[name], batch_size=config.eval_batch_size)
    # One tf.function per evaluator, each traced once per split: from five members on,
    # TensorFlow warns of "excessive retracing", which is expected here.
    with restore.tf_warnings_silenced():
      ensemble_metrics, *member_metrics = [evaluate(dataset) for evaluate in evaluators]
    results[name] = {"ensemble": _report(ensemble_metrics),
                     "members": [_report(metrics) for metrics in member_metrics]}
    print(f"Ensemble of {len(members)}: {format_eval(name, results[name]['ensemble'])}")
    print(format_confusion(ensemble_metrics.confusion_matrix))
    for number, report in enumerate(results[name]["members"], 1):
      print(f"Member {number}: {format_eval(name, report)}")
    sys.stdout.flush()
  return results


def _report(metrics: Metrics) -> dict:
  """The JSON-able figures of one evaluation: `Metrics.result()` and the confusion matrix."""
  return {**metrics.result(), "confusion_matrix": metrics.confusion_matrix.tolist()}


def define_flags() -> None:
  # Defined only when run as the command: train.py defines a --workdir too, and
  # a process may import both modules.
  cli.define_workdir_flag("The training workdir (its config.json and checkpoints/); several, "
                          "comma-separated, evaluate their ensemble (the mean of their "
                          "probabilities) and each of them.")
  flags.DEFINE_string("splits", ",".join(SPLITS),
                      "Comma-separated splits to evaluate: train, validation, test.")
  devices.define_log_device_placement_flag()


def main(argv):
  del argv  # cli.run refused positional arguments.
  splits = parse_splits(flags.FLAGS.splits)
  workdirs = parse_workdirs(flags.FLAGS.workdir)
  check_directories(workdirs)
  cli.import_tensorflow()
  devices.set_log_device_placement(flags.FLAGS.log_device_placement)
  if len(workdirs) == 1:
    evaluate_workdir(workdirs[0], splits)
  else:
    evaluate_ensemble(workdirs, splits)


if __name__ == "__main__":
  define_flags()
  cli.run(main, help_text=lambda: cli.command_help(
      __doc__, ["workdir", "splits", "log_device_placement"]))
