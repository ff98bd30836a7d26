"""Where metrics go: the log, TensorBoard event files and `metrics.jsonl`.

Everything is written through `sgan_jax.storage`, so a workdir on cloud
storage gets every file. Only process 0 writes files; every process may call
these methods.

- TensorBoard: `EventFileWriter` (a clu `MetricWriter`) writes scalars and
  images to one event file per writer, that is per run start:
  `events.out.tfevents.<start>.<host>.<pid>.<n>`. A local file is appended
  to and flushed at every event, so a kill loses nothing. Object stores
  (gs://, s3://) cannot append: there the writer keeps the file's bytes and
  uploads the whole file again (one object, replaced whole) at most every
  `FLUSH_SECONDS` and at each flush, as TensorFlow's own writer does on GCS;
  a kill loses at most that much. Past `MAX_REMOTE_FILE_BYTES` it starts a
  next file, which bounds each upload. TensorBoard reads the files in name
  order.
- `metrics.jsonl`: one `{"step": ..., name: value, ...}` object per line,
  rewritten whole after every logged step. On resume, rows after the resumed
  step (written before a kill or a rollback) are dropped, so no step appears
  twice, and a partial last line left by an older version is discarded. A
  bad line anywhere else is a `MetricsFileError`.
"""
import importlib
import io
import itertools
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

from sgan_jax import errors, storage

# On object stores, events are uploaded at least this often (and at every
# flush()); past this size a writer starts its next file.
FLUSH_SECONDS = 60.0
MAX_REMOTE_FILE_BYTES = 32 << 20
# Numbers the files of this process: two writers never share a name.
_FILE_NUMBERS = itertools.count()


class MetricsFileError(errors.UserError, ValueError):
  """`metrics.jsonl` has a line that is not a JSON object, before its last
  line (which a kill may have cut short); the message names the file and
  the line, and says how to fix it."""


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


def _record(event: event_pb2.Event) -> bytes:
  """`event` framed as a TFRecord (length, data, masked CRC32Cs)."""
  buf = io.BytesIO()
  RecordWriter(buf).write(event.SerializeToString())
  return buf.getvalue()


class _EventFile:
  """One event file: appended to locally, rewritten whole on object stores."""

  def __init__(self, logdir: storage.PathLike):
    self.path = storage.path(logdir) / (
        f"events.out.tfevents.{int(time.time()):010d}.{socket.gethostname()}."
        f"{os.getpid()}.{next(_FILE_NUMBERS):06d}")
    self.remote = storage.is_remote(self.path)
    self.data, self._file = bytearray(), None
    self._uploaded, self._uploaded_bytes = time.time(), -1
    self.write(_record(event_pb2.Event(wall_time=time.time(), file_version="brain.Event:2")))

  def write(self, record: bytes):
    if self.remote:
      self.data += record
      if time.time() - self._uploaded > FLUSH_SECONDS:
        self.flush()
      return
    if self._file is None:
      self._file = self.path.open("ab")
    self._file.write(record)
    self._file.flush()

  def flush(self):
    if self.remote:
      self._uploaded = time.time()
      if self._uploaded_bytes != len(self.data):
        storage.write_bytes(self.path, bytes(self.data))
        self._uploaded_bytes = len(self.data)
    elif self._file is not None:
      os.fsync(self._file.fileno())

  def close(self):
    self.flush()
    if self._file is not None:
      self._file.close()
      self._file = None


class EventFileWriter(interface.MetricWriter):
  """TensorBoard scalars and images, written through `sgan_jax.storage` to
  one event file (see the module docstring)."""

  def __init__(self, logdir: storage.PathLike):
    self._logdir = storage.makedirs(logdir)
    self._file: Optional[_EventFile] = None

  def _add(self, step: int, values: List[summary_pb2.Summary.Value]):
    record = _record(event_pb2.Event(
        wall_time=time.time(), step=int(step), summary=summary_pb2.Summary(value=values)))
    if self._file is not None and self._file.remote and (
        len(self._file.data) + len(record) > MAX_REMOTE_FILE_BYTES):
      self._file.close()
      self._file = None
    if self._file is None:
      self._file = _EventFile(self._logdir)
    self._file.write(record)

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
    """Makes every event written so far durable (local) or uploaded (remote)."""
    if self._file is not None:
      self._file.flush()

  def close(self):
    if self._file is not None:
      self._file.close()


def _jsonl_row(p, number: int, line: str) -> Dict:
  """Line `number` of file `p` as a dict; MetricsFileError if it is not one."""
  try:
    row = json.loads(line)
    why = "is not a JSON object"
  except json.JSONDecodeError as e:
    row, why = None, f"is not JSON ({e.msg} at column {e.colno})"
  if not isinstance(row, dict):
    raise MetricsFileError(f"{p} line {number} {why}: remove or fix that line (each line "
                           f"holds one step's metrics), then run again")
  return row


def read_jsonl(p: storage.PathLike) -> List[Dict]:
  """The rows of a JSON-lines file of objects. Blank lines are skipped; an
  unparsable last line (cut short by a kill) is dropped; a bad line elsewhere
  raises MetricsFileError naming the file and the line."""
  if not storage.exists(p):
    return []
  lines = [(n, l) for n, l in enumerate(storage.read_text(p).splitlines(), 1) if l.strip()]
  rows = []
  for i, (number, line) in enumerate(lines):
    try:
      rows.append(_jsonl_row(p, number, line))
    except MetricsFileError:
      if i < len(lines) - 1:
        raise
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
