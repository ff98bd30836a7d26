"""The training loop (`sgan_jax.train`): a run's outputs, an exact resume,
errors before any compute, the periodic jobs' schedule, and no implicit host
transfer in the step."""
import os

import jax
import numpy as np
import pytest

from sgan_jax import checkpointing, dataset_builders, errors, train
from sgan_jax.state import create_train_state

from helpers import check_outputs, read_metrics


def test_tiny_end_to_end_on_mock_cifar(tmp_path, mock_tfds, tiny_config):
  config = tiny_config()
  with mock_tfds():
    state = train.train_and_evaluate(config, str(tmp_path))
  assert int(state.step) == config.num_train_steps
  check_outputs(str(tmp_path), [2, 4], config)


def test_resume_continues_exactly(tmp_path, mock_tfds, tiny_config):
  full, split = str(tmp_path / "full"), str(tmp_path / "split")
  with mock_tfds():
    train.train_and_evaluate(tiny_config(log_every_steps=1), full)
    stopped = jax.device_get(train.train_and_evaluate(
        tiny_config(log_every_steps=1, num_train_steps=2), split))
  # The checkpoint holds exactly the state the run stopped with.
  ckpt = checkpointing.Checkpointer(split, 3)
  fresh = create_train_state(tiny_config(), jax.random.PRNGKey(123))
  restored = jax.device_get(ckpt.restore(fresh))
  ckpt.close()
  for name in ("d_params", "d_opt_state", "d_ema_params", "g_params",
               "g_opt_state", "g_ema_params", "g_state", "queue_emb",
               "queue_keys", "queue_ptr", "rng", "step"):
    jax.tree.map(np.testing.assert_array_equal, getattr(stopped, name),
                 getattr(restored, name))
  with mock_tfds():
    resumed = train.train_and_evaluate(tiny_config(log_every_steps=1), split)
  assert int(resumed.step) == 4
  a, b = read_metrics(full), read_metrics(split)
  assert [m["step"] for m in b] == [1, 2, 3, 4]   # resumed at step 2, no repeats
  for x, y in zip(a, b):
    for key in x:
      if key != "images_per_second":
        assert x[key] == pytest.approx(y[key], rel=1e-6, abs=1e-7), (x["step"], key)


def test_missing_dataset_fails_at_once_with_instructions(tmp_path, monkeypatch,
                                                        tiny_config):
  monkeypatch.setattr(dataset_builders, "_can_download", lambda: False)
  data_dir = str(tmp_path / "empty")
  config = tiny_config(dataset="cifar100", num_classes=100, data_dir=data_dir)
  with pytest.raises(dataset_builders.DatasetUnavailableError) as err:
    train.train_and_evaluate(config, str(tmp_path / "run"))
  msg = str(err.value)
  assert "'cifar100'" in msg and data_dir in msg and "tfds build cifar100" in msg
  assert not os.path.exists(tmp_path / "run" / "checkpoints")


@pytest.mark.parametrize("overrides,message", [
    (dict(global_batch_size=12), "queue_size 32 must be a positive multiple of global_batch_size 12"),
    (dict(queue_size=36), "queue_size 36 must be a positive multiple of global_batch_size 8"),
])
def test_bad_config_fails_before_compiling(tmp_path, monkeypatch, overrides, message,
                                          tiny_config):
  def no_compile(*args, **kwargs):
    raise AssertionError("compiled before validating")
  monkeypatch.setattr(train, "create_train_state", no_compile)
  monkeypatch.setattr(dataset_builders, "get_builder", no_compile)
  with pytest.raises(errors.ConfigError, match=message):
    train.train_and_evaluate(tiny_config(**overrides), str(tmp_path))
  assert not os.listdir(tmp_path)


def test_the_periodic_jobs_run_every_n_steps_and_at_the_last(tiny_config):
  config = tiny_config(num_train_steps=7, log_every_steps=3)
  calls = []
  log = train._periodic(config, "log", lambda step, t, **kw: calls.append((step, kw)))
  assert [log(step, state=step) for step in range(1, 8)] == [
      False, False, True, False, False, True, True]
  assert calls == [(3, {"state": 3}), (6, {"state": 6}), (7, {"state": 7})]
  # After a restart the first call may be at any step, due or not.
  assert train._periodic(config, "log", lambda **_: None)(6)
  assert not train._periodic(config, "log", lambda **_: None)(5)


def _step_that(transfer):
  """A `make_train_step` whose step also does `transfer(metrics)`."""
  real = train.make_train_step

  def make(mesh):
    step_fn = real(mesh)

    def wrapped(state, batch):
      state, metrics = step_fn(state, batch)
      transfer(metrics)
      return state, metrics
    return wrapped
  return make


_IMPLICIT = {
    # A NumPy constant in an operation on a device array: sent implicitly.
    "host-to-device": lambda metrics: metrics["d/loss"] * np.float32(2),
    # A value read to the host without jax.device_get (on a CPU backend the
    # arrays are host memory: no transfer, nothing to refuse).
    "device-to-host": lambda metrics: float(metrics["d/loss"]),
}


@pytest.mark.parametrize("direction", sorted(_IMPLICIT))
def test_an_implicit_host_transfer_in_the_step_is_an_error(tmp_path, tiny_digits,
                                                           monkeypatch, direction):
  """The loop calls the step under `jax.transfer_guard("disallow")`: a step
  that moves a value between host and device implicitly fails."""
  if direction == "device-to-host" and jax.default_backend() == "cpu":
    pytest.skip("on a CPU backend an array is host memory: reading it is no transfer")
  monkeypatch.setattr(train, "make_train_step", _step_that(_IMPLICIT[direction]))
  with pytest.raises(Exception, match=f"Disallowed {direction} transfer"):
    train.train_and_evaluate(tiny_digits(num_train_steps=1), str(tmp_path))
