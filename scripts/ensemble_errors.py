"""How alike are an ensemble's members? Which examples each misses, and together.

    python scripts/ensemble_errors.py --workdir=R/cnn-best-seed0,R/cnn-best-seed1,R/cnn-best-seed2

An ensemble (`python -m mnist_tf2.evaluate --workdir=A,B,C`) only fixes the
examples some members get right: an example every member misses stays an error
whatever they vote. Per split, prints each member's errors, how many examples at
least one and every member missed, the ensemble's errors (the mean of the
members' probabilities, as `evaluate` and `export` compute it), and how many
members missed each of the ensemble's errors. Only measures; writes nothing.
"""

import os
import sys

from absl import flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from mnist_tf2 import cli  # pylint: disable=g-import-not-at-top

flags.DEFINE_string("workdir", "", "Comma-separated training workdirs: the ensemble's members.")
flags.DEFINE_list("splits", ["test"], "Splits to analyse: train, validation, test.")
FLAGS = flags.FLAGS


def member_errors(probabilities, labels):
  """Which members miss which examples, and which the ensemble misses.

  Args:
    probabilities: float `[members, examples, 10]`, each member's softmax output.
    labels: int `[examples]`.

  Returns:
    (bool `[members, examples]`: member m's most probable class is wrong,
     bool `[examples]`: the mean of the members' probabilities is wrong).
  """
  wrong = probabilities.argmax(-1) != labels
  return wrong, probabilities.mean(0).argmax(-1) != labels


def report(name, wrong, ensemble_wrong, workdirs):
  """The lines printed for one split (see the module docstring)."""
  missed_by = wrong.sum(0)
  lines = [f"{name}: {wrong.shape[1]} examples"]
  lines += [f"  member {number} ({workdir}): {errors} errors"
            for number, (workdir, errors) in enumerate(zip(workdirs, wrong.sum(1)), 1)]
  lines.append(f"  missed by at least one member: {(missed_by > 0).sum()}; by every member: "
               f"{(missed_by == len(workdirs)).sum()}; by the ensemble: {ensemble_wrong.sum()}")
  members = len(workdirs)
  counts = [f"{(missed_by[ensemble_wrong] == count).sum()} "
            + ("by all " if count == members > 1 else "by ")
            + f"{count} member{'s' if count != 1 else ''}"
            for count in range(members + 1) if (missed_by[ensemble_wrong] == count).any()]
  lines.append(f"  the ensemble's errors, missed by how many members: "
               f"{', '.join(counts) or 'none'}")
  return lines


def main(argv):
  del argv
  # pylint: disable=g-import-not-at-top  (TensorFlow: imported after the flags)
  from mnist_tf2 import ensemble
  from mnist_tf2 import evaluate
  splits = evaluate.parse_splits(",".join(FLAGS.splits))
  workdirs = ensemble.parse_workdirs(FLAGS.workdir)
  ensemble.check_directories(workdirs)
  cli.import_tensorflow()
  import numpy as np
  import tensorflow as tf
  from mnist_tf2 import datasets
  members = ensemble.restore_members(workdirs)
  data = datasets.load_splits(members[0].config)._asdict()
  for name in splits:
    split = data[name]
    if not len(split.labels):
      print(f"{name}: the split is empty, skipped")
      continue
    probabilities = np.stack([
        np.concatenate([tf.nn.softmax(tf.cast(member.model(images, training=False),
                                              tf.float32)).numpy()
                        for images, _ in datasets.eval_dataset(split, batch_size=500)])
        for member in members])
    wrong, ensemble_wrong = member_errors(probabilities, split.labels)
    print("\n".join(report(name, wrong, ensemble_wrong, workdirs)), flush=True)


if __name__ == "__main__":
  cli.run_script(main, __doc__)
