"""Which dataset a config names, and getting it ready to read: the TFDS
builder of a catalog dataset, of this project's datasets (the embedded
digits, an image folder) or of a prepared folder; preparing it once (process
0 only in a run of several processes); the run's class names.

Preparing a TFDS catalog dataset whose images come as arrays (e.g. cifar10)
needs TensorFlow once (`pip install 'sgan_jax[tf]'`); reading a prepared one,
and this project's own datasets, never do.
"""
import importlib.util
import os
import socket

import jax
from jax.experimental import multihost_utils
import ml_collections
import numpy as np
import tensorflow_datasets as tfds

from sgan_jax import class_subsets, errors, processes, storage
from sgan_jax import datasets  # importing it registers the project datasets with TFDS

# A prepared TFDS dataset read from its folder (copied from another machine):
# no builder code, source files or download needed.
PREPARED = "prepared"
PROJECT_DATASETS = frozenset([datasets.SklearnDigits.name, datasets.image_folder.NAME,
                              PREPARED])
CLASSES_FILE = "classes.json"   # the run's class names, label order
FILE_FORMAT = "array_record"    # what grain reads (random access)


class DatasetUnavailableError(errors.UserError, RuntimeError):
  """The dataset is not prepared in `data_dir` and cannot be downloaded."""


def _can_download() -> bool:
  """A fast offline check: TFDS's own retries take minutes to give up."""
  try:
    socket.getaddrinfo("storage.googleapis.com", 443)
    return True
  except OSError:
    return False


def _builder(config) -> tfds.core.DatasetBuilder:
  if config.dataset == PREPARED:
    if not storage.exists(storage.path(config.data_dir) / "dataset_info.json"):
      raise errors.ConfigError(
          f"dataset '{PREPARED}' reads a prepared TFDS dataset from its folder, "
          f"and {config.data_dir} has no dataset_info.json; pass the folder "
          f"that holds it (e.g. DATA_DIR/cifar10/3.0.2) as --config.data_dir")
    return _with_num_classes(tfds.builder_from_directory(config.data_dir), config)
  if config.dataset == datasets.image_folder.NAME:
    return _with_num_classes(datasets.ImageFolderBuilder(
        config.data_dir, (config.train_split, config.test_split),
        max_pixels=config.max_image_pixels, classes=_folder_subset(config),
        short_side=prepare_short_side(config)), config)
  try:
    return tfds.builder(config.dataset, data_dir=config.data_dir or None,
                        file_format=FILE_FORMAT)
  except tfds.core.registered.DatasetNotFoundError:
    raise errors.ConfigError(
        f"unknown dataset '{config.dataset}': neither a TFDS dataset nor one of "
        f"this project's ({', '.join(sorted(PROJECT_DATASETS))}); "
        f"`tfds.list_builders()` lists TFDS's") from None


def prepare_short_side(config) -> int:
  """The short side of an image folder's prepared images (`prepare_size`;
  0 keeps them at their size)."""
  return 2 * config.image_size if config.prepare_size == -1 else config.prepare_size


def _folder_subset(config):
  """The class folders an image folder's `class_subset` keeps, in its order
  (None: all). The folder applies the subset when it is prepared: only these
  classes are listed and copied, labelled in this order."""
  if not config.class_subset:
    return None
  names = datasets.folder_listing.class_folders(config.data_dir, config.train_split)
  ids = class_subsets.resolve(config.class_subset, names,
                              f"image folder {config.data_dir}/{config.train_split}")
  return [names[i] for i in ids]


def subset_ids(config, builder):
  """The label ids (of `builder`'s labels) that `class_subset` keeps, in its
  order; None where every class is kept, or where the dataset applied the
  subset itself (an image folder, when it was prepared)."""
  if config.dataset == datasets.image_folder.NAME:
    return None
  return class_subsets.resolve(config.class_subset, builder.info.features["label"].names,
                               f"dataset '{config.dataset}'")


def _with_num_classes(builder, config):
  """`builder` if its class count is `num_classes` (or a subset is chosen)."""
  found = builder.info.features["label"].num_classes
  if subset_ids(config, builder) is None and found != config.num_classes:
    what = (f"image folder {config.data_dir}" if config.dataset == datasets.image_folder.NAME
            else f"dataset '{config.dataset}' ({config.data_dir})")
    raise errors.ConfigError(
        f"num_classes is {config.num_classes} but {what} has {found} classes; "
        f"pass --config.num_classes={found}")
  return builder


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
  if name not in PROJECT_DATASETS and importlib.util.find_spec("tensorflow") is None:
    raise DatasetUnavailableError(
        f"preparing dataset '{config.dataset}' needs TensorFlow once (TFDS "
        f"encodes its images with it): `pip install 'sgan_jax[tf]'` and run "
        f"again, or prepare it elsewhere (`tfds build {config.dataset} "
        f"--file_format={FILE_FORMAT} --data_dir=DIR`) and pass "
        f"--config.data_dir=DIR; reading a prepared dataset needs no TensorFlow")
  try:
    builder.download_and_prepare()
  except errors.ConfigError:   # a bad image folder: its own one-line message
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
  if config.dataset == datasets.image_folder.NAME and jax.process_count() > 1:
    return _image_folder_of_process_0(config)
  builder = _builder(config)
  if builder.is_prepared():
    return _readable(builder, config)
  if jax.process_count() == 1:
    _prepare(builder, config)
    return _readable(builder, config)
  error = None
  if jax.process_index() == 0:
    try:
      _prepare(builder, config)
    except errors.UserError as e:
      error = e
  prepared = multihost_utils.broadcast_one_to_all(np.int32(error is None))
  if error is not None:
    raise error
  if not prepared:
    raise DatasetUnavailableError(
        f"process 0 could not prepare dataset '{config.dataset}' (its log says "
        f"why); this process waited for it")
  return _readable(_builder(config), config)   # now sees the prepared files


def _image_folder_of_process_0(config) -> tfds.core.DatasetBuilder:
  """Several processes, an image folder: process 0 lists the folder (and
  prepares it if need be); the others open the prepared copy it names, so
  that the folder is listed once per start rather than once per process."""
  builder, error = None, None
  if jax.process_index() == 0:
    try:
      builder = _builder(config)
      if not builder.is_prepared():
        _prepare(builder, config)
    except errors.UserError as e:
      error = e
  prepared = processes.broadcast_text(
      "" if builder is None or error else os.fspath(builder.data_dir))
  if error is None and builder is None:
    try:
      if not prepared:
        raise DatasetUnavailableError(
            f"process 0 could not prepare image folder {config.data_dir} (its log "
            f"says why); this process waited for it")
      if not storage.exists(storage.path(prepared) / "dataset_info.json"):
        raise DatasetUnavailableError(
            f"process {jax.process_index()} does not see the prepared copy of "
            f"{config.data_dir} that process 0 wrote ({prepared}): every process "
            f"needs the same TFDS data dir, on storage all hosts share")
      builder = _with_num_classes(tfds.builder_from_directory(prepared), config)
    except errors.UserError as e:
      error = e
  processes.raise_unless_all_ok(error, f"to open image folder {config.data_dir}")
  return builder


def dataset_identity(builder) -> str:
  """What names the prepared data: name, version (for an image folder, its
  fingerprint), folder and split sizes; equal on every process of a run."""
  splits = ", ".join(f"{name} {split.num_examples}"
                     for name, split in sorted(builder.info.splits.items()))
  return f"{builder.info.full_name} in {builder.data_dir} ({splits})"


def _readable(builder, config):
  """`builder` if its prepared files are ArrayRecord and it has the classes
  `class_subset` names; else a one-line error saying what to change."""
  subset_ids(config, builder)
  fmt = builder.info.file_format
  fmt = getattr(fmt, "value", fmt)
  if fmt not in (None, FILE_FORMAT):
    raise DatasetUnavailableError(
        f"dataset '{config.dataset}' in {builder.data_dir} is prepared as "
        f"{fmt}, and this project reads {FILE_FORMAT} (random access): prepare "
        f"it again with `tfds build {config.dataset} --file_format={FILE_FORMAT} "
        f"--data_dir=DIR` (TensorFlow needed for that step only) and pass "
        f"--config.data_dir=DIR")
  return builder


def class_names(config, builder) -> list:
  """The run's class names in label order (after `class_subset`)."""
  names = builder.info.features["label"].names
  subset = subset_ids(config, builder)
  return list(names) if subset is None else [names[i] for i in subset]


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
    raise errors.ConfigError(
        f"dataset '{config.dataset}' ({config.data_dir or 'default data_dir'}) has "
        f"classes that differ from the run's {path} ({len(stored)} there, "
        f"{len(names)} here; {', '.join(changed) or 'extra classes'}); use the "
        f"data the run was trained on")
