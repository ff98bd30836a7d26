"""The InceptionV3 that FID is computed with, in Flax.

This is the network of `pytorch-fid` (a port of the TensorFlow graph
`pt_inception-2015-12-05` that FID was defined with): torchvision's
InceptionV3 layout with the FID variants of its blocks (average pooling that
does not count padding; the last block max-pools), batch norm with eps 1e-3
from stored statistics, 2048-d features after the final average pooling and
a 1008-way classifier for the Inception Score. Inputs are `[N, H, W, 3]`
images in [-1, 1]; they are mapped to [0, 1], resized to 299x299 bilinearly
(half-pixel centres, no antialiasing: `F.interpolate(..., 'bilinear',
align_corners=False)`) and mapped back to [-1, 1], as `pytorch-fid` does.

Module names follow the PyTorch attribute names, so `variables_from_torch`
maps its `state_dict` one to one.
"""
from typing import Dict, Mapping, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from sgan_jax.utils import path_names

INPUT_SIZE = 299
NUM_LOGITS = 1008
FEATURE_DIM = 2048


def _pad(p) -> Tuple[Tuple[int, int], Tuple[int, int]]:
  ph, pw = (p, p) if isinstance(p, int) else p
  return ((ph, ph), (pw, pw))


class ConvBN(nn.Module):
  """torchvision's BasicConv2d: convolution without bias, batch norm, ReLU."""
  features: int
  kernel: Tuple[int, int]
  strides: int = 1
  padding: object = 0

  @nn.compact
  def __call__(self, x):
    x = nn.Conv(self.features, self.kernel, (self.strides,) * 2, padding=_pad(self.padding),
                use_bias=False, name="conv")(x)
    x = nn.BatchNorm(use_running_average=True, epsilon=1e-3, name="bn")(x)
    return nn.relu(x)


def _avg3(x):
  return nn.avg_pool(x, (3, 3), (1, 1), padding=((1, 1), (1, 1)), count_include_pad=False)


def _max3(x, stride=2, pad=0):
  return nn.max_pool(x, (3, 3), (stride, stride), padding=_pad(pad))


class BlockA(nn.Module):   # FIDInceptionA (Mixed_5b-d)
  pool_features: int

  @nn.compact
  def __call__(self, x):
    b1 = ConvBN(64, (1, 1), name="branch1x1")(x)
    b5 = ConvBN(64, (5, 5), padding=2, name="branch5x5_2")(
        ConvBN(48, (1, 1), name="branch5x5_1")(x))
    b3 = ConvBN(64, (1, 1), name="branch3x3dbl_1")(x)
    b3 = ConvBN(96, (3, 3), padding=1, name="branch3x3dbl_2")(b3)
    b3 = ConvBN(96, (3, 3), padding=1, name="branch3x3dbl_3")(b3)
    bp = ConvBN(self.pool_features, (1, 1), name="branch_pool")(_avg3(x))
    return jnp.concatenate([b1, b5, b3, bp], -1)


class BlockB(nn.Module):   # InceptionB (Mixed_6a)
  @nn.compact
  def __call__(self, x):
    b3 = ConvBN(384, (3, 3), strides=2, name="branch3x3")(x)
    bd = ConvBN(64, (1, 1), name="branch3x3dbl_1")(x)
    bd = ConvBN(96, (3, 3), padding=1, name="branch3x3dbl_2")(bd)
    bd = ConvBN(96, (3, 3), strides=2, name="branch3x3dbl_3")(bd)
    return jnp.concatenate([b3, bd, _max3(x)], -1)


class BlockC(nn.Module):   # FIDInceptionC (Mixed_6b-e)
  channels_7x7: int

  @nn.compact
  def __call__(self, x):
    c7 = self.channels_7x7
    row, col = dict(kernel=(1, 7), padding=(0, 3)), dict(kernel=(7, 1), padding=(3, 0))
    b1 = ConvBN(192, (1, 1), name="branch1x1")(x)
    b7 = ConvBN(c7, (1, 1), name="branch7x7_1")(x)
    b7 = ConvBN(c7, **row, name="branch7x7_2")(b7)
    b7 = ConvBN(192, **col, name="branch7x7_3")(b7)
    bd = ConvBN(c7, (1, 1), name="branch7x7dbl_1")(x)
    for i, (width, shape) in enumerate([(c7, col), (c7, row), (c7, col), (192, row)]):
      bd = ConvBN(width, **shape, name=f"branch7x7dbl_{i + 2}")(bd)
    bp = ConvBN(192, (1, 1), name="branch_pool")(_avg3(x))
    return jnp.concatenate([b1, b7, bd, bp], -1)


class BlockD(nn.Module):   # InceptionD (Mixed_7a)
  @nn.compact
  def __call__(self, x):
    b3 = ConvBN(320, (3, 3), strides=2, name="branch3x3_2")(
        ConvBN(192, (1, 1), name="branch3x3_1")(x))
    b7 = ConvBN(192, (1, 1), name="branch7x7x3_1")(x)
    b7 = ConvBN(192, (1, 7), padding=(0, 3), name="branch7x7x3_2")(b7)
    b7 = ConvBN(192, (7, 1), padding=(3, 0), name="branch7x7x3_3")(b7)
    b7 = ConvBN(192, (3, 3), strides=2, name="branch7x7x3_4")(b7)
    return jnp.concatenate([b3, b7, _max3(x)], -1)


class BlockE(nn.Module):   # FIDInceptionE_1 (Mixed_7b) / _2 (Mixed_7c, max pool)
  max_pool: bool

  @nn.compact
  def __call__(self, x):
    def split(y, prefix):
      return [ConvBN(384, (1, 3), padding=(0, 1), name=f"{prefix}a")(y),
              ConvBN(384, (3, 1), padding=(1, 0), name=f"{prefix}b")(y)]
    b1 = ConvBN(320, (1, 1), name="branch1x1")(x)
    b3 = split(ConvBN(384, (1, 1), name="branch3x3_1")(x), "branch3x3_2")
    bd = ConvBN(448, (1, 1), name="branch3x3dbl_1")(x)
    bd = split(ConvBN(384, (3, 3), padding=1, name="branch3x3dbl_2")(bd), "branch3x3dbl_3")
    pooled = _max3(x, 1, 1) if self.max_pool else _avg3(x)
    bp = ConvBN(192, (1, 1), name="branch_pool")(pooled)
    return jnp.concatenate([b1, *b3, *bd, bp], -1)


def resize_for_inception(images):
  """[-1, 1] images -> 299x299, as pytorch-fid prepares them."""
  x = (images.astype(jnp.float32) + 1.0) / 2.0
  n, _, _, c = x.shape
  x = jax.image.resize(x, (n, INPUT_SIZE, INPUT_SIZE, c), "bilinear", antialias=False)
  return 2.0 * x - 1.0


class FIDInceptionV3(nn.Module):
  """Returns `(pool features [N, 2048], logits [N, 1008])`."""

  @nn.compact
  def __call__(self, images):
    x = resize_for_inception(images)
    x = ConvBN(32, (3, 3), strides=2, name="Conv2d_1a_3x3")(x)
    x = ConvBN(32, (3, 3), name="Conv2d_2a_3x3")(x)
    x = _max3(ConvBN(64, (3, 3), padding=1, name="Conv2d_2b_3x3")(x))
    x = ConvBN(80, (1, 1), name="Conv2d_3b_1x1")(x)
    x = _max3(ConvBN(192, (3, 3), name="Conv2d_4a_3x3")(x))
    for name, pool in (("Mixed_5b", 32), ("Mixed_5c", 64), ("Mixed_5d", 64)):
      x = BlockA(pool, name=name)(x)
    x = BlockB(name="Mixed_6a")(x)
    for name, c7 in (("Mixed_6b", 128), ("Mixed_6c", 160), ("Mixed_6d", 160),
                     ("Mixed_6e", 192)):
      x = BlockC(c7, name=name)(x)
    x = BlockD(name="Mixed_7a")(x)
    x = BlockE(False, name="Mixed_7b")(x)
    x = BlockE(True, name="Mixed_7c")(x)
    pool = jnp.mean(x, axis=(1, 2))
    return pool, nn.Dense(NUM_LOGITS, name="fc")(pool)


_LEAVES = {("conv", "weight"): ("params", "kernel"), ("bn", "weight"): ("params", "scale"),
           ("bn", "bias"): ("params", "bias"), ("bn", "running_mean"): ("batch_stats", "mean"),
           ("bn", "running_var"): ("batch_stats", "var"), ("fc", "weight"): ("params", "kernel"),
           ("fc", "bias"): ("params", "bias")}


def variables_from_torch(state_dict: Mapping[str, np.ndarray]) -> Dict:
  """pytorch-fid's `state_dict` (NumPy arrays) -> this module's variables.

  Raises ValueError naming the first key or shape that does not fit."""
  expected = jax.eval_shape(FIDInceptionV3().init, jax.random.PRNGKey(0),
                            jnp.zeros((1, 75, 75, 3)))
  out: Dict = {"params": {}, "batch_stats": {}}
  for key, value in state_dict.items():
    parts = key.split(".")
    if parts[-1] == "num_batches_tracked":
      continue
    if tuple(parts[-2:]) not in _LEAVES:
      raise ValueError(f"unexpected weight '{key}' for the FID InceptionV3")
    collection, leaf = _LEAVES[tuple(parts[-2:])]
    value = np.asarray(value, np.float32)
    if leaf == "kernel":
      value = value.transpose(2, 3, 1, 0) if value.ndim == 4 else value.T
    node = out[collection]
    for p in parts[:-1]:
      node = node.setdefault(p, {})
    node[leaf] = value
  for collection in ("params", "batch_stats"):
    flat_want = path_names(expected[collection])
    flat_got = path_names(out[collection])
    for path, shape in flat_want.items():
      if path not in flat_got:
        raise ValueError(f"the weights have no '{path}' (not pytorch-fid's InceptionV3?)")
      if tuple(flat_got[path].shape) != tuple(shape.shape):
        raise ValueError(f"'{path}' has shape {flat_got[path].shape}, the network "
                         f"needs {tuple(shape.shape)}")
  return out

