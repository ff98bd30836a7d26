"""The two networks: D (the representation learner) and G (docs/method.md §2)."""
from sgan_jax.models.discriminator import Discriminator
from sgan_jax.models.generator import Generator

__all__ = ["Discriminator", "Generator"]
