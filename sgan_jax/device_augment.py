"""The training augmentation on the device: random resized crop and flip of a
uint8 batch, jitted (docs/method.md, section 5 "Defaults: optimisation and
data").

The arithmetic (TensorFlow's crop-box algorithm, antialiased Keys-cubic
resampling restricted to the crop) is `sgan_jax.image_ops`, shared with the
host loader (`sgan_jax.host_images`); here it runs on the accelerator, so the
host only decodes, shuffles and batches, and sends uint8 images (a quarter of
float32's bytes).

Randomness: row `i` of the batch at step `s` uses
`fold_in(fold_in(PRNGKey(seed), s), i)`, a function of (seed, step, row) only,
so a resumed run and any device count see the same crops.
"""
import functools

import jax
import jax.numpy as jnp

from sgan_jax import image_ops

_KEY_SALT = 0xA06


def sample_crop(key, height: int, width: int):
  """A crop box `(y, x, h, w)` (int32 scalars) of a `height` x `width` image
  (`image_ops.crop_box` with uniforms drawn from `key`)."""
  u = jax.random.uniform(key, (image_ops.MAX_ATTEMPTS, image_ops.DRAWS_PER_ATTEMPT))
  return image_ops.crop_box(u, height, width, xp=jnp)


def crop_and_resize(image, box, size: int, flip):
  """The uint8 `image` [H, W, C] cropped to `box` (y, x, h, w), resampled to
  `size` x `size`, flipped left-right where `flip`; float32 in [0, 255]."""
  y, x, h, w = box
  rows = image_ops.resize_weights(image.shape[0], size, y, h, xp=jnp)
  cols = image_ops.resize_weights(image.shape[1], size, x, w, xp=jnp)
  cols = jnp.where(flip, cols[::-1], cols)
  out = jnp.einsum("oh,hwc,pw->opc", rows, image.astype(jnp.float32), cols,
                   precision=jax.lax.Precision.HIGHEST)
  return jnp.clip(out, 0.0, 255.0)


def draw_crop_and_flip(key, height: int, width: int):
  """One row's random draws from its key (`row_keys`): the crop box
  `(y, x, h, w)` of a `height` x `width` image (`sample_crop`) and whether it
  is flipped (probability 1/2)."""
  k_crop, k_flip = jax.random.split(key)
  return sample_crop(k_crop, height, width), jax.random.bernoulli(k_flip)


def _augment_row(key, image, size: int):
  box, flip = draw_crop_and_flip(key, image.shape[0], image.shape[1])
  return crop_and_resize(image, box, size, flip)


def row_keys(seed: int, step, num_rows: int):
  """The keys of a batch's rows at `step` (see the module docstring)."""
  key = jax.random.fold_in(jax.random.PRNGKey(seed ^ _KEY_SALT), step)
  return jax.vmap(lambda i: jax.random.fold_in(key, i))(jnp.arange(num_rows))


def augment_batch(images, step, *, seed: int, size: int):
  """uint8 images [N, H, W, C] -> augmented float32 [N, size, size, C] in
  [-1, 1] (the training batch's range); `jitted` compiles it."""
  keys = row_keys(seed, step, images.shape[0])
  out = jax.vmap(functools.partial(_augment_row, size=size))(keys, images)
  return image_ops.to_unit_range(out, xp=jnp)


def jitted(seed: int, size: int, out_sharding=None):
  """`augment_batch` jitted for `seed` and `size`: `fn(images, step)`, its
  output laid out as `out_sharding` (e.g. the batch sharding of a mesh)."""
  return jax.jit(functools.partial(augment_batch, seed=seed, size=size),
                 out_shardings=out_sharding)
