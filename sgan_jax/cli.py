"""What the command lines (`main`, `evaluate`, `benchmark`) share: flag
parsing that reports a bad `--config.*` override in one line, the mapping of
errors to one `error:` line and an exit code, and the log filter."""
import contextlib
import logging as std_logging
import os
import sys
from typing import Dict, Type

from absl import flags, logging
from ml_collections import config_flags

from sgan_jax import config_lib

# Exit codes: 2 for a user error (fix the command, the config or the data),
# 3 for a run that stopped (every checkpoint on disk is complete and finite).
USER_ERROR = 2
RUN_STOPPED = 3


def parse_flags(argv):
  """absl's parser (`app.run(main, flags_parser=parse_flags)`), with bad
  config overrides and flags reported in one line, exit code 2. A
  `--config=NAME` naming a packaged config (`cifar10`, `digits`, ...) rather
  than a file is read from the package."""
  argv = [_packaged_config(a) for a in argv]
  try:
    return flags.FLAGS(argv)
  except (AttributeError, KeyError) as e:
    _unknown_field(e)
  except (flags.Error, TypeError, ValueError) as e:
    _fail(f"bad command line: {e}\n(see --helpfull for the flags; "
          f"config fields are listed in README.md)", USER_ERROR)


def _packaged_config(arg: str) -> str:
  if not arg.startswith("--config="):
    return arg
  try:
    return "--config=" + config_lib.config_file(arg[len("--config="):])
  except FileNotFoundError as e:
    _fail(str(e), USER_ERROR)


def define_config_overrides(name: str, default, help_string: str):
  """`config_flags.DEFINE_config_dict`, which reads the `--<name>.*`
  overrides from the command line as it is defined: an unknown field is
  reported like `parse_flags` does."""
  try:
    config_flags.DEFINE_config_dict(name, default, help_string)
  except (AttributeError, KeyError) as e:
    _unknown_field(e)


def _unknown_field(error):
  name = str(error).strip("\"'")
  _fail(f"unknown config field '{name}' in a --config.* override "
        f"(config fields are listed in README.md)", USER_ERROR)


def _fail(message: str, code: int):
  print(f"error: {message}", file=sys.stderr)
  sys.exit(code)


@contextlib.contextmanager
def exit_on(errors: Dict[Type[BaseException], int]):
  """Turns the listed exception types into one `error: <message>` line on
  stderr and that exit code, without a traceback; others propagate."""
  try:
    yield
  except tuple(errors) as e:
    code = next(c for kind, c in errors.items() if isinstance(e, kind))
    _fail(str(e), code)


class _OwnInfoOnly(std_logging.Filter):
  """Keeps INFO lines of sgan_jax; libraries (Orbax, clu, XLA) only warn."""

  def filter(self, record):
    return (record.levelno >= std_logging.WARNING
            or f"{os.sep}sgan_jax{os.sep}" in record.pathname)


def quiet_library_logs():
  logging.get_absl_handler().addFilter(_OwnInfoOnly())
