"""Weighted k-NN classifier on L2-normalised features (docs/method.md §6).

Each test row votes with its k most cosine-similar train rows, weighted by
`exp(sim / temperature)` (k = 200, temperature 0.1 by default). Test rows are
processed in fixed-size chunks, so at most `chunk x N_train` similarities
exist at once (50,000 x 10,000 never materialises).
"""
import functools

import jax
import jax.numpy as jnp
import numpy as np

from sgan_jax.utils import unit_rows


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
    rows = len(block)
    if rows < chunk:   # pad: one compiled shape for every chunk
      block = np.concatenate([block, np.zeros((chunk - rows,) + block.shape[1:],
                                              block.dtype)])
    preds.append(np.asarray(_predict_chunk(bank, bank_labels, block,
                                           temperature, k, num_classes))[:rows])
  return np.concatenate(preds) if preds else np.zeros((0,), np.int32)


def evaluate(train, test, num_classes, config):
  pred = predict(train[0], train[1], test[0], num_classes, config.knn_k,
                 config.knn_temperature, config.knn_chunk)
  return {"top1": float(np.mean(pred == np.asarray(test[1])))}
