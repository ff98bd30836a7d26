"""What the parity tools share: sgan_jax's side of a comparison (a state
synced to the reference, the step with its intermediates) and the measures
of difference (`docs/fidelity.md`)."""
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

def draw_step_inputs(rng, spec, batch):
  """A step's inputs for the authors' trainer, float64 NumPy: images [N, 3,
  H, W] in [-1, 1] (their layout), labels, z_d, z_g, and u [2N, embed]."""
  return (rng.uniform(-1, 1, (batch, 3, spec.image_size, spec.image_size)),
          rng.integers(0, spec.num_classes, batch).astype(np.int32),
          rng.standard_normal((batch, spec.z_dim)),
          rng.standard_normal((batch, spec.z_dim)),
          rng.standard_normal((2 * batch, spec.embed_dim)))


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
  plus the values the reference computes inside its step (the step's named
  intermediates, `step.DGrads` and `step.GGrads`) and D's gradient.
  `g_gradient(state, d_params, ...)`: G's gradient against a given updated D
  (the reference's: an own D update differs where Adam amplifies rounding).
  `arithmetic(state, d_grads, g_grads)`: the optimiser and EMA updates that
  given gradients produce (the reference's gradients, to compare the update
  rules on equal inputs)."""

  def step(state, batch, noise):
    n = batch["image"].shape[0]
    out = step_lib.step_with_phases(state, batch, noise)
    d = out.d.result
    nchw = lambda a: jnp.transpose(a, (0, 3, 1, 2))
    values = {"D(x) raw embedding e": d.out.raw_embedding[:n],
              "D(x) unit embedding z": d.out.embedding[:n],
              "G(z_d) images": nchw(d.fake),
              "D(G(z_d)) unit embedding": d.out.embedding[n:],
              "D_ema keys of x": d.real_keys, "D_ema keys of G(z_d)": d.fake_keys,
              "sigma (2N, per sample)": d.sigma, "G(z_g) images": nchw(out.g.result.fake),
              **{k: v for k, v in out.metrics.items()
                 if not k.endswith(("acc", "grad_norm", "embed_norm", "sigma_mean"))}}
    return out.state, values, d.grads, (d.g_state, d.real_keys)

  def g_gradient(state, d_params, g_state, real_keys, batch, noise):
    return step_lib.g_grads(state, d_params, g_state, batch["image"], real_keys,
                            noise["z_g"]).grads

  def arithmetic(state, d_grads, g_grads):
    d_params, _ = step_lib.apply_gradients(spec.d_optimizer(), d_grads,
                                           state.d_opt_state, state.d_params)
    g_params, _ = step_lib.apply_gradients(spec.g_optimizer(), g_grads,
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
