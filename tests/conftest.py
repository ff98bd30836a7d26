"""Shared fixtures: the tiny config, synthetic batches, mocked TFDS data, an
offline-built digits dataset and a fake gs:// bucket (plain helpers:
helpers.py). Nothing heavy runs at import time.

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

from etils.epath import gpath
import jax
from orbax.checkpoint._src.path import gcs_utils
import pytest
import tensorflow_datasets as tfds
from tensorflow_datasets.testing import mocking as tfds_mocking
from tensorflow_datasets.testing import test_utils as tfds_test_utils

from sgan_jax import dataset_builders, synthetic

import helpers
from helpers import ROOT, load_tiny

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


@pytest.fixture(scope="session")
def root():
  """The repository root (the CLIs run from there)."""
  return ROOT


@pytest.fixture(scope="session")
def config_path():
  """`config_path("digits")` -> the path of configs/digits.py; `"tiny"`, the
  tests' own config, is tests/configs/tiny.py."""
  return lambda name: (helpers.TINY_CONFIG if name == "tiny"
                       else os.path.join(CONFIGS, f"{name}.py"))


@pytest.fixture(scope="session")
def tiny_config():
  """`tiny_config(**overrides)` -> a fresh tiny config (16x16, batch 8)."""
  return load_tiny


@pytest.fixture(scope="session")
def synthetic_batch():
  """`synthetic_batch(config, seed=1)` -> a batch of uniform images in [-1, 1]
  and cyclic labels on the default device (the benchmark's batch,
  `sgan_jax.synthetic`)."""
  return lambda config, seed=1, mesh=None: synthetic.synthetic_batch(config, mesh, seed)


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


@pytest.fixture
def fake_gcs(tmp_path, monkeypatch):
  """gs:// served from `tmp_path/store` for every client the project uses:
  etils.epath (the project's files, Orbax's directories and metadata) and
  TensorStore (Orbax's arrays, through the kvstore spec Orbax builds for
  gs://). The test itself runs in an empty `tmp_path/cwd`."""
  store, cwd = tmp_path / "store", tmp_path / "cwd"
  store.mkdir()
  cwd.mkdir()
  fake = helpers.FakeGcsBackend(str(store))
  monkeypatch.setattr(gpath, "_is_tf_installed", lambda: False)
  monkeypatch.setitem(gpath._PREFIX_TO_BACKEND, "gs", fake)  # pylint: disable=protected-access
  monkeypatch.setattr(gcs_utils, "get_kvstore_for_gcs",
                      lambda p: {"driver": "file", "path": fake.local(p)})
  monkeypatch.setattr(gcs_utils, "rmtree", lambda p, missing_ok=False: fake.rmtree(p))
  # The bucket is flat (no hierarchical namespace): Orbax need not ask GCS.
  monkeypatch.setattr(gcs_utils, "is_hierarchical_namespace_enabled", lambda p: False)
  monkeypatch.chdir(cwd)
  return store, cwd
