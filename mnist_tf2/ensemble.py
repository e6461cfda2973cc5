"""Ensembles: several trained runs used as one model that averages their probabilities.

`python -m mnist_tf2.evaluate --workdir=A,B,C` and `python -m mnist_tf2.export
--workdir=A,B,C --export_dir=E` build a `models.Ensemble` of the newest checkpoints of
the runs A, B and C. The members may be different models (a cnn with an mlp),
trained in any precision, but they must have trained on the same data (the same
source and validation split): otherwise "validation" and "test" would name
different images for different members.
"""

import os

from mnist_tf2 import config as config_lib
from mnist_tf2.errors import UserError


def parse_workdirs(text: str) -> list[str]:
  """'A,B' -> ['A', 'B']; refuses an empty list and repeats (a member counted twice)."""
  workdirs = [name.strip() for name in text.split(",") if name.strip()]
  if not workdirs:
    raise UserError("--workdir is empty; name the training workdir(s), comma-separated")
  repeated = sorted({name for name in workdirs if workdirs.count(name) > 1})
  if repeated:
    raise UserError(f"--workdir names {', '.join(repeated)} more than once")
  return workdirs


def check_directories(workdirs: list[str]) -> None:
  """Raises a one-line UserError for a workdir that is not a directory, or a repeat.

  The commands call it before TensorFlow loads, so a typo answers at once.
  """
  seen = {}
  for name in workdirs:
    if not os.path.isdir(name):
      raise UserError(f"--workdir={name} is not a directory")
    # The same run under two spellings (a trailing slash, relative, a symlink).
    real = os.path.realpath(name)
    if real in seen:
      raise UserError(f"--workdir names the same run twice: {seen[real]} and {name}")
    seen[real] = name


def data_fields(config) -> dict:
  """The config fields that decide which images the splits hold."""
  fields = {"data_source": config.data_source, "validation_size": config.validation_size}
  for name, source in config_lib.SOURCE_ONLY_FIELDS.items():
    if source == config.data_source:
      fields[name] = getattr(config, name)
  return fields


def check_same_data(workdirs, configs) -> None:
  """Raises a one-line UserError unless every run trained on the first run's data."""
  expected = data_fields(configs[0])
  for workdir, config in zip(workdirs[1:], configs[1:]):
    found = data_fields(config)
    if found != expected:
      differ = [name for name in {**expected, **found} if expected.get(name) != found.get(name)]

      def shown(fields):
        # Only the fields of the member's own source: a bundled run has no fake_examples.
        return ", ".join(f"{name}={fields[name]!r}" for name in differ if name in fields)

      raise UserError(f"ensemble members must share the data: {workdirs[0]} has "
                      f"{shown(expected)}, {workdir} has {shown(found)}")


def restore_members(workdirs) -> list:
  """Restores every run's newest checkpoint (`restore.Restored`s), checking they share the data.

  Raises:
    UserError: a run that cannot be restored (see `restore.restore_model`), or
      runs trained on different data.
  """
  # pylint: disable=g-import-not-at-top  (TensorFlow: only once the flags are checked)
  from mnist_tf2 import restore
  from mnist_tf2 import workdir as workdir_lib
  configs = [workdir_lib.load_config(workdir) for workdir in workdirs]
  check_same_data(workdirs, configs)  # Before the (slower) restores.
  return [restore.restore_model(workdir) for workdir in workdirs]

