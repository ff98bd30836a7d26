"""Plain helpers shared by several test files (the fixtures are in
conftest.py): the tiny config, a hook into the training loop's step,
checkpoint reading, a run's outputs, digits as images, and a gs:// bucket
served from a local folder."""
import glob
import json
import os

from etils.epath import backend as epath_backend
import jax
import numpy as np
from PIL import Image

from sgan_jax import checkpointing, config_lib, sharding, train
from sgan_jax.state import abstract_train_state

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The tests' config: 16x16 inputs, tiny networks. It lives here, not in the
# shipped configs/, and is passed by path.
TINY_CONFIG = os.path.join(ROOT, "tests", "configs", "tiny.py")
BUCKET = "gs://sgan-test-bucket"


def load_tiny(**overrides):
  """A fresh copy of tests/configs/tiny.py with `overrides` (top-level fields)."""
  config = config_lib.load_config(TINY_CONFIG)
  config.update(overrides)
  return config


def digits_as_images(pixels):
  """scikit-learn digits rows ([N, 64], values 0-16) as [N, 16, 16, 3]
  float32 images in [-1, 1] (each pixel repeated 2x2, grey as RGB)."""
  images = np.asarray(pixels, np.float32).reshape(-1, 8, 8, 1) / 8.0 - 1.0
  return np.repeat(np.repeat(np.repeat(images, 2, 1), 2, 2), 3, -1)


def with_hook(monkeypatch, hook):
  """Runs `hook(step, state, metrics) -> (state, metrics)` after each step of
  the training loop. The loop calls its step under
  `jax.transfer_guard("disallow")`; the step still does, and the hook (host
  code of the test's own) runs with transfers allowed."""
  real = train.make_train_step

  def patched(mesh):
    train_step = real(mesh)

    def wrapped(state, batch):
      state, metrics = train_step(state, batch)
      with jax.transfer_guard("allow"):
        return hook(int(state.step), state, metrics)
    return wrapped
  monkeypatch.setattr(train, "make_train_step", patched)


def restore_latest(config, workdir):
  """The newest checkpoint of `workdir`, on the host."""
  ckpt = checkpointing.Checkpointer(workdir, 3)
  try:
    mesh = sharding.make_mesh()
    return jax.device_get(ckpt.restore(abstract_train_state(config, mesh)))
  finally:
    ckpt.close()


def all_finite(state):
  """Whether every floating-point leaf of `state` is finite."""
  return all(np.all(np.isfinite(x)) for x in jax.tree.leaves(state)
             if np.issubdtype(np.asarray(x).dtype, np.floating))


def read_metrics(workdir, kind="train"):
  """The training lines (with `d/loss`) or the evaluation lines of metrics.jsonl."""
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    lines = [json.loads(line) for line in f]
  return [m for m in lines if ("d/loss" in m) == (kind == "train")]


def check_outputs(workdir, steps, config):
  """The outputs of a finished run of `config` that saved checkpoints at
  `steps` and evaluated at the last."""
  assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == [str(s) for s in steps]
  assert glob.glob(os.path.join(workdir, "events.out.tfevents.*"))
  grids = sorted(glob.glob(os.path.join(workdir, "samples", "samples_*.png")))
  assert grids and grids[-1].endswith(f"samples_{steps[-1]:07d}.png")
  from PIL import Image
  with Image.open(grids[-1]) as im:
    assert im.mode == "RGB" and min(im.size) > 8 * config.image_size
  with open(os.path.join(workdir, "config.json")) as f:
    saved = json.load(f)
  assert saved["num_train_steps"] == config.num_train_steps
  assert saved["model"]["d_widths"] == list(config.model.d_widths)
  logged = read_metrics(workdir)
  assert [m["step"] for m in logged][-1] == steps[-1]
  assert all(np.isfinite(m["d/loss"]) and m["images_per_second"] > 0 for m in logged)
  evals = read_metrics(workdir, "eval")
  assert evals[-1]["step"] == steps[-1]
  assert 0 <= evals[-1]["eval/d_ema/backbone/knn/top1"] <= 1
  assert os.path.exists(os.path.join(workdir, f"eval_{steps[-1]}.json"))


def files_under(folder):
  """Every file below `folder`, as sorted relative paths."""
  return sorted(os.path.relpath(os.path.join(d, f), folder)
                for d, _, fs in os.walk(folder) for f in fs)


class FakeGcsBackend(epath_backend._OsPathBackend):  # pylint: disable=protected-access
  """epath's backend for gs:// URLs, serving them from a local folder (the
  'bucket store'). It serves gs:// URLs only: `local` refuses any other path,
  so a client that handed it a local path would fail. A local path never
  reaches it, though (epath sends those to the OS): a file that skips the
  URL is caught by the tests themselves, which run in an empty current
  directory and check that it stays empty (a gs:// URL taken for a local
  path lands there, under `gs:/`)."""

  def __init__(self, root):
    self.root = root

  def local(self, p) -> str:
    p = os.fspath(p)
    assert p.startswith("gs://"), f"a non-gs:// path reached the fake GCS: {p}"
    return os.path.join(self.root, p[len("gs://"):])

  def remote(self, p: str) -> str:
    return "gs://" + os.path.relpath(p, self.root)

  def open(self, path, mode, **kwargs):
    if "w" in mode or "a" in mode:
      os.makedirs(os.path.dirname(self.local(path)), exist_ok=True)
    return super().open(self.local(path), mode, **kwargs)

  def exists(self, path):
    return super().exists(self.local(path))

  def isdir(self, path):
    return super().isdir(self.local(path))

  def listdir(self, path):
    return super().listdir(self.local(path))

  def glob(self, path):
    return [self.remote(p) for p in super().glob(self.local(path))]

  def walk(self, top, *, top_down=True, on_error=None):
    for folder, dirs, files in super().walk(self.local(top), top_down=top_down,
                                            on_error=on_error):
      yield self.remote(folder), dirs, files

  def makedirs(self, path, *, exist_ok=False, mode=0o777):
    return super().makedirs(self.local(path), exist_ok=exist_ok, mode=mode)

  def mkdir(self, path, *, exist_ok=False, mode=0o777):
    return super().mkdir(self.local(path), exist_ok=exist_ok, mode=mode)

  def rmtree(self, path):
    return super().rmtree(self.local(path))

  def remove(self, path):
    return super().remove(self.local(path))

  def rename(self, path, dst):
    return super().rename(self.local(path), self.local(dst))

  def replace(self, path, dst):
    return super().replace(self.local(path), self.local(dst))

  def copy(self, path, dst, overwrite):
    return super().copy(self.local(path), self.local(dst), overwrite=overwrite)

  def stat(self, path):
    return super().stat(self.local(path))


def panels_in_png(path):
  """The number of panels drawn in a PNG, counted from the image alone: each
  panel's frame has two vertical edges, dark columns over most of the
  panel's height."""
  with Image.open(path) as im:
    dark = np.asarray(im.convert("L")) < 80
  height = dark.shape[0]
  # The longest run of dark pixels in each column.
  longest = np.zeros(dark.shape[1], int)
  run = np.zeros(dark.shape[1], int)
  for row in dark:
    run = np.where(row, run + 1, 0)
    longest = np.maximum(longest, run)
  edges = longest > height // 2
  starts = np.flatnonzero(edges & ~np.concatenate([[False], edges[:-1]]))
  assert len(starts) % 2 == 0, starts
  return len(starts) // 2
