"""Synthetic inputs: a batch of random images with labels, for timing the
step without a dataset (`sgan_jax.benchmark`) and for tests."""
import jax
import jax.numpy as jnp

from sgan_jax import sharding


def synthetic_batch(config, mesh=None, seed=0):
  """A global batch of uniform random images in [-1, 1] and cyclic labels;
  split over `mesh`'s data axis when given, else on the default device."""
  b, s = config.global_batch_size, config.image_size
  key = jax.random.PRNGKey(seed)
  batch = {"image": jax.random.uniform(key, (b, s, s, 3), minval=-1.0, maxval=1.0),
           "label": jnp.arange(b, dtype=jnp.int32) % config.num_classes}
  return batch if mesh is None else jax.device_put(batch, sharding.batch_sharding(mesh))
