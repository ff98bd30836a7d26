"""What the user sees while long work runs, wherever it runs.

- `show_info_logs`: the library's entry points (`train.train_and_evaluate`,
  `evaluation.evaluate_checkpoints`) call it. Outside `absl.app.run` (a
  notebook, a script) absl's verbosity is unset and hides INFO, so every
  progress line would be lost; there it turns INFO on. Libraries (Orbax,
  clu, XLA) keep only their warnings.
- `Progress`: `label: done/total unit (pct) | rate | ETA` lines for work that
  runs longer than a few seconds (feature extraction, the evaluators).
"""
import logging as std_logging
import os
import time
from typing import Callable, Optional

from absl import flags, logging


class _OwnInfoOnly(std_logging.Filter):
  """Keeps INFO lines of sgan_jax; libraries (Orbax, clu, XLA) only warn."""

  def filter(self, record):
    return (record.levelno >= std_logging.WARNING
            or f"{os.sep}sgan_jax{os.sep}" in record.pathname)


def quiet_library_logs():
  """On absl's logger, so that it holds whichever handler prints (absl's,
  or Python's when a library configured logging before flags were read)."""
  logger = std_logging.getLogger("absl")
  if not any(isinstance(f, _OwnInfoOnly) for f in logger.filters):
    logger.addFilter(_OwnInfoOnly())


def show_info_logs():
  """INFO lines visible when no command line chose a verbosity (the library
  was entered without `app.run`); the libraries' INFO lines filtered out."""
  if not flags.FLAGS.is_parsed() and logging.get_verbosity() < logging.INFO:
    logging.set_verbosity(logging.INFO)
  quiet_library_logs()


# Work that ends within this many seconds reports nothing.
QUIET_SECONDS = 5.0


def _duration(seconds: float) -> str:
  return time.strftime("%H:%M:%S", time.gmtime(max(seconds, 0)))


class Progress:
  """Reports `done` of `total` at most every `every` seconds, and only once
  the work has run `after` seconds (default `QUIET_SECONDS`: short work stays
  silent). `total` may be None (no percentage, no ETA)."""

  def __init__(self, label: str, total: Optional[int], unit: str,
               every: float = 15.0, after: Optional[float] = None,
               clock: Callable[[], float] = time.monotonic):
    self.label, self.total, self.unit = label, total, unit
    self.every, self.clock = every, clock
    self.after = QUIET_SECONDS if after is None else after
    self.done = 0
    self.start = self.clock()
    self._last = -float("inf")

  def update(self, n: int = 1) -> None:
    self.done += n
    now = self.clock()
    if now - self.start >= self.after and now - self._last >= self.every:
      self._last = now
      logging.info(self.line(now))

  def line(self, now: Optional[float] = None) -> str:
    elapsed = (self.clock() if now is None else now) - self.start
    rate = self.done / elapsed if elapsed > 0 else 0.0
    text = f"{self.label}: {self.done:,}"
    if self.total:
      text += f"/{self.total:,} {self.unit} ({100 * self.done / self.total:.0f}%)"
    else:
      text += f" {self.unit}"
    text += f" | {rate:,.1f} {self.unit}/s | {_duration(elapsed)} elapsed"
    if self.total and rate > 0:
      text += f" | ETA {_duration((self.total - self.done) / rate)}"
    return text
