"""Faults never lose or corrupt a good checkpoint or log: a stop or a kill of
the command line, a full disk, a damaged or foreign checkpoint (issue 6;
docs/guarantees.md; stop signals and non-finite values: test_guards.py)."""
import json
import os
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from sgan_jax import checkpointing, errors, evaluation, train

from helpers import TINY_CONFIG, restore_latest


def _main(workdir, digits_dir, *flags, command=("-m", "sgan_jax.main")):
  return [sys.executable, *command, f"--config={TINY_CONFIG}",
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
  proc = subprocess.Popen(_main(workdir, digits_dir, "--config.num_train_steps=1000",
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


# `python -m sgan_jax.main`, except that the file writer (`storage.write_bytes`)
# is killed (SIGKILL) in the middle of the line of step 3 in metrics.jsonl:
# half of that line is in its temporary file, on disk, when the kill lands.
_KILLED_WHILE_WRITING = """
import os, signal
from absl import app
from sgan_jax import cli, main, storage

class _CutMidLine:
  def __init__(self, f):
    self._f = f
  def __enter__(self):
    return self
  def __exit__(self, *exc):
    return self._f.__exit__(*exc)
  def __getattr__(self, name):
    return getattr(self._f, name)
  def write(self, data):
    if b'{"step": 3, ' in data:
      self._f.write(data[:data.index(b'{"step": 3, ') + 20])
      self._f.flush()
      os.fsync(self._f.fileno())
      os.kill(os.getpid(), signal.SIGKILL)
    return self._f.write(data)

def _open(file, mode="r", *args, **kwargs):
  f = open(file, mode, *args, **kwargs)
  return _CutMidLine(f) if ".metrics.jsonl.tmp-" in os.fspath(file) else f

storage.open = _open   # the name storage.write_bytes opens its files with
app.run(main.main, flags_parser=cli.parse_flags)
"""


def _parsed_lines(path):
  """Every line of a JSON-lines file, parsed (any partial line fails)."""
  with open(path) as f:
    text = f.read()
  assert text.endswith("\n") or not text, text[-200:]
  return [json.loads(line) for line in text.splitlines()]


@pytest.mark.slow
def test_kill_9_resumes_from_the_newest_complete_checkpoint_bit_identically(
    tmp_path, digits_dir, root, tiny_digits):
  steps = 8
  reference = jax.device_get(train.train_and_evaluate(
      tiny_digits(num_train_steps=steps, checkpoint_every_steps=1,
                  sample_every_steps=1000), str(tmp_path / "reference")))
  workdir = str(tmp_path / "killed")
  flags = [f"--config.num_train_steps={steps}", "--config.checkpoint_every_steps=1",
           "--config.sample_every_steps=1000"]
  script = tmp_path / "killed_while_writing.py"
  script.write_text(_KILLED_WHILE_WRITING)
  killed = subprocess.run(_main(workdir, digits_dir, *flags, command=(str(script),)),
                          capture_output=True, text=True, cwd=root, timeout=600)
  assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
  # The kill landed mid-line: the cut line is in the writer's temporary file ...
  (partial,) = [f for f in os.listdir(workdir) if f.startswith(".metrics.jsonl.tmp-")]
  with open(os.path.join(workdir, partial)) as f:
    last = f.read().splitlines()[-1]
  assert last.startswith('{"step": 3, ')
  with pytest.raises(json.JSONDecodeError):
    json.loads(last)
  # ... and metrics.jsonl holds the whole lines written before it.
  assert [r["step"] for r in _parsed_lines(os.path.join(workdir, "metrics.jsonl"))] == [1, 2]
  survivors = checkpointing.Checkpointer(workdir, 3)
  resumed_from = survivors.latest_step()
  survivors.close()
  assert resumed_from is not None and 1 <= resumed_from <= 2
  out = subprocess.run(_main(workdir, digits_dir, *flags), capture_output=True,
                       text=True, cwd=root, timeout=600)
  assert out.returncode == 0, out.stderr[-3000:]
  assert f"at step {resumed_from}" in out.stderr
  final = restore_latest(tiny_digits(), workdir)
  assert int(final.step) == steps
  jax.tree.map(np.testing.assert_array_equal, final, reference)
  # The log survived the kill: every line whole, every step once, in order.
  rows = _parsed_lines(os.path.join(workdir, "metrics.jsonl"))
  assert [r["step"] for r in rows if "d/loss" in r] == list(range(1, steps + 1)), rows


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
  # The final evaluation is not what this test is about: k-NN only.
  config.eval.evaluators, config.eval.generator_metrics = ("knn",), False
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


def test_unknown_dataset_is_rejected_before_compiling(tmp_path, monkeypatch, tiny_config):
  monkeypatch.setattr(train, "create_train_state",
                      lambda *a, **k: pytest.fail("compiled before validating"))
  config = tiny_config(dataset="cifar11")
  with pytest.raises(errors.ConfigError,
                     match=r"unknown dataset 'cifar11': neither a TFDS dataset nor "
                           r"one of this project's \(image_folder, prepared, sklearn_digits\)"):
    train.train_and_evaluate(config, str(tmp_path))
