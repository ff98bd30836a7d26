"""The discriminator D: a GroupNorm/ELU ResNet encoder, a projection head and an
online probe (docs/method.md §2.1, §2.3).

D has no operation that mixes samples of a batch (GroupNorm is per sample),
which is what lets `losses.jacobian_sigma` get every per-sample Jacobian
product from one batched VJP or JVP.
"""
from typing import Any, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import flax.linen as nn

from sgan_jax.models import layers
from sgan_jax.utils import unit_rows

# D's width schedule per input resolution: one stage per halving down to 4x4,
# the reference's (64, 128, 256, 512) at 32x32, one more stage per doubling.
DEFAULT_WIDTHS = {
    16: (64, 128, 256),
    32: (64, 128, 256, 512),
    64: (64, 128, 256, 512, 512),
    128: (64, 128, 256, 512, 512, 512),
}


def num_stages(resolution: int) -> int:
  """Stages of D (and up-stages of G) for a square input of this size."""
  if resolution not in DEFAULT_WIDTHS:
    raise ValueError(f"unsupported resolution {resolution}; supported: "
                     f"{sorted(DEFAULT_WIDTHS)}")
  return len(DEFAULT_WIDTHS[resolution])


class DOutput(NamedTuple):
  backbone: jax.Array    # h [N, widths[-1]]
  raw_embedding: jax.Array   # e [N, embed_dim]
  embedding: jax.Array   # unit embedding e / ||e|| [N, embed_dim]
  probe_logits: jax.Array    # [N, num_classes], on stop_gradient(h)


class GroupNorm(nn.Module):
  channels_per_group: int = 16

  @nn.compact
  def __call__(self, x):
    groups = layers.group_norm_groups(x.shape[-1], self.channels_per_group)
    return nn.GroupNorm(num_groups=groups, epsilon=1e-5, dtype=x.dtype)(x)


def _avg_pool(x, stride):
  return x if stride == 1 else nn.avg_pool(x, (stride, stride), (stride, stride))


class BasicBlock(nn.Module):
  """`ELU(GN(conv(ELU(conv(pool(x))))) + shortcut(x))`; pooling downsamples."""
  width: int
  stride: int = 1
  channels_per_group: int = 16

  @nn.compact
  def __call__(self, x):
    r = layers.Conv(self.width, 3, name="conv1")(_avg_pool(x, self.stride))
    r = nn.elu(r)
    r = layers.Conv(self.width, 3, name="conv2")(r)
    r = GroupNorm(self.channels_per_group, name="norm2")(r)
    if self.stride != 1 or x.shape[-1] != self.width:
      x = layers.Conv(self.width, 1, name="shortcut_conv")(
          _avg_pool(x, self.stride))
      x = GroupNorm(self.channels_per_group, name="shortcut_norm")(x)
    return nn.elu(r + x)


class Encoder(nn.Module):
  """ResNet backbone: stem conv, stages of basic blocks, global average pool."""
  widths: Sequence[int] = DEFAULT_WIDTHS[32]
  blocks_per_stage: int = 2
  channels_per_group: int = 16

  @nn.compact
  def __call__(self, x):
    x = nn.elu(layers.Conv(self.widths[0], 3, name="stem")(x))
    for s, width in enumerate(self.widths):
      for b in range(self.blocks_per_stage):
        stride = 2 if (s > 0 and b == 0) else 1
        x = BasicBlock(width, stride, self.channels_per_group,
                       name=f"stage{s + 1}_block{b + 1}")(x)
    # h is float32 (or float64 for float64 activations), whatever x is.
    return jnp.mean(x, axis=(1, 2), dtype=jnp.promote_types(x.dtype, jnp.float32))


class Dense(nn.Module):
  """Dense layer with PyTorch's default init (D's head and probe)."""
  features: int

  @nn.compact
  def __call__(self, x):
    return nn.Dense(self.features, kernel_init=layers.torch_default_kernel,
                    bias_init=layers.torch_default_bias(x.shape[-1]))(x)


class Discriminator(nn.Module):
  """D: encoder -> h; head Dense-ELU-Dense -> e; e/||e||; probe on sg(h).

  Defaults are the CIFAR reference (32x32, ResNet-18 widths, embedding 128,
  10 classes). Parameters live under `encoder`, `head` and `probe`, always in
  float32; `dtype` bfloat16 runs the encoder's activations in bfloat16 (the
  backbone feature and everything after it stay float32).
  """
  resolution: int = 32
  widths: Sequence[int] = DEFAULT_WIDTHS[32]
  blocks_per_stage: int = 2
  embed_dim: int = 128
  num_classes: int = 10
  channels_per_group: int = 16
  dtype: Any = jnp.float32

  def setup(self):
    if len(self.widths) != num_stages(self.resolution):
      raise ValueError(
          f"D at resolution {self.resolution} needs "
          f"{num_stages(self.resolution)} stage widths, got {tuple(self.widths)}")
    layers.check_widths(self.widths, self.channels_per_group)
    self.encoder = Encoder(self.widths, self.blocks_per_stage,
                           self.channels_per_group)
    hidden = self.widths[-1]   # the head's hidden width equals the backbone's
    self.head = nn.Sequential([Dense(hidden), nn.elu, Dense(self.embed_dim)])
    self.probe = Dense(self.num_classes)

  def __call__(self, images) -> DOutput:
    h = self.encoder(images.astype(self.dtype))
    e = self.head(h)
    logits = self.probe(jax.lax.stop_gradient(h))
    return DOutput(h, e, unit_rows(e), logits)

  def keys(self, images):
    """Normalised backbone features `h / ||h||`: D_ema's neighbour-search keys."""
    h = self.encoder(images.astype(self.dtype))
    return unit_rows(h)
