"""Train a tutorial model: `python -m mnist_tf2.train --model=cnn [--preset=seed] [--flag=...]`.

Every field of `mnist_tf2.config.Config` is a flag; `--help` lists them, and
`--flagfile=FILE` reads flags from a file. The run starts with a short
summary (model, preset, what the flags changed, workdir); the full config is
written to <workdir>/config.json.
"""

import sys

from absl import flags

from mnist_tf2 import cli
from mnist_tf2 import config as config_lib
from mnist_tf2.errors import Preempted

config_lib.define_flags()


def summary(resolved: config_lib.Resolved) -> str:
  """The lines a run starts with: what runs, what the flags changed, where it goes."""
  config = resolved.config

  def flag(name, value):
    if value is True:
      return f"--{name}"
    was = resolved.preset_values.get(name)
    return f"--{name}={value}" + ("" if was in (None, "") else f" (instead of {was})")

  given = ", ".join(flag(name, value) for name, value in resolved.changed().items())
  return "\n".join([f"Training {config.model}, preset {config.preset}, in {config.workdir} "
                    "(full config: config.json there)",
                    f"Your flags: {given or 'none'}", *resolved.notes])


def main(argv):
  del argv  # cli.run refused positional arguments.
  resolved = config_lib.resolve_flags(flags.FLAGS)
  print(summary(resolved), flush=True)
  cli.import_tensorflow()
  from mnist_tf2 import loop  # pylint: disable=g-import-not-at-top  (imports TensorFlow)
  try:
    loop.train_and_evaluate(resolved.config)
  except Preempted as e:
    # The checkpoint is saved and the line saying so printed; see Preempted.
    sys.exit(e.exit_code)


if __name__ == "__main__":
  cli.run(main, help_text=lambda: f"{__doc__.strip()}\n\n{config_lib.flags_help()}\n\n"
                              f"{cli.format_flags(['tf_logs'], 'Output')}")
