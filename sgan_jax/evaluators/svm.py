"""Linear SVM: one-vs-rest, squared hinge loss, L2 penalty on the weights and
the bias (scikit-learn's `LinearSVC` objective: liblinear penalises the bias
as a weight) on frozen, standardised features, fitted full-batch by L-BFGS;
C is `eval.svm_c`, or chosen on a held-out part of the train split when that
is None (the protocol is in `linear_models`)."""
from sgan_jax.evaluators import linear_models


class LinearSVM(linear_models.LinearModel):
  """One-vs-rest squared-hinge SVM, the bias penalised as a weight; yields
  `top1` and `c`."""
  loss = "squared_hinge"
  c_field = "svm_c"
