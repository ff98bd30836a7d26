"""What the parity tools share: the step's inputs (drawn in the authors'
layout, and as sgan_jax's batch and noise), sgan_jax's side of a comparison
(a state synced to the reference, the step with its intermediates) and the
measures of difference (`docs/fidelity.md`)."""
import re

import jax
import jax.numpy as jnp
import numpy as np

from sgan_jax import step as step_lib
from sgan_jax.interop import pytorch
from sgan_jax.utils import path_names

# Both implementations in float64: rounding is ~1e-16, so even the worst
# conditioned quantity (G's gradient, ~1e5) must agree to far better than this.
FLOAT64_TOLERANCE = 1e-8


def draw_step_inputs(rng, spec, batch, dtype=np.float64):
  """A step's inputs for the authors' trainer, NumPy: images [N, 3, H, W] in
  [-1, 1] (their layout), int32 labels, z_d, z_g, and u [2N, embed]; the
  floats drawn in `dtype` (NumPy draws float32 normals by another method
  than float64 ones)."""
  size, z_dim = spec.image_size, spec.model.z_dim
  return (rng.uniform(-1, 1, (batch, 3, size, size)).astype(dtype),
          rng.integers(0, spec.num_classes, batch).astype(np.int32),
          rng.standard_normal((batch, z_dim), dtype),
          rng.standard_normal((batch, z_dim), dtype),
          rng.standard_normal((2 * batch, spec.model.embed_dim), dtype))


def jax_inputs(inputs, dtype=None):
  """`draw_step_inputs`'s tuple as the step's (batch, noise): images
  [N, H, W, 3]; the floats cast to `dtype` unless it is None."""
  images, labels, z_d, z_g, u = inputs
  cast = (lambda a: a) if dtype is None else (lambda a: a.astype(dtype))
  return ({"image": cast(images.transpose(0, 2, 3, 1)), "label": labels},
          {"z_d": cast(z_d), "z_g": cast(z_g), "u": cast(u)})


def synced_state(trainer, template):
  """An sgan_jax state equal to the reference's current one: networks, EMAs,
  G's buffers, queue and the Adam moments."""
  state = pytorch.state_from_torch(trainer.checkpoint(), template)
  step, first, second = trainer.adam_moments()
  if step:
    m1, m2 = (pytorch.state_from_torch(c, template) for c in (first, second))

    def adam(opt_state, mu, nu):
      return (opt_state[0]._replace(count=np.asarray(step, np.int32), mu=mu, nu=nu),
              *opt_state[1:])
    state = state.replace(d_opt_state=adam(state.d_opt_state, m1.d_params, m2.d_params),
                          g_opt_state=adam(state.g_opt_state, m1.g_params, m2.g_params))
  return jax.tree.map(jnp.asarray, state)


def make_jax_functions(spec):
  """(step, g_gradient, arithmetic), jitted.

  `step(state, batch, noise)`: sgan_jax's training step with injected noise,
  plus the values the reference computes inside its step (the phases' named
  intermediates, `step.DPhaseOut` and `step.GPhaseOut`), D's gradient and
  what the G phase takes from the D phase (G's state, the real keys).
  `g_gradient(state, d_params, g_state, real_keys, batch, noise)`: G's
  gradient against a given updated D (the reference's: an own D update
  differs where Adam amplifies rounding).
  `arithmetic(state, d_grads, g_grads)`: the optimiser and EMA updates that
  given gradients produce (the reference's gradients, to compare the update
  rules on equal inputs)."""

  def step(state, batch, noise):
    n = batch["image"].shape[0]
    out = step_lib.step_with_phases(state, batch, noise)
    d_out = out.d_out
    nchw = lambda a: jnp.transpose(a, (0, 3, 1, 2))
    values = {"D(x) raw embedding e": d_out.outputs.raw_embedding[:n],
              "D(x) unit embedding": d_out.outputs.embedding[:n],
              "G(z_d) images": nchw(d_out.fake),
              "D(G(z_d)) unit embedding": d_out.outputs.embedding[n:],
              "D_ema keys of x": d_out.real_keys, "D_ema keys of G(z_d)": d_out.fake_keys,
              "sigma (2N, per sample)": d_out.sigma, "G(z_g) images": nchw(out.g_out.fake),
              **{k: v for k, v in out.metrics.items()
                 if not k.endswith(("acc", "grad_norm", "embed_norm", "sigma_mean"))}}
    return out.state, values, d_out.grads, (d_out.state.g_state, d_out.real_keys)

  def g_gradient(state, d_params, g_state, real_keys, batch, noise):
    after_d = state.replace(d_params=d_params, g_state=g_state)
    return step_lib.g_phase(after_d, real_keys, batch, noise).grads

  def arithmetic(state, d_grads, g_grads):
    d_params, _ = step_lib.apply_gradients(spec.optim.d_optimizer(), d_grads,
                                           state.d_opt_state, state.d_params)
    g_params, _ = step_lib.apply_gradients(spec.optim.g_optimizer(), g_grads,
                                           state.g_opt_state, state.g_params)
    ema = lambda new, old: step_lib.ema_update(spec, new, old)
    return {"D parameters": d_params, "D_ema parameters": ema(d_params, state.d_ema_params),
            "G parameters": g_params, "G_ema parameters": ema(g_params, state.g_ema_params)}
  return jax.jit(step), jax.jit(g_gradient), jax.jit(arithmetic)


def rel_diff(a, b) -> float:
  """`max|a - b| / max|b|` in float64 (the plain error when b is all zero)."""
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  if a.shape != b.shape:
    raise ValueError(f"shapes differ: {a.shape} vs {b.shape}")
  scale = np.max(np.abs(b)) if b.size else 0.0
  err = np.max(np.abs(a - b)) if a.size else 0.0
  return float(err / scale) if scale > 0 else float(err)


def flat(tree):
  return {k: np.asarray(v) for k, v in path_names(tree).items()}


def per_tensor(a, b, skip=()):
  """(worst per-tensor rel_diff, its tensor) over matching leaves of two trees."""
  fa, fb = flat(a), flat(b)
  return max((rel_diff(fa[k], fb[k]), k) for k in fb if k not in skip)


def over_all(a, b, only=None):
  """(max|a - b| over the leaves `only` (default all) / max|b| over all leaves,
  worst tensor)."""
  fa, fb = flat(a), flat(b)
  scale = max(np.max(np.abs(v)) for v in fb.values())
  err, where = max((float(np.max(np.abs(fa[k] - fb[k]))), k) for k in (only or fb))
  return err / scale, where


def whole(a, b):
  return rel_diff(a, b), ""


def as_float64(tree):
  """`tree` with its floating-point leaves as float64 NumPy arrays."""
  return jax.tree.map(lambda x: np.asarray(x, np.float64)
                      if np.issubdtype(np.asarray(x).dtype, np.floating) else x, tree)


def zero_gradient_biases(g_params):
  """G's conv biases: each adds a per-channel constant that a batch norm
  removes (directly, or after residual sums that end in one), so their
  gradient is 0 in exact arithmetic and float32 rounding noise in practice."""
  return [k for k in flat(g_params) if re.fullmatch(r"stage\d+_block\d+/conv\d/bias", k)]
