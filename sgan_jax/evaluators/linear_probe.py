"""Linear probe: softmax (multinomial logistic) regression on frozen,
standardised features, fitted full-batch by L-BFGS; C is `eval.linear_c`, or
chosen on a held-out part of the train split when that is None (the protocol
is in `linear_models`)."""
from sgan_jax.evaluators import linear_models


def evaluate(train, test, num_classes, config):
  return linear_models.evaluate(train, test, num_classes, "softmax",
                                config.linear_c, config)
