"""Where time goes: the wall time since the process started (what a run's
first step reports), and a compiled step's `jax.profiler` trace with its
costliest operations (`python -m sgan_jax.benchmark ... --profile_dir=DIR`).

The trace (open DIR in TensorBoard's profile plugin, or the `.trace.json.gz`
in Perfetto) holds every XLA operation of the traced calls. `costliest_ops`
sums each operation's time over the calls and names the model code it came
from (the `op_name` XLA keeps from the JAX program, e.g.
`transpose(jvp(Generator))/out_conv/...`, the G phase's backward pass).
"""
import collections
import glob
import gzip
import json
import os
import re
import time
from typing import Callable, List, Tuple

import jax

_IMPORTED = time.time()


def seconds_since_process_start() -> float:
  """Wall seconds since this process started (Linux: from /proc; elsewhere:
  since sgan_jax.profiling was imported)."""
  try:
    with open("/proc/self/stat") as f:
      ticks = int(f.read().rsplit(")", 1)[1].split()[19])   # field 22, starttime
    with open("/proc/uptime") as f:
      uptime = float(f.read().split()[0])
    return uptime - ticks / os.sysconf("SC_CLK_TCK")
  except (OSError, ValueError, IndexError):
    return time.time() - _IMPORTED


def trace(call: Callable[[], object], calls: int, profile_dir: str) -> str:
  """Runs `call()` `calls` times under the profiler; returns the trace file."""
  jax.profiler.start_trace(profile_dir)
  try:
    for _ in range(calls):
      jax.block_until_ready(call())
  finally:
    jax.profiler.stop_trace()
  files = sorted(glob.glob(os.path.join(profile_dir, "plugins", "profile", "*",
                                        "*.trace.json.gz")))
  if not files:
    raise FileNotFoundError(f"the profiler wrote no trace under {profile_dir}")
  return files[-1]


def _source_names(hlo_text: str):
  """{HLO instruction name: the JAX op_name it was compiled from, or ''}."""
  names = {}
  for op, line in re.findall(r"\n\s*(?:ROOT )?%([\w.-]+) = ([^\n]*)", hlo_text):
    source = re.search(r'op_name="([^"]+)"', line)
    names[op] = source.group(1) if source else ""
  return names


def costliest_ops(trace_file: str, hlo_text: str, calls: int,
                  top: int = 15) -> List[Tuple[float, str, str]]:
  """[(seconds per call, HLO operation, source op_name)], costliest first.

  Only events named after an instruction of `hlo_text` (the compiled
  program's `as_text()`) count, not the runtime's own. Times are summed over
  every thread that ran the operation; an operation split over several cores
  is counted on the thread that started it.
  """
  with gzip.open(trace_file, "rt") as f:
    events = json.load(f)["traceEvents"]
  names = _source_names(hlo_text)
  seconds = collections.Counter()
  for e in events:
    if e.get("ph") == "X" and e.get("name") in names:
      seconds[e["name"]] += e["dur"] * 1e-6 / calls
  return [(s, op, names[op]) for op, s in seconds.most_common(top)]
