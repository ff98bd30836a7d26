"""CIFAR-10 at the authors' settings (docs/method.md §5)."""
from sgan_jax import config_lib


def get_config():
  return config_lib.reference_config()  # every field as documented there
