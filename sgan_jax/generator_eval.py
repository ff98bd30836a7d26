"""How close G's samples are to the data, offline on every dataset
(docs/method.md §6, "Generator").

A small convolutional classifier is trained at evaluation time on the
labelled, un-augmented train split (the same `[-1, 1]` images the feature
evaluators see). In its 128-d penultimate feature space:

- `classifier_fd`: the Fréchet distance between Gaussians fitted to the
  features of the test images and of as many generated images (FID's formula,
  in this classifier's feature space: **not** FID, whose numbers come from
  ImageNet's InceptionV3 and are not comparable);
- `classifier_score`: `exp(E_x KL(p(y|x) || p(y)))` of the classifier's
  softmax over a set (the Inception Score's formula, with this classifier);
  between 1 and the number of classes.

The reference row `real_train` compares as many train images as there are
test images against the test images (what a perfect G would score, finite
sample noise included); `classifier/test_top1` says how good the classifier
is. Generated images come from fixed latents, in batches of the training
batch size (G always runs with batch statistics).
"""
import functools
from typing import Dict

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from sgan_jax.samples import generate_batch
from sgan_jax.state import StepSpec
from sgan_jax.utils import map_in_batches

FEATURE_DIM = 128


class SmallClassifier(nn.Module):
  """Three 3x3 conv stages (32, 64, 128 channels, ReLU, 2x2 average pooling
  after the first two), global average pooling, a linear head."""
  num_classes: int

  @nn.compact
  def __call__(self, images):
    x = images
    for i, width in enumerate((32, 64, FEATURE_DIM)):
      x = nn.relu(nn.Conv(width, (3, 3))(x))
      if i < 2:
        x = nn.avg_pool(x, (2, 2), (2, 2))
    features = jnp.mean(x, axis=(1, 2))
    return features, nn.Dense(self.num_classes)(features)


@functools.partial(jax.jit, static_argnames="num_classes", donate_argnums=(0, 1))
def _classifier_step(params, opt_state, images, labels, num_classes, lr):
  # One jitted step driven from Python: XLA:CPU runs these convolutions
  # much more slowly inside a scan/while loop than as a top-level computation.
  def loss_fn(p):
    logits = SmallClassifier(num_classes).apply({"params": p}, images)[1]
    return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, labels))
  updates, opt_state = optax.adam(lr).update(jax.grad(loss_fn)(params), opt_state, params)
  return optax.apply_updates(params, updates), opt_state


def train_classifier(images, labels, num_classes: int, epochs: int, seed: int,
                     batch: int = 64, lr: float = 2e-3):
  """Adam on shuffled minibatches (the remainder of each epoch's permutation
  is dropped); returns the parameters."""
  images, labels = np.asarray(images, np.float32), np.asarray(labels, np.int32)
  params = jax.jit(SmallClassifier(num_classes).init)(jax.random.PRNGKey(seed),
                                                      images[:1])["params"]
  opt_state = optax.adam(lr).init(params)
  rng = np.random.default_rng(seed)
  batch = min(batch, len(labels))
  for _ in range(epochs):
    order = rng.permutation(len(labels))
    for start in range(0, len(order) - batch + 1, batch):
      idx = order[start:start + batch]
      params, opt_state = _classifier_step(params, opt_state, images[idx], labels[idx],
                                           num_classes, lr)
  return params


@functools.partial(jax.jit, static_argnames="num_classes")
def _classifier_batch(params, images, num_classes):
  """(128-d features, class probabilities) of one batch of images."""
  features, logits = SmallClassifier(num_classes).apply({"params": params}, images)
  return features, jax.nn.softmax(logits)


def frechet_distance(mu1, sigma1, mu2, sigma2) -> float:
  """|mu1 - mu2|^2 + tr(S1 + S2 - 2 (S1 S2)^(1/2)), in float64. The trace of
  the matrix square root is taken from the eigenvalues of the symmetric
  S1^(1/2) S2 S1^(1/2), which has the same spectrum as S1 S2."""
  mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
  s1, s2 = np.asarray(sigma1, np.float64), np.asarray(sigma2, np.float64)
  w, v = np.linalg.eigh(s1)
  root1 = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
  middle = np.linalg.eigvalsh(root1 @ s2 @ root1)
  trace_root = np.sum(np.sqrt(np.clip(middle, 0, None)))
  return float(np.sum((mu1 - mu2) ** 2) + np.trace(s1) + np.trace(s2) - 2 * trace_root)


def gaussian_stats(features):
  """Mean and (unbiased) covariance of [N, D] features, in float64."""
  f = np.asarray(features, np.float64)
  return f.mean(0), np.cov(f, rowvar=False)


def kl_score(probs, eps: float = 1e-12) -> float:
  """exp(mean_i KL(p_i || mean_j p_j)) of [N, K] class probabilities."""
  p = np.asarray(probs, np.float64)
  marginal = p.mean(0, keepdims=True)
  kl = np.sum(p * (np.log(p + eps) - np.log(marginal + eps)), axis=1)
  return float(np.exp(kl.mean()))


def generate_images(spec: StepSpec, g_params, g_state, num: int, batch: int, seed: int):
  """`num` images of G from fixed latents, in batches of `batch`."""
  key = jax.random.fold_in(jax.random.PRNGKey(seed), 0x6E)
  out = []
  for i in range(-(-num // batch)):
    z = np.asarray(jax.random.normal(jax.random.fold_in(key, i), (batch, spec.model.z_dim)))
    out.append(np.asarray(generate_batch(spec, g_params, g_state, z)))
  return np.concatenate(out)[:num]


class ClassifierMetrics:
  """Trains the classifier once (on the first call) and scores sets of
  generated images against the test split with it."""

  def __init__(self, config):
    self.config = config
    self.params = None
    self.reference: Dict[str, float] = {}

  def _apply(self, images):
    apply = functools.partial(_classifier_batch, self.params,
                              num_classes=self.config.num_classes)
    return map_in_batches(apply, np.asarray(images, np.float32), self.config.eval.batch_size)

  def fit(self, train_images, train_labels, test_images, test_labels):
    """Trains the classifier; returns the reference metrics."""
    c = self.config
    self.params = train_classifier(train_images, train_labels, c.num_classes,
                                   c.eval.classifier_epochs, c.seed)
    test_features, test_probs = self._apply(test_images)
    self._test_stats = gaussian_stats(test_features)
    pick = np.random.default_rng(c.seed).permutation(len(train_images))[:len(test_images)]
    train_features, train_probs = self._apply(train_images[pick])
    self.reference = {
        "gen/classifier/test_top1": float(np.mean(np.argmax(test_probs, 1) == test_labels)),
        "gen/real_test/classifier_score": kl_score(test_probs),
        "gen/real_train/classifier_score": kl_score(train_probs),
        "gen/real_train/classifier_fd": frechet_distance(
            *gaussian_stats(train_features), *self._test_stats)}
    return dict(self.reference)

  def score(self, name: str, images) -> Dict[str, float]:
    features, probs = self._apply(images)
    return {f"gen/{name}/classifier_fd": frechet_distance(*gaussian_stats(features),
                                                          *self._test_stats),
            f"gen/{name}/classifier_score": kl_score(probs)}
