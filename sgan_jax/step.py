"""One training step, pure JAX (docs/method.md §4).

`step_with_phases` reads top to bottom: the step's random draws; the D phase
(`d_phase(state, batch, noise) -> DPhaseOut`: G(z_d), D's loss on x and
sg(G(z_d)), its gradient and AdamW update), whose state (D updated, G's
state advanced) the G phase takes (`g_phase(state, real_keys, batch, noise)
-> GPhaseOut`: G's loss against the updated D, its gradient and Adam
update); then the EMAs of D and G and the enqueue, on the G phase's state. `step_fn(state, batch) -> (state, metrics)` is that step;
`make_train_step(mesh)` jits it, with explicit layouts when given a mesh.

Each phase returns its update together with the intermediates its loss was
computed from, as named fields, so that tools comparing the step with
another implementation (`sgan_jax.interop.parity`) read them instead of
recomputing them. The losses are arguments of the phases (`d_loss`,
`g_loss` by default) and D's loss takes the function that estimates the
Jacobian norms (`power_iteration`), so that the benchmark builds its
variants (no Jacobian term; a plain GAN step) from these same pieces.
"""
import functools
from typing import Any, Callable, Dict, NamedTuple, Optional, Tuple

import jax
import jax.numpy as jnp
import optax

from sgan_jax import losses, sharding
from sgan_jax.models.discriminator import DOutput
from sgan_jax.state import G_MUTABLE, StepSpec, TrainState

Metrics = Dict[str, jax.Array]
Noise = Dict[str, jax.Array]   # `draw_step_noise`'s: z_d, z_g, u


class DAux(NamedTuple):
  """D's loss terms and what the loss was computed from: the fields of the
  same names of `DPhaseOut` (a loss without a Jacobian or k-NN term may
  leave `sigma` or the keys None)."""
  metrics: Metrics
  outputs: DOutput
  sigma: Optional[jax.Array]
  real_keys: Optional[jax.Array]
  fake_keys: Optional[jax.Array]


class DPhaseOut(NamedTuple):
  """The D phase's state and what its loss was computed from."""
  state: TrainState        # D and its optimiser updated, G's state advanced
  grads: Any               # d loss / d D's parameters (before the update)
  fake: jax.Array          # G(z_d) [N, H, W, 3]
  metrics: Metrics         # each loss term (`losses.discriminator_objective`)
  outputs: DOutput         # D on concat(x, sg(fake)): 2N rows, reals first
  sigma: jax.Array         # [2N] Jacobian estimates on the same rows
  real_keys: jax.Array     # [N, Ck] D_ema keys of x
  fake_keys: jax.Array     # [N, Ck] D_ema keys of fake


class GPhaseOut(NamedTuple):
  """The G phase's state and what its loss was computed from."""
  state: TrainState        # G, its optimiser and G's state updated
  grads: Any               # g loss / d G's parameters (before the update)
  fake: jax.Array          # G(z_g) [N, H, W, 3]
  metrics: Metrics         # each loss term (`losses.generator_objective`)
  real_emb: jax.Array      # [N, C] updated D's unit embeddings of x (enqueued)


class StepOutput(NamedTuple):
  state: TrainState
  metrics: Metrics         # "d/<term>" and "g/<term>" scalars
  d_out: DPhaseOut
  g_out: GPhaseOut


def generate(spec: StepSpec, g_params, g_state, z):
  """G(z) in training mode (batch statistics, as the authors always run G);
  returns (images, G's advanced state)."""
  images, new_state = spec.generator().apply(
      {"params": g_params, **g_state}, z, mutable=list(G_MUTABLE))
  return images, dict(new_state)


def draw_step_noise(spec: StepSpec, rng, batch_size: int) -> Noise:
  """The step's random draws: z for each phase and the power iteration's u."""
  k_zd, k_zg, k_u = jax.random.split(rng, 3)
  z_dim, embed_dim = spec.model.z_dim, spec.model.embed_dim
  return dict(
      z_d=jax.random.normal(k_zd, (batch_size, z_dim)),
      z_g=jax.random.normal(k_zg, (batch_size, z_dim)),
      u=jax.random.normal(k_u, (2 * batch_size, embed_dim)))


def _split(tree, n):
  """Splits every leaf of a batch-major pytree into its first n rows and rest."""
  return (jax.tree.map(lambda a: a[:n], tree), jax.tree.map(lambda a: a[n:], tree))


def ema_keys(spec: StepSpec, d_ema_params, images):
  """D_ema's unit backbone features: the keys of the neighbour search."""
  d_net = spec.discriminator()
  return jax.lax.stop_gradient(
      d_net.apply({"params": d_ema_params}, images, method=d_net.keys))


def queue_bank(state: TrainState) -> losses.MemoryBank:
  """The memory queue of past real keys and unit embeddings."""
  return losses.MemoryBank(state.queue_keys, state.queue_emb)


def power_iteration(embed: Callable, images, u, num_iters: int
                    ) -> Tuple[jax.Array, DOutput]:
  """(sigma [N], D's outputs) from one linearisation of D
  (`losses.power_iteration_sigma`); `embed(x) -> (raw embeddings, DOutput)`."""
  sigma, _, out = losses.power_iteration_sigma(embed, images, u, num_iters,
                                               has_aux=True)
  return sigma, out


def d_loss(state: TrainState, d_params, both, labels, u,
           sigma_fn: Callable = power_iteration) -> Tuple[jax.Array, DAux]:
  """D's structural loss (docs/method.md §4.1) on `both` = concat(x, sg(fake))
  with parameters `d_params`, against the queue and D_ema of `state`;
  `sigma_fn(embed, both, u, num_iters) -> (sigma, DOutput)` estimates the
  Jacobian norms."""
  spec, d_net = state.spec, state.spec.discriminator()
  n = labels.shape[0]
  real_keys, fake_keys = _split(ema_keys(spec, state.d_ema_params, both), n)

  def embed(x):
    out = d_net.apply({"params": d_params}, x)
    return out.raw_embedding, out
  sigma, outputs = sigma_fn(embed, both, u, spec.loss.jacobian_iters)
  real, fake = _split(outputs, n)
  loss, metrics = losses.discriminator_objective(
      losses.DHalf(real.embedding, real_keys, real.raw_embedding,
                   real.probe_logits),
      losses.DHalf(fake.embedding, fake_keys), queue_bank(state), sigma, labels,
      spec.loss.settings(), spec.loss.d_weights())
  return loss, DAux(metrics, outputs, sigma, real_keys, fake_keys)


def g_loss(state: TrainState, real: losses.DHalf, fake
           ) -> Tuple[jax.Array, Metrics]:
  """G's structural loss (docs/method.md §4.2) of generated images `fake`
  against the D of `state` (the updated one), the real batch's unit
  embeddings and keys `real`, and the queue."""
  spec, d_net = state.spec, state.spec.discriminator()
  fake_emb = d_net.apply({"params": state.d_params}, fake).embedding
  fake_keys = ema_keys(spec, state.d_ema_params, fake)
  return losses.generator_objective(real, losses.DHalf(fake_emb, fake_keys),
                                    queue_bank(state), spec.loss.settings())


def apply_gradients(optimizer: optax.GradientTransformation, grads, opt_state,
                    params) -> Tuple[Any, Any]:
  """One optimiser update; returns (params, opt_state)."""
  updates, opt_state = optimizer.update(grads, opt_state, params)
  return optax.apply_updates(params, updates), opt_state


def ema_update(spec: StepSpec, new, old):
  """`old * ema_decay + new * (1 - ema_decay)`, leaf by leaf (docs/method.md §4.3)."""
  return optax.incremental_update(new, old, 1.0 - spec.optim.ema_decay)


def d_phase(state: TrainState, batch: Dict[str, jax.Array], noise: Noise,
            loss_fn: Callable = d_loss) -> DPhaseOut:
  """G(z_d), D's loss on x and sg(G(z_d)), its gradient and D's AdamW update
  (docs/method.md §4.1). `loss_fn(state, d_params, both=, labels=, u=) ->
  (loss, DAux)`, `d_loss` by default."""
  spec = state.spec
  fake, g_state = generate(spec, state.g_params, state.g_state, noise["z_d"])
  both = jnp.concatenate([batch["image"], jax.lax.stop_gradient(fake)], axis=0)
  loss = functools.partial(loss_fn, state, both=both, labels=batch["label"],
                           u=noise["u"])
  grads, aux = jax.grad(loss, has_aux=True)(state.d_params)
  aux.metrics["grad_norm"] = optax.tree.norm(grads)
  params, opt_state = apply_gradients(spec.optim.d_optimizer(), grads,
                                      state.d_opt_state, state.d_params)
  new_state = state.replace(d_params=params, d_opt_state=opt_state,
                            g_state=g_state)
  return DPhaseOut(new_state, grads, fake, **aux._asdict())


def g_phase(state: TrainState, real_keys, batch: Dict[str, jax.Array],
            noise: Noise, loss_fn: Callable = g_loss) -> GPhaseOut:
  """G(z_g), G's loss against the D of `state` (the D phase's state: D
  updated) with the real batch's keys `real_keys`, its gradient and G's Adam
  update (docs/method.md §4.2). `loss_fn(state, real: losses.DHalf, fake) ->
  (loss, metrics)`, `g_loss` by default."""
  spec, d_net = state.spec, state.spec.discriminator()
  real_emb = jax.lax.stop_gradient(
      d_net.apply({"params": state.d_params}, batch["image"]).embedding)

  def loss(g_params):
    fake, g_state = generate(spec, g_params, state.g_state, noise["z_g"])
    value, metrics = loss_fn(state, losses.DHalf(real_emb, real_keys), fake)
    return value, (metrics, g_state, fake)

  grads, (metrics, g_state, fake) = jax.grad(loss, has_aux=True)(state.g_params)
  metrics["grad_norm"] = optax.tree.norm(grads)
  params, opt_state = apply_gradients(spec.optim.g_optimizer(), grads,
                                      state.g_opt_state, state.g_params)
  new_state = state.replace(g_params=params, g_opt_state=opt_state,
                            g_state=g_state)
  return GPhaseOut(new_state, grads, fake, metrics, real_emb)


def _enqueue(queue, rows, ptr):
  return jax.lax.dynamic_update_slice(queue, rows.astype(queue.dtype),
                                      (ptr, jnp.zeros_like(ptr)))


def step_with_phases(state: TrainState, batch: Dict[str, jax.Array],
                     noise: Optional[Noise] = None) -> StepOutput:
  """`step_fn`, also returning both phases' results (unused ones cost nothing
  under jit: XLA drops them)."""
  spec = state.spec
  n = batch["image"].shape[0]
  rng, step_rng = jax.random.split(state.rng)
  if noise is None:
    noise = draw_step_noise(spec, step_rng, n)

  d_out = d_phase(state, batch, noise)
  g_out = g_phase(d_out.state, d_out.real_keys, batch, noise)

  trained = g_out.state   # D and G updated; EMAs, queue, step and rng as before
  ema = functools.partial(ema_update, spec)
  new_state = trained.replace(
      step=state.step + 1, rng=rng,
      d_ema_params=ema(trained.d_params, state.d_ema_params),
      g_ema_params=ema(trained.g_params, state.g_ema_params),
      queue_emb=_enqueue(state.queue_emb, g_out.real_emb, state.queue_ptr),
      # D_ema has not changed since the D phase took the real keys.
      queue_keys=_enqueue(state.queue_keys, d_out.real_keys, state.queue_ptr),
      queue_ptr=(state.queue_ptr + n) % spec.queue_size)
  metrics = {f"d/{k}": v for k, v in d_out.metrics.items()}
  metrics.update({f"g/{k}": v for k, v in g_out.metrics.items()})
  return StepOutput(new_state, metrics, d_out, g_out)


def step_fn(state: TrainState, batch: Dict[str, jax.Array],
            noise: Optional[Noise] = None) -> Tuple[TrainState, Metrics]:
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
