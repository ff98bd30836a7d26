"""Weighted k-NN classifier on L2-normalised features (docs/method.md §6).

Each test row votes with its k most cosine-similar train rows, weighted by
`exp(sim / temperature)` (k = 200, temperature 0.1 by default). Test rows are
processed in fixed-size chunks (the last one zero-padded, so one compilation
serves them all), so at most `chunk x N_train` similarities exist at once
(50,000 x 10,000 never materialises).
"""
import functools

import jax
import jax.numpy as jnp
import numpy as np

from sgan_jax import evaluators
from sgan_jax.utils import pad_rows, unit_rows


@functools.partial(jax.jit, static_argnames=("k", "num_classes"))
def _predict_chunk(bank, bank_labels, queries, temperature, k, num_classes):
  sims, idx = jax.lax.top_k(unit_rows(queries) @ bank.T, k)
  weights = jnp.exp(sims / temperature)
  votes = jnp.zeros((queries.shape[0], num_classes), weights.dtype)
  rows = jnp.arange(queries.shape[0])[:, None]
  votes = votes.at[rows, bank_labels[idx]].add(weights)
  return jnp.argmax(votes, axis=-1)


def predict(train_x, train_y, test_x, num_classes, k=200, temperature=0.1,
            chunk=512):
  """Predicted labels [N_test] of the weighted k-NN vote."""
  k = min(k, len(train_x))
  bank = unit_rows(jnp.asarray(train_x, jnp.float32))
  bank_labels = jnp.asarray(train_y, jnp.int32)
  test_x = np.asarray(test_x, np.float32)
  n = len(test_x)
  preds = []
  for start in range(0, n, chunk):
    block = test_x[start:start + chunk]
    preds.append(np.asarray(_predict_chunk(bank, bank_labels, pad_rows(block, chunk),
                                           temperature, k, num_classes))[:len(block)])
  return np.concatenate(preds) if preds else np.zeros((0,), np.int32)


class KNearestNeighbours(evaluators.Evaluator):
  """The weighted k-NN vote with `eval.knn_k`, `eval.knn_temperature` and
  `eval.knn_chunk`; yields `top1`, the test split's accuracy."""

  def run(self, train, test):
    c = self.config
    pred = predict(train[0], train[1], test[0], self.num_classes, c.knn_k,
                   c.knn_temperature, c.knn_chunk)
    yield "top1", float(np.mean(pred == np.asarray(test[1])))
