"""The structural adversarial objectives: the public loss API (docs/method.md §3).

Every function here is pure, works under `jax.jit` and `jax.grad`, computes in
the dtype of its inputs (float32 by default, float64 with x64 enabled) and
returns JAX arrays, never Python floats. Arrays are positional; hyper-parameters
are keywords (named tuples in the grouped form below). Shape-defining ones and
switches (`k`, `num_iters`, `skip_nearest_fake`, `renormalize_mean`) must be
static under jit; float ones (`eps`, the loss weights) may be traced.

Sign conventions follow the authors' code: D *minimises*
`-gaussian_jsd + knn_weight * (-real_sim + fake_sim) + ...` and G minimises
`+gaussian_jsd + knn_weight * (-fake_sim)`.

The two total losses come in two forms that compute the same thing:
`discriminator_loss` and `generator_loss` take every array and
hyper-parameter as its own argument; `discriminator_objective` and
`generator_objective` (what the train step calls) take them grouped as named
tuples: each half of D's output (`DHalf`, reals and fakes), the memory queue
(`MemoryBank`), the hyper-parameters both losses share (`LossSettings`) and
D's own weights (`DWeights`).
"""
from typing import Callable, NamedTuple, Optional, Tuple

import jax
import jax.numpy as jnp
import optax

from sgan_jax.utils import unit_rows

__all__ = [
    "gaussian_jsd", "knn_similarities", "jacobian_sigma",
    "power_iteration_sigma", "smoothness_penalty", "norm_hinge",
    "discriminator_loss", "generator_loss", "DHalf", "MemoryBank",
    "LossSettings", "DWeights", "discriminator_objective",
    "generator_objective",
]


class DHalf(NamedTuple):
  """D's outputs on one half of a batch (the reals or the fakes)."""
  emb: jax.Array                          # [N, C] unit embeddings
  keys: jax.Array                         # [N, Ck] D_ema keys (stop_gradient)
  raw_emb: Optional[jax.Array] = None     # [N, C] raw embeddings (D's reals)
  probe_logits: Optional[jax.Array] = None  # [N, classes] (D's reals)


class MemoryBank(NamedTuple):
  """The queue of past real rows (treated as constants)."""
  keys: jax.Array   # [K, Ck] D_ema keys
  emb: jax.Array    # [K, C] unit embeddings


class LossSettings(NamedTuple):
  """The hyper-parameters both total losses take (docs/method.md §5); named
  as `discriminator_loss`'s keywords. `k`, `skip_nearest_fake` and
  `renormalize_mean` are static."""
  eps: float
  k: int
  skip_nearest_fake: bool
  renormalize_mean: bool
  knn_weight: float


class DWeights(NamedTuple):
  """The weights of D's own terms; named as `discriminator_loss`'s keywords."""
  smoothness_weight: float
  norm_hinge_weight: float
  probe_weight: float


def _log_det_coding_rate(x, eps, renormalize_mean=True):
  """R(X) = logdet(I + (C/eps) * Sigma(X)) for the rows of X [N, C].

  The mean is renormalised to unit length (the reference's behaviour), so the
  scatter is taken about a point on the sphere, not the centroid.
  """
  x = jnp.asarray(x)
  n, c = x.shape
  mu = jnp.mean(x, axis=0, keepdims=True)
  if renormalize_mean:
    mu = unit_rows(mu)
  diff = x - mu
  cov = diff.T @ diff / (n + 1e-5)
  mat = jnp.eye(c, dtype=x.dtype) + (c / eps) * cov
  # The matrix is symmetric positive definite (identity plus a scatter
  # matrix), so Cholesky gives the log-determinant stably and cheaply.
  chol = jnp.linalg.cholesky(mat)
  return 2.0 * jnp.sum(jnp.log(jnp.diagonal(chol)))


def gaussian_jsd(real, fake, eps=0.5, *, renormalize_mean=True):
  """Coarse-scale distance between two embedding sets (docs/method.md §3.1).

  Args:
    real: [N, C] unit embeddings of real images.
    fake: [M, C] unit embeddings of generated images (M may differ from N).
    eps: distortion of the coding rate; `C / eps` scales the covariance.
    renormalize_mean: True (the authors' code) renormalises the
      mean of each set to unit length before taking the scatter.

  Returns:
    Scalar `0.5 * (R(real ++ fake) - 0.5 * (R(real) + R(fake)))`, where
    `R(X) = logdet(I + C/eps * Sigma(X))`. It is 0 for identical sets,
    symmetric, and positive when the sets differ. D adds `-gaussian_jsd` to its
    loss (pushes the statistics apart), G adds `+gaussian_jsd` (pulls them
    together).
  """
  r = lambda x: _log_det_coding_rate(x, eps, renormalize_mean)
  joint = r(jnp.concatenate([real, fake], axis=0))
  return 0.5 * (joint - 0.5 * (r(real) + r(fake)))


# Up to this many neighbours, `_top_indices` takes one argmax per neighbour,
# because XLA:CPU's top_k sorts whole rows (docs/benchmarks.md has the figures).
_ARGMAX_TOP_K = 8


def _top_indices(scores, num):
  """Column indices of the `num` largest scores of each row, largest first,
  ties to the lower index: `jax.lax.top_k(scores, num)[1]` for finite
  scores. For small `num`, `num` argmax passes instead of a sort."""
  if num > _ARGMAX_TOP_K:
    return jax.lax.top_k(scores, num)[1]
  columns = jnp.arange(scores.shape[-1])
  picked = []
  for _ in range(num):
    best = jnp.argmax(scores, axis=-1)   # the first maximum: the lower index
    picked.append(best)
    scores = jnp.where(columns == best[:, None], -jnp.inf, scores)
  return jnp.stack(picked, axis=-1).astype(jnp.int32)


def _mean_neighbour_similarity(query_keys, query_emb, bank_keys, bank_emb, k,
                               skip_first):
  """Mean of query_emb[i] . bank_emb[j] over the key-space neighbours j of i."""
  key_sim = query_keys @ bank_keys.T
  num = k + 1 if skip_first else k
  # Among equal scores the lower index comes first, so for a real row the
  # sample itself (index i < batch) is the first neighbour.
  idx = _top_indices(key_sim, num)
  if skip_first:
    idx = idx[:, 1:]
  emb_sim = query_emb @ bank_emb.T
  return jnp.mean(jnp.take_along_axis(emb_sim, idx, axis=1))


def knn_similarities(real_keys, real_emb, fake_keys, fake_emb, queue_keys,
                     queue_emb, k=1, skip_nearest_fake=True):
  """Fine-scale similarities to nearest real neighbours (docs/method.md §3.2).

  Neighbours are searched in key space (D_ema's normalised backbone features;
  pass them under stop_gradient), similarities are taken in embedding space.

  Args:
    real_keys: [N, Ck] keys of the real batch.
    real_emb: [N, C] unit embeddings of the real batch (gradients flow here).
    fake_keys: [M, Ck] keys of the generated batch.
    fake_emb: [M, C] unit embeddings of the generated batch.
    queue_keys: [K, Ck] queued past real keys (treated as constants).
    queue_emb: [K, C] queued past real embeddings (treated as constants).
    k: number of neighbours (static).
    skip_nearest_fake: (static) True, as in the authors' code,
      drops the nearest real neighbour of each fake too.

  Returns:
    `(real_sim, fake_sim)`, scalars. Each real row skips its first neighbour,
    itself. D's term is `knn_weight * (-real_sim + fake_sim)`: it pulls reals
    to their neighbours and pushes fakes away; G's term is
    `knn_weight * (-fake_sim)`.
  """
  queue_keys = jax.lax.stop_gradient(queue_keys)
  queue_emb = jax.lax.stop_gradient(queue_emb)
  bank_keys = jnp.concatenate([real_keys, queue_keys], axis=0)
  bank_emb = jnp.concatenate([real_emb, queue_emb], axis=0)
  real_sim = _mean_neighbour_similarity(real_keys, real_emb, bank_keys,
                                        bank_emb, k, skip_first=True)
  fake_sim = _mean_neighbour_similarity(fake_keys, fake_emb, bank_keys,
                                        bank_emb, k, skip_first=skip_nearest_fake)
  return real_sim, fake_sim


def power_iteration_sigma(embed_fn, images, u, num_iters=1, has_aux=False):
  """`jacobian_sigma` from a given start `u`, also returning D's outputs.

  The train step uses this form: the one forward pass that linearises D
  also provides the embeddings for the other losses, and `u` can be injected.

  Args:
    embed_fn: images [N, ...] -> e [N, E] (or `(e, aux)` when has_aux).
    images: [N, ...] inputs; D must have no cross-sample operations.
    u: [N, E] start vectors in embedding space (not normalised).
    num_iters: power iterations (static, >= 1).
    has_aux: whether embed_fn returns `(e, aux)`.

  Returns:
    `(sigma [N], e [N, E], aux)`; aux is None unless has_aux.
  """
  if num_iters < 1:
    raise ValueError(f"num_iters must be >= 1, got {num_iters}")
  with_aux = embed_fn if has_aux else (lambda x: (embed_fn(x), None))
  # One linearisation serves the forward pass, every JVP and (transposed)
  # every VJP: D's forward runs once (docs/method.md §3.3).
  e, jvp_fn, aux = jax.linearize(with_aux, images, has_aux=True)
  vjp_fn = jax.linear_transpose(jvp_fn, images)
  batch = images.shape[0]
  flat_normalize = lambda t: unit_rows(t.reshape(batch, -1)).reshape(t.shape)
  u = jax.lax.stop_gradient(u.astype(e.dtype))
  for _ in range(num_iters):
    # No gradient through the iteration: stop it on u and v, never on e or
    # J v (docs/method.md §3.3).
    (jt_u,) = vjp_fn(u)
    v = jax.lax.stop_gradient(flat_normalize(jt_u))
    j_v = jvp_fn(v)
    u = jax.lax.stop_gradient(unit_rows(j_v))
  # <J^T u, v> = <u, J v>, and J v is the last JVP: no further VJP. The
  # gradient w.r.t. D's parameters flows through J v (reverse over forward).
  sigma = jnp.sum(u * j_v, axis=1)
  return sigma, e, aux


def jacobian_sigma(embed_fn: Callable, images, key, num_iters=1):
  """Per-sample top singular value of the Jacobian de/dx (docs/method.md §3.3).

  Power iteration on `J = d embed_fn(x) / dx` with a start `u ~ N(0, I)` drawn
  from `key` (not normalised): `num_iters` times, without gradient,
  `v = normalize(J^T u)` (a VJP), `u = normalize(J v)` (a JVP); then
  `sigma = <J^T u, v>`, computed as the equal `<u, J v>` from the last JVP and
  differentiable w.r.t. whatever `embed_fn` closes over (with u and v held
  fixed). One batched VJP/JVP gives every per-sample product
  because D has no cross-sample operations.

  Args:
    embed_fn: maps images [N, ...] to raw embeddings e [N, E].
    images: [N, ...]; D applies the penalty to `concat(real, sg(fake))`.
    key: PRNG key for the start vector.
    num_iters: power iterations (static, >= 1). One iteration (the
      reference) is a lower bound on the true value.

  Returns:
    sigma [N]. D's term is `smoothness_weight * smoothness_penalty(sigma)`.
  """
  e_shape = jax.eval_shape(embed_fn, images)
  u = jax.random.normal(key, e_shape.shape, e_shape.dtype)
  sigma, _, _ = power_iteration_sigma(embed_fn, images, u, num_iters)
  return sigma


def smoothness_penalty(sigma):
  """Two-sided penalty `mean((sigma - 1)^2)` on Jacobian norms (docs/method.md §3.3).

  Args:
    sigma: [N] from `jacobian_sigma`.
  Returns:
    Scalar; only D minimises it (weight 5 in the reference).
  """
  return jnp.mean(jnp.square(sigma - 1.0))


def norm_hinge(e):
  """`mean_i min(||e_i|| - 1, 0)^2`: keeps raw embedding norms >= 1 (docs/method.md §3.4).

  Args:
    e: [N, E] raw (pre-normalisation) embeddings of the real batch.
  Returns:
    Scalar; only D minimises it (weight 20 in the reference).
  """
  norms = jnp.sqrt(jnp.sum(e * e, axis=-1))
  return jnp.mean(jnp.square(jnp.minimum(norms - 1.0, 0.0)))


def _coarse_and_fine(real: DHalf, fake: DHalf, bank: MemoryBank,
                     settings: LossSettings):
  """(gaussian_jsd, real_sim, fake_sim): the terms D and G share."""
  jsd = gaussian_jsd(real.emb, fake.emb, settings.eps,
                     renormalize_mean=settings.renormalize_mean)
  real_sim, fake_sim = knn_similarities(
      real.keys, real.emb, fake.keys, fake.emb, bank.keys, bank.emb,
      k=settings.k, skip_nearest_fake=settings.skip_nearest_fake)
  return jsd, real_sim, fake_sim


def discriminator_objective(real: DHalf, fake: DHalf, bank: MemoryBank, sigma,
                            labels, settings: LossSettings, weights: DWeights):
  """`discriminator_loss` with its inputs grouped: `real` with `raw_emb` and
  `probe_logits` set, `fake`, the queue, the sigmas, the labels, the shared
  settings and D's weights. Returns `(loss, metrics)`."""
  jsd, real_sim, fake_sim = _coarse_and_fine(real, fake, bank, settings)
  smooth = smoothness_penalty(sigma)
  hinge = norm_hinge(real.raw_emb)
  probe_ce = jnp.mean(optax.softmax_cross_entropy_with_integer_labels(
      real.probe_logits, labels))
  loss = (-jsd + settings.knn_weight * (-real_sim + fake_sim)
          + weights.smoothness_weight * smooth
          + weights.norm_hinge_weight * hinge
          + weights.probe_weight * probe_ce)
  probe_acc = jnp.mean((jnp.argmax(real.probe_logits, -1) == labels)
                       .astype(real.emb.dtype))
  metrics = dict(loss=loss, jsd=jsd, real_sim=real_sim, fake_sim=fake_sim,
                 smoothness=smooth, sigma_mean=jnp.mean(sigma),
                 norm_hinge=hinge,
                 embed_norm=jnp.mean(jnp.linalg.norm(real.raw_emb, axis=-1)),
                 probe_ce=probe_ce, probe_acc=probe_acc)
  return loss, metrics


def generator_objective(real: DHalf, fake: DHalf, bank: MemoryBank,
                        settings: LossSettings) -> Tuple[jax.Array, dict]:
  """`generator_loss` with its inputs grouped. Returns `(loss, metrics)`."""
  jsd, real_sim, fake_sim = _coarse_and_fine(real, fake, bank, settings)
  loss = jsd - settings.knn_weight * fake_sim
  return loss, dict(loss=loss, jsd=jsd, real_sim=real_sim, fake_sim=fake_sim)


def discriminator_loss(real_emb, fake_emb, real_raw_emb, real_keys, fake_keys,
                       queue_keys, queue_emb, sigma, probe_logits, labels, *,
                       eps=0.5, k=1, skip_nearest_fake=True, knn_weight=3.0,
                       smoothness_weight=5.0, norm_hinge_weight=20.0,
                       probe_weight=1.0, renormalize_mean=True):
  """D's total loss (docs/method.md §3.6).

  `-gaussian_jsd(real_emb, fake_emb) + knn_weight * (-real_sim + fake_sim)
   + smoothness_weight * smoothness_penalty(sigma)
   + norm_hinge_weight * norm_hinge(real_raw_emb)
   + probe_weight * cross_entropy(probe_logits, labels)`.

  Args:
    real_emb, fake_emb: [N, C], [M, C] unit embeddings from D.
    real_raw_emb: [N, C] raw embeddings of the real batch.
    real_keys, fake_keys: [N, Ck], [M, Ck] D_ema keys (stop_gradient).
    queue_keys, queue_emb: [K, Ck], [K, C] the memory queue.
    sigma: [N + M] Jacobian estimates on `concat(real, sg(fake))`.
    probe_logits: [N, classes] online probe on `stop_gradient(h_real)`.
    labels: [N] int class labels (used by the probe only).
    The keywords are the weights and switches of docs/method.md §5; k,
    skip_nearest_fake and renormalize_mean are static.

  Returns:
    `(loss, metrics)` where metrics holds each term as a scalar array.
  """
  return discriminator_objective(
      DHalf(real_emb, real_keys, real_raw_emb, probe_logits),
      DHalf(fake_emb, fake_keys), MemoryBank(queue_keys, queue_emb), sigma,
      labels,
      LossSettings(eps=eps, k=k, skip_nearest_fake=skip_nearest_fake,
                   renormalize_mean=renormalize_mean, knn_weight=knn_weight),
      DWeights(smoothness_weight=smoothness_weight,
               norm_hinge_weight=norm_hinge_weight, probe_weight=probe_weight))


def generator_loss(real_emb, fake_emb, real_keys, fake_keys, queue_keys,
                   queue_emb, *, eps=0.5, k=1, skip_nearest_fake=True,
                   knn_weight=3.0, renormalize_mean=True
                   ) -> Tuple[jax.Array, dict]:
  """G's total loss (docs/method.md §3.6): `gaussian_jsd + knn_weight * (-fake_sim)`.

  All inputs are recomputed in the G phase, with a fresh z and the updated D;
  only `fake_emb` carries a gradient to G.

  Args:
    real_emb, fake_emb: [N, C], [M, C] unit embeddings from the updated D.
    real_keys, fake_keys: [N, Ck], [M, Ck] D_ema keys.
    queue_keys, queue_emb: [K, Ck], [K, C] the memory queue.
    The keywords are as in `discriminator_loss`.

  Returns:
    `(loss, metrics)`.
  """
  return generator_objective(
      DHalf(real_emb, real_keys), DHalf(fake_emb, fake_keys),
      MemoryBank(queue_keys, queue_emb),
      LossSettings(eps=eps, k=k, skip_nearest_fake=skip_nearest_fake,
                   renormalize_mean=renormalize_mean, knn_weight=knn_weight))
