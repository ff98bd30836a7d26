"""Array and tree helpers shared by the losses, the networks, the evaluators,
checkpointing and the PyTorch interop (one definition each)."""
from typing import Any, Dict, Tuple

import jax
import jax.numpy as jnp


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
