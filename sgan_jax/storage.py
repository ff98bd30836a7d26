"""Where files go: one layer for every path the project reads or writes.

Paths are `etils.epath.Path`s, so a workdir may be a local directory or a
cloud-storage URL (`gs://bucket/run`, `s3://...`): epath reads and writes both
(through TensorFlow's gfile or fsspec), Orbax and TensorStore take the same
URL for checkpoints. Nothing here treats a URL as a local path.

Small files are written whole and atomically: locally through a temporary
file renamed into place, on object stores as one upload (an object appears
whole or not at all). A kill therefore never leaves a half-written config,
result or metrics file.
"""
import json
import os
from typing import Any, Union

from etils import epath

PathLike = Union[str, os.PathLike, epath.Path]


def is_remote(path: PathLike) -> bool:
  """Whether `path` is a URL (gs://, s3://, ...) rather than a local path."""
  return "://" in os.fspath(path)


def path(p: PathLike) -> epath.Path:
  """`p` as an epath.Path; local paths are made absolute."""
  p = epath.Path(p)
  return p if is_remote(p) else epath.Path(os.path.abspath(os.fspath(p)))


def makedirs(p: PathLike) -> epath.Path:
  p = path(p)
  p.mkdir(parents=True, exist_ok=True)
  return p


def check_writable(p: PathLike) -> epath.Path:
  """Creates the folder `p` if needed and writes (then removes) a small file
  in it, so that a folder the user cannot write fails at once, with the
  system's error, rather than after the work meant for it."""
  p = makedirs(p)
  probe = p / f".write-check-{os.getpid()}"
  write_bytes(probe, b"")
  probe.unlink()
  return p


def write_bytes(p: PathLike, data: bytes) -> None:
  """Writes `data` to `p` whole (see the module docstring)."""
  p = path(p)
  if is_remote(p):
    p.write_bytes(data)
    return
  tmp = p.parent / f".{p.name}.tmp-{os.getpid()}"
  try:
    with open(tmp, "wb") as f:
      f.write(data)
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, p)
  except BaseException:
    # A full disk, a kill's KeyboardInterrupt, ...: no stray temporary file.
    tmp.unlink(missing_ok=True)
    raise


def write_text(p: PathLike, text: str) -> None:
  write_bytes(p, text.encode("utf-8"))


def write_json(p: PathLike, value: Any) -> None:
  write_text(p, json.dumps(value, indent=1, sort_keys=True) + "\n")


def read_text(p: PathLike) -> str:
  return path(p).read_text()


def read_json(p: PathLike) -> Any:
  return json.loads(read_text(p))


def exists(p: PathLike) -> bool:
  return path(p).exists()
