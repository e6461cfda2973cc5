"""The one error type users see as a single line instead of a traceback."""


class UserError(Exception):
  """Bad input from the user: a flag, a file, a checkpoint, an image.

  Commands catch it at the top, print `error: <message>` on one line and exit
  with status 2. Messages name the thing that was wrong and, where it helps,
  what was expected and what was found.
  """


class DataError(UserError):
  """A data file or data source that cannot be used."""
