"""Layers shared by D and G: reference initialisers, spectral norm, BN, cBN.

Mutable state lives in Flax collections: `spectral` holds the persistent
power-iteration vectors `u` of spectrally normalised layers, `batch_stats`
holds the running averages of G's batch norms. Both change only when `apply`
is called with them in `mutable` (training mode, as the reference always runs
G); the losses never depend on the running averages because G always
normalises with batch statistics (docs/method.md §2.2).
"""
from typing import Optional, Sequence

import jax
import jax.numpy as jnp
import flax.linen as nn

from sgan_jax.utils import unit_rows

# Kaiming-normal, fan_out mode, ReLU gain: the reference's conv init (and G's
# dense init).
kaiming_fan_out = nn.initializers.variance_scaling(2.0, "fan_out", "normal")
# PyTorch's default Linear weight init: U(-1/sqrt(fan_in), 1/sqrt(fan_in)).
torch_default_kernel = nn.initializers.variance_scaling(1.0 / 3.0, "fan_in",
                                                        "uniform")


def torch_default_bias(fan_in: int):
  """PyTorch's default bias init: U(-1/sqrt(fan_in), 1/sqrt(fan_in))."""
  bound = 1.0 / float(fan_in) ** 0.5

  def init(key, shape, dtype=jnp.float32):
    return jax.random.uniform(key, shape, dtype, -bound, bound)
  return init


def spectral_normalize(kernel, u_var, update: bool, eps: float):
  """Divides `kernel` by its top singular value, one power iteration
  (docs/method.md §2.2).

  The kernel is viewed as a [fan_in, out] matrix, the transpose of PyTorch's
  `weight.view(out, -1)`, so the persistent `u` ([1, out]) lives in the same
  space as the reference's. As in the reference, `u` and `v` carry no
  gradient, the singular value is taken with the new `u`, and `u` is stored
  back only in training (`update`).
  """
  w = kernel.reshape(-1, kernel.shape[-1])
  u = u_var.value
  v = jax.lax.stop_gradient(unit_rows(u @ w.T, eps))
  u_new = jax.lax.stop_gradient(unit_rows(v @ w, eps))
  sigma = jnp.squeeze((v @ w) @ u_new.T)
  if update:
    u_var.value = u_new
  return kernel / sigma


class _SpectralNormLayer(nn.Module):
  """Common part of SNDense and SNConv: parameters, `u` and the normalisation."""
  features: int
  use_bias: bool = True
  eps: float = 1e-6

  def normalized_kernel(self, kernel_shape, fan_in):
    kernel = self.param("kernel", kaiming_fan_out, kernel_shape)
    u = self.variable(
        "spectral", "u",
        lambda: jax.random.normal(self.make_rng("params"), (1, self.features)))
    update = self.is_mutable_collection("spectral") and not self.is_initializing()
    kernel = spectral_normalize(kernel, u, update, self.eps)
    bias = (self.param("bias", torch_default_bias(fan_in), (self.features,))
            if self.use_bias else None)
    return kernel, bias


class SNDense(_SpectralNormLayer):
  """Spectrally normalised dense layer (G's linear layers)."""

  @nn.compact
  def __call__(self, x):
    fan_in = x.shape[-1]
    kernel, bias = self.normalized_kernel((fan_in, self.features), fan_in)
    y = x @ kernel.astype(x.dtype)
    return y + bias.astype(x.dtype) if bias is not None else y


class SNConv(_SpectralNormLayer):
  """Spectrally normalised 'same' convolution, stride 1 (G's convs)."""
  kernel_size: int = 3

  @nn.compact
  def __call__(self, x):
    ks, cin = self.kernel_size, x.shape[-1]
    kernel, bias = self.normalized_kernel((ks, ks, cin, self.features),
                                          ks * ks * cin)
    y = conv2d(x, kernel)
    return y + bias.astype(x.dtype) if bias is not None else y


# On the CPU backend, a 3x3 convolution with at most this many output channels
# and at least this many input channels (G's RGB output at the reference
# size) runs as one matmul and shifted sums (`_narrow_conv`); with fewer
# inputs (the digits G's 64 -> 3) XLA's convolution was faster.
NARROW_OUTPUT_CHANNELS = 16
NARROW_MIN_INPUT_CHANNELS = 256


def conv2d(x, kernel, cpu_forms: Optional[bool] = None):
  """NHWC 'same' convolution with an HWIO kernel, stride 1, computed in the
  dtype of `x` (float32 parameters are cast for bfloat16 activations).

  On the CPU backend (`cpu_forms=None` picks them there) two shapes that
  XLA:CPU convolves slowly are computed as matmuls instead: a 1x1 kernel is
  a matmul over channels, and a kernel with at most NARROW_OUTPUT_CHANNELS
  outputs and at least NARROW_MIN_INPUT_CHANNELS inputs is `_narrow_conv`
  (docs/benchmarks.md has the figures).
  Accelerators keep XLA's convolution. All forms are plain JAX ops, so every
  derivative (the Jacobian term differentiates through a JVP) stays exact;
  tests/test_conv.py checks them against XLA's convolution.
  """
  kernel = kernel.astype(x.dtype)
  ks, cout = kernel.shape[0], kernel.shape[-1]
  if cpu_forms is None:
    cpu_forms = jax.default_backend() == "cpu"
  if cpu_forms and ks == 1:
    return jnp.einsum("nhwc,co->nhwo", x, kernel[0, 0])
  if (cpu_forms and ks % 2 == 1 and cout <= NARROW_OUTPUT_CHANNELS
      and kernel.shape[2] >= NARROW_MIN_INPUT_CHANNELS):
    return _narrow_conv(x, kernel)
  pad = ks // 2
  return jax.lax.conv_general_dilated(
      x, kernel, window_strides=(1, 1), padding=((pad, pad), (pad, pad)),
      dimension_numbers=("NHWC", "HWIO", "NHWC"))


def _narrow_conv(x, kernel):
  """'Same' convolution as one matmul, then shifted sums: every tap's
  contribution `x @ kernel[i, j]` at once ([N, H, W, k*k, O], cheap when O
  is small), then output pixel (h, w) adds tap (i, j) of input pixel
  (h + i - k//2, w + j - k//2), zero outside the image."""
  ks, _, cin, cout = kernel.shape
  _, height, width, _ = x.shape
  taps = kernel.reshape(ks * ks, cin, cout)
  per_tap = jnp.einsum("nhwc,tco->nhwto", x, taps)
  pad = ks // 2
  per_tap = jnp.pad(per_tap, ((0, 0), (pad, pad), (pad, pad), (0, 0), (0, 0)))
  out = 0
  for t in range(ks * ks):
    i, j = divmod(t, ks)
    out = out + per_tap[:, i:i + height, j:j + width, t, :]
  return out


class Conv(nn.Module):
  """Plain 'same' convolution without bias, Kaiming fan_out init (D's convs)."""
  features: int
  kernel_size: int = 3

  @nn.compact
  def __call__(self, x):
    ks = self.kernel_size
    kernel = self.param("kernel", kaiming_fan_out,
                        (ks, ks, x.shape[-1], self.features))
    return conv2d(x, kernel)


class BatchNorm(nn.Module):
  """Batch norm over N, H, W with batch statistics (PyTorch semantics).

  Normalises with the biased batch variance; the running averages (momentum
  `momentum`, unbiased variance) are updated when `batch_stats` is mutable.
  Statistics are over the whole (global) batch the array holds, in float32
  whatever the activations' dtype.
  """
  use_affine: bool = True
  eps: float = 1e-5
  momentum: float = 0.1

  @nn.compact
  def __call__(self, x):
    c, dtype = x.shape[-1], x.dtype
    axes = tuple(range(x.ndim - 1))
    x = x.astype(jnp.promote_types(dtype, jnp.float32))
    mean = jnp.mean(x, axis=axes)
    var = jnp.mean(jnp.square(x - mean), axis=axes)
    ra_mean = self.variable("batch_stats", "mean", jnp.zeros, (c,))
    ra_var = self.variable("batch_stats", "var", jnp.ones, (c,))
    if self.is_mutable_collection("batch_stats") and not self.is_initializing():
      n = x.size // c
      unbiased = var * n / max(n - 1, 1)
      m = self.momentum
      ra_mean.value = (1 - m) * ra_mean.value + m * mean
      ra_var.value = (1 - m) * ra_var.value + m * unbiased
    y = (x - mean) * jax.lax.rsqrt(var + self.eps)
    if self.use_affine:
      y = y * self.param("scale", nn.initializers.ones, (c,))
      y = y + self.param("bias", nn.initializers.zeros, (c,))
    return y.astype(dtype)


class SelfModulatedBatchNorm(nn.Module):
  """cBN: `BN(x) * (1 + SNDense(y)) + SNDense(y)`, no affine (docs/method.md §2.2)."""
  sn_eps: float = 1e-6

  @nn.compact
  def __call__(self, x, y):
    c = x.shape[-1]
    gain = SNDense(c, use_bias=False, eps=self.sn_eps, name="gain")(y)
    bias = SNDense(c, use_bias=False, eps=self.sn_eps, name="bias")(y)
    out = BatchNorm(use_affine=False, name="bn")(x)
    return out * (1.0 + gain[:, None, None, :]) + bias[:, None, None, :]


def group_norm_groups(channels: int, channels_per_group: int = 16) -> int:
  """Reference rule: one group per 16 channels, one group at 16 or fewer."""
  return max(1, channels // channels_per_group)


def check_widths(widths: Sequence[int], channels_per_group: int = 16):
  """Rejects widths that GroupNorm cannot split into equal groups."""
  for w in widths:
    g = group_norm_groups(w, channels_per_group)
    if w % g:
      raise ValueError(
          f"width {w} is not divisible into {g} GroupNorm groups of "
          f"{channels_per_group} channels; use a multiple of "
          f"{channels_per_group} (or at most {channels_per_group}).")
