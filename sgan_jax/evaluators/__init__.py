"""Feature evaluators, one module each, looked up by name.

Each module exposes `evaluate(train, test, num_classes, config) -> dict`,
where `train` and `test` are `(features [N, D] float, labels [N] int)` NumPy
pairs and `config` is the `eval` section of the run's config. The returned
metric names are those of the eval JSON (`top1`; `acc`, `nmi`, `ari`; `c`,
the regularisation constant a linear model used).
"""
import importlib

NAMES = ("knn", "linear", "svm", "kmeans")
_MODULES = {"knn": "knn", "linear": "linear_probe", "svm": "svm", "kmeans": "kmeans"}


def get(name: str):
  """The `evaluate` function of evaluator `name`."""
  if name not in _MODULES:
    raise ValueError(f"unknown evaluator '{name}'; known: {', '.join(NAMES)}")
  return importlib.import_module(f"sgan_jax.evaluators.{_MODULES[name]}").evaluate
