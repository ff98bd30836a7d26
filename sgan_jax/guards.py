"""What keeps a long run safe: stop signals and non-finite checks.

- `StopSignals`: SIGTERM/SIGINT (preemption, Ctrl-C) only set a flag; the
  loop finishes its step, checkpoints and exits cleanly. A second signal
  gets the default behaviour (an immediate stop).
- `first_nonfinite`: the step and metric of the first NaN/Inf among the
  metrics of the steps since the last check, so that nothing non-finite is
  ever saved and the message names where training broke.
"""
import signal
import threading
from typing import Dict, List, Optional, Tuple

import jax
import numpy as np


class NonFiniteError(RuntimeError):
  """A loss or gradient norm became NaN or Inf."""

  def __init__(self, step: int, term: str, value: float):
    super().__init__(
        f"non-finite {term} = {value} at step {step}; training stopped and "
        f"nothing after the last checkpoint was saved. Lower the learning "
        f"rates, or set --config.nonfinite_rollbacks=N to roll back to the "
        f"last good checkpoint and skip the offending batch (up to N times).")
    self.step, self.term, self.value = step, term, value


def first_nonfinite(steps_and_metrics: List[Tuple[int, Dict]]
                    ) -> Optional[Tuple[int, str, float]]:
  """(step, metric name, value) of the first non-finite metric, or None."""
  if not steps_and_metrics:
    return None
  host = jax.device_get([m for _, m in steps_and_metrics])
  for (step, _), metrics in zip(steps_and_metrics, host):
    for name in sorted(metrics):
      value = float(np.asarray(metrics[name]))
      if not np.isfinite(value):
        return step, name, value
  return None


class StopSignals:
  """Context manager: SIGTERM and SIGINT set `requested` instead of killing."""
  SIGNALS = (signal.SIGTERM, signal.SIGINT)

  def __init__(self):
    self.requested: Optional[str] = None
    self._previous = {}

  def _handle(self, signum, frame):
    del frame
    self.requested = signal.Signals(signum).name
    # A second signal stops at once, as it would without this handler.
    for sig, handler in self._previous.items():
      signal.signal(sig, handler)

  def __enter__(self):
    if threading.current_thread() is threading.main_thread():
      for sig in self.SIGNALS:
        self._previous[sig] = signal.signal(sig, self._handle)
    return self

  def __exit__(self, *exc):
    for sig, handler in self._previous.items():
      signal.signal(sig, handler)
    return False
