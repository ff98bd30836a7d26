"""`sgan_jax.flops`: the FLOP counter against hand counts."""
import jax
import jax.numpy as jnp

from sgan_jax import flops
from sgan_jax.models import Discriminator


def conv(n, hw, k, cin, cout):
  return 2 * n * hw * hw * k * k * cin * cout


def test_flops_of_the_tiny_discriminator_match_a_hand_count():
  n = 4
  d = Discriminator(16, (8, 16, 16), 1, embed_dim=16, num_classes=10)
  x = jnp.zeros((n, 16, 16, 3))
  params = d.init(jax.random.PRNGKey(0), x)
  expected = (conv(n, 16, 3, 3, 8)                                   # stem
              + 2 * conv(n, 16, 3, 8, 8)                             # stage 1
              + conv(n, 8, 3, 8, 16) + conv(n, 8, 3, 16, 16) + conv(n, 8, 1, 8, 16)
              + 2 * conv(n, 4, 3, 16, 16) + conv(n, 4, 1, 16, 16)   # stage 3
              + 2 * n * (16 * 16 + 16 * 16 + 16 * 10))               # head, probe
  assert flops.count(d.apply, params, x) == expected


def test_flops_of_a_gradient_include_the_backward_convolutions():
  x, w = jnp.ones((2, 8, 8, 3)), jnp.ones((3, 3, 3, 16))
  f = lambda x, w: jax.lax.conv_general_dilated(
      x, w, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")).sum()
  one = conv(2, 8, 3, 3, 16)
  assert flops.count(f, x, w) == one
  assert flops.count(jax.grad(f, argnums=1), x, w) == 2 * one   # + weight grad
  assert flops.count(jax.grad(f, argnums=(0, 1)), x, w) == 3 * one
