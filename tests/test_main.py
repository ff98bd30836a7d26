"""The training command line (`python -m sgan_jax.main`): a run end to end,
errors in one line without a traceback, the configs it can name (the loop
itself: test_train.py)."""
import glob
import os
import subprocess
import sys

import pytest

from sgan_jax import config_lib

from helpers import check_outputs


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
