"""The offline generator metrics: formulas against independent references,
and the classifier-based metric separating real from generated digits."""
import jax
import numpy as np
import pytest
import scipy.linalg

from helpers import digits_as_images
from sgan_jax import generator_eval
from sgan_jax.state import StepSpec, init_generator


def _random_stats(seed, dim=40):
  rng = np.random.default_rng(seed)
  a = rng.standard_normal((dim, 3 * dim))
  return rng.standard_normal(dim), a @ a.T / (3 * dim)


def test_frechet_distance_matches_the_sqrtm_formula():
  (mu1, s1), (mu2, s2) = _random_stats(0), _random_stats(1)
  root = scipy.linalg.sqrtm(s1 @ s2).real
  want = np.sum((mu1 - mu2) ** 2) + np.trace(s1 + s2 - 2 * root)
  assert generator_eval.frechet_distance(mu1, s1, mu2, s2) == pytest.approx(want, rel=1e-9)
  assert abs(generator_eval.frechet_distance(mu1, s1, mu1, s1)) < 1e-9


def test_kl_score_limits():
  k = 7
  uniform = np.full((50, k), 1.0 / k)
  assert generator_eval.kl_score(uniform) == pytest.approx(1.0)
  confident_balanced = np.eye(k)[np.arange(70) % k]
  assert generator_eval.kl_score(confident_balanced) == pytest.approx(k, rel=1e-6)
  confident_one_class = np.eye(k)[np.zeros(70, int)]
  assert generator_eval.kl_score(confident_one_class) == pytest.approx(1.0, rel=1e-6)


def test_classifier_metric_separates_real_from_random_g(tiny_config):
  from sklearn.datasets import load_digits
  x, y = load_digits(return_X_y=True)
  images = digits_as_images(x)
  order = np.random.default_rng(0).permutation(len(y))
  tr, te = order[:1400], order[1400:]
  config = tiny_config(num_classes=10)
  config.eval.classifier_epochs = 20   # the default's
  metrics = generator_eval.ClassifierMetrics(config)
  reference = metrics.fit(images[tr], y[tr], images[te], y[te])
  assert reference["gen/classifier/test_top1"] > 0.9
  spec = StepSpec.from_config(config)
  fake = generator_eval.generate_images(
      spec, *init_generator(spec, jax.random.PRNGKey(3)), num=len(te),
      batch=config.global_batch_size, seed=0)
  assert fake.shape == images[te].shape
  scores = metrics.score("random_init", fake)
  # Real train images against the test images are close; untrained G's are not.
  assert scores["gen/random_init/classifier_fd"] > 10 * reference["gen/real_train/classifier_fd"]
  assert reference["gen/real_train/classifier_score"] > 5   # of 10 classes
  assert scores["gen/random_init/classifier_score"] < 3
  # The test images themselves: the test split's own statistics (distance 0)
  # and its own score.
  itself = metrics.score("real_test", images[te])
  assert abs(itself["gen/real_test/classifier_fd"]) < 1e-6 * reference[
      "gen/real_train/classifier_fd"]
  assert itself["gen/real_test/classifier_score"] == pytest.approx(
      reference["gen/real_test/classifier_score"], rel=1e-9)
