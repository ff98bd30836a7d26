"""Start-up: JAX's persistent compilation cache (a second start loads what
the first compiled: `cli.use_compilation_cache`, `--compilation_cache_dir`),
and the time since the process started that the first step reports."""
import os
import re
import subprocess
import sys

import pytest

from sgan_jax import cli

_SCRIPT = """
import jax, jax.numpy as jnp
from sgan_jax import cli
counter = cli.use_compilation_cache({cache!r})
f = jax.jit(lambda x: jnp.sin(x) @ jnp.cos(x).T + 1.0)
f(jnp.ones((64, 64))).block_until_ready()
print(counter.summary())
"""
_SUMMARY = re.compile(r"(\d+) program\(s\) loaded, (\d+) compiled and stored")


def _counts(text):
  match = _SUMMARY.search(text)
  assert match, text
  return int(match.group(1)), int(match.group(2))


def _env(**extra):
  env = dict(os.environ, **extra)
  env.pop("JAX_COMPILATION_CACHE_DIR", None)   # the session's cache (conftest)
  return env


def test_a_second_process_loads_what_the_first_compiled(tmp_path):
  cache = str(tmp_path / "cache")
  env = _env(JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0")
  runs = [subprocess.run([sys.executable, "-c", _SCRIPT.format(cache=cache)],
                         env=env, capture_output=True, text=True, check=True).stdout
          for _ in range(2)]
  loaded, compiled = _counts(runs[0])   # the function and jnp.ones' programs
  assert loaded == 0 and compiled >= 1
  assert _counts(runs[1]) == (compiled, 0)
  assert os.listdir(cache)


def test_default_directory_and_off_switch(monkeypatch, tmp_path):
  monkeypatch.delenv("JAX_COMPILATION_CACHE_DIR", raising=False)
  monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
  assert cli.default_cache_dir() == str(tmp_path / "sgan_jax" / "xla")
  monkeypatch.setenv("JAX_COMPILATION_CACHE_DIR", "/somewhere/else")
  assert cli.default_cache_dir() == "/somewhere/else"
  assert cli.use_compilation_cache("") is None


@pytest.mark.slow   # two benchmark starts of the tiny step: ~60 s on 2 cores
@pytest.mark.extra   # not in .ci/run: see setup.cfg
def test_second_benchmark_start_loads_the_step(tmp_path, root, config_path):
  cache = str(tmp_path / "cache")
  cmd = [sys.executable, "-m", "sgan_jax.benchmark", f"--config={config_path('tiny')}",
         "--steps=1", "--warmup=0", "--nophases", "--pipeline_batches=0",
         f"--compilation_cache_dir={cache}"]
  runs = [subprocess.run(cmd, cwd=root, env=_env(), capture_output=True, text=True,
                         check=True).stdout for _ in range(2)]
  loaded, compiled = _counts(runs[0])
  assert loaded == 0 and compiled >= 1   # the step (and its initialisation)
  assert _counts(runs[1]) == (compiled, 0)


def test_seconds_since_process_start_counts_from_the_process_not_the_import():
  code = ("import time; time.sleep(1.5); from sgan_jax import profiling; "
          "print(profiling.seconds_since_process_start())")
  out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       check=True).stdout
  assert 1.5 <= float(out) < 60
