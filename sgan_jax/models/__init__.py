"""The two networks: D (the representation learner) and G (SPEC section 2)."""
from sgan_jax.models.discriminator import Discriminator
from sgan_jax.models.generator import Generator

__all__ = ["Discriminator", "Generator"]
