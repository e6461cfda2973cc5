"""Train a tutorial model: `python -m mnist_tf2.train --model=cnn [--preset=seed] [--flag=...]`.

Every field of `mnist_tf2.config.Config` is a flag; `--help` lists them, and
`--flagfile=FILE` reads flags from a file.
"""

import os
import sys

# Quieter TensorFlow start-up (no INFO lines); set before TensorFlow is imported.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app  # pylint: disable=g-import-not-at-top
from absl import flags
from absl import logging

from mnist_tf2 import config as config_lib
from mnist_tf2.errors import Preempted
from mnist_tf2.errors import one_line_errors

config_lib.define_flags()


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  # absl logs INFO by default; the tutorial's lines are the interesting output.
  logging.set_verbosity(logging.WARNING)
  try:
    with one_line_errors():
      config = config_lib.config_from_flags(flags.FLAGS)
      print("Config:", config.to_json().replace("\n", "\n  "), flush=True)
      from mnist_tf2 import loop  # pylint: disable=g-import-not-at-top  (imports TensorFlow)
      loop.train_and_evaluate(config)
  except Preempted as e:
    # The checkpoint is saved and the line saying so printed; see Preempted.
    sys.exit(e.exit_code)


if __name__ == "__main__":
  app.run(main)
