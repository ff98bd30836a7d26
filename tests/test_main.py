"""End-to-end training: outputs, resume, clear errors (issue 3)."""
import glob
import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from sgan_jax import checkpointing, config_lib, dataset_builders, train
from sgan_jax.state import create_train_state


def read_metrics(workdir, kind="train"):
  """The training lines (with `d/loss`) or the evaluation lines of metrics.jsonl."""
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    lines = [json.loads(line) for line in f]
  return [m for m in lines if ("d/loss" in m) == (kind == "train")]


def check_outputs(workdir, steps, config):
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


def test_tiny_end_to_end_on_mock_cifar(tmp_path, mock_tfds, tiny_config):
  config = tiny_config()
  with mock_tfds():
    state = train.train_and_evaluate(config, str(tmp_path))
  assert int(state.step) == config.num_train_steps
  check_outputs(str(tmp_path), [2, 4], config)


def test_resume_continues_exactly(tmp_path, mock_tfds, tiny_config):
  full, split = str(tmp_path / "full"), str(tmp_path / "split")
  with mock_tfds():
    train.train_and_evaluate(tiny_config(log_every_steps=1), full)
    stopped = jax.device_get(train.train_and_evaluate(
        tiny_config(log_every_steps=1, num_train_steps=2), split))
  # The checkpoint holds exactly the state the run stopped with.
  ckpt = checkpointing.Checkpointer(split, 3)
  fresh = create_train_state(tiny_config(), jax.random.PRNGKey(123))
  restored = jax.device_get(ckpt.restore(fresh))
  ckpt.close()
  for name in ("d_params", "d_opt_state", "d_ema_params", "g_params",
               "g_opt_state", "g_ema_params", "g_state", "queue_emb",
               "queue_keys", "queue_ptr", "rng", "step"):
    jax.tree.map(np.testing.assert_array_equal, getattr(stopped, name),
                 getattr(restored, name))
  with mock_tfds():
    resumed = train.train_and_evaluate(tiny_config(log_every_steps=1), split)
  assert int(resumed.step) == 4
  a, b = read_metrics(full), read_metrics(split)
  assert [m["step"] for m in b] == [1, 2, 3, 4]   # resumed at step 2, no repeats
  for x, y in zip(a, b):
    for key in x:
      if key != "images_per_second":
        assert x[key] == pytest.approx(y[key], rel=1e-6, abs=1e-7), (x["step"], key)


@pytest.mark.slow   # a CLI run with an evaluation: ~100 s on 2 cores
@pytest.mark.extra   # not in .ci/run: see setup.cfg
def test_digits_main_cli_few_steps(tmp_path, root, config_path):
  workdir, data_dir = str(tmp_path / "run"), str(tmp_path / "tfds")
  cmd = [sys.executable, "-m", "sgan_jax.main", f"--config={config_path('digits')}",
         f"--workdir={workdir}", f"--config.data_dir={data_dir}",
         "--config.num_train_steps=3", "--config.log_every_steps=1",
         "--config.checkpoint_every_steps=2", "--config.sample_every_steps=3",
         "--config.eval_every_steps=3"]
  out = subprocess.run(cmd, capture_output=True, text=True, cwd=root, timeout=600)
  assert out.returncode == 0, out.stderr[-3000:]
  assert "step 3/3 (100%)" in out.stderr
  assert os.path.isdir(os.path.join(data_dir, "sklearn_digits"))  # built offline
  config = config_lib.load_config(config_path("digits"))
  config.num_train_steps = 3
  check_outputs(workdir, [2, 3], config)


def test_missing_dataset_fails_at_once_with_instructions(tmp_path, monkeypatch,
                                                        tiny_config):
  monkeypatch.setattr(dataset_builders, "_can_download", lambda: False)
  data_dir = str(tmp_path / "empty")
  config = tiny_config(dataset="cifar100", num_classes=100, data_dir=data_dir)
  with pytest.raises(dataset_builders.DatasetUnavailableError) as err:
    train.train_and_evaluate(config, str(tmp_path / "run"))
  msg = str(err.value)
  assert "'cifar100'" in msg and data_dir in msg and "tfds build cifar100" in msg
  assert not os.path.exists(tmp_path / "run" / "checkpoints")


@pytest.mark.parametrize("overrides,message", [
    (dict(global_batch_size=12), "queue_size 32 must be a positive multiple of global_batch_size 12"),
    (dict(queue_size=36), "queue_size 36 must be a positive multiple of global_batch_size 8"),
])
def test_bad_config_fails_before_compiling(tmp_path, monkeypatch, overrides, message,
                                          tiny_config):
  def no_compile(*args, **kwargs):
    raise AssertionError("compiled before validating")
  monkeypatch.setattr(train, "create_train_state", no_compile)
  monkeypatch.setattr(dataset_builders, "get_builder", no_compile)
  with pytest.raises(config_lib.ConfigError, match=message):
    train.train_and_evaluate(tiny_config(**overrides), str(tmp_path))
  assert not os.listdir(tmp_path)


def test_batch_must_divide_devices(tiny_config):
  with pytest.raises(config_lib.ConfigError,
                     match="global_batch_size 8 must be positive and divisible by "
                           r"the number of processes \(1\) and of devices \(3\)"):
    config_lib.validate(tiny_config(), num_devices=3)


def test_unknown_field_is_rejected(tiny_config):
  config = tiny_config()
  config.unlock()
  config.model.widths = (1, 2)
  with pytest.raises(config_lib.ConfigError, match="unknown config field 'model.widths'"):
    config_lib.validate(config)


def test_cli_reports_config_errors_without_traceback(tmp_path, root, config_path):
  for flag, message in [("--config.foo=1", "error: unknown config field 'foo'"),
                        ("--config.global_batch_size=12",
                         "error: queue_size 32 must be a positive multiple")]:
    out = subprocess.run([sys.executable, "-m", "sgan_jax.main",
                          f"--config={config_path('tiny')}", f"--workdir={tmp_path}", flag],
                         capture_output=True, text=True, cwd=root, timeout=300)
    assert out.returncode == 2
    assert message in out.stderr
    assert "Traceback" not in out.stderr


def test_every_config_in_the_repository_ships(root):
  """(Each one validates: tests/test_config_lib.py.)"""
  shipped = config_lib.packaged_configs()
  in_repo = {os.path.basename(p)[:-3] for p in glob.glob(os.path.join(root, "configs", "*.py"))}
  assert set(shipped) == in_repo - {"__init__"} and "digits" in shipped


def test_a_workdir_that_cannot_be_created_is_a_user_error(tmp_path, root):
  """An I/O error at start-up is the user's to fix: one line naming the path,
  exit 2 (3 is for a run that started and stopped). `--config NAME` with a
  space is read like `--config=NAME`."""
  blocker = tmp_path / "a_file"
  blocker.write_text("")
  out = subprocess.run([sys.executable, "-m", "sgan_jax.main", "--config", "digits",
                        f"--workdir={blocker / 'run'}", "--compilation_cache_dir="],
                       capture_output=True, text=True, cwd=root, timeout=300)
  errors = [l for l in out.stderr.splitlines() if l.startswith("error:")]
  assert out.returncode == 2, out.stderr[-2000:]
  assert len(errors) == 1 and "cannot set up the run" in errors[0], out.stderr[-2000:]
  assert str(blocker) in errors[0]
  assert "Traceback" not in out.stderr
