"""What keeps a long run safe: stop signals and non-finite checks.

- `StopSignals`: SIGTERM/SIGINT (preemption, Ctrl-C) become a stop request
  that the run honours at its next check point (every step, every batch and
  evaluator of an evaluation, the phases of start-up), with a checkpoint. In
  a run of several processes all of them stop at the same check point: see
  the class. A second signal gets the default behaviour (an immediate stop).
- `first_nonfinite`: the step and metric of the first NaN/Inf among the
  metrics of the steps since the last check, so that nothing non-finite is
  ever saved and the message names where training broke.
"""
import os
import signal
import threading
from typing import Dict, List, Optional, Tuple

from absl import logging
import jax
from jax.experimental import multihost_utils
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


class StopRequested(Exception):
  """A stop was requested (and, across processes, agreed) at a check point."""


class StopSignals:
  """Context manager: SIGTERM and SIGINT request a stop instead of killing.

  One process: the handlers set `requested`; `check()` reads it.

  Several processes (`jax.distributed`): a process that gets SIGTERM tells
  the others through JAX's preemption service (its notifier owns SIGTERM, so
  no Python handler is installed for it; SIGINT is forwarded to it as
  SIGTERM). `check()` asks `multihost_utils.reached_preemption_sync_point`
  with a count of check points that every process advances identically, so
  every process sees True at the same check point, and they all save the
  same step (or leave the same evaluation) before exiting.
  """

  def __init__(self):
    self.requested: Optional[str] = None
    self._previous = {}
    self._checks = 0
    # jax.distributed starts the preemption service unless it is turned off.
    self._sync = (jax.process_count() > 1
                  and jax.config.jax_enable_preemption_service)
    if jax.process_count() > 1 and not self._sync:
      logging.warning("JAX's preemption service is off: a stop signal stops "
                      "only the process that gets it.")

  def _handle(self, signum, frame):
    del frame
    self.requested = signal.Signals(signum).name
    # A second signal stops at once, as it would without this handler.
    for sig, handler in self._previous.items():
      signal.signal(sig, handler)
    if self._sync:   # SIGINT: let the preemption service tell every process
      os.kill(os.getpid(), signal.SIGTERM)

  def check(self) -> bool:
    """Whether to stop at this check point (the same answer on every process)."""
    self._checks += 1
    if self._sync and multihost_utils.reached_preemption_sync_point(self._checks):
      self.requested = self.requested or "SIGTERM"
      return True
    return not self._sync and self.requested is not None

  def raise_if_requested(self, where: str = ""):
    """`check()`, raising StopRequested when it is True."""
    if self.check():
      raise StopRequested(f"{self.requested} received{' ' + where if where else ''}")

  def __enter__(self):
    if threading.current_thread() is threading.main_thread():
      signals = (signal.SIGINT,) if self._sync else (signal.SIGTERM, signal.SIGINT)
      for sig in signals:
        self._previous[sig] = signal.signal(sig, self._handle)
    return self

  def __exit__(self, *exc):
    for sig, handler in self._previous.items():
      signal.signal(sig, handler)
    return False
