"""The FLOP counter against hand counts, and the benchmark's JSON fields."""
import jax
import jax.numpy as jnp
import pytest

from sgan_jax import benchmark, config_lib, flops
from sgan_jax.interop import timing
from sgan_jax.models import Discriminator


def conv(n, hw, k, cin, cout):
  return 2 * n * hw * hw * k * k * cin * cout


def test_flops_of_the_tiny_discriminator_match_a_hand_count():
  n = 4
  d = Discriminator(16, (8, 16, 16), 1, embed_dim=16, num_classes=10)
  x = jnp.zeros((n, 16, 16, 3))
  params = d.init(jax.random.PRNGKey(0), x)
  expected = (conv(n, 16, 3, 3, 8)                                   # stem
              + 2 * conv(n, 16, 3, 8, 8)                             # stage 1
              + conv(n, 8, 3, 8, 16) + conv(n, 8, 3, 16, 16) + conv(n, 8, 1, 8, 16)
              + 2 * conv(n, 4, 3, 16, 16) + conv(n, 4, 1, 16, 16)   # stage 3
              + 2 * n * (16 * 16 + 16 * 16 + 16 * 10))               # head, probe
  assert flops.count(d.apply, params, x) == expected


def test_flops_of_a_gradient_include_the_backward_convolutions():
  x, w = jnp.ones((2, 8, 8, 3)), jnp.ones((3, 3, 3, 16))
  f = lambda x, w: jax.lax.conv_general_dilated(
      x, w, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")).sum()
  one = conv(2, 8, 3, 3, 16)
  assert flops.count(f, x, w) == one
  assert flops.count(jax.grad(f, argnums=1), x, w) == 2 * one   # + weight grad
  assert flops.count(jax.grad(f, argnums=(0, 1)), x, w) == 3 * one


@pytest.mark.slow   # compiles six variants of the step
@pytest.mark.extra   # not in .ci/run: see setup.cfg
def test_benchmark_reports_every_field(tiny_digits):
  config = tiny_digits()
  result = benchmark.measure(config, steps=2, warmup=1, pipeline_batches=3,
                             pipeline_workers=(0, 1))
  assert result["step_flops"] > 0
  for part in ("plain_step", "d_phase", "d_phase_no_jacobian", "g_phase",
               "knn_search"):
    assert result[f"{part}_flops"] > 0 and result[f"{part}_time_s"] > 0
  assert result["step_flops"] > result["d_phase_flops"] > result["d_phase_no_jacobian_flops"]
  assert result["step_flops"] > result["plain_step_flops"]
  for key in ("compile_s", "step_time_median_s", "images_per_s", "achieved_flops_per_s",
              "structural_overhead", "matmul_peak_fp32_flops_per_s",
              "fraction_of_fp32_peak", "pipeline_to_step_ratio",
              "pipeline_host_augment_w0_images_per_s", "pipeline_uint8_w0_images_per_s",
              "pipeline_host_augment_w1_images_per_s", "pipeline_uint8_w1_per_core",
              "device_augment_images_per_s"):
    assert isinstance(result[key], float) and result[key] > 0, key
  # 1 worker process: per core is the rate itself.
  assert result["pipeline_uint8_w1_per_core"] == result["pipeline_uint8_w1_images_per_s"]
  # A difference of two timings: its sign depends on the machine's load (it
  # went negative on a busy machine), so only its definition is checked.
  assert result["jacobian_share_of_d_phase"] == pytest.approx(
      1 - result["d_phase_no_jacobian_time_s"] / result["d_phase_time_s"])
  assert result["backend"] == "cpu" and result["global_batch_size"] == 8


def test_the_authors_step_is_only_timed_where_it_compares():
  reference = config_lib.reference_config()
  timing.check_comparable(reference, "cpu")
  wider = config_lib.reference_config()
  wider.model.g_ch = 64
  with pytest.raises(config_lib.ConfigError, match="reference architecture"):
    timing.check_comparable(wider, "cpu")
  timing.check_comparable(reference, "gpu")   # PyTorch on the CUDA GPU
  with pytest.raises(config_lib.ConfigError, match="JAX_PLATFORMS=cpu"):
    timing.check_comparable(reference, "tpu")
  assert timing.torch_device("cpu") == "cpu"


def test_paired_figures():
  own, ref = [[1.0, 3.0, 2.0], [2.0, 2.5, 4.0]], [[4.0, 5.0, 6.0], [3.0, 8.0, 5.0]]
  got = timing.paired_figures(own, ref, batch=32)
  assert got["round_medians_s"] == [2.0, 2.5] and got["reference_round_medians_s"] == [5.0, 5.0]
  assert got["paired_step_time_median_s"] == 2.25   # median of all six
  assert got["reference_step_time_median_s"] == 5.0
  assert got["step_time_ratio_to_reference"] == pytest.approx(0.45)
  assert got["reference_images_per_s"] == pytest.approx(6.4)


def test_profile_names_the_costliest_operations_and_their_source(tmp_path):
  from sgan_jax import profiling
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
  from sgan_jax import profiling
  monkeypatch.setattr(jax.profiler, "start_trace", lambda d: None)
  monkeypatch.setattr(jax.profiler, "stop_trace", lambda: None)
  with pytest.raises(FileNotFoundError, match="no trace"):
    profiling.trace(lambda: jnp.ones(2), 1, str(tmp_path))
