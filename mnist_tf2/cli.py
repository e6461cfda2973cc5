"""What the four commands (train, evaluate, export, predict) share.

`run(main, ...)` parses the absl flags and calls `main(argv)` with:

- `--help` (`-?`, `--helpshort`) listing the command's own flags, exit 0;
  `--helpfull` keeps absl's full list;
- a flag that does not parse, an unexpected positional argument, or a
  `UserError` from `main` as one `error: ...` line on stderr, exit 2;
- absl's Python logging at WARNING (the tutorial's lines are the output).

TensorFlow is imported only inside `main`, through `import_tensorflow()`, so
`--help` and bad flags answer at once. TensorFlow's C++ start-up lines (the
oneDNN notice, "Could not find cuda drivers", `E0000 ... failed call to
cuInit` on a machine without a GPU) ignore `TF_CPP_MIN_LOG_LEVEL` in TF 2.21;
`import_tensorflow` captures file descriptor 2 while TensorFlow loads and
finds its devices, and writes back every line that is not one of those known
notices. `--tf_logs` (or `TF_CPP_MIN_LOG_LEVEL=0` in the environment) shows all of
TensorFlow's own lines instead, INFO included.
"""

import contextlib
import os
import re
import sys
import tempfile
import textwrap
import warnings
from typing import Callable, Iterable

from absl import app
from absl import flags
from absl import logging

from mnist_tf2 import hardware
from mnist_tf2.errors import UserError
from mnist_tf2.errors import one_line_errors

FLAGS = flags.FLAGS

# Flags that need TensorFlow's own log lines; a command that defines one of
# them gets them when it is set (--log_device_placement: eager ops' placements
# are INFO lines, see devices.set_log_device_placement).
TF_LOG_FLAGS = ("tf_logs", "log_device_placement")

# TensorFlow's start-up notices on a machine without a GPU: not errors, and
# printed before its log level applies.
_START_UP_NOISE = re.compile("|".join([
    r"All log messages before absl::InitializeLog\(\) is called",
    r"cudart_stub\.cc.*Could not find cuda drivers",
    r"cuda_platform\.cc.*failed call to cuInit",
    r"cuda_(dnn|fft|blas)\.cc.*Unable to register",
    r"computation_placer\.cc.*already registered",
    r"oneDNN custom operations are on",
    r"cpu_feature_guard\.cc",
    r"To enable the following instructions:",
    r"TF-TRT Warning: Could not find TensorRT",
]))


def define_workdir_flag(help_text: str) -> None:
  """--workdir with its tutorial alias --train_dir, as every command spells it."""
  flags.DEFINE_string("workdir", "", help_text)
  flags.DEFINE_alias("train_dir", "workdir")


def tf_logs_wanted() -> bool:
  """Whether TensorFlow's own log lines should be shown."""
  if os.environ.get("TF_CPP_MIN_LOG_LEVEL") == "0":
    return True  # The user asked TensorFlow for everything.
  return any(name in FLAGS and FLAGS[name].value for name in TF_LOG_FLAGS)


def import_tensorflow():
  """Imports TensorFlow (and Keras) without its C++ start-up notices; returns it.

  Call it before anything imports TensorFlow. Lines TensorFlow writes while
  it loads and lists its devices go to a temporary file; all but the known
  notices (`_START_UP_NOISE`) are then written to stderr, so a real problem
  still shows. With `tf_logs_wanted()`, nothing is captured.
  """
  # Also here, not only in mnist_tf2/__init__.py: a directory named mnist_tf2 in
  # the working directory (e.g. /tmp/mnist_tf2, the default workdirs' parent) makes
  # Python import the package without running its __init__.py.
  hardware.enable_onednn()
  if "tensorflow" in sys.modules or tf_logs_wanted():
    if tf_logs_wanted():
      os.environ["TF_CPP_MIN_LOG_LEVEL"] = "0"
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
    return tf
  # Lines written after start-up respect the level: no INFO or WARNING lines.
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
  # tf.data warns on every distributed dataset whose options it cannot carry
  # across a serialization boundary; ours sets none that matter there.
  warnings.filterwarnings("ignore", message="To make it possible to preserve tf.data options")
  with _captured_stderr() as captured:
    import keras  # pylint: disable=g-import-not-at-top,unused-import
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
    tf.config.list_physical_devices()  # Loads the device plugins (the cuInit line).
  _write_back(captured())
  return tf


def _write_back(lines: list[str]) -> None:
  """Writes the captured lines to stderr, except TensorFlow's start-up notices."""
  for line in lines:
    if not _START_UP_NOISE.search(line):
      sys.stderr.write(line)
  sys.stderr.flush()


@contextlib.contextmanager
def _captured_stderr():
  """Sends file descriptor 2 (C++ and Python alike) to a temporary file."""
  lines = []
  sys.stderr.flush()
  saved = os.dup(2)
  with tempfile.TemporaryFile(mode="w+b") as capture:
    os.dup2(capture.fileno(), 2)
    try:
      yield lambda: lines
    finally:
      sys.stderr.flush()
      os.dup2(saved, 2)
      os.close(saved)
      capture.seek(0)
      lines.extend(capture.read().decode("utf-8", "replace").splitlines(keepends=True))


def run(main: Callable[[list[str]], None], *, help_text: Callable[[], str],
        positional: bool = False) -> None:
  """Runs a command: parses the flags, then `main(argv)` with one-line errors.

  Args:
    main: the command; `argv[0]` is the program, the rest positional arguments.
    help_text: returns what `--help` prints (the command's own flags).
    positional: whether the command takes positional arguments (file names).
  """
  flags.DEFINE_bool("tf_logs", False, "Show TensorFlow's own log lines (C++ start-up "
                    "notices, INFO lines); by default only this program's lines are "
                    "printed. TF_CPP_MIN_LOG_LEVEL=0 in the environment does the same.")
  _define_help(help_text)

  def checked_main(argv):
    logging.set_verbosity(logging.WARNING)
    with one_line_errors():
      if len(argv) > 1 and not positional:
        raise UserError(f"unexpected argument(s): {' '.join(argv[1:])} (flags are written "
                        "--name=value; see --help)")
      main(argv)

  app.run(checked_main, flags_parser=_parse_flags)


def run_script(main: Callable[[list[str]], None], doc: str) -> None:
  """`run` for a script of scripts/: --help shows `doc` and the flags the script defines."""
  def help_text():
    # absl files the flags a script defines under its path (the __main__ module).
    names = [flag.name for flag in FLAGS.get_key_flags_for_module(sys.argv[0])]
    return command_help(doc, names)
  run(main, help_text=help_text)


def _parse_flags(argv: list[str]) -> list[str]:
  """absl's parser, with a flag it cannot parse as one `error:` line, exit 2."""
  try:
    return FLAGS(argv)
  except flags.Error as e:
    print(f"error: {e} (see --help)", file=sys.stderr)
    sys.exit(2)


class _HelpFlag(app.HelpFlag):
  """--help: the command's own flags, on stdout, exit 0."""

  def __init__(self, help_text, name=app.HelpFlag.NAME, short_name=app.HelpFlag.SHORT_NAME):
    flags.BooleanFlag.__init__(self, name, False, "show this command's flags",
                               short_name=short_name, allow_hide_cpp=True)
    self._help_text = help_text

  def parse(self, arg):
    if self._parse(arg):
      sys.stdout.write(self._help_text().rstrip() + "\n\nTry --helpfull for absl's flags too.\n")
      sys.stdout.flush()
      sys.exit(0)


def _define_help(help_text: Callable[[], str]) -> None:
  app.define_help_flags()  # absl's --helpfull and friends; idempotent.
  for name in ("help", "?", "helpshort"):
    if name in FLAGS:
      delattr(FLAGS, name)
  flags.DEFINE_flag(_HelpFlag(help_text))
  flags.DEFINE_flag(_HelpFlag(help_text, name="helpshort", short_name=None))


def format_flags(names: Iterable[str], title: str = "Flags") -> str:
  """`title:` then one `--name (default: value)` entry per flag, help indented below."""
  lines = [f"{title}:"]
  for name in names:
    flag = FLAGS[name]
    lines.append(f"  --{name}  (default: {_shown(flag.default)})")
    lines.extend(textwrap.wrap(flag.help, width=98, initial_indent="      ",
                               subsequent_indent="      "))
    if name == "workdir":
      lines.append("  --train_dir  alias of --workdir (the tutorials' name)")
  return "\n".join(lines)


def _shown(value) -> str:
  return "''" if value == "" else str(value)


def command_help(doc: str, names: Iterable[str]) -> str:
  """A command's --help: its docstring, its flags, and --tf_logs."""
  return f"{doc.strip()}\n\n{format_flags([*names, 'tf_logs'])}"
