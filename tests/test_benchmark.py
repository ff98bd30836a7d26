"""`sgan_jax.benchmark`: its variants of the step, its JSON fields, and the
timing of the authors' step (`interop.timing`) it reports."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sgan_jax import benchmark, config_lib, losses, step
from sgan_jax.interop import timing
from sgan_jax.state import create_train_state


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


@pytest.fixture(scope="module")
def tiny_inputs(tiny_config, synthetic_batch):
  config = tiny_config()
  state = jax.device_get(create_train_state(config, jax.random.PRNGKey(0)))
  noise = step.draw_step_noise(state.spec, jax.random.PRNGKey(1), config.global_batch_size)
  return state, synthetic_batch(config), noise


def test_the_no_jacobian_variant_is_the_d_loss_without_its_jacobian_term(tiny_inputs):
  state, batch, noise = tiny_inputs
  fake, _ = step.generate(state.spec, state.g_params, state.g_state, noise["z_d"])
  both = jnp.concatenate([batch["image"], fake])

  def d_loss(sigma_fn):
    fn = jax.jit(functools.partial(step.d_loss, sigma_fn=sigma_fn))
    return jax.device_get(fn(state, state.d_params, both, batch["label"], noise["u"]))
  full, aux = d_loss(step.power_iteration)
  without, aux1 = d_loss(benchmark.unit_sigma)
  np.testing.assert_array_equal(aux1.sigma, 1)
  assert aux1.metrics["smoothness"] == 0 and aux.metrics["smoothness"] > 0
  for name in ("jsd", "real_sim", "fake_sim", "norm_hinge", "probe_ce"):
    np.testing.assert_allclose(aux1.metrics[name], aux.metrics[name], rtol=1e-5, atol=1e-7)
  np.testing.assert_allclose(aux1.outputs.embedding, aux.outputs.embedding, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(full - without,
                             state.spec.loss.smoothness_weight * aux.metrics["smoothness"],
                             rtol=1e-4, atol=1e-6)


def test_the_plain_step_trains_d_and_g_on_the_gaussian_term_alone(tiny_inputs):
  """Adam's first moment after one step is (1 - b1) x the gradient: compared
  with the gradients of +-gaussian_jsd written out here."""
  state, batch, _ = tiny_inputs
  spec, n = state.spec, batch["image"].shape[0]
  after, metrics = jax.device_get(jax.jit(benchmark.plain_step)(state, batch))
  assert metrics == {} and int(after.step) == 1
  for field in ("d_ema_params", "g_ema_params", "queue_emb", "queue_keys", "queue_ptr",
                "rng"):
    jax.tree.map(np.testing.assert_array_equal, getattr(after, field), getattr(state, field))
  noise = step.draw_step_noise(spec, state.rng, n)
  d_net = spec.discriminator()
  emb = lambda p, x: d_net.apply({"params": p}, x).embedding

  @jax.jit
  def reference_grads(d_params, new_d_params):
    fake, g_state = step.generate(spec, state.g_params, state.g_state, noise["z_d"])
    both = jnp.concatenate([batch["image"], fake])
    d_grad = jax.grad(lambda p: -losses.gaussian_jsd(
        emb(p, both)[:n], emb(p, both)[n:], spec.loss.eps))(d_params)
    real = emb(new_d_params, batch["image"])
    g_grad = jax.grad(lambda p: losses.gaussian_jsd(real, emb(new_d_params, step.generate(
        spec, p, g_state, noise["z_g"])[0]), spec.loss.eps))(state.g_params)
    return d_grad, g_grad
  d_grad, g_grad = jax.device_get(reference_grads(state.d_params, after.d_params))
  b1 = spec.optim.b1

  def close(moment, grad):
    """Within 1e-3 of the tensor's largest entry; G's conv biases before a
    batch norm have a gradient of rounding noise (0 in exact arithmetic),
    held to an absolute 1e-6."""
    expected = (1 - b1) * np.asarray(grad, np.float64)
    assert np.max(np.abs(moment - expected)) <= 1e-3 * np.max(np.abs(expected)) + 1e-6
  for mu, grad in ((after.d_opt_state[0].mu, d_grad), (after.g_opt_state[0].mu, g_grad)):
    jax.tree.map(close, mu, grad)
