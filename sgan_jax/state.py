"""The train state: what changes during training (`TrainState`, arrays only)
and what does not (`StepSpec`: network shapes, loss weights, optimisers).

`StepSpec` mirrors the config: its sections `model`, `loss` and `optim` are
`ModelSpec`, `LossSpec` and `OptimSpec`, whose fields are the config
section's fields, read by name (`dataclasses.fields`); a field added to the
config is added to its spec class, and nowhere else. Specs are frozen
dataclasses, hashable and compared by value, so a state carrying one as
static metadata goes through `jax.jit` without retracing, and two states
built from the same config share one compiled step. docs/method.md §2
describes the networks, §4 what each field of the state is for.
"""
import dataclasses
import functools
from typing import Any, Tuple

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from sgan_jax import losses, sharding
from sgan_jax.models import Discriminator, Generator
from sgan_jax.utils import unit_rows

# G's mutable collections: batch-norm running averages, spectral-norm vectors.
G_MUTABLE = ("batch_stats", "spectral")


def _from_section(cls, section):
  """An instance of the spec dataclass `cls` with each field read from the
  config section of the same name; a nested spec class reads the
  sub-section, lists become tuples (hashable)."""
  values = {}
  for field in dataclasses.fields(cls):
    value = section[field.name]
    if dataclasses.is_dataclass(field.type):
      value = _from_section(field.type, value)
    elif isinstance(value, list):
      value = tuple(value)
    values[field.name] = value
  return cls(**values)


@dataclasses.dataclass(frozen=True)
class ModelSpec:
  """`config.model`: the networks' shapes and activation dtype."""
  d_widths: Tuple[int, ...]
  d_blocks_per_stage: int
  embed_dim: int
  channels_per_group: int
  g_ch: int
  g_depth: int
  z_dim: int
  compute_dtype: str


@dataclasses.dataclass(frozen=True)
class LossSpec:
  """`config.loss`: the objectives' settings and weights."""
  eps: float
  knn_k: int
  skip_nearest_fake: bool
  renormalize_mean: bool
  jacobian_iters: int
  knn_weight: float
  smoothness_weight: float
  norm_hinge_weight: float
  probe_weight: float

  def settings(self) -> losses.LossSettings:
    """The hyper-parameters both losses share, config names to loss names."""
    return losses.LossSettings(
        eps=self.eps, k=self.knn_k, skip_nearest_fake=self.skip_nearest_fake,
        renormalize_mean=self.renormalize_mean, knn_weight=self.knn_weight)

  def d_weights(self) -> losses.DWeights:
    """The weights of D's own terms."""
    return losses.DWeights(smoothness_weight=self.smoothness_weight,
                           norm_hinge_weight=self.norm_hinge_weight,
                           probe_weight=self.probe_weight)


@dataclasses.dataclass(frozen=True)
class OptimSpec:
  """`config.optim`: the optimisers and the EMA."""
  d_lr: float
  g_lr: float
  b1: float
  b2: float
  adam_eps: float
  d_weight_decay: float
  ema_decay: float

  def d_optimizer(self) -> optax.GradientTransformation:
    # Decoupled weight decay on every D and probe parameter, as torch AdamW.
    return optax.adamw(self.d_lr, self.b1, self.b2, self.adam_eps,
                       weight_decay=self.d_weight_decay)

  def g_optimizer(self) -> optax.GradientTransformation:
    return optax.adam(self.g_lr, self.b1, self.b2, self.adam_eps)


@dataclasses.dataclass(frozen=True)
class StepSpec:
  """Static, hashable description of the networks, losses and optimisers:
  the config's top-level fields the step reads and its three sections."""
  image_size: int
  num_classes: int
  queue_size: int
  model: ModelSpec
  loss: LossSpec
  optim: OptimSpec

  @classmethod
  def from_config(cls, config: ml_collections.ConfigDict) -> "StepSpec":
    return _from_section(cls, config)

  def with_compute_dtype(self, dtype: str) -> "StepSpec":
    """This spec with the networks' activations in `dtype`."""
    return dataclasses.replace(
        self, model=dataclasses.replace(self.model, compute_dtype=dtype))

  def discriminator(self) -> Discriminator:
    m = self.model
    return Discriminator(self.image_size, m.d_widths, m.d_blocks_per_stage,
                         m.embed_dim, self.num_classes, m.channels_per_group,
                         jnp.dtype(m.compute_dtype))

  def generator(self) -> Generator:
    m = self.model
    return Generator(self.image_size, m.g_ch, m.g_depth, m.z_dim,
                     dtype=jnp.dtype(m.compute_dtype))


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
  queue_keys: jax.Array      # [K, backbone width] past D_ema keys
  queue_ptr: jax.Array       # int32 scalar, next queue row to write
  spec: StepSpec = flax.struct.field(pytree_node=False)


def init_discriminator(spec: StepSpec, key: jax.Array):
  """D's parameters, freshly initialised from `key`."""
  size = spec.image_size
  return spec.discriminator().init(key, jnp.zeros((2, size, size, 3)))["params"]


def init_generator(spec: StepSpec, key: jax.Array):
  """G's parameters and state (batch statistics, spectral vectors), freshly
  initialised from `key`."""
  g_vars = spec.generator().init(key, jnp.zeros((2, spec.model.z_dim)))
  return g_vars["params"], {c: g_vars[c] for c in G_MUTABLE}


def _random_unit_rows(key, shape):
  """Rows drawn uniformly on the unit sphere: the queue's starting entries."""
  return unit_rows(jax.random.normal(key, shape))


def _init_state(spec: StepSpec, rng: jax.Array) -> TrainState:
  k_d, k_g, k_qe, k_qk, rng = jax.random.split(rng, 5)
  d_params = init_discriminator(spec, k_d)
  g_params, g_state = init_generator(spec, k_g)
  # The EMAs start as copies, not aliases: aliased buffers break donation.
  copy = lambda t: jax.tree.map(jnp.copy, t)
  return TrainState(
      step=jnp.zeros((), jnp.int32), rng=rng,
      d_params=d_params, d_opt_state=spec.optim.d_optimizer().init(d_params),
      d_ema_params=copy(d_params),
      g_params=g_params, g_opt_state=spec.optim.g_optimizer().init(g_params),
      g_ema_params=copy(g_params), g_state=g_state,
      queue_emb=_random_unit_rows(k_qe, (spec.queue_size, spec.model.embed_dim)),
      queue_keys=_random_unit_rows(k_qk, (spec.queue_size, spec.model.d_widths[-1])),
      queue_ptr=jnp.zeros((), jnp.int32), spec=spec)


def create_train_state(config: ml_collections.ConfigDict, rng: jax.Array,
                       mesh=None) -> TrainState:
  """Initialises D, G, their EMAs (as copies), optimisers and the queue.

  With a `mesh`, the state is created replicated over it (every process of
  a multi-host run calls this with the same `rng`).
  """
  spec = StepSpec.from_config(config)
  out = None if mesh is None else sharding.replicated(mesh)
  # Jitted: eagerly, each of G's many small layers would be dispatched alone.
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
