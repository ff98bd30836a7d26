"""Faults never lose or corrupt a good checkpoint (issue 6; README "Guarantees")."""
import json
import logging
import os
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from sgan_jax import checkpointing, config_lib, evaluation, guards, sharding, train
from sgan_jax.state import abstract_train_state


def restore_latest(config, workdir):
  ckpt = checkpointing.Checkpointer(workdir, 3)
  try:
    mesh = sharding.make_mesh()
    return jax.device_get(ckpt.restore(abstract_train_state(config, mesh)))
  finally:
    ckpt.close()


def all_finite(state):
  return all(np.all(np.isfinite(x)) for x in jax.tree.leaves(state)
             if np.issubdtype(np.asarray(x).dtype, np.floating))


def with_hook(monkeypatch, hook):
  """Runs `hook(step, state, metrics) -> (state, metrics)` after each step."""
  real = train.make_train_step

  def patched(mesh):
    train_step = real(mesh)

    def wrapped(state, batch):
      state, metrics = train_step(state, batch)
      return hook(int(state.step), state, metrics)
    return wrapped
  monkeypatch.setattr(train, "make_train_step", patched)


# ----------------------------------------------------------------- signals

def test_sigint_finishes_the_step_checkpoints_and_resumes(tmp_path, tiny_digits,
                                                          monkeypatch, caplog):
  def interrupt(step, state, metrics):
    if step == 3:
      os.kill(os.getpid(), signal.SIGINT)
    return state, metrics
  caplog.set_level(logging.INFO)
  with_hook(monkeypatch, interrupt)
  handler_before = signal.getsignal(signal.SIGINT)
  config = tiny_digits(num_train_steps=50, checkpoint_every_steps=40)
  state = train.train_and_evaluate(config, str(tmp_path))
  assert int(state.step) == 3
  assert "SIGINT received: saved checkpoint 3" in caplog.text
  assert restore_latest(config, str(tmp_path)).step == 3
  # The handler is gone after the run: the previous one is back.
  assert signal.getsignal(signal.SIGINT) is handler_before
  monkeypatch.undo()
  resumed = train.train_and_evaluate(tiny_digits(num_train_steps=5), str(tmp_path))
  assert int(resumed.step) == 5
  assert "Resumed from" in caplog.text and "at step 3" in caplog.text


def test_sigterm_during_evaluation_stops_within_seconds_and_a_rerun_evaluates(
    tmp_path, tiny_digits, monkeypatch, caplog):
  """The final evaluation is abandoned at its next check point (the
  checkpoint of the step is kept); a re-run runs the missing evaluation."""
  caplog.set_level(logging.INFO)
  real = evaluation.extract_features
  sent = []

  def extract_then_signal(*args, **kwargs):
    if not sent:   # the first extraction of the evaluation: a signal arrives
      sent.append(time.time())
      os.kill(os.getpid(), signal.SIGTERM)
    return real(*args, **kwargs)
  monkeypatch.setattr(evaluation, "extract_features", extract_then_signal)
  config = tiny_digits(num_train_steps=2)
  state = train.train_and_evaluate(config, str(tmp_path))
  stopped_after = time.time() - sent[0]
  assert int(state.step) == 2 and stopped_after < 5, stopped_after
  assert "SIGTERM received: saved checkpoint 2" in caplog.text
  assert not os.path.exists(tmp_path / "eval_2.json")
  assert int(restore_latest(config, str(tmp_path)).step) == 2
  monkeypatch.undo()
  train.train_and_evaluate(config, str(tmp_path))   # the re-run: nothing to train
  assert "Evaluating the restored step 2" in caplog.text
  assert os.path.exists(tmp_path / "eval_2.json")


def test_a_stop_during_start_up_exits_before_training(tmp_path, tiny_digits, monkeypatch):
  real = train.create_train_state

  def create_then_signal(*args, **kwargs):
    os.kill(os.getpid(), signal.SIGTERM)
    return real(*args, **kwargs)
  monkeypatch.setattr(train, "create_train_state", create_then_signal)
  with pytest.raises(guards.StopRequested, match="SIGTERM received while starting"):
    train.train_and_evaluate(tiny_digits(num_train_steps=2), str(tmp_path))
  assert not os.listdir(tmp_path / "checkpoints")


def _main(root, workdir, digits_dir, *flags):
  return [sys.executable, "-m", "sgan_jax.main", f"--config={root}/configs/tiny.py",
          f"--workdir={workdir}", "--config.dataset=sklearn_digits",
          f"--config.data_dir={digits_dir}", "--config.log_every_steps=1",
          "--config.eval_every_steps=1000", *flags]


def _wait_for_step(proc, step, timeout=300):
  deadline = time.time() + timeout
  lines = []
  for line in proc.stderr:
    lines.append(line)
    if f"step {step}/" in line:
      return lines
    assert time.time() < deadline, "".join(lines[-20:])
  raise AssertionError("".join(lines[-30:]))


@pytest.mark.slow
def test_sigterm_in_the_cli_exits_zero_with_a_checkpoint(tmp_path, root, digits_dir,
                                                         tiny_digits):
  workdir = str(tmp_path)
  proc = subprocess.Popen(_main(root, workdir, digits_dir, "--config.num_train_steps=1000",
                                "--config.checkpoint_every_steps=500"),
                          stderr=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=root)
  _wait_for_step(proc, 2)
  proc.send_signal(signal.SIGTERM)
  out, err = proc.communicate(timeout=300)
  assert proc.returncode == 0, err[-3000:]
  stop_lines = [l for l in err.splitlines() if "SIGTERM received: saved checkpoint" in l]
  assert len(stop_lines) == 1
  saved = int(stop_lines[0].split("saved checkpoint ")[1].split()[0])
  assert saved >= 2
  assert restore_latest(tiny_digits(), workdir).step == saved


@pytest.mark.slow
def test_kill_9_resumes_from_the_newest_complete_checkpoint_bit_identically(
    tmp_path, root, digits_dir, tiny_digits):
  steps = 8
  reference = jax.device_get(train.train_and_evaluate(
      tiny_digits(num_train_steps=steps, checkpoint_every_steps=1,
           sample_every_steps=1000), str(tmp_path / "reference")))
  workdir = str(tmp_path / "killed")
  flags = [f"--config.num_train_steps={steps}", "--config.checkpoint_every_steps=1",
           "--config.sample_every_steps=1000"]
  proc = subprocess.Popen(_main(root, workdir, digits_dir, *flags), stderr=subprocess.PIPE,
                          stdout=subprocess.PIPE, text=True, cwd=root)
  _wait_for_step(proc, 3)
  time.sleep(np.random.default_rng().uniform(0, 0.5))   # anywhere, saves included
  proc.kill()
  proc.wait()
  assert proc.returncode == -signal.SIGKILL
  survivors = checkpointing.Checkpointer(workdir, 3)
  resumed_from = survivors.latest_step()
  survivors.close()
  assert resumed_from is not None and resumed_from >= 1
  out = subprocess.run(_main(root, workdir, digits_dir, *flags), capture_output=True,
                       text=True, cwd=root, timeout=600)
  assert out.returncode == 0, out.stderr[-3000:]
  assert f"at step {resumed_from}" in out.stderr
  final = restore_latest(tiny_digits(), workdir)
  assert int(final.step) == steps
  jax.tree.map(np.testing.assert_array_equal, final, reference)
  # The log survived the kill: whole lines, every step once, in order.
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    train_steps = [json.loads(line)["step"] for line in f if '"d/loss"' in line]
  assert train_steps == list(range(1, steps + 1)), train_steps


# ------------------------------------------------------------- non-finite

def _poison_at(step_to_poison, times=1):
  hits = []

  def hook(step, state, metrics):
    if step == step_to_poison and len(hits) < times:
      hits.append(step)
      metrics = {**metrics, "g/grad_norm": metrics["g/grad_norm"] * np.nan}
      state = state.replace(g_params=jax.tree.map(lambda x: x * np.nan, state.g_params))
    return state, metrics
  return hook, hits


def test_nonfinite_stops_naming_step_and_term_and_saves_nothing_bad(
    tmp_path, tiny_digits, monkeypatch):
  hook, _ = _poison_at(3)
  with_hook(monkeypatch, hook)
  config = tiny_digits(num_train_steps=6)
  with pytest.raises(guards.NonFiniteError,
                     match=r"non-finite g/grad_norm = nan at step 3"):
    train.train_and_evaluate(config, str(tmp_path))
  ckpt = checkpointing.Checkpointer(str(tmp_path), 3)
  assert ckpt.latest_step() == 2
  ckpt.close()
  assert all_finite(restore_latest(config, str(tmp_path)))


def test_nonfinite_rollback_skips_the_batch_a_bounded_number_of_times(
    tmp_path, tiny_digits, monkeypatch, caplog):
  hook, hits = _poison_at(3)
  with_hook(monkeypatch, hook)
  state = train.train_and_evaluate(
      tiny_digits(num_train_steps=6, nonfinite_rollbacks=1), str(tmp_path / "a"))
  assert hits == [3] and int(state.step) == 6 and all_finite(jax.device_get(state))
  assert "skipping the batch of step 3 (0 rollbacks left)" in caplog.text
  # Failing again after the allowed rollbacks stops the run.
  hook, hits = _poison_at(3, times=5)
  with_hook(monkeypatch, hook)
  with pytest.raises(guards.NonFiniteError, match="at step 3"):
    train.train_and_evaluate(tiny_digits(num_train_steps=6, nonfinite_rollbacks=2),
                             str(tmp_path / "b"))
  assert hits == [3, 3, 3]


# ------------------------------------------------------------- disk full

@pytest.fixture
def small_fs(tmp_path):
  mount = tmp_path / "fs"
  mount.mkdir()
  result = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(mount)],
                          capture_output=True, text=True)
  if result.returncode:
    pytest.skip(f"cannot mount a size-limited tmpfs here: {result.stderr.strip()}")
  yield mount
  subprocess.run(["umount", "-l", str(mount)])


def test_disk_full_during_save_is_reported_and_keeps_earlier_checkpoints(
    small_fs, tiny_digits):
  workdir = str(small_fs / "run")
  config = tiny_digits(num_train_steps=2, sample_every_steps=1000)
  train.train_and_evaluate(config, workdir)
  # Leave room for the small files (config, metrics) but not a checkpoint.
  ckpt_bytes = sum(os.path.getsize(os.path.join(d, f))
                   for d, _, fs in os.walk(os.path.join(workdir, "checkpoints", "2"))
                   for f in fs)
  stat = os.statvfs(small_fs)
  filler = small_fs / "filler"
  with open(filler, "wb") as f:
    f.write(b"\0" * (stat.f_bavail * stat.f_frsize - ckpt_bytes // 3))
  with pytest.raises((checkpointing.CheckpointError, OSError)) as err:
    train.train_and_evaluate(tiny_digits(num_train_steps=4,
                                  sample_every_steps=1000), workdir)
  assert "No space left" in str(err.value) or "ENOSPC" in str(err.value), str(err.value)
  os.remove(filler)
  ckpt = checkpointing.Checkpointer(workdir, 3)
  assert ckpt.latest_step() == 2
  ckpt.close()
  assert int(restore_latest(config, workdir).step) == 2


# -------------------------------------------------- corrupt or incompatible

def _trained(tmp_path, tiny_digits):
  config = tiny_digits(num_train_steps=2)
  train.train_and_evaluate(config, str(tmp_path))
  return config, os.path.join(str(tmp_path), "checkpoints", "2")


def test_checkpoint_of_another_architecture_is_refused(tmp_path, tiny_digits):
  _trained(tmp_path, tiny_digits)
  other = tiny_digits(num_train_steps=4)
  other.model.d_widths = (8, 16, 32)
  with pytest.raises(checkpointing.CheckpointError,
                     match=r"checkpoints/2 does not fit this config: "
                           r"'d_ema_params/encoder/stage3_block1/conv1/kernel' has shape "
                           r"\(3, 3, 16, 16\) there but \(3, 3, 16, 32\) here"):
    train.train_and_evaluate(other, str(tmp_path))


def test_truncated_checkpoint_file_is_reported_not_reinitialised(tmp_path, tiny_digits):
  config, path = _trained(tmp_path, tiny_digits)
  files = [os.path.join(d, f) for d, _, fs in os.walk(path) for f in fs]
  data = max(files, key=os.path.getsize)
  with open(data, "r+b") as f:
    f.truncate(os.path.getsize(data) // 3)
  with pytest.raises(checkpointing.CheckpointError, match=r"checkpoints/2"):
    train.train_and_evaluate(tiny_digits(num_train_steps=4), str(tmp_path))


def test_evaluating_another_workdir_only_reads_it(tmp_path, tiny_digits):
  config, _ = _trained(tmp_path / "source", tiny_digits)
  before = {os.path.join(d, f): os.stat(os.path.join(d, f)).st_mtime_ns
            for d, _, fs in os.walk(tmp_path / "source") for f in fs}
  step, results = evaluation.evaluate_checkpoint(config, str(tmp_path / "source"),
                                               output_dir=str(tmp_path / "mine"))
  after = {os.path.join(d, f): os.stat(os.path.join(d, f)).st_mtime_ns
           for d, _, fs in os.walk(tmp_path / "source") for f in fs}
  assert before == after
  assert os.path.exists(tmp_path / "mine" / f"eval_{step}.json")


# ------------------------------------------------------- config validation

@pytest.mark.parametrize("field,value,message", [
    ("image_size", 48, "image_size: unsupported resolution 48; supported: [16, 32, 64, 128]"),
    ("model.d_widths", (8, 16, 50), "model.d_widths: width 50 is not divisible into 3 "
                                     "GroupNorm groups of 16 channels"),
    ("num_train_steps", 0, "num_train_steps must be positive, got 0"),
    ("optim.d_lr", -1e-4, "optim.d_lr must be positive, got -0.0001"),
    ("loss.knn_weight", 0.0, "loss.knn_weight must be positive, got 0.0"),
])
def test_config_values_are_rejected_with_exact_messages(field, value, message,
                                                        tiny_config):
  config = tiny_config()
  config.update_from_flattened_dict({field: value})
  with pytest.raises(config_lib.ConfigError) as err:
    config_lib.validate(config)
  assert str(err.value).startswith(message), str(err.value)


def test_unknown_dataset_is_rejected_before_compiling(tmp_path, monkeypatch, tiny_config):
  monkeypatch.setattr(train, "create_train_state",
                      lambda *a, **k: pytest.fail("compiled before validating"))
  config = tiny_config(dataset="cifar11")
  with pytest.raises(config_lib.ConfigError,
                     match=r"unknown dataset 'cifar11': neither a TFDS dataset nor "
                           r"one of this project's \(image_folder, prepared, sklearn_digits\)"):
    train.train_and_evaluate(config, str(tmp_path))
