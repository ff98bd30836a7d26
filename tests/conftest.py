"""Shared fixtures: the tiny config, synthetic batches, mocked TFDS data and an
offline-built digits dataset. Nothing heavy runs at import time.

The session shares one persistent JAX compilation cache (a fresh temporary
directory), in this process and in the command lines the tests start: many
tests compile the same tiny step, and a cache hit replaces a compilation.
"""
import contextlib
import importlib
import importlib.util
import os
import shutil
import tempfile

if importlib.util.find_spec("pytorch_fid"):   # only where the fidcheck extra is
  # torchvision crashes (segfault) when imported after TensorFlow.
  importlib.import_module("torchvision")

import jax
import numpy as np
import pytest
import tensorflow_datasets as tfds
from tensorflow_datasets.testing import mocking as tfds_mocking
from tensorflow_datasets.testing import test_utils as tfds_test_utils

from sgan_jax import benchmark, config_lib, dataset_builders

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = os.path.join(ROOT, "configs")


def pytest_configure(config):
  del config
  cache = tempfile.mkdtemp(prefix="sgan_jax_test_compilation_cache_")
  os.environ["JAX_COMPILATION_CACHE_DIR"] = cache          # subprocesses
  os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0.5"
  jax.config.update("jax_compilation_cache_dir", cache)     # this process
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)


def pytest_unconfigure(config):
  del config
  shutil.rmtree(os.environ.pop("JAX_COMPILATION_CACHE_DIR", ""), ignore_errors=True)


def load_tiny(**overrides):
  """A fresh copy of configs/tiny.py with `overrides` (top-level fields)."""
  config = config_lib.load_config(os.path.join(CONFIGS, "tiny.py"))
  config.update(overrides)
  return config


@pytest.fixture(scope="session")
def root():
  """The repository root (the CLIs run from there)."""
  return ROOT


@pytest.fixture(scope="session")
def config_path():
  """`config_path("tiny")` -> the path of configs/tiny.py."""
  return lambda name: os.path.join(CONFIGS, f"{name}.py")


@pytest.fixture(scope="session")
def tiny_config():
  """`tiny_config(**overrides)` -> a fresh tiny config (16x16, batch 8)."""
  return load_tiny


@pytest.fixture(scope="session")
def synthetic_batch():
  """`synthetic_batch(config, seed=1)` -> a batch of uniform images in [-1, 1]
  and cyclic labels on the default device (the benchmark's batch)."""
  return lambda config, seed=1, mesh=None: benchmark.synthetic_batch(config, mesh, seed)


class _RealDataDir:
  """Replaces TFDS's `MockFs` inside mocked `as_dataset` calls, where it only
  makes `data_dir` appear to exist. `MockFs` patches etils' file system for
  every thread, so an Orbax checkpoint written by a background thread during
  that call went to a temporary folder and failed (a flaky test). This
  creates the folder for real and removes what it created on exit."""

  def __enter__(self):
    self.created = []
    return self

  def add_file(self, path, content=None):
    del content
    top = folder = os.path.dirname(os.fspath(path))
    while not os.path.exists(os.path.dirname(top)):
      top = os.path.dirname(top)
    if not os.path.exists(folder):
      os.makedirs(folder)
      self.created.append(top)

  def __exit__(self, *exc):
    for top in self.created:
      shutil.rmtree(top, ignore_errors=True)


def _mock_getitems(*args, generator, serialized=False):
  """TFDS's mock data source sets `__getitems__` on a Mock as a plain
  attribute (a partial of `mocking._getitems(self, record_keys, ...)`), so
  the batch read that the loader makes arrives without `self` and fails;
  this stands in for it: the records (examples) at the keys, last argument."""
  assert not serialized, "the loader reads deserialized examples"
  return [generator[key] for key in args[-1]]


@pytest.fixture
def mock_tfds(monkeypatch):
  """`with mock_tfds(num_examples=N):` TFDS serves N random examples per
  split of any dataset; its (mocked) download needs no network."""
  monkeypatch.setattr(dataset_builders, "_can_download", lambda: True)
  monkeypatch.setattr(tfds_test_utils, "MockFs", _RealDataDir)
  monkeypatch.setattr(tfds_mocking, "_getitems", _mock_getitems)

  @contextlib.contextmanager
  def mocked(num_examples=40):
    with tfds.testing.mock_data(num_examples=num_examples):
      yield
  return mocked


@pytest.fixture
def tfds_dir(tmp_path, monkeypatch):
  """A fresh TFDS data dir (`$TFDS_DATA_DIR`), where image folders are prepared."""
  path = str(tmp_path / "tfds")
  monkeypatch.setenv("TFDS_DATA_DIR", path)
  return path


@pytest.fixture(scope="session")
def digits_dir(tmp_path_factory):
  """A TFDS data_dir shared by the session, where sklearn_digits (built
  offline on first use) lives."""
  return str(tmp_path_factory.mktemp("tfds"))


@pytest.fixture
def tiny_digits(digits_dir):
  """`tiny_digits(**overrides)` -> the tiny config on the embedded digits,
  evaluating only at the end."""
  def make(**overrides):
    config = load_tiny(dataset="sklearn_digits", data_dir=digits_dir,
                       eval_every_steps=1000)
    config.update(overrides)
    return config
  return make


def digits_as_images(pixels):
  """scikit-learn digits rows ([N, 64], values 0-16) as [N, 16, 16, 3]
  float32 images in [-1, 1] (each pixel repeated 2x2, grey as RGB)."""
  images = np.asarray(pixels, np.float32).reshape(-1, 8, 8, 1) / 8.0 - 1.0
  return np.repeat(np.repeat(np.repeat(images, 2, 1), 2, 2), 3, -1)
