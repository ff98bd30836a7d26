"""A Python whose site-packages lack some packages, for subprocesses: the
same interpreter and installed files, minus the hidden distributions (e.g.
TensorFlow), as on a machine where they were never installed.

`command(folder, hidden)` lays out `folder` as a copy of this environment's
site-packages made of symbolic links, leaving out every top-level entry of the
hidden distributions, and returns the argv prefix that runs Python on it
(`python -S` and a runner that adds the folder as a site directory, so its
.pth files, such as this project's editable install, still apply); append
what would follow `python`: a script, `-m module`, `-c code` or `-`, and
their arguments. Processes that Python itself starts (multiprocessing's
spawn) run the full environment.
"""
import importlib.metadata
import os
import site
import sys
from typing import Iterable, List


def _entries_of(distribution: str) -> set:
  """The top-level names (packages, modules, metadata folders) it installed."""
  try:
    dist = importlib.metadata.distribution(distribution)
  except importlib.metadata.PackageNotFoundError:
    return set()
  return {str(f).split("/")[0] for f in dist.files or ()} - {"..", ""}


def _normal(name: str) -> str:
  return name.lower().replace("_", "-")


def command(folder: str, hidden: Iterable[str]) -> List[str]:
  hidden = {_normal(d) for d in hidden}
  kept = set()
  for dist in importlib.metadata.distributions():
    if _normal(dist.metadata["Name"]) not in hidden:
      kept |= _entries_of(dist.metadata["Name"])
  # A folder that kept distributions share (a namespace such as google/) stays.
  hidden_entries = set().union(*(_entries_of(d) for d in hidden)) - kept
  os.makedirs(folder, exist_ok=True)
  for site_dir in site.getsitepackages():
    for name in os.listdir(site_dir):
      target = os.path.join(folder, name)
      if name in hidden_entries or os.path.lexists(target):
        continue
      os.symlink(os.path.join(site_dir, name), target)
  folder = os.path.abspath(folder)
  runner = folder + "_python.py"   # beside the folder: sys.path[0] is its own
  with open(runner, "w") as f:
    f.write(_RUNNER.format(folder=folder))
  return [sys.executable, "-S", runner]


# Runs what `python ARGS` would, on the folder's packages: a script, `-m
# module`, `-c code` or `-` (stdin), the current directory first on the path
# for the last three, as Python does.
_RUNNER = """import os, runpy, site, sys
site.addsitedir({folder!r})
args = sys.argv[1:]
if args and args[0] not in ("-", "-c", "-m"):
  sys.argv = args
  runpy.run_path(args[0], run_name="__main__")
else:
  sys.path[0] = os.getcwd()
  if args and args[0] == "-m":
    sys.argv = args[1:]
    runpy.run_module(args[1], run_name="__main__", alter_sys=True)
  else:
    code = args[1] if args and args[0] == "-c" else sys.stdin.read()
    sys.argv = [args[0] if args else "-"] + args[2 if args and args[0] == "-c" else 1:]
    exec(compile(code, "<string>", "exec"), {{"__name__": "__main__"}})
"""
