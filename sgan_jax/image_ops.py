"""The training augmentation's arithmetic and its constants, written once for
NumPy (the host loader, `sgan_jax.host_images`) and jax.numpy (the device,
`sgan_jax.device_augment`): pass `xp=numpy` or `xp=jax.numpy` (docs/method.md,
section 5 "Defaults: optimisation and data"). Imports NumPy only, so the
loader's worker processes never load JAX.

- **Crop box** (`crop_box`): TensorFlow's `sample_distorted_bounding_box`
  algorithm with an area of `AREA_RANGE` (0.5-1) of the image and an aspect
  ratio (width / height) uniform in `ASPECT_RANGE` (3/4-4/3), up to
  `MAX_ATTEMPTS` (10) attempts, else the whole image. As there, an attempt
  picks the aspect ratio, then an integer height uniformly between the
  smallest and largest that reach the area range, the width as the rounded
  height times the ratio, and the offsets uniformly in `[0, H - h)` and `[0, W - w)`
  (TensorFlow's range: a crop smaller than the image never touches its bottom
  or right edge). The caller supplies the uniform draws, so each side uses its
  own random numbers with one algorithm.
- **Resampling** (`resize_weights`): antialiased Keys-cubic (a = -0.5)
  resampling of the crop, TensorFlow's `resize(method="bicubic",
  antialias=True)` of the cropped image, as one weight matrix per axis
  restricted to the crop and renormalised, so pixels outside the crop never
  contribute. A flip reverses the column weights.
"""
import numpy as np

AREA_RANGE = (0.5, 1.0)
ASPECT_RANGE = (3 / 4, 4 / 3)
MAX_ATTEMPTS = 10
DRAWS_PER_ATTEMPT = 4   # aspect ratio, height, y offset, x offset


def keys_cubic(x, xp=np):
  """Keys' cubic convolution kernel with a = -0.5 (support |x| < 2)."""
  x = xp.abs(x)
  near = ((1.5 * x - 2.5) * x) * x + 1.0
  far = ((-0.5 * x + 2.5) * x - 4.0) * x + 2.0
  return xp.where(x < 1.0, near, xp.where(x < 2.0, far, 0.0))


def resize_weights(in_size: int, out_size: int, begin, length, xp=np):
  """[..., out_size, in_size] float32 weights that resample input pixels
  `[begin, begin + length)` to `out_size` pixels (antialiased Keys cubic,
  pixel centres at `i + 0.5`, each row normalised to sum 1); `begin` and
  `length` are scalars or arrays of equal shape (one matrix each)."""
  begin = xp.asarray(begin, xp.float32)[..., None, None]
  length = xp.asarray(length, xp.float32)[..., None, None]
  inv_scale = length / xp.float32(out_size)
  kernel_scale = xp.maximum(inv_scale, xp.float32(1.0))   # antialiasing when shrinking
  sample = (xp.arange(out_size, dtype=xp.float32)[:, None] + 0.5) * inv_scale + begin
  centres = xp.arange(in_size, dtype=xp.float32)[None, :] + 0.5
  w = keys_cubic((centres - sample) / kernel_scale, xp)
  inside = (centres >= begin) & (centres < begin + length)
  w = xp.where(inside, w, xp.float32(0.0))
  total = xp.sum(w, axis=-1, keepdims=True)
  return xp.where(xp.abs(total) > 1e-4, w / total, xp.float32(0.0)).astype(xp.float32)


def _lrint(x, xp):
  return xp.round(x).astype(xp.int32)   # round half to even, as lrintf


def _below(u, n, xp):
  """An integer uniform in [0, n) from a uniform u in [0, 1) (n >= 1)."""
  return xp.minimum(xp.floor(u * n).astype(xp.int32), n - 1)


def _attempts(u, height: int, width: int, xp):
  """TensorFlow's `GenerateRandomCrop`, vectorised over attempts: u is
  float32 [..., A, 4] uniforms; returns (ok, y, x, h, w), each [..., A]."""
  lo, hi = ASPECT_RANGE
  ratio = u[..., 0] * xp.float32(hi - lo) + xp.float32(lo)
  min_area = AREA_RANGE[0] * height * width
  max_area = AREA_RANGE[1] * height * width
  h = _lrint(xp.sqrt(min_area / ratio), xp)
  max_h = _lrint(xp.sqrt(max_area / ratio), xp)
  narrower = xp.floor((width + 0.5 - 1e-7) / ratio).astype(xp.int32)
  narrower = xp.where(_lrint(narrower * ratio, xp) > width, narrower - 1, narrower)
  max_h = xp.where(_lrint(max_h * ratio, xp) > width, narrower, max_h)
  max_h = xp.minimum(max_h, height)
  h = xp.minimum(h, max_h)
  h = h + _below(u[..., 1], xp.maximum(max_h - h + 1, 1), xp)
  w = _lrint(h * ratio, xp)
  grow = w * h < min_area
  h = xp.where(grow, h + 1, h)
  w = xp.where(grow, _lrint(h * ratio, xp), w)
  shrink = w * h > max_area
  h = xp.where(shrink, h - 1, h)
  w = xp.where(shrink, _lrint(h * ratio, xp), w)
  area = w * h
  ok = ((area >= min_area) & (area <= max_area) & (w <= width) & (h <= height)
        & (w > 0) & (h > 0))
  y = xp.where(h < height, _below(u[..., 2], xp.maximum(height - h, 1), xp), 0)
  x = xp.where(w < width, _below(u[..., 3], xp.maximum(width - w, 1), xp), 0)
  return ok, y, x, h, w


def crop_box(u, height: int, width: int, xp=np):
  """A crop box `(y, x, h, w)` (int32) of a `height` x `width` image from
  uniforms `u` [..., MAX_ATTEMPTS, DRAWS_PER_ATTEMPT] in [0, 1): the first
  attempt that meets the constraints, else the whole image; one box per
  leading index (scalars for u [MAX_ATTEMPTS, DRAWS_PER_ATTEMPT])."""
  ok, y, x, h, w = _attempts(xp.asarray(u, xp.float32), height, width, xp)
  first = xp.argmax(ok, axis=-1)[..., None]
  found = xp.take_along_axis(ok, first, axis=-1)[..., 0]
  pick = lambda v, whole: xp.where(found, xp.take_along_axis(v, first, axis=-1)[..., 0], whole)
  return pick(y, 0), pick(x, 0), pick(h, height), pick(w, width)


def crop_and_resize_np(images: np.ndarray, boxes, size: int, flips) -> np.ndarray:
  """NumPy: uint8 `images` [..., H, W, C] cropped to `boxes` (y, x, h, w,
  each of the leading shape), resampled to `size` x `size`, flipped
  left-right where `flips`; float32 in [0, 255]. One batched matmul per axis."""
  height, width, channels = images.shape[-3:]
  y, x, h, w = (np.asarray(v) for v in boxes)
  rows = resize_weights(height, size, y, h)                     # [..., S, H]
  cols = resize_weights(width, size, x, w)                      # [..., S, W]
  cols = np.where(np.asarray(flips)[..., None, None], cols[..., ::-1, :], cols)
  pixels = images.astype(np.float32).reshape(images.shape[:-3] + (height, width * channels))
  out = (rows @ pixels).reshape(images.shape[:-3] + (size, width, channels))
  out = cols[..., None, :, :] @ out                             # [..., S, S, C]
  return np.clip(out, 0.0, 255.0)


def to_unit_range(pixels, xp=np):
  """Pixels on the 0-255 scale -> the model's [-1, 1] (float32). XLA turns
  the division into a product with 1/127.5, which can overshoot 1: clipped."""
  return xp.clip(xp.asarray(pixels, xp.float32) / 127.5 - 1.0, -1.0, 1.0)


def center_box(height: int, width: int):
  """The central square of a `height` x `width` image: (y, x, side, side)."""
  side = min(height, width)
  return (height - side) // 2, (width - side) // 2, side, side
