"""Does averaging a run's last checkpoints help? Evaluates them alone and averaged.

    python scripts/average_checkpoints.py --workdir=/tmp/mnist_tf2/reproduce/cnn-best-seed0

For the newest checkpoint, then the mean weights of the newest 2, 3, ... kept
checkpoints (a cheap stand-in for an exponential moving average of the
weights, or stochastic weight averaging, over the end of a run), prints one
line per split: correct / examples. Only measures; writes nothing.
"""

import os
import sys

from absl import flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from mnist_tf2 import cli  # pylint: disable=g-import-not-at-top

flags.DEFINE_string("workdir", "", "The training workdir whose checkpoints to average.")
flags.DEFINE_list("splits", ["validation", "test"], "Splits to evaluate.")
FLAGS = flags.FLAGS


def main(argv):
  del argv
  # pylint: disable=g-import-not-at-top  (TensorFlow: imported after the flags)
  cli.import_tensorflow()
  import numpy as np
  import tensorflow as tf
  from mnist_tf2 import datasets
  from mnist_tf2 import models
  from mnist_tf2 import workdir as workdir_lib
  from mnist_tf2.errors import UserError
  from mnist_tf2.evaluate import Evaluator

  if not FLAGS.workdir:
    raise UserError("--workdir is empty; name the training workdir whose checkpoints to average")
  config = workdir_lib.load_config(FLAGS.workdir)
  state = tf.train.get_checkpoint_state(os.path.join(FLAGS.workdir, "checkpoints"))
  if not state or not state.all_model_checkpoint_paths:
    raise UserError(f"no checkpoints in {FLAGS.workdir}/checkpoints")
  paths = list(state.all_model_checkpoint_paths)[::-1]  # Newest first.
  if len(paths) == 1:
    # A short run keeps the preset's --checkpoint_every, so it may have saved once.
    print(f"only one checkpoint kept ({os.path.basename(paths[0])}): nothing to average; "
          "train with a smaller --checkpoint_every for more", flush=True)
  model = models.create_model(config)
  checkpoint = tf.train.Checkpoint(model=model)
  weights = []  # One list of arrays per checkpoint, newest first.
  for path in paths:
    checkpoint.restore(path).expect_partial().assert_existing_objects_matched()
    weights.append([variable.numpy() for variable in model.weights])
  data = datasets.load_splits(config)._asdict()
  evaluator = Evaluator(model)
  for count in range(1, len(paths) + 1):
    for variable, *values in zip(model.weights, *weights[:count]):
      variable.assign(np.mean(values, axis=0))
    steps = ", ".join(path.rsplit("-", 1)[-1] for path in paths[:count])
    results = []
    for split in FLAGS.splits:
      metrics = evaluator(datasets.eval_dataset(data[split], batch_size=config.eval_batch_size))
      results.append(f"{split} {metrics.num_correct}/{metrics.num_examples}")
    print(f"mean of step(s) {steps}: {', '.join(results)}", flush=True)


if __name__ == "__main__":
  cli.run_script(main, __doc__)
