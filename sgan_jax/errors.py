"""The errors a user can fix. Every module may raise them; this one imports
nothing of the project, so any module can import it.

The command lines (`main`, `evaluate`, `benchmark`) print a `UserError` as
one `error: <message>` line and exit with code 2, before any compute where
the problem can be seen at start; code 3 is kept for a run that started and
was stopped (see `sgan_jax.cli`).
"""
import contextlib


class UserError(Exception):
  """Something the user can fix: the command, the config, the data, a path.
  The message says what is wrong, where, and how to fix it, in one line."""


class ConfigError(UserError, ValueError):
  """A config value that cannot work; raised before anything is compiled."""


class StartupError(UserError):
  """A file-system error while a run or an evaluation is being set up (a
  workdir that cannot be created, a folder without write permission, an
  unreadable input file)."""


@contextlib.contextmanager
def startup_io(what: str):
  """Turns a file-system error raised inside into a `StartupError` whose one
  line says what was being done (`what`), the path and the system's reason."""
  try:
    yield
  except OSError as e:
    reason = e.strerror or str(e) or type(e).__name__
    place = f": {e.filename}" if e.filename else ""
    raise StartupError(f"{what}: {reason}{place} (check that the path exists, "
                       f"is a folder where one is needed, and is writable)") from e
