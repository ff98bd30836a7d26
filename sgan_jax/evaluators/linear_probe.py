"""Linear probe: softmax (multinomial logistic) regression on frozen,
standardised features, fitted full-batch by L-BFGS; C is `eval.linear_c`, or
chosen on a held-out part of the train split when that is None (the protocol
is in `linear_models`)."""
from sgan_jax.evaluators import linear_models


class LinearProbe(linear_models.LinearModel):
  """Softmax regression (scikit-learn's `LogisticRegression` objective, the
  bias not penalised); yields `top1` and `c`."""
  loss = "softmax"
  c_field = "linear_c"
