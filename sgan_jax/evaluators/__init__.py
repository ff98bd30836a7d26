"""Feature evaluators, one class each in a module of its own, built by name
from `config.eval.evaluators`.

An evaluator is built as `cls(num_classes, config)` (`config`: the `eval`
section of the run's config) and scores one feature set with `run(train,
test)`, a generator of `(metric, value)` pairs; `train` and `test` are
`(features [N, D] float, labels [N] int)` NumPy pairs. Each yields the
metrics `SCORES` names for it, in that order; the linear models then yield
`c`, the regularisation constant they used.
"""
import importlib
from typing import Dict, Iterator, Tuple

NAMES = ("knn", "linear", "svm", "kmeans")
# D's own linear probe, trained with D: its accuracy is read from D's
# output, not fitted here.
ONLINE_PROBE = "online_probe"
# The scores each evaluator (and the online probe) yields, in the results
# table's order; the first is its headline (the learning curve's panel).
SCORES = {"knn": ("top1",), "linear": ("top1",), "svm": ("top1",),
          "kmeans": ("acc", "nmi", "ari"), ONLINE_PROBE: ("top1",)}
_CLASSES = {"knn": ("knn", "KNearestNeighbours"), "linear": ("linear_probe", "LinearProbe"),
            "svm": ("svm", "LinearSVM"), "kmeans": ("kmeans", "SphericalKMeans")}


class Evaluator:
  """The common part: built from the number of classes and the `eval`
  config; subclasses define `run`."""

  def __init__(self, num_classes: int, config):
    self.num_classes, self.config = num_classes, config

  def run(self, train, test) -> Iterator[Tuple[str, float]]:
    """Scores one feature set: yields `(metric, value)` pairs."""
    raise NotImplementedError


def get(name: str):
  """The class of evaluator `name` (its module is imported on demand)."""
  if name not in _CLASSES:
    raise ValueError(f"unknown evaluator '{name}'; known: {', '.join(NAMES)}")
  module, cls = _CLASSES[name]
  return getattr(importlib.import_module(f"sgan_jax.evaluators.{module}"), cls)


def from_config(num_classes: int, config) -> Dict:
  """`{name: evaluator}` for each name of `config.evaluators` (`config`: the
  `eval` section), in the order of `NAMES`."""
  return {name: get(name)(num_classes, config) for name in NAMES
          if name in config.evaluators}
