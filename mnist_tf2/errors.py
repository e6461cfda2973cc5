"""The one error type users see as a single line instead of a traceback."""

import contextlib
import re
import sys


class UserError(Exception):
  """Bad input from the user: a flag, a file, a checkpoint, an image.

  Commands catch it at the top, print `error: <message>` on one line and exit
  with status 2. Messages name the thing that was wrong and, where it helps,
  what was expected and what was found.
  """


class DataError(UserError):
  """A data file or data source that cannot be used."""


class Preempted(Exception):
  """Training stopped at a signal (SIGTERM, SIGINT) after saving a checkpoint.

  Not an error: re-running the same command resumes. `train` exits with status
  128 + the signal number (143 for SIGTERM, 130 for SIGINT), what a shell
  reports for a process stopped by that signal, so `train && export` stops there
  and a scheduler sees an interrupted job, not a finished one.
  """

  def __init__(self, signum):
    super().__init__(f"stopped by signal {signum}")
    self.signum = signum
    self.exit_code = 128 + signum


def first_line(error) -> str:
  """The gist of an exception for a one-line message: its first line, without
  TensorFlow's op decorations; the exception's type name if it has no text."""
  text = str(error).strip()
  text = text.splitlines()[0] if text else type(error).__name__
  return re.sub(r"^\{\{function_node [^}]*\}\}\s*|\s*\[Op:\w+\]$", "", text)


@contextlib.contextmanager
def one_line_errors():
  """Around a command's work: a UserError becomes `error: <message>`, exit 2."""
  try:
    yield
  except UserError as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)
