"""The input pipeline, without TensorFlow: TFDS datasets read through their
random-access ArrayRecord data sources and loaded by grain.

- Training: grain shuffles each process's shard of the train split (a new
  order every epoch, a function of the seed only; the shards of an epoch are
  disjoint) and batches the record keys; each batch is read at once and its
  images decoded (and augmented on the host, if so) by
  `host_images.ReadBatch`, in worker processes (`data_workers`). Batches of
  uint8 images go to the device, where `sgan_jax.device_augment` augments them
  (`augment_on`). `TrainBatches` keeps the loader's state as of the last batch
  the step took, so a checkpoint holds it and a resume restores it directly
  (no replay of the stream).
- Evaluation: every process reads a whole split in order, centre-cropped.

Which dataset a config names and its preparation: `sgan_jax.dataset_builders`.
"""
import collections
import json
import os
from typing import Dict, Iterator, Optional

from absl import flags
from absl import logging
import grain
import jax
import numpy as np
import tensorflow_datasets as tfds

from sgan_jax import (dataset_builders, datasets, device_augment, errors, host_images, sharding,
                      utils)

_MAX_WORKERS = 16


def fixed_image_shape(builder):
  """The (H, W, C) every image of the dataset has, or None where sizes vary
  (as the features declare it, or as a prepared image folder recorded it)."""
  shape = tuple(builder.info.features["image"].shape)
  if None in shape:
    return datasets.image_folder.stored_image_shape(builder.data_dir)
  return shape


def augments_on_device(config, builder) -> bool:
  """Whether training batches are augmented on the device (`augment_on`):
  'auto' does it on accelerators when the dataset's images have one fixed
  size. Raises ConfigError for 'device' with images of varying sizes."""
  if not config.augment:
    return False
  fixed = fixed_image_shape(builder) is not None
  if config.augment_on == "device" and not fixed:
    raise errors.ConfigError(
        f"augment_on='device' needs images of one fixed size, and dataset "
        f"'{config.dataset}' has images of varying sizes; use "
        f"--config.augment_on=host (or auto)")
  if config.augment_on == "auto":
    return fixed and jax.default_backend() != "cpu"
  return config.augment_on == "device"


def records(config, builder, split: str) -> host_images.Records:
  """The records of `split` (random access), restricted to `class_subset`
  and renumbered in its order."""
  if isinstance(builder, datasets.ImageFolderBuilder):
    # Worker processes rebuild the builder they receive, and this one would
    # scan the folder again: they get a reader of the prepared copy instead.
    builder = tfds.builder_from_directory(builder.data_dir)
  source = builder.as_data_source(split)
  subset = dataset_builders.subset_ids(config, builder)
  if subset is None:
    return host_images.Records(source)
  label_map = np.full(max(subset) + 1, -1, np.int64)
  label_map[list(subset)] = np.arange(len(subset))
  # Labels only: the images stay encoded while the split is scanned.
  raw = builder.as_data_source(split, decoders={"image": tfds.decode.SkipDecoding()})
  chunks = (list(range(i, min(i + 4096, len(raw)))) for i in range(0, len(raw), 4096))
  labels = np.asarray([int(e["label"]) for keys in chunks for e in raw.__getitems__(keys)],
                      np.int64)
  known = labels < len(label_map)
  keep = np.flatnonzero(known & (label_map[np.where(known, labels, 0)] >= 0))
  return host_images.Records(source, keep, label_map)


def worker_count(config) -> int:
  """Loader worker processes per host (`data_workers`; -1: none on a CPU
  backend, whose cores the step uses, else one per core but one, at most 16)."""
  if config.data_workers >= 0:
    return config.data_workers
  if jax.default_backend() == "cpu":
    return 0
  return max(1, min(_MAX_WORKERS, (os.cpu_count() or 2) - 1))


def _grain_ready():
  """grain reads absl flags; outside an absl app (a notebook, a test) they
  are unparsed, and take their defaults."""
  if not flags.FLAGS.is_parsed():
    flags.FLAGS.mark_as_parsed()


def train_batch_keys(config, data: host_images.Records, on_device: bool,
                     shard_index: int, shard_count: int) -> grain.MapDataset:
  """Shard `shard_index` of `shard_count`'s endless stream of training
  batches, random access by position: the shard's records (every
  `shard_count`-th, the remainder dropped, so the shards of an epoch are
  disjoint) shuffled anew every epoch as a function of the seed alone, in
  batches of its share of the global batch, read and prepared by
  `host_images.ReadBatch` (uint8 images with `on_device`, else the
  augmented or centred view in [-1, 1])."""
  if config.global_batch_size % shard_count:
    raise errors.ConfigError(
        f"global_batch_size {config.global_batch_size} is not divisible by "
        f"the {shard_count} processes")
  usable = len(data) // shard_count * shard_count
  keys = grain.MapDataset.range(shard_index, usable, shard_count)
  keys = keys.shuffle(seed=config.seed).repeat()
  view = (host_images.UINT8 if on_device else
          host_images.AUGMENT if config.augment else host_images.CENTER)
  read = host_images.ReadBatch(data, view, config.image_size, config.seed, shard_index)
  return keys.batch(config.global_batch_size // shard_count,
                    drop_remainder=True).map_with_index(read)


def loader(batches: grain.MapDataset, workers: int) -> grain.IterDataset:
  """`batches` as an iterable read ahead by `workers` processes (0: threads
  of this process); its iterators' state is checkpointable."""
  _grain_ready()
  ds = batches.to_iter_dataset(grain.ReadOptions(num_threads=1 if workers else 2,
                                                 prefetch_buffer_size=2))
  if workers:
    ds = ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=workers,
                                                     per_worker_buffer_size=2))
  return ds


def close_loader(iterator) -> None:
  """Stops a loader iterator's threads and worker processes now."""
  close = getattr(iterator, "close", None)
  if close is not None:
    close()


class TrainBatches:
  """Global, device-resident training batches from step `start_step` on,
  `prefetch` batches ahead, and `state`: the loader's state as of the last
  batch handed out (JSON bytes; what a checkpoint of that step keeps).
  Starts where `state` (from a checkpoint) says, without replaying the
  stream."""

  def __init__(self, config, builder, mesh, start_step: int = 0,
               state: Optional[bytes] = None, prefetch: int = 2):
    self._on_device = augments_on_device(config, builder)
    workers = worker_count(config)
    saved = None if state is None else json.loads(state)
    if saved is not None and saved["workers"] != workers:
      # grain's saved state has one entry per worker: keep the run's count.
      logging.info("Resuming the data stream with its %d loader workers "
                   "(data_workers gives %d)", saved["workers"], workers)
      workers = saved["workers"]
    batches = train_batch_keys(config, records(config, builder, config.train_split),
                               self._on_device, jax.process_index(), jax.process_count())
    self._workers, self._iterator = workers, iter(loader(batches, workers))
    if saved is not None:
      self._iterator.set_state(saved["grain"])
    self.state = self._encode()
    self._mesh, self._prefetch, self._step = mesh, prefetch, start_step
    self._queue = collections.deque()
    if self._on_device:
      self._augment = device_augment.jitted(config.seed, config.image_size,
                                            sharding.batch_sharding(mesh))

  def _encode(self) -> bytes:
    return json.dumps({"workers": self._workers,
                       "grain": self._iterator.get_state()}).encode()

  def __iter__(self):
    return self

  def __next__(self) -> Dict[str, jax.Array]:
    while len(self._queue) <= self._prefetch:
      local = next(self._iterator)
      self._queue.append((sharding.to_global(local, self._mesh), self._encode()))
    batch, self.state = self._queue.popleft()
    if self._on_device:
      batch = dict(batch, image=self._augment(batch["image"], self._step))
    self._step += 1
    return batch

  def close(self):
    """Stops the loader's threads and worker processes."""
    self._queue.clear()
    iterator, self._iterator = self._iterator, None
    close_loader(iterator)


class EvalBatches:
  """Un-augmented batches of a whole split, in order: `image` float32 in
  [-1, 1], `label`, `mask` (all True); `len()` is the number of images.

  Every process reads the whole split and feeds its share of each batch
  (`sharding.process_rows`). The last batch may be short: `pad_to_full_batch`
  pads it.
  """

  def __init__(self, config, builder, split: str, batch_size: int):
    self.config, self.batch_size = config, batch_size
    self.data = records(config, builder, split)

  def __len__(self) -> int:
    return len(self.data)

  def __iter__(self) -> Iterator[Dict[str, np.ndarray]]:
    batches = grain.MapDataset.range(len(self.data)).batch(self.batch_size,
                                                           drop_remainder=False)
    batches = batches.map_with_index(
        host_images.ReadBatch(self.data, host_images.CENTER, self.config.image_size))
    iterator = iter(loader(batches, worker_count(self.config)))
    try:
      for batch in iterator:
        yield dict(batch, mask=np.ones(len(batch["label"]), bool))
    finally:   # also when the caller stops early (a stop request)
      close_loader(iterator)


def pad_to_full_batch(batch: Dict[str, np.ndarray], batch_size: int):
  """Pads a short final batch with zero rows (mask False) to the static size,
  so that one compiled function serves every batch."""
  return {k: utils.pad_rows(v, batch_size) for k, v in batch.items()}
