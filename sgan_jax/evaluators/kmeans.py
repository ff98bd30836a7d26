"""k-means clustering of L2-normalised features (docs/method.md §6).

Spherical k-means (cosine assignment, centroids renormalised), k-means++
starts, `kmeans_restarts` restarts keeping the lowest inertia, Lloyd steps
until no assignment changes or `kmeans_iters`. Scored against the labels by
Hungarian-matched accuracy (scipy), NMI and ARI (scikit-learn).
"""
import functools

import jax
import jax.numpy as jnp
import numpy as np
from scipy.optimize import linear_sum_assignment
from sklearn import metrics

from sgan_jax import evaluators
from sgan_jax.utils import unit_rows


def _plus_plus(x, k, key):
  """k-means++ seeding: each new centre drawn with probability ~ D^2."""
  n = x.shape[0]
  first = jax.random.randint(key, (), 0, n)
  centres = jnp.zeros((k, x.shape[1]), x.dtype).at[0].set(x[first])
  d2 = jnp.sum((x - x[first]) ** 2, axis=1)

  def add(i, carry):
    centres, d2 = carry
    pick = jax.random.choice(jax.random.fold_in(key, i), n,
                             p=d2 / jnp.maximum(d2.sum(), 1e-12))
    centres = centres.at[i].set(x[pick])
    return centres, jnp.minimum(d2, jnp.sum((x - x[pick]) ** 2, axis=1))
  return jax.lax.fori_loop(1, k, add, (centres, d2))[0]


@functools.partial(jax.jit, static_argnames=("k", "iters"))
def _cluster(x, key, k, iters):
  x = unit_rows(x)
  centres = _plus_plus(x, k, key)

  def lloyd(carry):
    centres, assign, _, it = carry
    new_assign = jnp.argmax(x @ centres.T, axis=1)
    one_hot = jax.nn.one_hot(new_assign, k, dtype=x.dtype)
    sums = one_hot.T @ x
    counts = one_hot.sum(0)[:, None]
    # An emptied cluster keeps its centre rather than collapsing to zero.
    new_centres = jnp.where(counts > 0, unit_rows(sums), centres)
    return new_centres, new_assign, jnp.any(new_assign != assign), it + 1

  init = (centres, jnp.full((x.shape[0],), -1), jnp.array(True), 0)
  centres, assign, _, _ = jax.lax.while_loop(
      lambda c: c[2] & (c[3] < iters), lloyd, init)
  inertia = jnp.sum(1.0 - jnp.sum(x * centres[assign], axis=1))
  return assign, inertia


def cluster(x, k, restarts=5, iters=300, seed=0):
  """Best-of-`restarts` cluster assignments [N]."""
  x = jnp.asarray(x, jnp.float32)
  runs = [_cluster(x, jax.random.PRNGKey(seed + r), k, iters) for r in range(restarts)]
  return np.asarray(min(runs, key=lambda run: float(run[1]))[0])


def matched_accuracy(labels, assign, k):
  """Accuracy under the best one-to-one map of clusters to classes."""
  counts = np.zeros((k, k), np.int64)
  np.add.at(counts, (np.asarray(assign), np.asarray(labels)), 1)
  rows, cols = linear_sum_assignment(-counts)
  return counts[rows, cols].sum() / len(labels)


class SphericalKMeans(evaluators.Evaluator):
  """k-means with as many clusters as classes, `eval.kmeans_restarts` and
  `eval.kmeans_iters`, on the test split (clustering is unsupervised: the
  train split is not used); yields `acc`, `nmi` and `ari`."""

  def run(self, train, test):
    del train
    labels, k = np.asarray(test[1]), self.num_classes
    assign = cluster(test[0], k, self.config.kmeans_restarts, self.config.kmeans_iters)
    yield "acc", float(matched_accuracy(labels, assign, k))
    yield "nmi", float(metrics.normalized_mutual_info_score(labels, assign))
    yield "ari", float(metrics.adjusted_rand_score(labels, assign))
