"""The training augmentation, on the device (`sgan_jax.augment`) and on the
host (`sgan_jax.host_images`, NumPy), against TensorFlow's ops as the
reference: the same crop box gives the same pixels, and the crop boxes and
flips follow the same distribution; deterministic, exact on resume."""
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats
import tensorflow as tf

from sgan_jax import (augment, config_lib, dataset_builders, host_images, image_ops,
                      input_pipeline, sharding)

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
    got = np.asarray(augment.crop_and_resize(jnp.asarray(image), box, size, False))
    np.testing.assert_allclose(got, want, atol=PIXEL_TOL, rtol=0)
    flipped = np.asarray(augment.crop_and_resize(jnp.asarray(image), box, size, True))
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
  weights = np.asarray(augment.resize_weights(32, 16, 5, 20))
  assert np.all(weights[:, :5] == 0) and np.all(weights[:, 25:] == 0)
  np.testing.assert_allclose(weights.sum(1), 1.0, rtol=1e-6)


def test_crop_boxes_and_flips_follow_tensorflows_distribution():
  n, (h, w) = 4000, (32, 32)
  ref = []
  for i in range(n):
    begin, size, _ = tf.image.stateless_sample_distorted_bounding_box(
        [h, w, 3], tf.zeros([1, 0, 4]), seed=[3, i], area_range=augment.AREA_RANGE,
        aspect_ratio_range=augment.RATIO_RANGE, min_object_covered=0.0,
        max_attempts=augment.MAX_ATTEMPTS, use_image_if_no_bounding_boxes=True)
    ref.append((int(begin[0]), int(begin[1]), int(size[0]), int(size[1])))
  ref = np.array(ref)
  keys = augment.row_keys(0, 7, n)
  device = np.asarray(jax.jit(jax.vmap(
      lambda k: jnp.stack(augment.sample_crop(jax.random.split(k)[0], h, w))))(keys))
  rng = np.random.default_rng(5)
  host = np.array([image_ops.crop_box(rng.random((image_ops.MAX_ATTEMPTS, 4), np.float32), h, w)
                   for _ in range(n)])
  for got in (device, host):
    _check_boxes(ref, got, h, w, n)
  flips = np.asarray(jax.vmap(lambda k: jax.random.bernoulli(jax.random.split(k)[1]))(keys))
  assert abs(flips.mean() - 0.5) < 4 * np.sqrt(0.25 / n)


def _check_boxes(ref, got, h, w, n):
  assert np.all(got[:, 0] + got[:, 2] <= h) and np.all(got[:, 1] + got[:, 3] <= w)
  area = lambda b: b[:, 2] * b[:, 3] / (h * w)
  assert area(got).min() >= 0.5 - 1e-9
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
  run = jax.jit(lambda x, s: augment.augment_batch(x, s, seed=0, size=16))
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
  with pytest.raises(config_lib.ConfigError, match="augment_on='device' needs images of one"):
    on(varying, augment_on="device")
  with pytest.raises(config_lib.ConfigError, match="augment_on must be"):
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
