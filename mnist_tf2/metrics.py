"""Loss and accuracy: one definition for the training log, evaluation and TensorBoard.

Compiled code (`Trainer.run_steps`, `evaluate.Evaluator`) returns sums; a
`Metrics` adds them up and reads the means. The names are the same everywhere:
the `Step N: loss = ...` line, the `Num examples / Num correct / Precision @ 1`
lines, results.json and the `loss`/`accuracy` summaries.
"""

import dataclasses

import numpy as np

from mnist_tf2.constants import NUM_CLASSES
from mnist_tf2.constants import SPLIT_TITLES


@dataclasses.dataclass
class Metrics:
  """Sums since the last reset (a new `Metrics()` is a reset).

  `loss` is the mean of `loss_count` loss terms: per-step batch means in
  training, per-example losses in evaluation. Evaluation also counts the
  confusion matrix, int64 [NUM_CLASSES, NUM_CLASSES] of (label, prediction).
  """
  loss_sum: float = 0.0
  loss_count: int = 0
  num_correct: int = 0
  num_examples: int = 0
  confusion_matrix: np.ndarray | None = None

  def update(self, sums) -> "Metrics":
    """Adds `sums`' loss_sum, loss_count, num_correct and num_examples (numbers or tensors)."""
    self.loss_sum += float(sums["loss_sum"])
    self.loss_count += int(sums["loss_count"])
    self.num_correct += int(sums["num_correct"])
    self.num_examples += int(sums["num_examples"])
    return self

  @classmethod
  def from_confusion(cls, loss_sum, matrix) -> "Metrics":
    """Evaluation's metrics: the examples are the matrix's sum, the correct ones its diagonal."""
    matrix = np.asarray(matrix, np.int64)
    return cls(loss_sum=float(loss_sum), loss_count=int(matrix.sum()),
               num_correct=int(np.trace(matrix)), num_examples=int(matrix.sum()),
               confusion_matrix=matrix)

  @property
  def loss(self) -> float:
    return self.loss_sum / max(self.loss_count, 1)

  @property
  def accuracy(self) -> float:
    """Precision @ 1: the fraction of examples whose top class is the label."""
    return self.num_correct / max(self.num_examples, 1)

  def result(self) -> dict:
    """The numbers results.json keeps: num_examples, num_correct, accuracy, loss."""
    return {"num_examples": self.num_examples, "num_correct": self.num_correct,
            "accuracy": self.accuracy, "loss": self.loss}


def format_eval(split, result) -> str:
  """The tutorial's evaluation lines for one split, from a `Metrics.result()` dict."""
  return (f"{SPLIT_TITLES[split]} Data Eval:\n"
          f"  Num examples: {result['num_examples']}  Num correct: {result['num_correct']}"
          f"  Precision @ 1: {result['accuracy']:0.4f}")


def format_confusion(matrix) -> str:
  """A text table: one row per true label, one column per predicted label."""
  width = max(5, len(str(int(np.max(matrix)))) + 1)
  lines = ["  Confusion matrix (rows: label, columns: prediction):",
           "     " + "".join(f"{p:>{width}}" for p in range(NUM_CLASSES))]
  for label, row in enumerate(matrix):
    lines.append(f"  {label:>2} " + "".join(f"{int(n):>{width}}" for n in row))
  return "\n".join(lines)
