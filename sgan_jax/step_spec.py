"""The static half of the train state: network shapes, loss weights and
optimiser settings, read once from the config.

It is hashable and compared by value, so a state carrying it can be passed to
a jitted function without retracing, and two states built from the same config
share one compiled step.
"""
import dataclasses
from typing import Any, Dict, Tuple

import jax.numpy as jnp
import ml_collections
import optax

from sgan_jax.models import Discriminator, Generator

# G's mutable collections: batch-norm running averages, spectral-norm vectors.
G_MUTABLE = ("batch_stats", "spectral")


@dataclasses.dataclass(frozen=True)
class StepSpec:
  """Static, hashable description of the networks, losses and optimisers."""
  image_size: int
  num_classes: int
  d_widths: Tuple[int, ...]
  d_blocks_per_stage: int
  embed_dim: int
  channels_per_group: int
  g_ch: int
  g_depth: int
  z_dim: int
  compute_dtype: str
  queue_size: int
  eps: float
  knn_k: int
  skip_nearest_fake: bool
  renormalize_mean: bool
  jacobian_iters: int
  knn_weight: float
  smoothness_weight: float
  norm_hinge_weight: float
  probe_weight: float
  d_lr: float
  g_lr: float
  b1: float
  b2: float
  adam_eps: float
  d_weight_decay: float
  ema_decay: float

  @classmethod
  def from_config(cls, config: ml_collections.ConfigDict) -> "StepSpec":
    m, l, o = config.model, config.loss, config.optim
    return cls(
        image_size=config.image_size, num_classes=config.num_classes,
        d_widths=tuple(m.d_widths), d_blocks_per_stage=m.d_blocks_per_stage,
        embed_dim=m.embed_dim, channels_per_group=m.channels_per_group,
        g_ch=m.g_ch, g_depth=m.g_depth, z_dim=m.z_dim,
        compute_dtype=m.compute_dtype,
        queue_size=config.queue_size, eps=l.eps, knn_k=l.knn_k,
        skip_nearest_fake=l.skip_nearest_fake,
        renormalize_mean=l.renormalize_mean, jacobian_iters=l.jacobian_iters,
        knn_weight=l.knn_weight, smoothness_weight=l.smoothness_weight,
        norm_hinge_weight=l.norm_hinge_weight, probe_weight=l.probe_weight,
        d_lr=o.d_lr, g_lr=o.g_lr, b1=o.b1, b2=o.b2, adam_eps=o.adam_eps,
        d_weight_decay=o.d_weight_decay, ema_decay=o.ema_decay)

  def discriminator(self) -> Discriminator:
    return Discriminator(self.image_size, self.d_widths,
                         self.d_blocks_per_stage, self.embed_dim,
                         self.num_classes, self.channels_per_group,
                         jnp.dtype(self.compute_dtype))

  def generator(self) -> Generator:
    return Generator(self.image_size, self.g_ch, self.g_depth, self.z_dim,
                     dtype=jnp.dtype(self.compute_dtype))

  def d_optimizer(self) -> optax.GradientTransformation:
    # Decoupled weight decay on every D and probe parameter, as torch AdamW.
    return optax.adamw(self.d_lr, self.b1, self.b2, self.adam_eps,
                       weight_decay=self.d_weight_decay)

  def g_optimizer(self) -> optax.GradientTransformation:
    return optax.adam(self.g_lr, self.b1, self.b2, self.adam_eps)

  def loss_kwargs(self) -> Dict[str, Any]:
    return dict(eps=self.eps, k=self.knn_k,
                skip_nearest_fake=self.skip_nearest_fake,
                knn_weight=self.knn_weight,
                renormalize_mean=self.renormalize_mean)

  def generate(self, g_params, g_state, z):
    """G(z) in training mode (batch statistics, as the reference always runs
    G); returns (images, new g_state)."""
    images, new_state = self.generator().apply(
        {"params": g_params, **g_state}, z, mutable=list(G_MUTABLE))
    return images, dict(new_state)
