"""Authors' PyTorch `state_dict`s <-> sgan_jax state, in NumPy (no torch needed).

The reference (`xiao7199/structural-adversarial-objectives`) keeps four
modules: `model_D` (`Discriminator`: `encoder.*` ResNet, `fc_head.*`,
`linear_probing.*` and the queue buffers `queue`, `bg_queue`, `queue_ptr`),
`model_G` (`Generator_model`: `G.*`, BigGAN-deep with `SNConv2d`/`SNLinear`
holding `weight`, `bias`, `u0`, `sv0`, and cBN buffers `stored_mean`,
`stored_var`), and their EMA copies `moment_model_D`, `moment_model_G`; its
checkpoint stores them as `state_dict_D`, `state_dict_G`,
`moment_state_dict_D`, `moment_state_dict_G`.

Layouts: torch conv weights are [out, in, kh, kw], Flax kernels
[kh, kw, in, out]; torch linear weights are [out, in], Flax kernels [in, out].
Spectral-norm `u` vectors are [1, out] in both. `sv0` (the last sigma, which
the reference keeps for logging only) is not sgan_jax state: it is ignored on
import and written on export as `||u W||`, the value the stored `u` gives.
The EMA copy of G holds its own `u0`/BN buffers, which the reference never
updates or uses; on export they are copies of G's.

A DistributedDataParallel prefix `module.` is accepted on import. Every
mismatch raises `ConversionError` naming the first offending key and shapes.
"""
import pickle
import re
from typing import Any, Dict, Mapping, Tuple

import flax
import numpy as np

from sgan_jax.utils import flatten_paths

StateDict = Dict[str, np.ndarray]
Path = Tuple[str, ...]


class ConversionError(ValueError):
  """A state_dict does not fit the sgan_jax model (or the reverse)."""


# ------------------------------------------------------------ name mapping

def _d_key(path: Path) -> Tuple[str, str]:
  """(torch key, kind) of one D parameter; kind says how to transpose."""
  name = "/".join(path)
  if name == "encoder/stem/kernel":
    return "encoder.conv1.weight", "conv"
  m = re.fullmatch(r"encoder/stage(\d+)_block(\d+)/(\w+?)(?:/GroupNorm_0)?/(\w+)", name)
  if m:
    stage, block, layer, leaf = m.groups()
    prefix = f"encoder.layer{stage}.{int(block) - 1}."
    torch_layer = {"conv1": "conv1", "conv2": "conv2", "norm2": "bn2",
                   "shortcut_conv": "downsample.1",
                   "shortcut_norm": "downsample.2"}[layer]
    kind = "conv" if leaf == "kernel" else "vector"
    leaf = {"kernel": "weight", "scale": "weight", "bias": "bias"}[leaf]
    return prefix + torch_layer + "." + leaf, kind
  m = re.fullmatch(r"(head/layers_(\d)|probe)/Dense_0/(kernel|bias)", name)
  if m:
    module = "linear_probing" if m.group(1) == "probe" else f"fc_head.{m.group(2)}"
    leaf = m.group(3)
    return (f"{module}.weight", "dense") if leaf == "kernel" else (f"{module}.bias", "vector")
  raise ConversionError(f"no PyTorch name for D parameter {name!r}")


def _g_module(path: Path, depth: int) -> str:
  """The torch module name of one G Flax module path (without the leaf)."""
  out = ["G"]
  for part in path:
    m = re.fullmatch(r"stage(\d+)_block(\d+)", part)
    if m:
      out.append(f"blocks.{(int(m.group(1)) - 1) * depth + int(m.group(2)) - 1}.0")
    else:
      out.append({"latent": "firs_layer", "bottom": "linear",
                  "out_bn": "output_layer.0", "out_conv": "output_layer.2",
                  "bn": None}.get(part, part))
  return ".".join(p for p in out if p is not None)


_G_LEAF = {("params", "kernel"): "weight", ("params", "bias"): "bias",
           ("params", "scale"): "gain", ("spectral", "u"): "u0",
           ("batch_stats", "mean"): "stored_mean",
           ("batch_stats", "var"): "stored_var"}


def _g_key(collection: str, path: Path, depth: int) -> str:
  leaf = _G_LEAF[(collection, path[-1])]
  if path[-2:] == ("out_bn", "bias"):   # the plain BN's shift parameter
    leaf = "bias"
  return _g_module(path[:-1], depth) + "." + leaf


# -------------------------------------------------------------- transforms

def _kind(path: Path, leaf) -> str:
  """How a leaf is laid out: 'conv' and 'dense' kernels transpose, the rest
  (biases, scales, u [1, out], statistics) map as they are."""
  if path[-1] != "kernel":
    return "vector"
  return "conv" if np.ndim(leaf) == 4 else "dense"


def _to_torch(x, kind):
  x = np.asarray(x)
  if kind == "conv":
    return np.ascontiguousarray(x.transpose(3, 2, 0, 1))
  return np.ascontiguousarray(x.T) if kind == "dense" else x


def _torch_shape(shape, kind):
  shape = tuple(shape)
  if kind == "conv":
    return (shape[3], shape[2], shape[0], shape[1])
  return shape[::-1] if kind == "dense" else shape


def _from_torch(x, kind):
  x = np.asarray(x)
  if kind == "conv":
    return x.transpose(2, 3, 1, 0)
  return x.T if kind == "dense" else x


def _unflat(items: Mapping[Path, Any]):
  return flax.traverse_util.unflatten_dict(dict(items))


def _strip_prefix(sd: Mapping[str, Any]) -> StateDict:
  return {k[len("module."):] if k.startswith("module.") else k: np.asarray(v)
          for k, v in sd.items()}


def _take(sd: StateDict, key: str, expected_shape, what: str, source: str):
  if key not in sd:
    raise ConversionError(
        f"{source} has no key {key!r} (needed for sgan_jax {what}, torch shape "
        f"{tuple(expected_shape)}); is it a state_dict of the authors' "
        f"{'Discriminator' if source.endswith('_D') else 'Generator_model'}, "
        f"built for this config?")
  value = sd.pop(key)
  if tuple(value.shape) != tuple(expected_shape):
    raise ConversionError(
        f"{source}[{key!r}] has shape {tuple(value.shape)}, but sgan_jax {what} "
        f"needs torch shape {tuple(expected_shape)}: the checkpoint's "
        f"architecture differs from the config (check model.d_widths, "
        f"model.g_ch, model.embed_dim, num_classes, queue_size).")
  return value


def _no_leftovers(sd: StateDict, source: str, ignored=()):
  extra = sorted(k for k in sd if not any(k.endswith(s) for s in ignored))
  if extra:
    raise ConversionError(
        f"{source} has {len(extra)} key(s) sgan_jax does not know, first "
        f"{extra[0]!r} with shape {tuple(sd[extra[0]].shape)}: a different "
        f"architecture (e.g. more blocks or stages) than the config.")


# --------------------------------------------------------------- D, G, all

def d_to_torch(d_params) -> StateDict:
  """D's (or D_ema's) parameters as the authors' `Discriminator` keys
  (without the queue buffers)."""
  out = {}
  for path, leaf in flatten_paths(d_params).items():
    key, kind = _d_key(path)
    out[key] = _to_torch(leaf, kind)
  return out


def d_from_torch(sd: Mapping[str, Any], like, source="state_dict_D"):
  """D parameters shaped like `like` from an authors' D `state_dict`.
  Buffers (the queue) are left in `sd`'s copy and returned second."""
  sd = _strip_prefix(sd)
  items = {}
  for path, leaf in flatten_paths(like).items():
    key, kind = _d_key(path)
    value = _take(sd, key, _torch_shape(np.shape(leaf), kind),
                  "D parameter " + "/".join(path), source)
    items[path] = _from_torch(value, kind).astype(np.asarray(leaf).dtype)
  return _unflat(items), sd


def _sv(u, kernel):
  """`||u W||`: the sigma BigGAN's SN logs (sv0) for the stored `u`."""
  w = np.asarray(kernel).reshape(-1, np.shape(kernel)[-1])
  return np.linalg.norm(np.asarray(u) @ w.T).reshape(1).astype(np.float32)


def g_to_torch(g_params, g_state, depth: int) -> StateDict:
  """G's parameters and state as the authors' `Generator_model` keys."""
  out, kernels = {}, {}
  for collection, tree in (("params", g_params), *g_state.items()):
    for path, leaf in flatten_paths(tree).items():
      out[_g_key(collection, path, depth)] = _to_torch(leaf, _kind(path, leaf))
      if collection == "params" and path[-1] == "kernel":
        kernels[path[:-1]] = leaf
  for path, leaf in flatten_paths(g_state["spectral"]).items():
    out[_g_module(path[:-1], depth) + ".sv0"] = _sv(leaf, kernels[path[:-1]])
  return out


def g_from_torch(sd: Mapping[str, Any], like_params, like_state, depth: int,
                 source="state_dict_G"):
  """(params, state) shaped like the templates from an authors' G state_dict."""
  sd = _strip_prefix(sd)
  result = []
  for collection, tree in (("params", like_params), *like_state.items()):
    items = {}
    for path, leaf in flatten_paths(tree).items():
      key = _g_key(collection, path, depth)
      kind = _kind(path, leaf)
      value = _take(sd, key, _torch_shape(np.shape(leaf), kind),
                    f"G {collection} " + "/".join(path), source)
      items[path] = _from_torch(value, kind).astype(np.asarray(leaf).dtype)
    result.append(_unflat(items))
  _no_leftovers(sd, source, ignored=(".sv0",))
  params, states = result[0], result[1:]
  return params, dict(zip(like_state.keys(), states))


def state_to_torch(state) -> Dict[str, StateDict]:
  """A TrainState as the four state_dicts of the reference's checkpoint."""
  depth = state.spec.model.g_depth
  d = d_to_torch(state.d_params)
  d["queue"] = np.asarray(state.queue_emb)
  d["bg_queue"] = np.asarray(state.queue_keys)
  d["queue_ptr"] = np.asarray(state.queue_ptr, np.int64).reshape(1)
  d_ema = d_to_torch(state.d_ema_params)
  for k in ("queue", "bg_queue", "queue_ptr"):   # unused copies in the EMA D
    d_ema[k] = d[k]
  g = g_to_torch(state.g_params, state.g_state, depth)
  g_ema = g_to_torch(state.g_ema_params, state.g_state, depth)
  return {"state_dict_D": d, "moment_state_dict_D": d_ema,
          "state_dict_G": g, "moment_state_dict_G": g_ema}


def state_from_torch(checkpoint: Mapping[str, Mapping[str, Any]], state):
  """`state` with D, G, their EMAs, G's buffers and the queue replaced by the
  reference checkpoint's (a dict holding the four state_dicts). Optimiser
  states and the step counter are kept from `state`."""
  for name in ("state_dict_D", "moment_state_dict_D", "state_dict_G",
               "moment_state_dict_G"):
    if name not in checkpoint:
      raise ConversionError(f"the checkpoint has no {name!r} (it has "
                            f"{sorted(checkpoint)}); pass the dict that the "
                            f"reference's save_checkpoint writes.")
  depth = state.spec.model.g_depth
  d_params, d_rest = d_from_torch(checkpoint["state_dict_D"], state.d_params)
  queue_emb = _take(d_rest, "queue", state.queue_emb.shape, "queue_emb", "state_dict_D")
  queue_keys = _take(d_rest, "bg_queue", state.queue_keys.shape, "queue_keys",
                     "state_dict_D")
  queue_ptr = _take(d_rest, "queue_ptr", (1,), "queue_ptr", "state_dict_D")
  _no_leftovers(d_rest, "state_dict_D")
  d_ema, d_ema_rest = d_from_torch(checkpoint["moment_state_dict_D"],
                                   state.d_params, "moment_state_dict_D")
  _no_leftovers(d_ema_rest, "moment_state_dict_D",
                ignored=("queue", "bg_queue", "queue_ptr"))
  g_params, g_state = g_from_torch(checkpoint["state_dict_G"], state.g_params,
                                   state.g_state, depth)
  g_ema, _ = g_from_torch(checkpoint["moment_state_dict_G"], state.g_params,
                          state.g_state, depth, "moment_state_dict_G")
  return state.replace(
      d_params=d_params, d_ema_params=d_ema, g_params=g_params,
      g_ema_params=g_ema, g_state=g_state,
      queue_emb=queue_emb.astype(np.asarray(state.queue_emb).dtype),
      queue_keys=queue_keys.astype(np.asarray(state.queue_keys).dtype),
      queue_ptr=np.asarray(int(queue_ptr[0]) % state.spec.queue_size, np.int32))


def load_reference_checkpoint(path: str) -> Dict[str, StateDict]:
  """The four state_dicts of a reference `*.pth.tar`, as NumPy (needs torch)."""
  try:
    import torch  # pylint: disable=import-outside-toplevel
  except ImportError as e:
    raise ConversionError("reading a PyTorch checkpoint needs torch: "
                          "pip install -e '.[interop]'") from e
  # weights_only: tensors, numbers and containers only; a pickle that would
  # run code (or build any other object) is refused, not executed.
  try:
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
  except pickle.UnpicklingError as e:
    raise ConversionError(f"{path} holds more than tensors and plain values, "
                          f"so it is not loaded (it could run code): {e}") from None
  return {k: {n: t.detach().cpu().numpy() for n, t in v.items()}
          for k, v in ckpt.items() if k.endswith(("state_dict_D", "state_dict_G"))}
