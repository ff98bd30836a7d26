"""The training augmentation, on the device (`sgan_jax.device_augment`) and on
the host (`sgan_jax.host_images`, NumPy), against TensorFlow's ops as the
reference: the same crop box gives the same pixels, and the crop boxes and
flips that each side draws follow the reference distribution (TensorFlow's
sampler at the method's settings, written out here); deterministic, exact on
resume."""
import functools
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats
import tensorflow as tf

from sgan_jax import (config_lib, dataset_builders, device_augment, errors, host_images,
                      image_ops, input_pipeline, sharding)

# float32 sums of <= 12 weighted pixels on the 0-255 scale: measured 5e-5;
# 1e-3 leaves room for another summation order, and is 1/4000 of a grey level.
PIXEL_TOL = 1e-3


def tf_crop_resize(image, box, size):
  """TensorFlow's crop and antialiased bicubic resize of a drawn box."""
  y, x, h, w = box
  crop = tf.slice(image, [y, x, 0], [h, w, image.shape[-1]])
  return np.clip(tf.image.resize(tf.cast(crop, tf.float32), (size, size),
                                 method="bicubic", antialias=True).numpy(), 0, 255)


@pytest.mark.parametrize("shape,size", [((32, 32), 16), ((32, 32), 32),
                                        ((8, 8), 16), ((24, 40), 32)])
def test_same_box_gives_tensorflows_pixels(shape, size):
  rng = np.random.default_rng(0)
  image = rng.integers(0, 256, shape + (3,), dtype=np.uint8)
  h, w = shape
  boxes = [(0, 0, h, w), (1, 2, h - 3, w - 5), (h // 4, 0, h // 2 + 1, w * 3 // 4),
           (0, w // 3, h * 3 // 4, w // 2)]
  for box in boxes:
    want = tf_crop_resize(image, box, size)
    got = np.asarray(device_augment.crop_and_resize(jnp.asarray(image), box, size, False))
    np.testing.assert_allclose(got, want, atol=PIXEL_TOL, rtol=0)
    flipped = np.asarray(device_augment.crop_and_resize(jnp.asarray(image), box, size, True))
    np.testing.assert_allclose(flipped, want[:, ::-1], atol=PIXEL_TOL, rtol=0)
    host = image_ops.crop_and_resize_np(image, box, size, False)
    np.testing.assert_allclose(host, want, atol=PIXEL_TOL, rtol=0)
    host_flipped = image_ops.crop_and_resize_np(image, box, size, True)
    np.testing.assert_allclose(host_flipped, want[:, ::-1], atol=PIXEL_TOL, rtol=0)


def test_host_centre_view_is_tensorflows_centre_crop_and_resize():
  image = np.random.default_rng(2).integers(0, 256, (24, 40, 3), dtype=np.uint8)
  want = tf_crop_resize(image, (0, 8, 24, 24), 16)
  np.testing.assert_allclose(host_images.center_resize(image, 16), want,
                             atol=PIXEL_TOL, rtol=0)
  same = np.random.default_rng(3).integers(0, 256, (16, 16, 3), dtype=np.uint8)
  np.testing.assert_allclose(host_images.center_resize(same, 16),
                             tf_crop_resize(same, (0, 0, 16, 16), 16), atol=PIXEL_TOL, rtol=0)


def test_host_and_device_draw_the_same_box_from_the_same_uniforms():
  u = np.random.default_rng(4).random((500, image_ops.MAX_ATTEMPTS,
                                       image_ops.DRAWS_PER_ATTEMPT), dtype=np.float32)
  for h, w in ((32, 32), (24, 40), (375, 500)):
    host = np.array([image_ops.crop_box(x, h, w) for x in u])
    device = np.asarray(jax.vmap(lambda x: jnp.stack(image_ops.crop_box(x, h, w, xp=jnp)))(u))
    np.testing.assert_array_equal(host, device)


def test_resampling_weights_stay_inside_the_crop():
  for xp in (np, jnp):   # the host's and the device's
    weights = np.asarray(image_ops.resize_weights(32, 16, 5, 20, xp=xp))
    assert np.all(weights[:, :5] == 0) and np.all(weights[:, 25:] == 0)
    np.testing.assert_allclose(weights.sum(1), 1.0, rtol=1e-6)


# The method's random resized crop (docs/method.md §5), as literal values: the
# reference sampler gets these, not the code's constants, so a change of
# either side's settings fails the comparison below.
REFERENCE_AREA, REFERENCE_ASPECT, REFERENCE_ATTEMPTS = (0.5, 1.0), (3 / 4, 4 / 3), 10


@functools.lru_cache(maxsize=None)
def _reference_boxes(n, h, w):
  """n crop boxes from TensorFlow's sampler at the method's settings."""
  out = []
  for i in range(n):
    begin, size, _ = tf.image.stateless_sample_distorted_bounding_box(
        [h, w, 3], tf.zeros([1, 0, 4]), seed=[3, i], area_range=REFERENCE_AREA,
        aspect_ratio_range=REFERENCE_ASPECT, min_object_covered=0.0,
        max_attempts=REFERENCE_ATTEMPTS, use_image_if_no_bounding_boxes=True)
    out.append((int(begin[0]), int(begin[1]), int(size[0]), int(size[1])))
  return np.array(out)


def _ramps(n, h, w):
  """n uint8 images whose value grows left to right: a flip (and only a
  flip) puts the brighter side of any crop on the left."""
  ramp = np.linspace(0, 255, w).astype(np.uint8)
  return np.broadcast_to(ramp[None, :, None], (n, h, w, 3)).copy()


def _flipped(batch):
  """Which rows of a batch of augmented `_ramps` are flipped."""
  batch = np.asarray(batch)
  return batch[:, :, 0].mean(axis=(1, 2)) > batch[:, :, -1].mean(axis=(1, 2))


def test_the_constants_are_the_methods_settings():
  assert image_ops.AREA_RANGE == REFERENCE_AREA
  assert image_ops.ASPECT_RANGE == REFERENCE_ASPECT
  assert image_ops.MAX_ATTEMPTS == REFERENCE_ATTEMPTS


def test_device_crop_boxes_and_flips_follow_the_reference_distribution():
  n, (h, w) = 4000, (32, 32)
  keys = device_augment.row_keys(0, 7, n)
  boxes, flips = jax.jit(jax.vmap(
      lambda k: device_augment.draw_crop_and_flip(k, h, w)))(keys)
  _check_boxes(_reference_boxes(n, h, w), np.stack([np.asarray(b) for b in boxes], 1),
               h, w, n)
  # The batch function flips exactly the rows these draws flip, at rate 1/2.
  batch = device_augment.augment_batch(jnp.asarray(_ramps(n, h, w)), 7, seed=0, size=16)
  flipped = _flipped(batch)
  np.testing.assert_array_equal(flipped, np.asarray(flips))
  assert abs(flipped.mean() - 0.5) < 4 * np.sqrt(0.25 / n)


def test_host_crop_boxes_and_flips_follow_the_reference_distribution(monkeypatch):
  n, (h, w) = 4000, (32, 32)
  real = image_ops.crop_and_resize_np
  drawn = []

  def recording(images, boxes, size, flips):
    drawn.append(np.stack([np.asarray(b) for b in boxes], -1))
    return real(images, boxes, size, flips)
  monkeypatch.setattr(image_ops, "crop_and_resize_np", recording)
  rng = np.random.default_rng(5)
  images = host_images.random_crop_flip(list(_ramps(n, h, w)), 16, rng)
  (boxes,) = drawn
  _check_boxes(_reference_boxes(n, h, w), boxes, h, w, n)
  flipped = _flipped(images)
  assert abs(flipped.mean() - 0.5) < 4 * np.sqrt(0.25 / n)


def _check_boxes(ref, got, h, w, n):
  assert np.all(got[:, 0] + got[:, 2] <= h) and np.all(got[:, 1] + got[:, 3] <= w)
  area = lambda b: b[:, 2] * b[:, 3] / (h * w)
  assert area(got).min() >= REFERENCE_AREA[0] - 1e-9
  # Two-sample Kolmogorov-Smirnov at alpha = 0.001: critical value
  # 1.95 * sqrt(2 / n) = 0.044 for n = 4000 on each side.
  critical = 1.95 * np.sqrt(2 / n)
  for name, a, b in (("area", area(ref), area(got)),
                     ("aspect", ref[:, 3] / ref[:, 2], got[:, 3] / got[:, 2]),
                     ("y", ref[:, 0], got[:, 0]), ("x", ref[:, 1], got[:, 1]),
                     ("height", ref[:, 2], got[:, 2])):
    assert stats.ks_2samp(a, b).statistic < critical, name


def test_batch_is_a_function_of_seed_step_and_row():
  images = jnp.asarray(np.random.default_rng(1).integers(0, 256, (6, 32, 32, 3), np.uint8))
  run = jax.jit(lambda x, s: device_augment.augment_batch(x, s, seed=0, size=16))
  a, b, c = run(images, 5), run(images, 5), run(images, 6)
  assert a.shape == (6, 16, 16, 3) and a.dtype == jnp.float32
  assert -1 <= float(a.min()) and float(a.max()) <= 1
  np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  assert not np.allclose(np.asarray(a), np.asarray(c))
  # Row i's crop does not depend on the other rows.
  np.testing.assert_array_equal(np.asarray(run(images[:3], 5)), np.asarray(a[:3]))


def _fake_builder(shape, data_dir="/nonexistent"):
  """Declares `shape`; a prepared folder (none here) could record one too."""
  image = types.SimpleNamespace(shape=shape)
  return types.SimpleNamespace(info=types.SimpleNamespace(features={"image": image}),
                               data_dir=data_dir)


def test_where_augmentation_runs(tiny_config):
  fixed, varying = _fake_builder((32, 32, 3)), _fake_builder((None, None, 3))
  on = lambda builder, **kw: input_pipeline.augments_on_device(tiny_config(**kw), builder)
  assert on(fixed, augment_on="device") and not on(fixed, augment_on="host")
  assert on(fixed, augment_on="auto") == (jax.default_backend() != "cpu")
  assert not on(varying, augment_on="auto") and not on(fixed, augment=False,
                                                       augment_on="device")
  with pytest.raises(errors.ConfigError, match="augment_on='device' needs images of one"):
    on(varying, augment_on="device")
  with pytest.raises(errors.ConfigError, match="augment_on must be"):
    config_lib.validate(tiny_config(augment_on="gpu"))


@pytest.mark.parametrize("augment_on", ["device", "host"])
def test_augmented_batches_resume_exactly_from_the_loader_state(tiny_digits, augment_on):
  config = tiny_digits(augment_on=augment_on)
  builder, mesh = dataset_builders.get_builder(config), sharding.make_mesh()
  batches = input_pipeline.TrainBatches(config, builder, mesh)
  full, states = [], []
  for _ in range(5):
    full.append(jax.device_get(next(batches)))
    states.append(batches.state)
  batches.close()
  resumed = input_pipeline.TrainBatches(config, builder, mesh, 3, states[2])
  for a in full[3:]:
    b = jax.device_get(next(resumed))
    np.testing.assert_array_equal(a["image"], b["image"])
    np.testing.assert_array_equal(a["label"], b["label"])
  resumed.close()
  assert not np.array_equal(full[0]["image"], full[1]["image"])
  batch = full[0]["image"]
  assert batch.shape == (config.global_batch_size, 16, 16, 3) and batch.dtype == np.float32
  assert -1 <= batch.min() and batch.max() <= 1
  # The digits are grey: every crop keeps R = G = B.
  np.testing.assert_allclose(batch[..., 0], batch[..., 2], atol=1e-6)
