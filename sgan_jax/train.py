"""Train state and the jit-compiled training step (SPEC section 5).

One step: D phase, G phase, EMA of D and G, enqueue. Everything the step needs
that is not an array (network shapes, loss weights, optimiser settings) lives
in the static `StepSpec` carried by the state, so `train_step(state, batch)`
is a single jitted function of arrays.
"""
import functools
import os
import time
from typing import Any, Dict, Optional, Tuple

from absl import logging
import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from sgan_jax import guards, losses, sharding
from sgan_jax.step_spec import G_MUTABLE, StepSpec


@flax.struct.dataclass
class TrainState:
  """Everything that changes during training, as one immutable pytree."""
  step: jax.Array            # int32 scalar
  rng: jax.Array             # raw uint32 PRNG key [2]
  d_params: Any
  d_opt_state: Any
  d_ema_params: Any
  g_params: Any
  g_opt_state: Any
  g_ema_params: Any
  g_state: Any               # {'batch_stats': ..., 'spectral': ...}
  queue_emb: jax.Array       # [K, embed_dim] past real unit embeddings
  queue_keys: jax.Array      # [K, backbone width] past EMA keys
  queue_ptr: jax.Array       # int32 scalar, next write row
  spec: StepSpec = flax.struct.field(pytree_node=False)


def _unit_rows(key, shape):
  x = jax.random.normal(key, shape)
  return x / jnp.linalg.norm(x, axis=-1, keepdims=True)


def create_train_state(config: ml_collections.ConfigDict, rng: jax.Array,
                       mesh=None) -> TrainState:
  """Initialises D, G, their EMAs (as copies), optimisers and the queue.

  With a `mesh`, the state is created replicated over it (every process of
  a multi-host run calls this with the same `rng`).
  """
  spec = StepSpec.from_config(config)
  out = None if mesh is None else sharding.replicated(mesh)
  # Jitted: eager init of G's many small layers costs seconds of dispatch.
  return jax.jit(_init_state, static_argnums=0, out_shardings=out)(
      spec, np.asarray(rng))


def abstract_train_state(config: ml_collections.ConfigDict, mesh) -> TrainState:
  """Shapes, dtypes and (replicated) layout of a state, without computing it:
  the target to restore a checkpoint into."""
  rep = sharding.replicated(mesh)
  shapes = jax.eval_shape(functools.partial(_init_state, StepSpec.from_config(config)),
                          jax.random.PRNGKey(0))
  return jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=rep),
                      shapes)


def _init_state(spec: StepSpec, rng: jax.Array) -> TrainState:
  d, g = spec.discriminator(), spec.generator()
  k_d, k_g, k_qe, k_qk, rng = jax.random.split(rng, 5)
  size = spec.image_size
  d_params = d.init(k_d, jnp.zeros((2, size, size, 3)))["params"]
  g_vars = g.init(k_g, jnp.zeros((2, spec.z_dim)))
  g_params = g_vars["params"]
  g_state = {c: g_vars[c] for c in G_MUTABLE}
  # The EMAs start as copies, not aliases: aliased buffers break donation.
  copy = lambda t: jax.tree.map(jnp.copy, t)
  return TrainState(
      step=jnp.zeros((), jnp.int32), rng=rng,
      d_params=d_params, d_opt_state=spec.d_optimizer().init(d_params),
      d_ema_params=copy(d_params),
      g_params=g_params, g_opt_state=spec.g_optimizer().init(g_params),
      g_ema_params=copy(g_params), g_state=g_state,
      queue_emb=_unit_rows(k_qe, (spec.queue_size, spec.embed_dim)),
      queue_keys=_unit_rows(k_qk, (spec.queue_size, spec.d_widths[-1])),
      queue_ptr=jnp.zeros((), jnp.int32), spec=spec)


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


def d_grads(state: TrainState, images, labels, z, u, with_jacobian: bool = True):
  """D's loss and its gradient on `x` and `sg(G(z))`; returns (grads, g_state,
  real_keys, metrics). `with_jacobian=False` (for the benchmark's cost split
  only) drops the smoothness term and its power iteration."""
  spec, d = state.spec, state.spec.discriminator()
  n = images.shape[0]
  fake, g_state = spec.generate(state.g_params, state.g_state, z)
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
    return losses.discriminator_loss(
        real.embedding, fake_out.embedding, real.raw_embedding, real_keys,
        fake_keys, state.queue_keys, state.queue_emb, sigma,
        real.probe_logits, labels, smoothness_weight=spec.smoothness_weight,
        norm_hinge_weight=spec.norm_hinge_weight,
        probe_weight=spec.probe_weight, **spec.loss_kwargs())

  grads, metrics = jax.grad(loss_fn, has_aux=True)(state.d_params)
  metrics["grad_norm"] = optax.tree.norm(grads)
  return grads, g_state, real_keys, metrics


def apply_gradients(optimizer: optax.GradientTransformation, grads, opt_state,
                    params):
  """One optimiser update; returns (params, opt_state)."""
  updates, opt_state = optimizer.update(grads, opt_state, params)
  return optax.apply_updates(params, updates), opt_state


def ema_update(spec: StepSpec, new, old):
  """`old * ema_decay + new * (1 - ema_decay)`, leaf by leaf (SPEC 5.3)."""
  return optax.incremental_update(new, old, 1.0 - spec.ema_decay)


def d_phase(state: TrainState, images, labels, z, u, with_jacobian: bool = True):
  """D update; returns (d_params, opt_state, g_state, real_keys, metrics)."""
  grads, g_state, real_keys, metrics = d_grads(state, images, labels, z, u,
                                               with_jacobian)
  d_params, opt_state = apply_gradients(state.spec.d_optimizer(), grads,
                                        state.d_opt_state, state.d_params)
  return d_params, opt_state, g_state, real_keys, metrics


def g_grads(state: TrainState, d_params, g_state, images, real_keys, z):
  """G's loss and its gradient against D `d_params`; returns (grads, g_state,
  real unit embeddings for the queue, metrics)."""
  spec, d = state.spec, state.spec.discriminator()
  real_emb = jax.lax.stop_gradient(
      d.apply({"params": d_params}, images).embedding)

  def loss_fn(g_params):
    fake, new_g_state = spec.generate(g_params, g_state, z)
    fake_emb = d.apply({"params": d_params}, fake).embedding
    fake_keys = ema_keys(spec, state.d_ema_params, fake)
    loss, metrics = losses.generator_loss(
        real_emb, fake_emb, real_keys, fake_keys, state.queue_keys,
        state.queue_emb, **spec.loss_kwargs())
    return loss, (metrics, new_g_state)

  grads, (metrics, g_state) = jax.grad(loss_fn, has_aux=True)(state.g_params)
  metrics["grad_norm"] = optax.tree.norm(grads)
  return grads, g_state, real_emb, metrics


def g_phase(state: TrainState, d_params, g_state, images, real_keys, z):
  """G update against the updated D; returns (g_params, opt_state, g_state,
  real unit embeddings for the queue, metrics)."""
  grads, g_state, real_emb, metrics = g_grads(state, d_params, g_state, images,
                                              real_keys, z)
  g_params, opt_state = apply_gradients(state.spec.g_optimizer(), grads,
                                        state.g_opt_state, state.g_params)
  return g_params, opt_state, g_state, real_emb, metrics


def _enqueue(queue, rows, ptr):
  return jax.lax.dynamic_update_slice(queue, rows.astype(queue.dtype),
                                      (ptr, jnp.zeros_like(ptr)))


def step_fn(state: TrainState, batch: Dict[str, jax.Array],
            noise: Optional[Dict[str, jax.Array]] = None
            ) -> Tuple[TrainState, Dict[str, jax.Array]]:
  """One training step (un-jitted; see `train_step`).

  G runs in training mode in both phases, as in the reference, so its
  batch-norm running averages and spectral-norm vectors advance twice per
  step (the losses use batch statistics, so only the running averages see
  the difference).

  `noise` optionally injects the step's random draws (`draw_step_noise`'s
  dict: z_d, z_g, u); by default they come from `state.rng`.
  """
  spec = state.spec
  images, labels = batch["image"], batch["label"]
  n = images.shape[0]
  rng, step_rng = jax.random.split(state.rng)
  if noise is None:
    noise = draw_step_noise(spec, step_rng, n)

  d_params, d_opt, g_state, real_keys, d_metrics = d_phase(
      state, images, labels, noise["z_d"], noise["u"])
  g_params, g_opt, g_state, real_emb, g_metrics = g_phase(
      state, d_params, g_state, images, real_keys, noise["z_g"])

  ema = functools.partial(ema_update, spec)
  new_state = state.replace(
      step=state.step + 1, rng=rng,
      d_params=d_params, d_opt_state=d_opt,
      d_ema_params=ema(d_params, state.d_ema_params),
      g_params=g_params, g_opt_state=g_opt,
      g_ema_params=ema(g_params, state.g_ema_params), g_state=g_state,
      queue_emb=_enqueue(state.queue_emb, real_emb, state.queue_ptr),
      queue_keys=_enqueue(state.queue_keys, real_keys, state.queue_ptr),
      queue_ptr=(state.queue_ptr + n) % spec.queue_size)
  metrics = {f"d/{k}": v for k, v in d_metrics.items()}
  metrics.update({f"g/{k}": v for k, v in g_metrics.items()})
  return new_state, metrics


# The state is donated: the caller's old state is invalid after the call.
train_step = jax.jit(step_fn, donate_argnums=0)


def make_sharded_train_step(mesh):
  """`train_step` with explicit layouts over `mesh` (see `sharding`)."""
  return sharding.data_parallel_jit(step_fn, mesh)


# ----------------------------------------------------------------------- loop

_PROGRESS_KEYS = (("d_loss", "d/loss"), ("g_loss", "g/loss"),
                  ("jsd", "d/jsd"), ("real_sim", "d/real_sim"),
                  ("fake_sim", "d/fake_sim"), ("sigma", "d/sigma_mean"),
                  ("probe_acc", "d/probe_acc"))


def _progress_line(step, total, images_per_s, seconds_left, metrics):
  eta = time.strftime("%H:%M:%S", time.gmtime(max(seconds_left, 0)))
  losses_str = " ".join(f"{short} {metrics[key]:.4f}"
                        for short, key in _PROGRESS_KEYS if key in metrics)
  return (f"step {step}/{total} ({100 * step / total:.0f}%) | "
          f"{images_per_s:.1f} img/s | ETA {eta} | {losses_str}")


def _due(step, every, total):
  return step % every == 0 or step == total


def _write_config(config, workdir):
  if jax.process_index() == 0:
    with open(os.path.join(workdir, "config.json"), "w") as f:
      f.write(config.to_json(indent=2))


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str
                       ) -> TrainState:
  """Trains `config` in `workdir`, resuming from its newest checkpoint.

  Writes `config.json`, `checkpoints/<step>`, `metrics.jsonl`, TensorBoard
  events, `samples/samples_<step>.png` and `eval_<step>.json` (evaluation
  every `eval_every_steps` and at the end) into `workdir`. Stops early, with
  a checkpoint, on SIGTERM/SIGINT; never saves a non-finite state (see
  `guards`). Returns the final state.
  """
  # The loop's I/O needs TensorFlow, TFDS, clu and Orbax; imported here so
  # that the state and step above run where only JAX is installed.
  from sgan_jax import checkpointing, config_lib, input_pipeline, metric_io
  mesh = sharding.make_mesh()
  config_lib.validate(config, jax.process_count(), jax.device_count())
  builder = input_pipeline.get_builder(config)   # fails fast if unavailable
  os.makedirs(workdir, exist_ok=True)
  _write_config(config, workdir)
  ckpt = checkpointing.Checkpointer(workdir, config.keep_checkpoints)
  logger = metric_io.MetricsLogger(workdir)
  trainer = _Trainer(config, workdir, mesh, builder, ckpt, logger)
  try:
    state = _train_with_rollbacks(config, mesh, ckpt, trainer)
  except BaseException:
    # Report the first error; one from closing (e.g. the same full disk
    # failing the save in flight) would only hide it.
    for closer in (ckpt.close, logger.close):
      try:
        closer()
      except Exception as e:  # pylint: disable=broad-except
        logging.error("while stopping: %s", e)
    raise
  ckpt.close()
  logger.close()
  return state


def _train_with_rollbacks(config, mesh, ckpt, trainer) -> TrainState:
  """Resume or start, train; on a non-finite step, roll back if allowed."""
  rollbacks_left = config.nonfinite_rollbacks
  with guards.StopSignals() as stop:
    while True:
      if ckpt.latest_step() is not None:
        state = ckpt.restore(abstract_train_state(config, mesh))
        logging.info("Resumed from %s at step %d", ckpt.directory, int(state.step))
      else:
        state = create_train_state(config, jax.random.PRNGKey(config.seed), mesh)
      try:
        return trainer.run(state, stop)
      except guards.NonFiniteError as e:
        if rollbacks_left <= 0:
          raise
        rollbacks_left -= 1
        trainer.skip_steps.add(e.step)
        ckpt.wait()   # the last good checkpoint may still be being written
        logging.warning("%s\nRolling back to the last checkpoint and skipping "
                        "the batch of step %d (%d rollbacks left).",
                        e, e.step, rollbacks_left)


class _Trainer:
  """The loop body: steps, and the periodic logging, samples, checkpoints and
  evaluation, with every check done before anything is written."""

  def __init__(self, config, workdir, mesh, builder, ckpt, logger):
    from sgan_jax import evaluate, samples
    self.config, self.workdir, self.mesh, self.builder = config, workdir, mesh, builder
    self.ckpt, self.logger, self.samples = ckpt, logger, samples
    self.step_fn = make_sharded_train_step(mesh)
    self.evaluate_fn = evaluate.TrainingEvaluator(config, builder, mesh, workdir)
    self.skip_steps = set()   # steps whose batch is skipped after a rollback

  def run(self, state: TrainState, stop: "guards.StopSignals") -> TrainState:
    from sgan_jax import input_pipeline
    config, total = self.config, self.config.num_train_steps
    start = int(state.step)
    if start >= total:
      logging.info("Nothing to do: the checkpoint is at step %d of %d", start, total)
    batches = input_pipeline.train_iterator(config, self.builder, self.mesh, start)
    sample_z = self.samples.fixed_latents(state.spec, config.seed)
    pending, unchecked, t0, last_logged = [], [], time.time(), start
    for step in range(start + 1, total + 1):
      batch = next(batches)
      if step in self.skip_steps:
        batch = next(batches)
      state, metrics = self.step_fn(state, batch)
      pending.append(metrics)
      unchecked.append((step, metrics))
      if step == start + 1:   # time steps, not compilation
        jax.block_until_ready(metrics)
        t0, last_logged = time.time(), step
      due = {k: _due(step, config[f"{k}_every_steps"], total)
             for k in ("log", "sample", "checkpoint", "eval")}
      stopping = stop.requested is not None
      if any(due.values()) or stopping:
        bad = guards.first_nonfinite(unchecked)
        if bad is not None:
          raise guards.NonFiniteError(*bad)
        unchecked = []
      if due["log"]:
        means = {k: float(np.mean(v)) for k, v in
                 jax.device_get(jax.tree.map(lambda *m: jnp.stack(m), *pending)).items()}
        rate = max(step - last_logged, 1) / (time.time() - t0)
        means["images_per_second"] = rate * config.global_batch_size
        self.logger.scalars(step, means)
        logging.info(_progress_line(step, total, means["images_per_second"],
                                    (total - step) / rate, means))
        pending, t0, last_logged = [], time.time(), step
      if due["sample"]:
        self.samples.save_samples(state, sample_z, self.workdir, self.logger)
      if due["checkpoint"] or stopping:
        self.ckpt.save(state, force=stopping)
      if stopping:
        self.ckpt.wait()
        logging.warning("%s received: saved checkpoint %d in %s; exiting.",
                        stop.requested, step, self.ckpt.directory)
        return state
      if due["eval"]:
        self.evaluate_fn(state, step, self.logger)
    self.ckpt.wait()
    self.logger.flush()
    return state
