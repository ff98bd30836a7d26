"""Linear probe on frozen, standardised features, trained inside one jit.

Fixed protocol (the `eval` config): features standardised with the train
split's mean and std; a softmax linear classifier from zeros; AdamW with
`probe_lr` and decoupled weight decay `probe_weight_decay`; `probe_epochs`
epochs of shuffled minibatches of `probe_batch_size` (each epoch drops the
remainder of a fresh permutation); the final weights are scored on test.
"""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax


@functools.partial(jax.jit, static_argnames=("num_classes", "epochs", "batch"))
def _train(x, y, key, lr, weight_decay, num_classes, epochs, batch):
  n, d = x.shape
  batch = min(batch, n)
  steps = n // batch
  params = {"w": jnp.zeros((d, num_classes)), "b": jnp.zeros((num_classes,))}
  tx = optax.adamw(lr, weight_decay=weight_decay)

  def loss_fn(p, xb, yb):
    logits = xb @ p["w"] + p["b"]
    return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, yb))

  def sgd_step(carry, idx):
    p, opt = carry
    grads = jax.grad(loss_fn)(p, x[idx], y[idx])
    updates, opt = tx.update(grads, opt, p)
    return (optax.apply_updates(p, updates), opt), None

  def epoch(e, carry):
    order = jax.random.permutation(jax.random.fold_in(key, e), n)
    order = order[:steps * batch].reshape(steps, batch)
    return jax.lax.scan(sgd_step, carry, order)[0]

  params, _ = jax.lax.fori_loop(0, epochs, epoch, (params, tx.init(params)))
  return params


def fit_predict(train_x, train_y, test_x, num_classes, epochs=100, batch=256,
                lr=1e-2, weight_decay=1e-4, seed=0):
  """Trains the probe on (train_x, train_y); returns test predictions."""
  train_x = np.asarray(train_x, np.float32)
  mean, std = train_x.mean(0), train_x.std(0) + 1e-6
  standardise = lambda a: (np.asarray(a, np.float32) - mean) / std
  params = _train(jnp.asarray(standardise(train_x)),
                  jnp.asarray(train_y, jnp.int32), jax.random.PRNGKey(seed),
                  lr, weight_decay, num_classes, epochs, batch)
  logits = standardise(test_x) @ np.asarray(params["w"]) + np.asarray(params["b"])
  return np.argmax(logits, axis=-1)


def evaluate(train, test, num_classes, config):
  pred = fit_predict(train[0], train[1], test[0], num_classes,
                     config.probe_epochs, config.probe_batch_size,
                     config.probe_lr, config.probe_weight_decay)
  return {"top1": float(np.mean(pred == np.asarray(test[1])))}
