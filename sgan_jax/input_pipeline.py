"""TFDS + tf.data input: real-image augmentation (docs/method.md, section 5) on the
host or handed to the device (`sgan_jax.augment`), per-process slices,
deterministic order under a seed, prefetching onto the devices.
"""
import collections
import os
import socket
from typing import Dict, Iterator

import jax
from jax.experimental import multihost_utils
import ml_collections
import numpy as np
try:
  import tensorflow as tf
except ImportError as e:   # the package does not force a TensorFlow build
  raise ImportError(
      "sgan_jax's input pipeline needs TensorFlow: `pip install "
      "'sgan_jax[tf]'` (tensorflow-cpu), or keep the tensorflow your image "
      "(Colab, TPU VM) already has") from e
import tensorflow_datasets as tfds

from sgan_jax import augment as device_augment
from sgan_jax import config_lib, sharding, storage
from sgan_jax import datasets  # importing it registers the project datasets with TFDS

# TensorFlow only feeds data: it must never take GPU memory from JAX.
tf.config.set_visible_devices([], "GPU")

PROJECT_DATASETS = frozenset([datasets.SklearnDigits.name, datasets.image_folder.NAME])
CLASSES_FILE = "classes.json"   # the run's class names, label order
# Splits up to this size are cached decoded in host memory (CIFAR's train
# split fits).
_CACHE_BYTES = 2 << 30
# A full shuffle of CIFAR; for larger sets, a window of this many images.
_SHUFFLE_BUFFER = 50_000


class DatasetUnavailableError(RuntimeError):
  """The dataset is not prepared in `data_dir` and cannot be downloaded."""


def _can_download() -> bool:
  """A fast offline check: TFDS's own retries take minutes to give up."""
  try:
    socket.getaddrinfo("storage.googleapis.com", 443)
    return True
  except OSError:
    return False


def _builder(config) -> tfds.core.DatasetBuilder:
  if config.dataset == datasets.image_folder.NAME:
    builder = datasets.ImageFolderBuilder(
        config.data_dir, (config.train_split, config.test_split))
    if config_lib.class_subset_ids(config) is None and (
        len(builder.classes) != config.num_classes):
      raise config_lib.ConfigError(
          f"num_classes is {config.num_classes} but image folder "
          f"{config.data_dir} has {len(builder.classes)} classes; pass "
          f"--config.num_classes={len(builder.classes)}")
    return builder
  try:
    return tfds.builder(config.dataset, data_dir=config.data_dir or None)
  except tfds.core.registered.DatasetNotFoundError:
    raise config_lib.ConfigError(
        f"unknown dataset '{config.dataset}': neither a TFDS dataset nor one of "
        f"this project's ({', '.join(sorted(PROJECT_DATASETS))}); "
        f"`tfds.list_builders()` lists TFDS's") from None


def _prepare(builder, config):
  """Builds or downloads the dataset into its data_dir."""
  name = config.dataset.split("/")[0]
  if name not in PROJECT_DATASETS and not _can_download():
    where = config.data_dir or tfds.core.constants.DATA_DIR
    raise DatasetUnavailableError(
        f"dataset '{config.dataset}' is not prepared in data_dir '{where}' and "
        f"cannot be downloaded (no network). Prepare it on a machine with "
        f"internet access (`tfds build {config.dataset} --data_dir=DIR`, or "
        f"for imagenet2012 place the archives in DIR/downloads/manual first), "
        f"copy DIR here and pass --config.data_dir=DIR.")
  try:
    builder.download_and_prepare()
  except config_lib.ConfigError:   # a bad image folder: its own one-line message
    raise
  except Exception as e:  # TFDS raises many types; say which dataset failed.
    raise DatasetUnavailableError(
        f"could not prepare dataset '{config.dataset}' in data_dir "
        f"'{builder.data_dir}': {e}") from e


def get_builder(config: ml_collections.ConfigDict) -> tfds.core.DatasetBuilder:
  """The dataset's TFDS builder, prepared (built or downloaded) if need be.

  In a run of several processes only process 0 prepares the dataset (they
  share the data_dir; concurrent builds would race on TFDS's final rename);
  the others wait for it, and fail with it.
  """
  builder = _builder(config)
  if builder.is_prepared():
    return builder
  if jax.process_count() == 1:
    _prepare(builder, config)
    return builder
  error = None
  if jax.process_index() == 0:
    try:
      _prepare(builder, config)
    except (DatasetUnavailableError, config_lib.ConfigError) as e:
      error = e
  prepared = multihost_utils.broadcast_one_to_all(np.int32(error is None))
  if error is not None:
    raise error
  if not prepared:
    raise DatasetUnavailableError(
        f"process 0 could not prepare dataset '{config.dataset}' (its log says "
        f"why); this process waited for it")
  return _builder(config)   # now sees the prepared files


def class_names(config, builder) -> list:
  """The run's class names in label order (after `class_subset`)."""
  names = builder.info.features["label"].names
  subset = config_lib.class_subset_ids(config)
  if subset is not None:
    if max(subset) >= len(names):
      raise config_lib.ConfigError(
          f"class_subset id {max(subset)} does not exist: dataset "
          f"'{config.dataset}' has {len(names)} classes")
    names = [names[i] for i in subset]
  return list(names)


def check_classes(config, builder, workdir, write: bool) -> None:
  """Compares the dataset's classes with the run's `classes.json` in
  `workdir`, so that labels mean the same in training and every evaluation.
  Writes the file if `write` and it is missing; raises ConfigError (one
  line) if they differ."""
  names = class_names(config, builder)
  path = storage.path(workdir) / CLASSES_FILE
  if not storage.exists(path):
    if write:
      storage.write_json(path, names)
    return
  stored = storage.read_json(path)
  if stored != names:
    changed = [f"{i}: {a!r} -> {b!r}" for i, (a, b) in
               enumerate(zip(stored, names)) if a != b][:3]
    raise config_lib.ConfigError(
        f"dataset '{config.dataset}' ({config.data_dir or 'default data_dir'}) has "
        f"classes that differ from the run's {path} ({len(stored)} there, "
        f"{len(names)} here; {', '.join(changed) or 'extra classes'}); use the "
        f"data the run was trained on")


def _select(ds, config):
  """Keeps image and label; filters and renumbers a class subset."""
  ds = ds.map(lambda ex: (ex["image"], ex["label"]))
  subset = config_lib.class_subset_ids(config)
  if subset is not None:
    table = np.full(max(subset) + 1, -1, np.int64)
    table[list(subset)] = np.arange(len(subset))
    table = tf.constant(table)
    ds = ds.filter(lambda im, lab: lab < len(table))
    ds = ds.map(lambda im, lab: (im, tf.gather(table, lab)))
    ds = ds.filter(lambda im, lab: lab >= 0)
  return ds


def _to_unit_range(image):
  return tf.cast(image, tf.float32) / 127.5 - 1.0


def _resize(image, size):
  image = tf.image.resize(tf.cast(image, tf.float32), (size, size),
                          method="bicubic", antialias=True)
  return tf.clip_by_value(image, 0.0, 255.0)


def augment(image, size: int, seed):
  """Random resized crop (scale 0.5-1, ratio 3/4-4/3, bicubic) and flip."""
  seeds = tf.random.experimental.stateless_split(seed, 2)
  begin, crop, _ = tf.image.stateless_sample_distorted_bounding_box(
      tf.shape(image), tf.zeros([1, 0, 4]), seed=seeds[0],
      area_range=(0.5, 1.0), aspect_ratio_range=(3 / 4, 4 / 3),
      min_object_covered=0.0, max_attempts=10, use_image_if_no_bounding_boxes=True)
  image = tf.slice(image, begin, crop)
  image = _resize(image, size)
  return tf.image.stateless_random_flip_left_right(image, seeds[1])


def center_resize(image, size: int):
  """Test-time view: the central square, resized to `size` (no randomness)."""
  shape = tf.shape(image)
  side = tf.minimum(shape[0], shape[1])
  image = tf.image.crop_to_bounding_box(image, (shape[0] - side) // 2,
                                        (shape[1] - side) // 2, side, side)
  return _resize(image, size)


def _options():
  options = tf.data.Options()
  options.deterministic = True
  # No autotuning thread: destroying an iterator waits for it, and on a busy
  # host (the step using every core) that took 5-40 s, which a stop request
  # (a preemption notice) cannot afford. AUTOTUNE parallelism then uses the
  # host's cores; docs/benchmarks.md has the rates with and without it.
  options.autotune.enabled = False
  options.threading.private_threadpool_size = max(2, os.cpu_count() or 2)
  return options


def _maybe_cache(ds, builder, split):
  info = builder.info.splits[split] if split in builder.info.splits else None
  if info is not None and 0 < info.num_bytes < _CACHE_BYTES:
    ds = ds.cache()
  return ds


def fixed_image_shape(builder):
  """The (H, W, C) every image of the dataset has, or None where sizes vary."""
  shape = tuple(builder.info.features["image"].shape)
  return None if None in shape else shape


def augments_on_device(config, builder) -> bool:
  """Whether training batches are augmented on the device (`augment_on`):
  'auto' does it on accelerators when the dataset's images have one fixed
  size. Raises ConfigError for 'device' with images of varying sizes."""
  if not config.augment:
    return False
  fixed = fixed_image_shape(builder) is not None
  if config.augment_on == "device" and not fixed:
    raise config_lib.ConfigError(
        f"augment_on='device' needs images of one fixed size, and dataset "
        f"'{config.dataset}' has images of varying sizes; use "
        f"--config.augment_on=host (or auto)")
  if config.augment_on == "auto":
    return fixed and jax.default_backend() != "cpu"
  return config.augment_on == "device"


def train_dataset(config, builder, start_step: int = 0,
                  on_device: bool = False) -> tf.data.Dataset:
  """This process's endless stream of augmented training batches; with
  `on_device`, of the un-augmented uint8 images (`sgan_jax.augment`
  augments them on the device).

  The order is a function of (seed, process, step) only, so a run resumed at
  `start_step` sees exactly the batches the uninterrupted run would have.
  """
  split = tfds.split_for_jax_process(config.train_split, drop_remainder=True)
  ds = builder.as_dataset(split=split, shuffle_files=False)
  ds = _maybe_cache(_select(ds, config), builder, config.train_split)
  seed = config.seed * 1_000 + jax.process_index()
  ds = ds.shuffle(_SHUFFLE_BUFFER, seed=seed, reshuffle_each_iteration=True).repeat()
  batch = sharding.local_batch_size(config.global_batch_size)
  ds = ds.enumerate().skip(start_step * batch)
  size = config.image_size

  def prepare(index, image, label):
    label = tf.cast(label, tf.int32)
    if on_device:
      return {"image": tf.cast(image, tf.uint8), "label": label}
    if config.augment:
      image = augment(image, size, tf.stack([tf.cast(seed, tf.int64), index]))
    else:
      image = center_resize(image, size)
    return {"image": _to_unit_range(image), "label": label}
  ds = ds.map(lambda i, ex: prepare(i, *ex), num_parallel_calls=tf.data.AUTOTUNE)
  ds = ds.batch(batch, drop_remainder=True).prefetch(tf.data.AUTOTUNE)
  return ds.with_options(_options())


def eval_dataset(config, builder, split: str, batch_size: int) -> tf.data.Dataset:
  """Un-augmented batches of a whole split, in order.

  Every process reads the whole split and feeds its share of each batch
  (`sharding.process_rows`). The last batch may be short: `pad_to_full_batch`
  pads it.
  """
  ds = _select(builder.as_dataset(split=split, shuffle_files=False), config)
  size = config.image_size
  ds = ds.map(lambda image, label: {
      "image": _to_unit_range(center_resize(image, size)),
      "label": tf.cast(label, tf.int32), "mask": True},
              num_parallel_calls=tf.data.AUTOTUNE)
  ds = ds.batch(batch_size)
  return ds.prefetch(tf.data.AUTOTUNE).with_options(_options())


def pad_to_full_batch(batch: Dict[str, np.ndarray], batch_size: int):
  """Pads a short final batch with zero rows (mask False) to the static size,
  so that one compiled function serves every batch."""
  n = batch["image"].shape[0]
  if n == batch_size:
    return batch
  return {k: np.concatenate([v, np.zeros((batch_size - n,) + v.shape[1:], v.dtype)])
          for k, v in batch.items()}


def prefetch_to_mesh(batches: Iterator, mesh, size: int = 2) -> Iterator:
  """Keeps `size` global batches in flight on the devices (transfers are async)."""
  queue = collections.deque()
  for batch in batches:
    queue.append(sharding.to_global(batch, mesh))
    if len(queue) > size:
      yield queue.popleft()
  while queue:
    yield queue.popleft()


def train_iterator(config, builder, mesh, start_step: int = 0) -> Iterator:
  """Global, device-resident training batches starting at `start_step`."""
  on_device = augments_on_device(config, builder)
  batches = prefetch_to_mesh(train_dataset(config, builder, start_step, on_device)
                             .as_numpy_iterator(), mesh)
  if not on_device:
    return batches
  return _augmented_on_device(batches, config, mesh, start_step)


def _augmented_on_device(batches, config, mesh, start_step):
  fn = device_augment.jitted(config.seed, config.image_size, sharding.batch_sharding(mesh))
  for step, batch in enumerate(batches, start_step):
    yield dict(batch, image=fn(batch["image"], step))
