"""Full-batch linear classifiers on frozen features, shared by the `linear`
(softmax regression) and `svm` (one-vs-rest squared hinge) evaluators.

Protocol (docs/method.md §6): features are standardised with the train
split's mean and standard deviation; weights and biases start at zero and
minimise

    C * sum_i loss(x_i W + b, y_i) + 0.5 * ||W||^2

by L-BFGS (optax, zoom line search) on the whole split at once, inside one
jit, until the gradient norm falls under `eval.lbfgs_tol` or after
`eval.lbfgs_max_iters` iterations. This is scikit-learn's parametrisation
(`LogisticRegression(C)`, `LinearSVC(C)`), with the objective divided by
`C * n` so that its scale does not depend on the split size; like those, the
SVM penalises the bias as a weight (+ 0.5 * ||b||^2) and the softmax
regression does not. When C is not fixed in the config it is chosen from
`eval.c_grid` by accuracy on a held-out `eval.val_fraction` of the train
split (a seeded random part), then the model is refitted on the whole train
split with that C.

Why not SGD: a constant-rate minibatch optimiser falls short of the
regularised optimum (and of scikit-learn) on high-dimensional inputs such as
raw CIFAR pixels; a full-batch quasi-Newton solver reaches it whatever the
dimension, so the accuracy depends on C alone.
"""
import functools
from typing import Callable, Dict, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax
import optax.tree_utils as otu

from sgan_jax import evaluators, progress


def softmax_loss(logits, labels, num_classes):
  """Per-row multinomial logistic loss."""
  del num_classes
  return optax.softmax_cross_entropy_with_integer_labels(logits, labels)


def squared_hinge_ovr_loss(logits, labels, num_classes):
  """Per-row sum over classes of max(0, 1 - t * score)^2, t = +1 for the
  row's class and -1 for the others (one binary SVM per class)."""
  target = 2.0 * jax.nn.one_hot(labels, num_classes, dtype=logits.dtype) - 1.0
  return jnp.sum(jnp.square(jax.nn.relu(1.0 - target * logits)), axis=-1)


LOSSES: Dict[str, Callable] = {"softmax": softmax_loss,
                               "squared_hinge": squared_hinge_ovr_loss}
# Whether the bias is penalised like a weight: scikit-learn's LinearSVC
# (liblinear) penalises it, LogisticRegression (lbfgs) does not.
PENALISED_BIAS = {"softmax": False, "squared_hinge": True}


@functools.partial(jax.jit, static_argnames=("loss", "num_classes", "max_iters"))
def fit(x, y, rows, c, init, *, loss: str, num_classes: int, max_iters: int, tol: float):
  """Minimises the objective above over the rows where `rows` is 1 (a 0/1
  float mask: held-out rows stay in `x`, so the fit on part of a split and
  the refit on all of it share one compilation), from `init`
  ({"w": [D, K], "b": [K]}). Returns `(params, iterations)`.
  """
  n = jnp.sum(rows)
  per_row = LOSSES[loss]

  def objective(p):
    logits = x @ p["w"] + p["b"]
    data = jnp.sum(rows * per_row(logits, y, num_classes)) / n
    penalty = jnp.sum(jnp.square(p["w"]))
    if PENALISED_BIAS[loss]:
      penalty += jnp.sum(jnp.square(p["b"]))
    return data + 0.5 * penalty / (c * n)

  opt = optax.lbfgs()
  value_and_grad = optax.value_and_grad_from_state(objective)

  def step(carry):
    p, state = carry
    value, grad = value_and_grad(p, state=state)
    updates, state = opt.update(grad, state, p, value=value, grad=grad,
                                value_fn=objective)
    return optax.apply_updates(p, updates), state

  def not_done(carry):
    _, state = carry
    count = otu.tree_get(state, "count")
    grad_norm = otu.tree_norm(otu.tree_get(state, "grad"))
    return (count == 0) | ((count < max_iters) & (grad_norm >= tol))

  p, state = jax.lax.while_loop(not_done, step, (init, opt.init(init)))
  return p, otu.tree_get(state, "count")


def zeros(dim: int, num_classes: int):
  return {"w": jnp.zeros((dim, num_classes), jnp.float32),
          "b": jnp.zeros((num_classes,), jnp.float32)}


def _standardiser(train_x):
  train_x = np.asarray(train_x, np.float32)
  mean, std = train_x.mean(0), train_x.std(0) + 1e-6
  return lambda a: jnp.asarray((np.asarray(a, np.float32) - mean) / std)


def _accuracy(params, x, y) -> float:
  return float(np.mean(np.argmax(np.asarray(x @ params["w"] + params["b"]), -1)
                       == np.asarray(y)))


def _progress(loss: str, dim: int, fits: int) -> progress.Progress:
  """Fits of one evaluator, reported (count, rate, ETA) once they take more
  than a few seconds (`progress.Progress`): on raw pixels a fit is long."""
  return progress.Progress(f"    {loss} fits on {dim}-d features", fits, "fits", every=0.0)


def choose_c(x, y, num_classes: int, loss: str, c_grid: Sequence[float],
             val_fraction: float, max_iters: int, tol: float, seed: int = 0,
             report: Optional[progress.Progress] = None):
  """The C of `c_grid` with the best accuracy on a held-out `val_fraction`
  of (x, y) (ties: the smaller C), fitting on the rest. Returns
  `(c, {c: validation accuracy})`."""
  order = np.random.default_rng(seed).permutation(len(y))
  n_val = max(1, int(round(val_fraction * len(y))))
  val = order[:n_val]
  rows = np.ones(len(y), np.float32)
  rows[val] = 0.0
  xs = _standardiser(x[rows == 1])(x)
  params, scores = zeros(x.shape[1], num_classes), {}
  report = report or _progress(loss, x.shape[1], len(c_grid))
  for c in sorted(c_grid):
    # Strong to weak regularisation, each warm-started from the last.
    params, _ = fit(xs, jnp.asarray(y, jnp.int32), jnp.asarray(rows), float(c), params,
                    loss=loss, num_classes=num_classes, max_iters=max_iters, tol=tol)
    scores[float(c)] = _accuracy(params, xs[val], y[val])
    report.update()
  best = max(scores.values())
  return min(c for c, s in scores.items() if s == best), scores


def fit_predict(train_x, train_y, test_x, num_classes: int, loss: str,
                c: Optional[float], config):
  """Fits on the train split (C from `choose_c` when `c` is None) and
  returns `(test predictions, C used)`."""
  train_x, train_y = np.asarray(train_x, np.float32), np.asarray(train_y)
  solver = dict(max_iters=config.lbfgs_max_iters, tol=config.lbfgs_tol)
  report = _progress(loss, train_x.shape[1], 1 + (len(config.c_grid) if c is None else 0))
  if c is None:
    c, _ = choose_c(train_x, train_y, num_classes, loss, config.c_grid,
                    config.val_fraction, report=report, **solver)
  standardise = _standardiser(train_x)
  params, _ = fit(standardise(train_x), jnp.asarray(train_y, jnp.int32),
                  jnp.ones(len(train_y), jnp.float32), float(c),
                  zeros(train_x.shape[1], num_classes), loss=loss,
                  num_classes=num_classes, **solver)
  report.update()
  logits = np.asarray(standardise(test_x) @ params["w"] + params["b"])
  return np.argmax(logits, axis=-1), float(c)


class LinearModel(evaluators.Evaluator):
  """A linear classifier minimising the objective above with `loss` (a key of
  `LOSSES`), C the `eval` field named by `c_field` (chosen by `choose_c`
  when that is None); yields `top1`, the test split's accuracy, and `c`, the
  C used."""
  loss: str
  c_field: str

  def run(self, train, test):
    pred, c = fit_predict(train[0], train[1], test[0], self.num_classes, self.loss,
                          getattr(self.config, self.c_field), self.config)
    yield "top1", float(np.mean(pred == np.asarray(test[1])))
    yield "c", c
