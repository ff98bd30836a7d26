"""CIFAR-100 at the reference settings (docs/method.md §5); only the dataset differs."""
from sgan_jax import config_lib


def get_config():
  c = config_lib.reference_config()
  c.dataset = "cifar100"   # TFDS cifar100 (fine labels)
  c.num_classes = 100      # online probe and evaluation over 100 classes
  return c
