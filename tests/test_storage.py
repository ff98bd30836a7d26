"""Where files go (`sgan_jax.storage`): a workdir on cloud storage gets every
artifact and the current directory nothing; small files are written whole."""
import json
import os
import signal

from etils.epath import gpath
import pytest

from sgan_jax import config_lib, evaluation, metric_io, storage, train

from helpers import BUCKET, files_under, with_hook


def test_a_gs_workdir_gets_every_artifact_and_the_cwd_nothing(fake_gcs, tiny_digits,
                                                              monkeypatch, tmp_path):
  store, cwd = fake_gcs
  workdir = f"{BUCKET}/run"
  # Train, stopped by SIGINT after step 3 (a checkpoint of step 3) ...
  def interrupt(step, state, metrics):
    if step == 3:
      os.kill(os.getpid(), signal.SIGINT)
    return state, metrics
  real = train.make_train_step
  with_hook(monkeypatch, interrupt)
  config = tiny_digits(num_train_steps=4, checkpoint_every_steps=4)
  assert int(train.train_and_evaluate(config, workdir).step) == 3
  monkeypatch.setattr(train, "make_train_step", real)
  # ... resumed to the end (evaluation at step 4) ...
  assert int(train.train_and_evaluate(config, workdir).step) == 4
  # ... and evaluated again from the workdir's own config.
  step, results = evaluation.evaluate_checkpoint(config_lib.read_run_config(workdir),
                                                 workdir, output_dir=f"{BUCKET}/eval")
  assert step == 4 and 0 <= results["d_ema/backbone/knn/top1"] <= 1
  assert files_under(cwd) == []   # nothing under the current directory ...
  assert sorted(os.listdir(tmp_path)) == ["cwd", "store"]   # ... nor beside it
  run = files_under(store / "sgan-test-bucket" / "run")
  for expected in ("config.json", "config_resume_3.json", "metrics.jsonl",
                   "eval_4.json", "samples/samples_0000004.png", "classes.json",
                   "learning_curve.png"):
    assert expected in run, (expected, run)
  assert any(f.startswith("checkpoints/3/") for f in run)
  assert any(f.startswith("checkpoints/4/") for f in run)
  assert any(f.startswith("events.out.tfevents.") for f in run)
  assert files_under(store / "sgan-test-bucket" / "eval") == ["eval_4.json",
                                                             "learning_curve.png"]
  rows = metric_io.read_jsonl(f"{workdir}/metrics.jsonl")
  assert [r["step"] for r in rows if "d/loss" in r] == [2, 4]


def test_a_url_taken_for_a_local_path_shows_in_the_cwd_the_gs_test_checks(fake_gcs):
  """What makes the test above a proof. The fake serves gs:// URLs only (its
  `local` refuses anything else); a local path never reaches it, so a file
  that skips the URL (a gs:// string handed to `open` or `os`) lands under
  the current directory, which that test requires to stay empty."""
  store, cwd = fake_gcs
  fake = gpath._PREFIX_TO_BACKEND["gs"]  # pylint: disable=protected-access
  with pytest.raises(AssertionError, match="non-gs:// path"):
    fake.open("/tmp/x", "w")
  storage.write_text(f"{BUCKET}/run/through_the_url.txt", "x")
  assert files_under(store) == ["sgan-test-bucket/run/through_the_url.txt"]
  assert files_under(cwd) == []
  skipped = os.path.join(f"{BUCKET}/run", "skipped_the_url.txt")
  os.makedirs(os.path.dirname(skipped))
  with open(skipped, "w") as f:
    f.write("x")
  assert files_under(cwd) == [os.path.join("gs:", "sgan-test-bucket", "run",
                                           "skipped_the_url.txt")]
  assert files_under(store) == ["sgan-test-bucket/run/through_the_url.txt"]


def test_a_failed_write_leaves_no_temporary_file_and_the_old_file_whole(tmp_path,
                                                                        monkeypatch):
  target = tmp_path / "eval_4.json"
  storage.write_json(target, {"a": 1})

  def full_disk(*args):
    raise OSError(28, "No space left on device")
  monkeypatch.setattr(os, "fsync", full_disk)
  with pytest.raises(OSError, match="No space left"):
    storage.write_json(target, {"a": 2})
  assert sorted(p.name for p in tmp_path.iterdir()) == ["eval_4.json"]
  assert json.loads(target.read_text()) == {"a": 1}
