"""The workdir: the directory a training run writes and the later commands read.

  WORKDIR/config.json          the resolved config (written after the restore)
          checkpoints/ckpt-N.* the newest few checkpoints (checkpoints.py)
          results.json         final metrics, steps, wall time, weights digest
          train/ eval/<split>/ hparams/   TensorBoard runs (summaries.py)

On a multi-worker run only the chief writes here; the other workers write to a
temporary directory of their own (`worker_dir`).
"""

import contextlib
import glob
import json
import os
import re
import shutil
import tempfile

from mnist_tf2 import config as config_lib
from mnist_tf2 import distribute
from mnist_tf2.errors import UserError

# Fields that change which variables a checkpoint holds, or their shapes. (Not,
# e.g., dropout_rate, batch_size or learning_rate: a resumed run may change them.)
STRUCTURAL_FIELDS = ("model", "hidden1", "hidden2", "optimizer")
# Fields that decide which examples the stream holds, in which order: a resumed
# run with other values would mix another dataset or order into the run.
# {field: the data_source it matters for (None: every source)}.
DATA_FIELDS = {"data_source": None, "data_dir": "idx", "dataset": "tfds",
               "tfds_data_dir": "tfds", "fake_examples": "fake", "validation_size": None,
               "seed": None}


def config_path(workdir: str) -> str:
  return os.path.join(workdir, "config.json")


def prepare(config) -> None:
  """Creates the workdir and refuses one we cannot write or that holds another model.

  Nothing in an existing workdir is changed here (config.json is rewritten
  only once the checkpoint has been restored).
  """
  workdir = config.workdir
  saved_path = config_path(workdir)
  saved = saved_config(workdir)
  if saved is not None:
    differ = [name for name in STRUCTURAL_FIELDS
              if name in saved and saved[name] != getattr(config, name)]
    differ += [name for name, source in DATA_FIELDS.items()
               if name in saved and saved[name] != getattr(config, name)
               and source in (None, config.data_source)]
    if differ:
      raise UserError(
          f"--workdir={workdir} holds a run with "
          f"{', '.join(f'{name}={saved[name]!r}' for name in differ)} ({saved_path}), this run "
          f"has {', '.join(f'{name}={getattr(config, name)!r}' for name in differ)}; "
          "use a new --workdir (nothing was changed)")
  for directory in (workdir, os.path.join(workdir, "checkpoints")):
    try:
      os.makedirs(directory, exist_ok=True)
      probe = os.path.join(directory, ".write_test")
      with open(probe, "w") as f:
        f.write("ok")
      os.remove(probe)
    except OSError as e:
      where = "" if directory == workdir else f" ({directory})"
      raise UserError(f"cannot write to --workdir={workdir}{where}: {e.strerror or e}") from None


def saved_config(workdir: str) -> dict | None:
  """The config.json dict of the run in `workdir`, or None if it has none."""
  path = config_path(workdir)
  if not os.path.exists(path):
    return None
  try:
    with open(path) as f:
      return json.load(f)
  except (OSError, ValueError) as e:
    raise UserError(f"cannot read {path}: {e}; use a new --workdir") from None


def check_export_dir_apart(export_dir: str, workdir: str) -> None:
  """Refuses an --export_dir that holds the workdir: training fills it, so the
  export at the end would find it not empty."""
  export_path = os.path.abspath(export_dir)
  if os.path.commonpath([export_path, os.path.abspath(workdir)]) == export_path:
    raise UserError(f"--export_dir={export_dir} holds --workdir={workdir}; "
                    "export to a directory of its own (e.g. WORKDIR/export)")


def write_json(path, data) -> None:
  """Writes JSON atomically: a reader never sees a half-written file."""
  tmp = f"{path}.tmp"
  with open(tmp, "w") as f:
    json.dump(data, f, indent=2, sort_keys=True)
    f.write("\n")
  os.replace(tmp, path)


def load_config(workdir: str) -> config_lib.Config:
  """Reads `<workdir>/config.json` back into a validated Config.

  Fields this version does not know (a config written by a newer version) are
  ignored, and fields it lacks get their defaults: only the model fields matter
  for rebuilding the model, and those are checked by the restore itself.
  """
  if not os.path.isdir(workdir):
    raise UserError(f"--workdir={workdir} is not a directory")
  path = config_path(workdir)
  try:
    with open(path) as f:
      saved = json.load(f)
  except FileNotFoundError:
    raise UserError(f"{path} does not exist; is --workdir={workdir} a training workdir?"
                    ) from None
  except (OSError, ValueError) as e:
    # ValueError covers JSONDecodeError and UnicodeDecodeError.
    raise UserError(f"cannot read {path}: {e}") from None
  if not isinstance(saved, dict) or "model" not in saved:
    raise UserError(f"{path} is not a training config (no 'model' field)")
  known = {name: value for name, value in saved.items() if name in config_lib.FIELDS}
  try:
    config = config_lib.Config(**known)
    config_lib.validate(config)
  except (TypeError, UserError) as e:
    raise UserError(f"{path}: {e}") from None
  return config


@contextlib.contextmanager
def worker_dir(workdir: str, strategy):
  """Yields the directory this worker writes to: `workdir` on the chief.

  Every worker must take part in saving a checkpoint (the save is a collective
  op), but only the chief's copy is kept: the others write to a temporary
  directory, deleted on exit, as TF's multi-worker guide prescribes.
  """
  if distribute.is_chief(strategy):
    path = workdir
  else:
    remove_stale_worker_dirs()
    resolver = strategy.cluster_resolver
    path = tempfile.mkdtemp(
        prefix=f"mnist_tf2_{resolver.task_type}{resolver.task_id}_pid{os.getpid()}_")
  try:
    yield path
  finally:
    if path != workdir:
      shutil.rmtree(path, ignore_errors=True)


def remove_stale_worker_dirs() -> None:
  """Deletes the temporary directories of workers that died (kill -9) on this host.

  A worker's directory is removed when it ends, unless it is killed outright;
  its name holds its PID, so the next worker started here removes it.
  """
  for path in glob.glob(os.path.join(tempfile.gettempdir(), "mnist_tf2_*_pid*_*")):
    match = re.search(r"_pid(\d+)_", os.path.basename(path))
    if match and not _alive(int(match.group(1))):
      shutil.rmtree(path, ignore_errors=True)


def _alive(pid: int) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:  # Someone else's process.
    return True
  return True
