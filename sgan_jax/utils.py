"""Array and tree helpers shared by the losses, the networks, the evaluators,
checkpointing and the PyTorch interop (one definition each)."""
from typing import Any, Callable, Dict, Tuple

import jax
import jax.numpy as jnp
import numpy as np


def unit_rows(x, eps: float = 1e-12):
  """Rows of `x` scaled to unit L2 norm over the last axis; a row whose norm
  is below `eps` is divided by `eps` instead (as torch's F.normalize)."""
  return x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), eps)


def _key_name(key) -> str:
  for attr in ("key", "name", "idx"):   # DictKey, GetAttrKey, SequenceKey
    if hasattr(key, attr):
      return str(getattr(key, attr))
  return str(key)


def flatten_paths(tree) -> Dict[Tuple[str, ...], Any]:
  """`{("d_params", "encoder", ..., "kernel"): leaf}` for every leaf of `tree`
  (nested dicts, dataclasses, named tuples), in JAX's leaf order."""
  leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
  return {tuple(_key_name(k) for k in path): leaf for path, leaf in leaves}


def path_names(tree) -> Dict[str, Any]:
  """`flatten_paths` with each path joined by '/', e.g. 'head/layers_0/kernel'."""
  return {"/".join(path): leaf for path, leaf in flatten_paths(tree).items()}


def pad_rows(rows: np.ndarray, size: int) -> np.ndarray:
  """`rows` with zero rows appended along the first axis up to `size` rows
  (one static shape, so one compilation serves every batch)."""
  rows = np.asarray(rows)
  if len(rows) >= size:
    return rows
  return np.concatenate([rows, np.zeros((size - len(rows),) + rows.shape[1:], rows.dtype)])


def map_in_batches(fn: Callable, rows, batch: int) -> Tuple[np.ndarray, ...]:
  """`fn` (returning a tuple of row-major arrays) over `rows` in batches of
  exactly `batch` rows (the last one zero-padded, so one compilation serves
  all); the outputs are concatenated on the host, padding dropped."""
  outs = []
  for start in range(0, len(rows), batch):
    chunk = np.asarray(rows[start:start + batch])
    n = len(chunk)
    chunk = pad_rows(chunk, batch)
    outs.append([np.asarray(o)[:n] for o in jax.device_get(fn(jnp.asarray(chunk)))])
  return tuple(np.concatenate(parts) for parts in zip(*outs))

