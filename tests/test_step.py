"""`sgan_jax.step`: one real training step on the tiny config and its
phases (docs/method.md §4)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sgan_jax import step
from sgan_jax.state import create_train_state

train_step = step.make_train_step()


@pytest.fixture(scope="module")
def stepped(tiny_config, synthetic_batch):
  config = tiny_config()
  state = create_train_state(config, jax.random.PRNGKey(0))
  before = jax.device_get(state)       # host copy: the step donates `state`
  batch = synthetic_batch(config)
  after, metrics = train_step(state, batch)
  return config, before, jax.device_get(after), jax.device_get(metrics), batch


def _leaves_changed(a, b):
  return [not np.array_equal(x, y) for x, y in
          zip(jax.tree.leaves(a), jax.tree.leaves(b))]


def test_step_counters_and_rng(stepped):
  _, before, after, _, _ = stepped
  assert int(after.step) == 1
  assert not np.array_equal(before.rng, after.rng)


def test_step_updates_both_networks(stepped):
  _, before, after, _, _ = stepped
  assert all(_leaves_changed(before.d_params, after.d_params))  # AdamW decays all
  changed = _leaves_changed(before.g_params, after.g_params)
  assert np.mean(changed) > 0.9
  # G's batch-norm and spectral-norm state advance in training mode.
  assert all(_leaves_changed(before.g_state["spectral"], after.g_state["spectral"]))
  assert all(_leaves_changed(before.g_state["batch_stats"],
                             after.g_state["batch_stats"]))


def test_step_updates_emas_with_momentum(stepped):
  config, before, after, _, _ = stepped
  m = config.optim.ema_decay
  for old, new, ema in [(before.d_ema_params, after.d_params, after.d_ema_params),
                        (before.g_ema_params, after.g_params, after.g_ema_params)]:
    jax.tree.map(lambda o, p, e: np.testing.assert_allclose(
        e, m * o + (1 - m) * p, rtol=1e-6, atol=1e-7), old, new, ema)


def test_step_enqueues_the_real_batch(stepped):
  config, before, after, _, batch = stepped
  n = config.global_batch_size
  d_net = after.spec.discriminator()
  keys = d_net.apply({"params": before.d_ema_params}, batch["image"], method=d_net.keys)
  emb = d_net.apply({"params": after.d_params}, batch["image"]).embedding
  np.testing.assert_allclose(after.queue_keys[:n], keys, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(after.queue_emb[:n], emb, rtol=1e-5, atol=1e-6)
  np.testing.assert_array_equal(after.queue_keys[n:], before.queue_keys[n:])
  np.testing.assert_array_equal(after.queue_emb[n:], before.queue_emb[n:])
  assert int(after.queue_ptr) == n


def test_step_is_finite_and_reports_metrics(stepped):
  _, _, after, metrics, _ = stepped
  for leaf in jax.tree.leaves(after):
    if np.issubdtype(np.asarray(leaf).dtype, np.floating):
      assert np.all(np.isfinite(leaf))
  for name in ["d/loss", "d/jsd", "d/real_sim", "d/fake_sim", "d/smoothness",
               "d/sigma_mean", "d/norm_hinge", "d/embed_norm", "d/probe_ce",
               "d/probe_acc", "d/grad_norm", "g/loss", "g/jsd", "g/fake_sim",
               "g/grad_norm"]:
    assert np.isfinite(metrics[name]), name
  assert metrics["d/sigma_mean"] > 0
  assert 0 <= metrics["d/probe_acc"] <= 1


def test_queue_pointer_wraps(stepped):
  config, _, after, _, batch = stepped
  state = jax.device_put(after)
  steps = config.queue_size // config.global_batch_size
  for _ in range(steps):
    state, _ = train_step(state, batch)
  assert int(state.queue_ptr) == config.global_batch_size   # wrapped once


def test_repeated_d_phases_lower_the_d_loss(stepped):
  config, before, _, _, batch = stepped
  state = jax.device_put(before)
  noise = step.draw_step_noise(state.spec, jax.random.PRNGKey(3),
                               config.global_batch_size)
  d_phase = jax.jit(step.d_phase)
  losses = []
  for _ in range(12):   # G, its state and D_ema stay frozen
    d_out = d_phase(state, batch, noise)
    state = state.replace(d_params=d_out.state.d_params,
                          d_opt_state=d_out.state.d_opt_state)
    losses.append(float(d_out.metrics["loss"]))
  assert losses[-1] < losses[0] - 0.05, losses


def test_repeated_g_phases_lower_the_g_loss(stepped):
  config, before, _, _, batch = stepped
  state = jax.device_put(before)
  noise = step.draw_step_noise(state.spec, jax.random.PRNGKey(4),
                               config.global_batch_size)
  real_keys = step.ema_keys(state.spec, state.d_ema_params, batch["image"])
  g_phase = jax.jit(step.g_phase)
  losses = []
  for _ in range(12):   # D and D_ema stay frozen; G's state is the state's
    g_out = g_phase(state, real_keys, batch, noise)
    state = state.replace(g_params=g_out.state.g_params,
                          g_opt_state=g_out.state.g_opt_state)
    losses.append(float(g_out.metrics["loss"]))
  assert losses[-1] < losses[0] - 0.01, losses


def test_bfloat16_activations_keep_float32_state_and_close_losses(stepped, tiny_config):
  config, before, _, metrics32, batch = stepped
  config = tiny_config()
  config.model.compute_dtype = "bfloat16"
  state = create_train_state(config, jax.random.PRNGKey(0))
  # Same initial parameters: the dtype changes the computation, not the init.
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(state.d_params),
               before.d_params)
  after, metrics16 = train_step(state, batch)
  for leaf in jax.tree.leaves(after):
    assert leaf.dtype in (jnp.float32, jnp.int32, jnp.uint32), leaf.dtype
    assert np.all(np.isfinite(leaf))
  for name in ("d/loss", "d/jsd", "d/real_sim", "d/fake_sim", "g/loss", "g/jsd"):
    assert float(metrics16[name]) == pytest.approx(float(metrics32[name]), rel=0.05,
                                                   abs=0.02), name


def test_the_step_makes_no_implicit_host_transfers(stepped):
  """With state and batch on the device, the jitted step neither reads from
  nor copies to the host (a `float()` or a NumPy constant inside would)."""
  _, before, _, _, batch = stepped
  state, batch = jax.device_put((before, batch))
  jax.block_until_ready((state, batch))
  with jax.transfer_guard("disallow"):
    state, metrics = train_step(state, batch)
    jax.block_until_ready((state, metrics))
  assert int(state.step) == int(before.step) + 1


def test_phases_hand_their_state_forward(stepped):
  """The D phase's state has D updated and G's state advanced, nothing else;
  the G phase's starts from it and updates G alone; the step adds the EMAs,
  the queue, the counter and the rng to the G phase's state."""
  _, before, after, _, batch = stepped
  n = len(batch["image"])
  out = jax.device_get(jax.jit(step.step_with_phases)(jax.device_put(before), batch))
  after_d, after_g = out.d_out.state, out.g_out.state
  same = lambda a, b: jax.tree.map(np.testing.assert_array_equal, a, b)
  changed = lambda a, b: not all(np.array_equal(x, y) for x, y in
                                 zip(jax.tree.leaves(a), jax.tree.leaves(b)))
  for field in ("d_params", "d_opt_state", "g_state"):
    assert changed(getattr(after_d, field), getattr(before, field)), field
  for field in ("g_params", "g_opt_state", "d_ema_params", "g_ema_params",
                "queue_emb", "queue_keys", "queue_ptr", "step", "rng"):
    same(getattr(after_d, field), getattr(before, field))
  for field in ("d_params", "d_opt_state", "d_ema_params", "g_ema_params",
                "queue_emb", "queue_keys", "queue_ptr", "step", "rng"):
    same(getattr(after_g, field), getattr(after_d, field))
  for field in ("g_params", "g_opt_state", "g_state"):
    assert changed(getattr(after_g, field), getattr(after_d, field)), field
  for field in ("d_params", "d_opt_state", "g_params", "g_opt_state", "g_state"):
    same(getattr(out.state, field), getattr(after_g, field))
  np.testing.assert_array_equal(out.state.queue_keys[:n], out.d_out.real_keys)
  np.testing.assert_array_equal(out.state.queue_emb[:n], out.g_out.real_emb)
  # The same step as `step_fn`'s (another program: equal up to rounding).
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6),
               out.state, after)
