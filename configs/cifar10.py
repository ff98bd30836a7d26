"""CIFAR-10 at the paper's and reference code's settings (SPEC 6)."""
from sgan_jax import config_lib


def get_config():
  return config_lib.reference_config()  # every field as documented there
