"""`sgan_jax.profiling`: the costliest operations of a trace, with their source."""
import jax
import jax.numpy as jnp
import pytest

from sgan_jax import profiling


def test_profile_names_the_costliest_operations_and_their_source(tmp_path):
  x = jax.random.normal(jax.random.PRNGKey(0), (384, 384))
  compiled = jax.jit(lambda a: jnp.sort(a @ a, axis=1)).lower(x).compile()
  trace_file = profiling.trace(lambda: compiled(x), 3, str(tmp_path))
  assert trace_file.endswith(".trace.json.gz") and trace_file.startswith(str(tmp_path))
  ops = profiling.costliest_ops(trace_file, compiled.as_text(), calls=3)
  assert ops and all(s > 0 for s, _, _ in ops)
  assert [s for s, _, _ in ops] == sorted((s for s, _, _ in ops), reverse=True)
  # The matmul and the sort ran, each traced back to the JAX op it came from;
  # the runtime's own events are not operations.
  sources = [name for _, _, name in ops]
  assert any(name.endswith("dot_general") for name in sources), ops
  assert any(name.endswith("sort") for name in sources), ops
  assert not any("Execute" in op for _, op, _ in ops), ops


def test_profile_reports_a_missing_trace(tmp_path, monkeypatch):
  monkeypatch.setattr(jax.profiler, "start_trace", lambda d: None)
  monkeypatch.setattr(jax.profiler, "stop_trace", lambda: None)
  with pytest.raises(FileNotFoundError, match="no trace"):
    profiling.trace(lambda: jnp.ones(2), 1, str(tmp_path))
