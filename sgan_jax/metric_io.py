"""Where metrics go: TensorBoard and the log (clu), and `metrics.jsonl`.

Only process 0 writes files; every process may call these methods.
"""
import json
import os

import jax
import numpy as np
from clu import metric_writers


class MetricsLogger:
  """clu writers (TensorBoard event files + log lines) and a JSONL file with
  one `{"step": ..., name: value, ...}` object per logged step."""

  def __init__(self, workdir: str):
    self._lead = jax.process_index() == 0
    self._writer = metric_writers.create_default_writer(
        workdir, just_logging=not self._lead)
    self._jsonl = os.path.join(workdir, "metrics.jsonl")

  def scalars(self, step: int, scalars):
    scalars = {k: float(np.asarray(v)) for k, v in scalars.items()}
    self._writer.write_scalars(step, scalars)
    if self._lead:
      with open(self._jsonl, "a") as f:
        f.write(json.dumps({"step": step, **scalars}) + "\n")

  def images(self, step: int, images):
    self._writer.write_images(step, images)

  def flush(self):
    self._writer.flush()

  def close(self):
    self._writer.close()
