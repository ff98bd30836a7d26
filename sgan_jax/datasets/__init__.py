"""TFDS datasets that live in this project (registered with TFDS on import)."""
from sgan_jax.datasets.sklearn_digits import SklearnDigits

__all__ = ["SklearnDigits"]
