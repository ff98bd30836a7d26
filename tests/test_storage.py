"""Workdirs on cloud storage, and files that survive a kill (README "Where it
runs" and "Guarantees")."""
import json
import os
import signal
import struct
import types

import numpy as np
import pytest
from etils.epath import backend as epath_backend
from etils.epath import gpath
from orbax.checkpoint._src.path import gcs_utils

from sgan_jax import config_lib, evaluation, metric_io, storage, train

BUCKET = "gs://sgan-test-bucket"


class _FakeGcsBackend(epath_backend._OsPathBackend):  # pylint: disable=protected-access
  """epath's backend for gs:// URLs, serving them from a local folder (the
  'bucket store'); every other path is refused, so a test notices any file
  that does not go through the URL."""

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


@pytest.fixture
def fake_gcs(tmp_path, monkeypatch):
  """gs:// served from `tmp_path/store` for every client the project uses:
  etils.epath (the project's files, Orbax's directories and metadata) and
  TensorStore (Orbax's arrays, through the kvstore spec Orbax builds for
  gs://). The test itself runs in an empty `tmp_path/cwd`."""
  store, cwd = tmp_path / "store", tmp_path / "cwd"
  store.mkdir()
  cwd.mkdir()
  fake = _FakeGcsBackend(str(store))
  monkeypatch.setattr(gpath, "_is_tf_installed", lambda: False)
  monkeypatch.setitem(gpath._PREFIX_TO_BACKEND, "gs", fake)  # pylint: disable=protected-access
  monkeypatch.setattr(gcs_utils, "get_kvstore_for_gcs",
                      lambda p: {"driver": "file", "path": fake.local(p)})
  monkeypatch.setattr(gcs_utils, "rmtree", lambda p, missing_ok=False: fake.rmtree(p))
  # The bucket is flat (no hierarchical namespace): Orbax need not ask GCS.
  monkeypatch.setattr(gcs_utils, "is_hierarchical_namespace_enabled", lambda p: False)
  monkeypatch.chdir(cwd)
  return store, cwd


def _files(folder):
  return sorted(os.path.relpath(os.path.join(d, f), folder)
                for d, _, fs in os.walk(folder) for f in fs)


def test_a_gs_workdir_gets_every_artifact_and_the_cwd_nothing(fake_gcs, tiny_digits,
                                                              monkeypatch):
  store, cwd = fake_gcs
  workdir = f"{BUCKET}/run"
  # Train, stopped by SIGINT after step 3 (a checkpoint of step 3) ...
  real = train.make_train_step

  def interrupting(mesh):
    step_fn = real(mesh)

    def wrapped(state, batch):
      state, metrics = step_fn(state, batch)
      if int(state.step) == 3:
        os.kill(os.getpid(), signal.SIGINT)
      return state, metrics
    return wrapped
  monkeypatch.setattr(train, "make_train_step", interrupting)
  config = tiny_digits(num_train_steps=4, checkpoint_every_steps=4)
  assert int(train.train_and_evaluate(config, workdir).step) == 3
  monkeypatch.setattr(train, "make_train_step", real)
  # ... resumed to the end (evaluation at step 4) ...
  assert int(train.train_and_evaluate(config, workdir).step) == 4
  # ... and evaluated again from the workdir's own config.
  step, results = evaluation.evaluate_checkpoint(config_lib.read_run_config(workdir),
                                                 workdir, output_dir=f"{BUCKET}/eval")
  assert step == 4 and 0 <= results["d_ema/backbone/knn/top1"] <= 1
  assert _files(cwd) == []   # nothing under the current directory
  run = _files(store / "sgan-test-bucket" / "run")
  for expected in ("config.json", "config_resume_3.json", "metrics.jsonl",
                   "eval_4.json", "samples/samples_0000004.png", "classes.json",
                   "learning_curve.png"):
    assert expected in run, (expected, run)
  assert any(f.startswith("checkpoints/3/") for f in run)
  assert any(f.startswith("checkpoints/4/") for f in run)
  assert any(f.startswith("events.out.tfevents.") for f in run)
  assert _files(store / "sgan-test-bucket" / "eval") == ["eval_4.json", "learning_curve.png"]
  rows = metric_io.read_jsonl(f"{workdir}/metrics.jsonl")
  assert [r["step"] for r in rows if "d/loss" in r] == [2, 4]


def test_the_fake_gcs_refuses_local_paths(fake_gcs):
  # The fixture is only a proof if a path that skipped the URL would fail.
  with pytest.raises(AssertionError, match="non-gs:// path"):
    gpath._PREFIX_TO_BACKEND["gs"].local("/tmp/x")  # pylint: disable=protected-access


# -------------------------------------------------------- logs after a kill

def test_metrics_jsonl_drops_a_partial_line_and_steps_after_the_resumed_one(tmp_path):
  path = tmp_path / "metrics.jsonl"
  rows = [{"step": s, "d/loss": float(s)} for s in (1, 2, 3, 4)]
  path.write_text("".join(json.dumps(r) + "\n" for r in rows) + '{"step": 5, "d/lo')
  logger = metric_io.MetricsLogger(str(tmp_path))
  logger.resume_at(3)                 # the checkpoint training continues from
  logger.scalars(4, {"d/loss": 40.0})
  logger.close()
  got = [json.loads(l) for l in path.read_text().splitlines()]
  assert got == rows[:3] + [{"step": 4, "d/loss": 40.0}]


@pytest.mark.parametrize("bad,why", [("not json", "is not JSON"),
                                     ("[1, 2]", "is not a JSON object")])
def test_a_bad_line_inside_metrics_jsonl_is_a_one_line_user_error(tmp_path, bad, why):
  path = tmp_path / "metrics.jsonl"
  # Line 3 of the file (line 2 is blank, and blank lines count).
  path.write_text(f'{{"step": 1}}\n\n{bad}\n{{"step": 2}}\n{{"step": 3, "d/lo')
  with pytest.raises(metric_io.MetricsFileError) as err:
    metric_io.read_jsonl(str(path))
  message = str(err.value)
  assert f"{path} line 3 {why}" in message and "remove or fix that line" in message
  assert "\n" not in message and isinstance(err.value, ValueError)
  # A half-written last line (a kill while writing) is dropped, as before.
  path.write_text('{"step": 1}\n{"step": 2}\n{"step": 3, "d/lo')
  assert metric_io.read_jsonl(str(path)) == [{"step": 1}, {"step": 2}]


def test_event_files_read_back_in_tensorboard(tmp_path):
  from tensorboard.backend.event_processing import event_accumulator
  writer = metric_io.EventFileWriter(str(tmp_path))
  writer.write_scalars(1, {"d/loss": 0.5})
  writer.flush()
  writer.write_scalars(2, {"d/loss": 0.25})
  writer.write_images(2, {"samples": np.zeros((1, 6, 4, 3), np.uint8)})
  writer.close()
  assert len(list(tmp_path.glob("events.out.tfevents.*"))) == 1   # appended to
  acc = event_accumulator.EventAccumulator(str(tmp_path),
                                           size_guidance={event_accumulator.IMAGES: 0})
  acc.Reload()
  assert [(e.step, e.value) for e in acc.Scalars("d/loss")] == [(1, 0.5), (2, 0.25)]
  image = acc.Images("samples")[0]
  assert (image.step, image.width, image.height) == (2, 4, 6)


def _event_records(path):
  """The events of a TFRecord file, each record's framing and checksums checked."""
  from tensorboard.compat.proto import event_pb2
  from tensorboard.compat.tensorflow_stub.pywrap_tensorflow import masked_crc32c
  data, events, i = path.read_bytes(), [], 0
  while i < len(data):
    header = data[i:i + 8]
    (n,) = struct.unpack("<Q", header)
    body = data[i + 12:i + 12 + n]
    assert struct.unpack("<II", data[i + 8:i + 12] + data[i + 12 + n:i + 16 + n]) == (
        masked_crc32c(header), masked_crc32c(body))
    events.append(event_pb2.Event.FromString(body))
    i += 16 + n
  return events


def _scalars(events):
  return [(e.step, v.simple_value) for e in events for v in e.summary.value
          if v.HasField("simple_value")]


@pytest.mark.parametrize("where", ["local", "gs"])
def test_a_long_run_writes_one_event_file(where, tmp_path, request, monkeypatch):
  """25 simulated hours, a scalar every 30 s and an image every 100th:
  one event file per writer (a run start), which holds every event."""
  clock = [1.7e9]
  monkeypatch.setattr(metric_io, "time", types.SimpleNamespace(time=lambda: clock[0]))
  if where == "gs":
    folder = request.getfixturevalue("fake_gcs")[0] / "sgan-test-bucket" / "run"
    logdir = f"{BUCKET}/run"
  else:
    folder = logdir = tmp_path
  writer, want = metric_io.EventFileWriter(str(logdir)), []
  for step in range(3000):
    clock[0] += 30.0
    writer.write_scalars(step, {"d/loss": step / 8})
    want.append((step, step / 8))
    if step % 100 == 0:
      writer.write_images(step, {"samples": np.zeros((1, 6, 4, 3), np.uint8)})
  (path,) = list(folder.glob("events.out.tfevents.*"))
  if where == "local":   # written through at each event: nothing lost on a kill
    assert _scalars(_event_records(path)) == want
  writer.close()
  assert len(list(folder.glob("events.out.tfevents.*"))) == 1
  events = _event_records(path)
  assert events[0].file_version == "brain.Event:2" and _scalars(events) == want
  assert sum(len(e.summary.value) for e in events) == 3000 + 30


def test_on_an_object_store_big_event_files_continue_in_a_next_file(fake_gcs, monkeypatch):
  """Each upload replaces a whole file, so a file stops growing at
  MAX_REMOTE_FILE_BYTES; a second writer (a restart in the same second)
  gets its own file. Read in name order, the files hold every event."""
  monkeypatch.setattr(metric_io, "MAX_REMOTE_FILE_BYTES", 2000)
  monkeypatch.setattr(metric_io, "time", types.SimpleNamespace(time=lambda: 1.7e9))
  want = []
  for start in (0, 200):
    writer = metric_io.EventFileWriter(f"{BUCKET}/run")
    for step in range(start, start + 200):
      writer.write_scalars(step, {"d/loss": step / 8})
      want.append((step, step / 8))
    writer.close()
  paths = sorted((fake_gcs[0] / "sgan-test-bucket" / "run").glob("events.out.tfevents.*"))
  assert len(paths) > 2 and all(p.stat().st_size <= 2000 for p in paths)
  assert [e for p in paths for e in _scalars(_event_records(p))] == want


def test_every_start_keeps_its_config_and_writes_it_whole(tmp_path, tiny_config):
  first, later = tiny_config(), tiny_config(num_train_steps=8)
  assert config_lib.write_run_config(first, str(tmp_path), 0).name == "config.json"
  assert config_lib.write_run_config(later, str(tmp_path), 4).name == "config_resume_4.json"
  assert config_lib.read_run_config(str(tmp_path)).num_train_steps == 8   # the newest
  assert json.loads((tmp_path / "config.json").read_text())["num_train_steps"] == 4
  assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json",
                                                         "config_resume_4.json"]
  storage.write_text(str(tmp_path / "x.txt"), "whole")   # no temporary file left
  assert sorted(p.name for p in tmp_path.iterdir())[-1] == "x.txt"


@pytest.mark.parametrize("content,message", [
    ('{"num_train_steps": 4, "mod', r"config_resume_4.json is not a valid config "
                                   r"\(JSONDecodeError"),
    ('{"num_train_steps": 4}', "config_resume_4.json: config is missing field"),
])
def test_a_truncated_or_invalid_workdir_config_is_refused_in_one_line(
    tmp_path, tiny_config, content, message):
  config_lib.write_run_config(tiny_config(), str(tmp_path), 0)
  (tmp_path / "config_resume_4.json").write_text(content)
  with pytest.raises(config_lib.ConfigError, match=message) as err:
    config_lib.read_run_config(str(tmp_path))
  assert "\n" not in str(err.value)


def test_a_workdir_without_config_is_refused(tmp_path):
  with pytest.raises(config_lib.ConfigError, match="has no config.json: is it a "
                                                   "training workdir"):
    config_lib.read_run_config(str(tmp_path))


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
