"""What the command lines (`main`, `evaluate`, `benchmark`) share: flag
parsing that reports a bad `--config.*` override in one line, the start of
their `main` (`start`), the mapping of errors to one `error:` line and an exit
code, and the compilation cache."""
import contextlib
import os
import sys
from typing import Dict, Type

from absl import app, flags
import jax
from ml_collections import config_flags

from sgan_jax import config_lib, progress

# Exit codes: 2 for a user error (fix the command, the config or the data),
# 3 for a run that stopped (every checkpoint on disk is complete and finite).
USER_ERROR = 2
RUN_STOPPED = 3


def parse_flags(argv):
  """absl's parser (`app.run(main, flags_parser=parse_flags)`), with bad
  config overrides and flags reported in one line, exit code 2. A
  `--config=NAME` naming a packaged config (`cifar10`, `digits`, ...) rather
  than a file is read from the package."""
  argv = [_packaged_config(a) for a in _joined_config_flag(argv)]
  try:
    return flags.FLAGS(argv)
  except (AttributeError, KeyError) as e:
    _unknown_field(e)
  except (flags.Error, TypeError, ValueError) as e:
    _fail(f"bad command line: {e}\n(see --helpfull for the flags; "
          f"config fields are listed in sgan_jax/config_lib.py, reference_config)", USER_ERROR)


def _joined_config_flag(argv):
  """`--config NAME` (a space, as many tools accept) as `--config=NAME`."""
  out, i = [], 0
  while i < len(argv):
    if argv[i] == "--config" and i + 1 < len(argv):
      out.append(f"--config={argv[i + 1]}")
      i += 2
    else:
      out.append(argv[i])
      i += 1
  return out


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
        f"(config fields are listed in sgan_jax/config_lib.py, reference_config)", USER_ERROR)


def _fail(message: str, code: int):
  print(f"error: {message}", file=sys.stderr)
  sys.exit(code)


def start(argv, cache_dir: str):
  """What every command line's `main` does first: refuses positional
  arguments, keeps the libraries' INFO lines out of the log and turns JAX's
  persistent compilation cache on in `cache_dir` ('' leaves it off).
  Returns `use_compilation_cache`'s counter (None when off)."""
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  progress.quiet_library_logs()
  return use_compilation_cache(cache_dir)


@contextlib.contextmanager
def exit_on(errors: Dict[Type[BaseException], int]):
  """Turns the listed exception types into one `error: <message>` line on
  stderr and that exit code, without a traceback; others propagate."""
  try:
    yield
  except tuple(errors) as e:
    code = next(c for kind, c in errors.items() if isinstance(e, kind))
    _fail(str(e), code)


# ------------------------------------------------ persistent compilation cache

def default_cache_dir() -> str:
  """`$JAX_COMPILATION_CACHE_DIR` if set, else `$XDG_CACHE_HOME/sgan_jax/xla`
  (`~/.cache/sgan_jax/xla`)."""
  if os.environ.get("JAX_COMPILATION_CACHE_DIR"):
    return os.environ["JAX_COMPILATION_CACHE_DIR"]
  base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
  return os.path.join(base, "sgan_jax", "xla")


def define_compilation_cache_flag():
  flags.DEFINE_string(
      "compilation_cache_dir", default_cache_dir(),
      "JAX's persistent compilation cache: a later start of the same config "
      "(resume, re-run, evaluate) loads the compiled step instead of compiling "
      "it again. A local folder or gs:// URL; '' turns the cache off.")


class CacheCounter:
  """Counts the persistent cache's hits and misses (JAX's monitoring events)."""

  def __init__(self):
    self.hits = self.misses = 0
    jax.monitoring.register_event_listener(self._on_event)

  def _on_event(self, event, **_):
    if event == "/jax/compilation_cache/cache_hits":
      self.hits += 1
    elif event == "/jax/compilation_cache/cache_misses":
      self.misses += 1

  def summary(self) -> str:
    return (f"compilation cache {jax.config.jax_compilation_cache_dir}: "
            f"{self.hits} program(s) loaded, {self.misses} compiled and stored")


def use_compilation_cache(directory: str):
  """Turns JAX's persistent compilation cache on in `directory` ('' leaves it
  off). Programs that compile in under a second are not stored (JAX's
  default). Returns a `CacheCounter`, or None when off."""
  if not directory:
    return None
  jax.config.update("jax_compilation_cache_dir", directory)
  return CacheCounter()
