"""What the processes of one multi-host run must agree on before they train,
checked once at start.

Every process must see the same workdir (checkpoints, configs and the
catch-up decisions are read from it) and the same dataset. Storage that
looks shared but is not (each host's own `/tmp`, a bucket path that differs
by one letter) would otherwise let each process decide from its own files.
`check_same_storage`: process 0 writes a marker with a fresh random token and
its dataset's identity, the token is broadcast (which is also the barrier
after the write), and every process reads the marker back. A failure on one
process is made a failure on all (`raise_unless_all_ok`), so that no process
waits forever in the next collective.
"""
import secrets
from typing import Optional

import jax
from jax.experimental import multihost_utils
import numpy as np

from sgan_jax import storage
from sgan_jax.errors import ConfigError

MARKER = ".process_0_marker.json"
_TEXT_BYTES = 4096


def broadcast_text(text: str) -> str:
  """Process 0's `text` on every process (at most 4,096 UTF-8 bytes)."""
  data = text.encode("utf-8")
  if len(data) > _TEXT_BYTES:
    raise ValueError(f"broadcast_text: {len(data)} bytes, at most {_TEXT_BYTES}")
  buffer = np.zeros(_TEXT_BYTES + 4, np.uint8)
  buffer[:4] = np.frombuffer(np.uint32(len(data)).tobytes(), np.uint8)
  buffer[4:4 + len(data)] = np.frombuffer(data, np.uint8)
  got = np.asarray(multihost_utils.broadcast_one_to_all(buffer))
  size = int(np.frombuffer(got[:4].tobytes(), np.uint32)[0])
  return got[4:4 + size].tobytes().decode("utf-8")


def raise_unless_all_ok(error: Optional[Exception], what: str) -> None:
  """Every process calls this with its own error (or None). If any process
  has one, each raises: its own error, or a ConfigError naming the
  processes that failed (their logs say why)."""
  if jax.process_count() == 1:
    if error is not None:
      raise error
    return
  ok = np.asarray(multihost_utils.process_allgather(np.int32(error is None)))
  if error is not None:
    raise error
  failed = [i for i, good in enumerate(ok.reshape(-1)) if not good]
  if failed:
    raise ConfigError(f"process(es) {failed} failed {what} (their logs say why); "
                      f"this process {jax.process_index()} stops with them")


def check_same_storage(workdir: storage.PathLike, dataset: str) -> None:
  """Every process sees process 0's workdir and the same `dataset` (a
  description of the prepared data: name, version, folder, split sizes).
  Does nothing in a single-process run."""
  if jax.process_count() == 1:
    return
  marker = storage.path(workdir) / MARKER
  token = ""
  if jax.process_index() == 0:
    token = f"{secrets.randbits(64):016x}"
    storage.write_json(marker, {"token": token, "dataset": dataset})
  token = broadcast_text(token)
  error = None
  try:
    seen = storage.read_json(marker) if storage.exists(marker) else None
  except (OSError, ValueError) as e:
    seen, error = None, ConfigError(f"process {jax.process_index()} cannot read "
                                    f"{marker}: {e}")
  if error is None and (seen is None or seen.get("token") != token):
    error = ConfigError(
        f"process {jax.process_index()} does not see the workdir that process 0 "
        f"writes ({marker} {'is missing' if seen is None else 'holds another start'} "
        f"there): every "
        f"process needs the same workdir, on storage all hosts share (a network "
        f"file system or gs://)")
  elif error is None and seen.get("dataset") != dataset:
    error = ConfigError(
        f"process {jax.process_index()} sees the dataset as {dataset!r}, process 0 "
        f"as {seen.get('dataset')!r}: every process needs the same data, at the "
        f"same path (--config.data_dir on shared storage)")
  raise_unless_all_ok(error, "the check that all processes share the workdir and data")
