"""The training augmentation on the device: random resized crop and flip of a
uint8 batch, jitted (docs/method.md, section 5 "Defaults: optimisation and
data").

The same augmentation as the host pipeline (`input_pipeline.augment`, in
tf.data), computed on the accelerator: the host then only decodes, shuffles
and batches, and sends uint8 images (a quarter of float32's bytes).

- **Crop box**: TensorFlow's `sample_distorted_bounding_box` algorithm with
  area 0.5-1 of the image and aspect ratio 3/4-4/3 (uniform), up to 10
  attempts, else the whole image. As there, an attempt picks the aspect ratio,
  then an integer height uniformly between the smallest and largest that
  reach the area range, the width as the rounded height times the ratio, and
  the offsets uniformly in `[0, H - h)` and `[0, W - w)` (TensorFlow's range:
  a crop smaller than the image never touches its bottom or right edge).
- **Resampling**: antialiased Keys-cubic (a = -0.5) resampling of the crop,
  TensorFlow's `resize(method="bicubic", antialias=True)` of the cropped image,
  written as two weight matrices per image (rows, columns) restricted to the
  crop and renormalised, so pixels outside the crop never contribute.
- **Flip**: left-right with probability 1/2, folded into the column weights.

Randomness: row `i` of the batch at step `s` uses
`fold_in(fold_in(PRNGKey(seed), s), i)`, a function of (seed, step, row) only,
so a resumed run and any device count see the same crops.
"""
import functools

import jax
import jax.numpy as jnp

AREA_RANGE = (0.5, 1.0)
RATIO_RANGE = (3 / 4, 4 / 3)
MAX_ATTEMPTS = 10
_KEY_SALT = 0xA06


def _keys_cubic(x):
  """Keys' cubic convolution kernel with a = -0.5 (support |x| < 2)."""
  x = jnp.abs(x)
  near = ((1.5 * x - 2.5) * x) * x + 1.0
  far = ((-0.5 * x + 2.5) * x - 4.0) * x + 2.0
  return jnp.where(x < 1.0, near, jnp.where(x < 2.0, far, 0.0))


def resize_weights(in_size: int, out_size: int, begin, length):
  """[out_size, in_size] weights that resample input pixels
  `[begin, begin + length)` to `out_size` pixels (antialiased Keys cubic,
  pixel centres at `i + 0.5`, each row normalised to sum 1)."""
  begin = jnp.asarray(begin, jnp.float32)
  inv_scale = jnp.asarray(length, jnp.float32) / out_size
  kernel_scale = jnp.maximum(inv_scale, 1.0)   # antialiasing when shrinking
  sample = (jnp.arange(out_size, dtype=jnp.float32) + 0.5) * inv_scale + begin
  centres = jnp.arange(in_size, dtype=jnp.float32) + 0.5
  w = _keys_cubic((centres[None, :] - sample[:, None]) / kernel_scale)
  inside = (centres >= begin) & (centres < begin + length)
  w = jnp.where(inside[None, :], w, 0.0)
  total = jnp.sum(w, axis=1, keepdims=True)
  return jnp.where(jnp.abs(total) > 1e-4, w / total, 0.0)


def _lrint(x):
  return jnp.round(x).astype(jnp.int32)   # round half to even, as lrintf


def _one_attempt(key, height: int, width: int):
  """One attempt of TensorFlow's `GenerateRandomCrop`: (ok, y, x, h, w)."""
  k_ratio, k_h, k_y, k_x = jax.random.split(key, 4)
  lo, hi = RATIO_RANGE
  ratio = jax.random.uniform(k_ratio) * (hi - lo) + lo
  min_area = AREA_RANGE[0] * height * width
  max_area = AREA_RANGE[1] * height * width
  h = _lrint(jnp.sqrt(min_area / ratio))
  max_h = _lrint(jnp.sqrt(max_area / ratio))
  narrower = jnp.floor((width + 0.5 - 1e-7) / ratio).astype(jnp.int32)
  narrower = jnp.where(_lrint(narrower * ratio) > width, narrower - 1, narrower)
  max_h = jnp.where(_lrint(max_h * ratio) > width, narrower, max_h)
  max_h = jnp.minimum(max_h, height)
  h = jnp.minimum(h, max_h)
  h = h + jax.random.randint(k_h, (), 0, jnp.maximum(max_h - h + 1, 1))
  w = _lrint(h * ratio)
  grow = w * h < min_area
  h = jnp.where(grow, h + 1, h)
  w = jnp.where(grow, _lrint(h * ratio), w)
  shrink = w * h > max_area
  h = jnp.where(shrink, h - 1, h)
  w = jnp.where(shrink, _lrint(h * ratio), w)
  area = w * h
  ok = ((area >= min_area) & (area <= max_area) & (w <= width) & (h <= height)
        & (w > 0) & (h > 0))
  y = jnp.where(h < height, jax.random.randint(k_y, (), 0, jnp.maximum(height - h, 1)), 0)
  x = jnp.where(w < width, jax.random.randint(k_x, (), 0, jnp.maximum(width - w, 1)), 0)
  return ok, y, x, h, w


def sample_crop(key, height: int, width: int):
  """A crop box `(y, x, h, w)` (int32 scalars) of a `height` x `width` image:
  the first of `MAX_ATTEMPTS` attempts that meets the constraints, else the
  whole image."""
  ok, y, x, h, w = jax.vmap(_one_attempt, (0, None, None))(
      jax.random.split(key, MAX_ATTEMPTS), height, width)
  first = jnp.argmax(ok)
  found = ok[first]
  pick = lambda v, whole: jnp.where(found, v[first], whole)
  return pick(y, 0), pick(x, 0), pick(h, height), pick(w, width)


def crop_and_resize(image, box, size: int, flip):
  """The uint8 `image` [H, W, C] cropped to `box` (y, x, h, w), resampled to
  `size` x `size`, flipped left-right where `flip`; float32 in [0, 255]."""
  y, x, h, w = box
  rows = resize_weights(image.shape[0], size, y, h)
  cols = resize_weights(image.shape[1], size, x, w)
  cols = jnp.where(flip, cols[::-1], cols)
  out = jnp.einsum("oh,hwc,pw->opc", rows, image.astype(jnp.float32), cols,
                   precision=jax.lax.Precision.HIGHEST)
  return jnp.clip(out, 0.0, 255.0)


def _augment_row(key, image, size: int):
  k_crop, k_flip = jax.random.split(key)
  box = sample_crop(k_crop, image.shape[0], image.shape[1])
  return crop_and_resize(image, box, size, jax.random.bernoulli(k_flip))


def row_keys(seed: int, step, num_rows: int):
  """The keys of a batch's rows at `step` (see the module docstring)."""
  key = jax.random.fold_in(jax.random.PRNGKey(seed ^ _KEY_SALT), step)
  return jax.vmap(lambda i: jax.random.fold_in(key, i))(jnp.arange(num_rows))


def augment_batch(images, step, *, seed: int, size: int):
  """uint8 images [N, H, W, C] -> augmented float32 [N, size, size, C] in
  [-1, 1] (the training batch's range); `jitted` compiles it."""
  keys = row_keys(seed, step, images.shape[0])
  out = jax.vmap(functools.partial(_augment_row, size=size))(keys, images)
  # XLA turns the division into a product with 1/127.5, which can overshoot 1.
  return jnp.clip(out / 127.5 - 1.0, -1.0, 1.0)


def jitted(seed: int, size: int, out_sharding=None):
  """`augment_batch` jitted for `seed` and `size`: `fn(images, step)`, its
  output laid out as `out_sharding` (e.g. the batch sharding of a mesh)."""
  return jax.jit(functools.partial(augment_batch, seed=seed, size=size),
                 out_shardings=out_sharding)
