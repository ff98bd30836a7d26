"""The CPU convolution path (`layers.conv2d`) against XLA's convolution.

On the CPU backend 1x1 convolutions run as matmuls, and 3x3 ones with few
outputs (G's RGB layer) as a matmul and shifted sums; every such shape the
reference networks use must give XLA's values and derivatives (first order,
and the second order that the Jacobian term takes through a JVP, or through a
VJP) to float32 accuracy.
"""
import collections
import functools

import jax
import jax.numpy as jnp
import numpy as np

from sgan_jax import config_lib, sharding, step
from sgan_jax.models import layers
from sgan_jax.state import abstract_train_state


def _rel(a, b):
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  return np.max(np.abs(a - b)) / np.max(np.abs(b))


@functools.lru_cache(maxsize=None)
def _reference_conv_shapes():
  """(input shape, kernel shape) of every conv in one reference-config step,
  found by tracing the step (shapes only) with a recording conv2d. Traced on
  first use, not at import."""
  config = config_lib.reference_config()
  config.global_batch_size = 4
  seen = collections.Counter()
  original = layers.conv2d

  def record(x, kernel, *args, **kwargs):
    seen[(x.shape[1:], kernel.shape)] += 1
    return original(x, kernel, *args, **kwargs)
  layers.conv2d = record
  try:
    state = abstract_train_state(config, sharding.make_mesh(jax.devices()[:1]))
    batch = {"image": jax.ShapeDtypeStruct((4, 32, 32, 3), jnp.float32),
             "label": jax.ShapeDtypeStruct((4,), jnp.int32)}
    jax.eval_shape(step.step_fn, state, batch)
  finally:
    layers.conv2d = original
  return sorted(seen)


def _one_by_one():
  return [s for s in _reference_conv_shapes() if s[1][:2] == (1, 1)]


def _narrow():
  return [s for s in _reference_conv_shapes()
          if s[1][:2] == (3, 3) and s[1][-1] <= layers.NARROW_OUTPUT_CHANNELS
          and s[1][2] >= layers.NARROW_MIN_INPUT_CHANNELS]


def test_the_networks_use_1x1_and_3x3_stride_1_same_convs_only():
  kernels = {k[:2] for _, k in _reference_conv_shapes()}
  assert kernels == {(1, 1), (3, 3)}
  assert len(_one_by_one()) >= 8   # D's shortcuts and G's bottlenecks
  assert _narrow() == [((32, 32, 512), (3, 3, 512, 3))]   # G's output layer


def test_matmul_1x1_equals_xla_conv_with_derivatives_for_every_shape():
  shapes = _one_by_one()
  assert shapes
  for hwc, kernel_shape in shapes:
    _check_cpu_form(hwc, kernel_shape)


def test_narrow_conv_equals_xla_conv_with_derivatives():
  for hwc, kernel_shape in _narrow() + [((5, 7, 256), (3, 3, 256, 1)), ((6, 6, 260), (5, 5, 260, 16))]:
    _check_cpu_form(hwc, kernel_shape)


def _numpy_conv(x, w):
  """float64 'same' convolution, stride 1, by its definition."""
  ks = w.shape[0]
  p = ks // 2
  xp = np.pad(np.float64(x), ((0, 0), (p, p), (p, p), (0, 0)))
  h, wd = x.shape[1:3]
  return sum(np.einsum("nhwc,co->nhwo", xp[:, i:i + h, j:j + wd], np.float64(w[i, j]))
             for i in range(ks) for j in range(ks))


def _check_cpu_form(hwc, kernel_shape):
  """Every assertion names the shape (the shapes are only known once traced,
  so they are looped over here rather than parametrized at collection)."""
  where = f"{hwc} x {kernel_shape}"
  kx, kw, kg, kr = jax.random.split(jax.random.PRNGKey(sum(hwc) + kernel_shape[-1]), 4)
  x = jax.random.normal(kx, (2, *hwc))
  w = jax.random.normal(kw, kernel_shape) / np.sqrt(kernel_shape[2])
  y_shape = (2, *hwc[:2], kernel_shape[-1])
  g, r = jax.random.normal(kg, y_shape), jax.random.normal(kr, (2, *hwc))
  fast = lambda x, w: layers.conv2d(x, w, cpu_forms=True)
  xla = lambda x, w: layers.conv2d(x, w, cpu_forms=False)
  assert "conv_general_dilated" not in str(jax.make_jaxpr(fast)(x, w)), where

  # Forward, against XLA and against float64 NumPy.
  y = fast(x, w)
  assert _rel(y, xla(x, w)) < 1e-5, where
  assert _rel(y, _numpy_conv(x, w)) < 1e-5, where
  # Input and weight gradients (the VJP).
  fast_dx, fast_dw = jax.vjp(fast, x, w)[1](g)
  xla_dx, xla_dw = jax.vjp(xla, x, w)[1](g)
  assert _rel(fast_dx, xla_dx) < 1e-5, where
  assert _rel(fast_dw, xla_dw) < 1e-5, where
  # Forward mode (the power iteration's JVP), tangents on x and w.
  tw = jax.random.normal(kr, kernel_shape)
  assert _rel(jax.jvp(fast, (x, w), (r, tw))[1],
              jax.jvp(xla, (x, w), (r, tw))[1]) < 1e-5, where

  # Second order: d/dw of <JVP_x(r), g> (the smoothness term's form) and of
  # <VJP_x(g), r>, in both cases also into x (D's activations feed both).
  def through_jvp(conv):
    return jax.grad(lambda x, w: jnp.sum(jax.jvp(lambda x: conv(x, w), (x,), (r,))[1] * g),
                    argnums=(0, 1))(x, w)[1]

  def through_vjp(conv):
    return jax.grad(lambda w: jnp.sum(jax.vjp(lambda x: conv(x, w), x)[1](g)[0] * r))(w)
  assert _rel(through_jvp(fast), through_jvp(xla)) < 1e-5, where
  assert _rel(through_vjp(fast), through_vjp(xla)) < 1e-5, where


def test_cpu_dispatch_1x1_and_narrow_to_matmul_and_wide_3x3_to_xla_conv():
  assert jax.default_backend() == "cpu"
  def prims(k, o, cin=layers.NARROW_MIN_INPUT_CHANNELS, **kw):
    return {e.primitive.name for e in jax.make_jaxpr(
        lambda x, w: layers.conv2d(x, w, **kw))(
            jnp.zeros((1, 4, 4, cin)), jnp.zeros((k, k, cin, o))).eqns}
  narrow, wide = layers.NARROW_OUTPUT_CHANNELS, layers.NARROW_OUTPUT_CHANNELS + 1
  assert "conv_general_dilated" not in prims(1, wide) and "dot_general" in prims(1, wide)
  assert "conv_general_dilated" not in prims(3, narrow) and "dot_general" in prims(3, narrow)
  assert "conv_general_dilated" in prims(3, wide)
  # Few inputs (the digits G's 64 -> 3): XLA's convolution.
  assert "conv_general_dilated" in prims(3, narrow, cin=layers.NARROW_MIN_INPUT_CHANNELS - 1)
  # Off the CPU path (what accelerators use), every kernel stays an XLA convolution.
  for k, o in ((1, wide), (3, narrow)):
    assert "conv_general_dilated" in prims(k, o, cpu_forms=False)
