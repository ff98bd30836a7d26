"""The generator G: BigGAN-deep style, unconditional, self-modulated BN
(docs/method.md §2.2, §2.3).

Every conv and dense layer is spectrally normalised. G always normalises with
batch statistics (the reference runs it in training mode, when sampling too);
call `apply` with `mutable=["batch_stats", "spectral"]` to advance its state.
"""
from typing import Any, Tuple

import jax.numpy as jnp
import flax.linen as nn

from sgan_jax.models import layers

# BigGAN's channel schedule, as multiples of `ch`: (in, out) per up-stage.
CHANNEL_SCHEDULE = {
    16: ((4, 4), (4, 4)),
    32: ((4, 4, 4), (4, 4, 4)),
    64: ((16, 16, 8, 4), (16, 8, 4, 2)),
    128: ((16, 16, 8, 4, 2), (16, 8, 4, 2, 1)),
}


def stage_channels(resolution: int, ch: int) -> Tuple[Tuple[int, int], ...]:
  """(in, out) channels of each up-stage of G at this output resolution."""
  if resolution not in CHANNEL_SCHEDULE:
    raise ValueError(f"unsupported resolution {resolution}; supported: "
                     f"{sorted(CHANNEL_SCHEDULE)}")
  ins, outs = CHANNEL_SCHEDULE[resolution]
  return tuple((ch * i, ch * o) for i, o in zip(ins, outs))


def _upsample(x):
  """Nearest-neighbour x2, as F.interpolate(scale_factor=2)."""
  return jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)


class GBlock(nn.Module):
  """BigGAN-deep block: 1x1 down to in/4, two 3x3, 1x1 up, residual."""
  out_channels: int
  upsample: bool
  channel_ratio: int = 4
  sn_eps: float = 1e-6

  @nn.compact
  def __call__(self, x, y):
    hidden = x.shape[-1] // self.channel_ratio
    cbn = lambda name: layers.SelfModulatedBatchNorm(self.sn_eps, name=name)
    conv = lambda c, k, name: layers.SNConv(c, eps=self.sn_eps, kernel_size=k,
                                            name=name)
    h = conv(hidden, 1, "conv1")(nn.relu(cbn("bn1")(x, y)))
    h = nn.relu(cbn("bn2")(h, y))
    x = x[..., :self.out_channels]   # drop channels when out < in
    if self.upsample:
      h, x = _upsample(h), _upsample(x)
    h = conv(hidden, 3, "conv2")(h)
    h = conv(hidden, 3, "conv3")(nn.relu(cbn("bn3")(h, y)))
    h = conv(self.out_channels, 1, "conv4")(nn.relu(cbn("bn4")(h, y)))
    return h + x


class Generator(nn.Module):
  """G(z) -> images [N, resolution, resolution, 3] in [-1, 1].

  Defaults are the CIFAR reference (32x32, ch 128, depth 2, z 128).
  `z_dim` is the latent size. Parameters are float32; `dtype` bfloat16 runs
  the activations in bfloat16 (batch statistics and the output stay float32).
  """
  resolution: int = 32
  ch: int = 128
  depth: int = 2
  z_dim: int = 128
  bottom_width: int = 4
  sn_eps: float = 1e-6
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, z):
    stages = stage_channels(self.resolution, self.ch)
    z = z.astype(self.dtype)
    # y conditions every cBN. As in the reference code, the 4x4 layer reads y
    # (the reference overwrites z with this layer's output before using it).
    y = layers.SNDense(self.z_dim, eps=self.sn_eps, name="latent")(z)
    c0 = stages[0][0]
    h = layers.SNDense(c0 * self.bottom_width ** 2, eps=self.sn_eps,
                       name="bottom")(y)
    # The reference views this as [N, C, 4, 4]; keep its element order.
    h = h.reshape(-1, c0, self.bottom_width, self.bottom_width)
    h = jnp.transpose(h, (0, 2, 3, 1))
    for s, (cin, cout) in enumerate(stages):
      for b in range(self.depth):
        last = b == self.depth - 1
        h = GBlock(cout if last else cin, upsample=last, sn_eps=self.sn_eps,
                   name=f"stage{s + 1}_block{b + 1}")(h, y)
    h = nn.relu(layers.BatchNorm(use_affine=True, name="out_bn")(h))
    h = layers.SNConv(3, eps=self.sn_eps, kernel_size=3, name="out_conv")(h)
    return jnp.tanh(h).astype(jnp.promote_types(h.dtype, jnp.float32))

