"""The run's logs (`sgan_jax.metric_io`): `metrics.jsonl` after a kill and with
a bad line, and TensorBoard event files, local and on an object store."""
import json
import struct
import types

import numpy as np
import pytest

from sgan_jax import metric_io

from helpers import BUCKET


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
