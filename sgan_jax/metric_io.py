"""Where metrics go: the log, TensorBoard event files and `metrics.jsonl`.

Everything is written through `sgan_jax.storage`, so a workdir on cloud
storage gets every file. Only process 0 writes files; every process may call
these methods.

- TensorBoard: `EventFileWriter` (a clu `MetricWriter`) collects scalars and
  images and writes them, at each flush, as a new complete event file
  `events.out.tfevents.<start>.<host>.<pid>.<seq>`. No file is ever appended
  to, which object stores do not allow; TensorBoard reads the files in name
  order.
- `metrics.jsonl`: one `{"step": ..., name: value, ...}` object per line,
  rewritten whole after every logged step. On resume, rows after the resumed
  step (written before a kill or a rollback) are dropped, so no step appears
  twice, and a partial last line left by an older version is discarded.
"""
import importlib
import io
import json
import os
import socket
import sys
import time
import types
from typing import Dict, List, Optional

import jax
import numpy as np
from PIL import Image
from tensorboard.compat.proto import event_pb2, summary_pb2
from tensorboard.summary.writer.record_writer import RecordWriter

from sgan_jax import storage

# Events are written out at least this often (and at every flush()).
FLUSH_SECONDS = 60.0


def _clu_metric_writers():
  """clu's `metric_writers` package, loaded without TensorFlow.

  Its `__init__` imports its TensorFlow summary writer, so importing any of
  its writers needs TensorFlow, and loads it where it is installed. This
  project writes its own event files (`EventFileWriter`): while the package
  loads, an empty stand-in takes that one module's place (and is removed
  again, so an explicit import of it later gets the real one).
  """
  name = "clu.metric_writers.summary_writer"
  if "clu.metric_writers" in sys.modules or name in sys.modules:
    return importlib.import_module("clu.metric_writers")
  stand_in = types.ModuleType(name)
  stand_in.SummaryWriter = None
  sys.modules[name] = stand_in
  try:
    return importlib.import_module("clu.metric_writers")
  finally:
    del sys.modules[name]


metric_writers = _clu_metric_writers()
interface = metric_writers.interface


def _png(image: np.ndarray) -> bytes:
  """[H, W, C] uint8 (or floats in [0, 1]) as PNG bytes."""
  image = np.asarray(image)
  if image.dtype != np.uint8:
    image = np.clip(np.round(image * 255.0), 0, 255).astype(np.uint8)
  buf = io.BytesIO()
  Image.fromarray(image.squeeze(-1) if image.shape[-1] == 1 else image).save(buf, "PNG")
  return buf.getvalue()


class EventFileWriter(interface.MetricWriter):
  """TensorBoard scalars and images, written through `sgan_jax.storage`."""

  def __init__(self, logdir: storage.PathLike):
    self._logdir = storage.makedirs(logdir)
    self._prefix = (f"events.out.tfevents.{int(time.time()):010d}."
                    f"{socket.gethostname()}.{os.getpid()}")
    self._seq, self._events, self._last_flush = 0, [], time.time()

  def _add(self, step: int, values: List[summary_pb2.Summary.Value]):
    self._events.append(event_pb2.Event(
        wall_time=time.time(), step=int(step), summary=summary_pb2.Summary(value=values)))
    if time.time() - self._last_flush > FLUSH_SECONDS:
      self.flush()

  def write_scalars(self, step: int, scalars):
    self._add(step, [summary_pb2.Summary.Value(tag=k, simple_value=float(v))
                     for k, v in scalars.items()])

  def write_images(self, step: int, images):
    values = []
    for tag, batch in images.items():
      for i, image in enumerate(np.asarray(batch)):
        h, w, c = image.shape
        values.append(summary_pb2.Summary.Value(
            tag=tag if len(batch) == 1 else f"{tag}/{i}",
            image=summary_pb2.Summary.Image(height=h, width=w, colorspace=c,
                                            encoded_image_string=_png(image))))
    self._add(step, values)

  def _unsupported(self, *args, **kwargs):
    raise NotImplementedError("sgan_jax writes only scalars and images to TensorBoard")

  write_summaries = write_videos = write_audios = write_texts = _unsupported
  write_histograms = write_hparams = _unsupported

  def flush(self):
    """Writes the events collected since the last flush as a new file."""
    self._last_flush = time.time()
    if not self._events:
      return
    buf = io.BytesIO()
    records = RecordWriter(buf)
    records.write(event_pb2.Event(wall_time=time.time(),
                                  file_version="brain.Event:2").SerializeToString())
    for event in self._events:
      records.write(event.SerializeToString())
    storage.write_bytes(self._logdir / f"{self._prefix}.{self._seq:06d}", buf.getvalue())
    self._seq, self._events = self._seq + 1, []

  def close(self):
    self.flush()


def read_jsonl(p: storage.PathLike) -> List[Dict]:
  """The rows of a JSON-lines file; an unparsable last line (cut short by a
  kill) is dropped, an unparsable line elsewhere raises ValueError."""
  if not storage.exists(p):
    return []
  lines = [l for l in storage.read_text(p).splitlines() if l.strip()]
  rows = []
  for i, line in enumerate(lines):
    try:
      rows.append(json.loads(line))
    except json.JSONDecodeError as e:
      if i < len(lines) - 1:
        raise ValueError(f"{p}: line {i + 1} is not JSON: {e}") from e
  return rows


class MetricsLogger:
  """The log (clu), TensorBoard event files and `metrics.jsonl`."""

  def __init__(self, workdir: storage.PathLike):
    self._lead = jax.process_index() == 0
    writers = [metric_writers.LoggingWriter()]
    if self._lead:
      writers.append(EventFileWriter(workdir))
    self._writer = metric_writers.MultiWriter(writers)
    self._jsonl = storage.path(workdir) / "metrics.jsonl"
    self._rows: Optional[List[Dict]] = None

  def resume_at(self, step: int):
    """Keeps the rows of `metrics.jsonl` up to `step` (the state training
    continues from) and drops the rest."""
    if self._lead:
      self._rows = [r for r in read_jsonl(self._jsonl) if r.get("step", 0) <= step]
      storage.write_text(self._jsonl, "".join(json.dumps(r) + "\n" for r in self._rows))

  def scalars(self, step: int, scalars):
    scalars = {k: float(np.asarray(v)) for k, v in scalars.items()}
    self._writer.write_scalars(step, scalars)
    if self._lead:
      if self._rows is None:
        self._rows = read_jsonl(self._jsonl)
      self._rows.append({"step": step, **scalars})
      storage.write_text(self._jsonl, "".join(json.dumps(r) + "\n" for r in self._rows))

  def images(self, step: int, images):
    self._writer.write_images(step, images)

  def flush(self):
    self._writer.flush()

  def close(self):
    self._writer.close()
