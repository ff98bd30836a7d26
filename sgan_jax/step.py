"""One training step, pure JAX (docs/method.md §4).

D phase (`d_grads`, `d_phase`), G phase (`g_grads`, `g_phase`), the EMA of D
and G, and the enqueue, composed by `step_fn(state, batch) -> (state,
metrics)`. `make_train_step(mesh)` jits it, with explicit layouts when given
a mesh. Each phase returns its gradient together with the intermediates its
loss was computed from, as named fields, so that tools comparing the step
with another implementation (`sgan_jax.interop.parity`) read them instead of
recomputing them.
"""
import functools
from typing import Any, Dict, NamedTuple, Optional, Tuple

import jax
import jax.numpy as jnp
import optax

from sgan_jax import losses, sharding
from sgan_jax.models.discriminator import DOutput
from sgan_jax.state import G_MUTABLE, StepSpec, TrainState

Metrics = Dict[str, jax.Array]


class DGrads(NamedTuple):
  """The D phase's gradient and what its loss was computed from."""
  grads: Any               # d loss / d D's parameters
  metrics: Metrics         # each loss term (`losses.discriminator_loss`)
  g_state: Any             # G's state after generating `fake`
  fake: jax.Array          # G(z_d) [N, H, W, 3]
  out: DOutput             # D on concat(x, sg(fake)): 2N rows, reals first
  sigma: jax.Array         # [2N] Jacobian estimates on the same rows
  real_keys: jax.Array     # [N, Ck] D_ema keys of x
  fake_keys: jax.Array     # [N, Ck] D_ema keys of fake


class GGrads(NamedTuple):
  """The G phase's gradient and what its loss was computed from."""
  grads: Any               # g loss / d G's parameters
  metrics: Metrics         # each loss term (`losses.generator_loss`)
  g_state: Any             # G's state after generating `fake`
  fake: jax.Array          # G(z_g) [N, H, W, 3]
  real_emb: jax.Array      # [N, C] updated D's unit embeddings of x (enqueued)


class Phase(NamedTuple):
  """A phase's optimiser update and the gradient result it applied."""
  params: Any
  opt_state: Any
  result: Any              # DGrads or GGrads


class StepOutput(NamedTuple):
  state: TrainState
  metrics: Metrics         # "d/<term>" and "g/<term>" scalars
  d: Phase
  g: Phase


def generate(spec: StepSpec, g_params, g_state, z):
  """G(z) in training mode (batch statistics, as the authors always run G);
  returns (images, G's advanced state)."""
  images, new_state = spec.generator().apply(
      {"params": g_params, **g_state}, z, mutable=list(G_MUTABLE))
  return images, dict(new_state)


def draw_step_noise(spec: StepSpec, rng, batch_size: int) -> Dict[str, jax.Array]:
  """The step's random draws: z for each phase and the power iteration's u."""
  k_zd, k_zg, k_u = jax.random.split(rng, 3)
  return dict(
      z_d=jax.random.normal(k_zd, (batch_size, spec.z_dim)),
      z_g=jax.random.normal(k_zg, (batch_size, spec.z_dim)),
      u=jax.random.normal(k_u, (2 * batch_size, spec.embed_dim)))


def _split(tree, n):
  """Splits every leaf of a batch-major pytree into its first n rows and rest."""
  return (jax.tree.map(lambda a: a[:n], tree), jax.tree.map(lambda a: a[n:], tree))


def ema_keys(spec: StepSpec, d_ema_params, images):
  """D_ema's unit backbone features: the keys of the neighbour search."""
  d = spec.discriminator()
  return jax.lax.stop_gradient(
      d.apply({"params": d_ema_params}, images, method=d.keys))


def d_grads(state: TrainState, images, labels, z, u,
            with_jacobian: bool = True) -> DGrads:
  """D's loss on `x` and `sg(G(z))` and its gradient (docs/method.md §4.1).
  `with_jacobian=False` (for the benchmark's cost split only) drops the
  smoothness term and its power iteration."""
  spec, d = state.spec, state.spec.discriminator()
  n = images.shape[0]
  fake, g_state = generate(spec, state.g_params, state.g_state, z)
  both = jnp.concatenate([images, jax.lax.stop_gradient(fake)], axis=0)
  real_keys, fake_keys = _split(ema_keys(spec, state.d_ema_params, both), n)

  def loss_fn(d_params):
    def embed(x):
      out = d.apply({"params": d_params}, x)
      return out.raw_embedding, out
    if with_jacobian:
      sigma, _, out = losses.power_iteration_sigma(
          embed, both, u, spec.jacobian_iters, has_aux=True)
    else:
      out, sigma = embed(both)[1], jnp.ones((both.shape[0],), images.dtype)
    real, fake_out = _split(out, n)
    loss, metrics = losses.discriminator_loss(
        real_emb=real.embedding, fake_emb=fake_out.embedding,
        real_raw_emb=real.raw_embedding, real_keys=real_keys,
        fake_keys=fake_keys, queue_keys=state.queue_keys,
        queue_emb=state.queue_emb, sigma=sigma,
        probe_logits=real.probe_logits, labels=labels,
        smoothness_weight=spec.smoothness_weight,
        norm_hinge_weight=spec.norm_hinge_weight,
        probe_weight=spec.probe_weight, **spec.loss_kwargs())
    return loss, (metrics, out, sigma)

  grads, (metrics, out, sigma) = jax.grad(loss_fn, has_aux=True)(state.d_params)
  metrics["grad_norm"] = optax.tree.norm(grads)
  return DGrads(grads, metrics, g_state, fake, out, sigma, real_keys, fake_keys)


def g_grads(state: TrainState, d_params, g_state, images, real_keys, z) -> GGrads:
  """G's loss against D `d_params` and its gradient (docs/method.md §4.2)."""
  spec, d = state.spec, state.spec.discriminator()
  real_emb = jax.lax.stop_gradient(
      d.apply({"params": d_params}, images).embedding)

  def loss_fn(g_params):
    fake, new_g_state = generate(spec, g_params, g_state, z)
    fake_emb = d.apply({"params": d_params}, fake).embedding
    fake_keys = ema_keys(spec, state.d_ema_params, fake)
    loss, metrics = losses.generator_loss(
        real_emb=real_emb, fake_emb=fake_emb, real_keys=real_keys,
        fake_keys=fake_keys, queue_keys=state.queue_keys,
        queue_emb=state.queue_emb, **spec.loss_kwargs())
    return loss, (metrics, new_g_state, fake)

  grads, (metrics, g_state, fake) = jax.grad(loss_fn, has_aux=True)(state.g_params)
  metrics["grad_norm"] = optax.tree.norm(grads)
  return GGrads(grads, metrics, g_state, fake, real_emb)


def apply_gradients(optimizer: optax.GradientTransformation, grads, opt_state,
                    params) -> Tuple[Any, Any]:
  """One optimiser update; returns (params, opt_state)."""
  updates, opt_state = optimizer.update(grads, opt_state, params)
  return optax.apply_updates(params, updates), opt_state


def ema_update(spec: StepSpec, new, old):
  """`old * ema_decay + new * (1 - ema_decay)`, leaf by leaf (docs/method.md §4.3)."""
  return optax.incremental_update(new, old, 1.0 - spec.ema_decay)


def d_phase(state: TrainState, images, labels, z, u,
            with_jacobian: bool = True) -> Phase:
  """D's gradient (`d_grads`) and its AdamW update."""
  result = d_grads(state, images, labels, z, u, with_jacobian)
  params, opt_state = apply_gradients(state.spec.d_optimizer(), result.grads,
                                      state.d_opt_state, state.d_params)
  return Phase(params, opt_state, result)


def g_phase(state: TrainState, d_params, g_state, images, real_keys, z) -> Phase:
  """G's gradient against the updated D (`g_grads`) and its Adam update."""
  result = g_grads(state, d_params, g_state, images, real_keys, z)
  params, opt_state = apply_gradients(state.spec.g_optimizer(), result.grads,
                                      state.g_opt_state, state.g_params)
  return Phase(params, opt_state, result)


def _enqueue(queue, rows, ptr):
  return jax.lax.dynamic_update_slice(queue, rows.astype(queue.dtype),
                                      (ptr, jnp.zeros_like(ptr)))


def step_with_phases(state: TrainState, batch: Dict[str, jax.Array],
                     noise: Optional[Dict[str, jax.Array]] = None) -> StepOutput:
  """`step_fn`, also returning both phases' results (unused ones cost nothing
  under jit: XLA drops them)."""
  spec = state.spec
  images, labels = batch["image"], batch["label"]
  n = images.shape[0]
  rng, step_rng = jax.random.split(state.rng)
  if noise is None:
    noise = draw_step_noise(spec, step_rng, n)

  d = d_phase(state, images, labels, noise["z_d"], noise["u"])
  g = g_phase(state, d.params, d.result.g_state, images, d.result.real_keys,
              noise["z_g"])
  real_keys = d.result.real_keys   # D_ema has not changed since the D phase
  ema = functools.partial(ema_update, spec)
  new_state = state.replace(
      step=state.step + 1, rng=rng,
      d_params=d.params, d_opt_state=d.opt_state,
      d_ema_params=ema(d.params, state.d_ema_params),
      g_params=g.params, g_opt_state=g.opt_state,
      g_ema_params=ema(g.params, state.g_ema_params), g_state=g.result.g_state,
      queue_emb=_enqueue(state.queue_emb, g.result.real_emb, state.queue_ptr),
      queue_keys=_enqueue(state.queue_keys, real_keys, state.queue_ptr),
      queue_ptr=(state.queue_ptr + n) % spec.queue_size)
  metrics = {f"d/{k}": v for k, v in d.result.metrics.items()}
  metrics.update({f"g/{k}": v for k, v in g.result.metrics.items()})
  return StepOutput(new_state, metrics, d, g)


def step_fn(state: TrainState, batch: Dict[str, jax.Array],
            noise: Optional[Dict[str, jax.Array]] = None
            ) -> Tuple[TrainState, Metrics]:
  """One training step, un-jitted (`make_train_step` jits it).

  G runs in training mode in both phases, as in the authors' code, so its
  batch-norm running averages and spectral-norm vectors advance twice per
  step (the losses use batch statistics, so only the running averages see
  the difference).

  `noise` optionally injects the step's random draws (`draw_step_noise`'s
  dict: z_d, z_g, u); by default they come from `state.rng`.
  """
  out = step_with_phases(state, batch, noise)
  return out.state, out.metrics


def make_train_step(mesh=None):
  """`step_fn` jitted, the state donated (the caller's old state is invalid
  after the call). With a `mesh`: the state replicated and the batch split
  over its `data` axis (`sharding.data_parallel_jit`)."""
  if mesh is None:
    return jax.jit(step_fn, donate_argnums=0)
  return sharding.data_parallel_jit(step_fn, mesh)
