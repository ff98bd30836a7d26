"""Stop signals and non-finite values (`sgan_jax.guards`), on their own and in
the training loop: a stop request ends the run with a checkpoint at the next
check point, and nothing non-finite is ever saved (docs/guarantees.md)."""
import logging
import os
import signal
import threading
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sgan_jax import checkpointing, evaluation, guards, train

from helpers import all_finite, restore_latest, with_hook


def test_first_nonfinite_names_the_first_step_and_metric():
  metrics = [(4, {"d/loss": jnp.float32(1.0), "g/loss": jnp.float32(2.0)}),
             (5, {"d/loss": jnp.float32(3.0), "g/loss": jnp.float32(np.inf)}),
             (6, {"d/loss": jnp.float32(np.nan), "g/loss": jnp.float32(np.nan)})]
  assert guards.first_nonfinite(metrics[:1]) is None and guards.first_nonfinite([]) is None
  step, name, value = guards.first_nonfinite(metrics)
  assert (step, name, value) == (5, "g/loss", np.inf)
  # Within a step, the first metric in name order.
  assert guards.first_nonfinite(metrics[2:])[:2] == (6, "d/loss")


def test_stop_signals_request_a_stop_and_restore_the_handlers():
  before = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
  with guards.StopSignals() as stop:
    assert not stop.check()
    stop.raise_if_requested("now")   # nothing requested: no stop
    os.kill(os.getpid(), signal.SIGTERM)
    assert stop.check() and stop.requested == "SIGTERM"
    with pytest.raises(guards.StopRequested, match="SIGTERM received while testing"):
      stop.raise_if_requested("while testing")
    # A second signal gets the handler from before (an immediate stop).
    assert signal.getsignal(signal.SIGTERM) is before[signal.SIGTERM]
  assert {sig: signal.getsignal(sig) for sig in before} == before


def test_stop_signals_outside_the_main_thread_install_nothing():
  before = signal.getsignal(signal.SIGTERM)
  seen = []

  def enter():
    with guards.StopSignals():
      seen.append(signal.getsignal(signal.SIGTERM))
  thread = threading.Thread(target=enter)
  thread.start()
  thread.join()
  assert seen == [before]


# ----------------------------------------------------------------- signals

def test_sigint_finishes_the_step_checkpoints_and_resumes(tmp_path, tiny_digits,
                                                          monkeypatch, caplog):
  def interrupt(step, state, metrics):
    if step == 3:
      os.kill(os.getpid(), signal.SIGINT)
    return state, metrics
  caplog.set_level(logging.INFO)
  with_hook(monkeypatch, interrupt)
  handler_before = signal.getsignal(signal.SIGINT)
  config = tiny_digits(num_train_steps=50, checkpoint_every_steps=40)
  state = train.train_and_evaluate(config, str(tmp_path))
  assert int(state.step) == 3
  assert "SIGINT received: saved checkpoint 3" in caplog.text
  assert restore_latest(config, str(tmp_path)).step == 3
  # The handler is gone after the run: the previous one is back.
  assert signal.getsignal(signal.SIGINT) is handler_before
  monkeypatch.undo()
  again = tiny_digits(num_train_steps=5)
  # The final evaluation is not what this test is about: k-NN only.
  again.eval.evaluators, again.eval.generator_metrics = ("knn",), False
  resumed = train.train_and_evaluate(again, str(tmp_path))
  assert int(resumed.step) == 5
  assert "Resumed from" in caplog.text and "at step 3" in caplog.text


def test_sigterm_during_evaluation_stops_within_seconds_and_a_rerun_evaluates(
    tmp_path, tiny_digits, monkeypatch, caplog):
  """The final evaluation is abandoned at its next check point (the
  checkpoint of the step is kept); a re-run runs the missing evaluation."""
  caplog.set_level(logging.INFO)
  real = evaluation.extract_features
  sent = []

  def extract_then_signal(*args, **kwargs):
    if not sent:   # the first extraction of the evaluation: a signal arrives
      sent.append(time.time())
      os.kill(os.getpid(), signal.SIGTERM)
    return real(*args, **kwargs)
  monkeypatch.setattr(evaluation, "extract_features", extract_then_signal)
  config = tiny_digits(num_train_steps=2)
  state = train.train_and_evaluate(config, str(tmp_path))
  stopped_after = time.time() - sent[0]
  assert int(state.step) == 2 and stopped_after < 5, stopped_after
  assert "SIGTERM received: saved checkpoint 2" in caplog.text
  assert not os.path.exists(tmp_path / "eval_2.json")
  assert int(restore_latest(config, str(tmp_path)).step) == 2
  monkeypatch.undo()
  train.train_and_evaluate(config, str(tmp_path))   # the re-run: nothing to train
  assert "Evaluating the restored step 2" in caplog.text
  assert os.path.exists(tmp_path / "eval_2.json")


def test_a_stop_during_start_up_exits_before_training(tmp_path, tiny_digits, monkeypatch):
  real = train.create_train_state

  def create_then_signal(*args, **kwargs):
    os.kill(os.getpid(), signal.SIGTERM)
    return real(*args, **kwargs)
  monkeypatch.setattr(train, "create_train_state", create_then_signal)
  with pytest.raises(guards.StopRequested, match="SIGTERM received while starting"):
    train.train_and_evaluate(tiny_digits(num_train_steps=2), str(tmp_path))
  assert not os.listdir(tmp_path / "checkpoints")


# ------------------------------------------------------------- non-finite

def _poison_at(step_to_poison, times=1):
  hits = []

  def hook(step, state, metrics):
    if step == step_to_poison and len(hits) < times:
      hits.append(step)
      metrics = {**metrics, "g/grad_norm": metrics["g/grad_norm"] * np.nan}
      state = state.replace(g_params=jax.tree.map(lambda x: x * np.nan, state.g_params))
    return state, metrics
  return hook, hits


def test_nonfinite_stops_naming_step_and_term_and_saves_nothing_bad(
    tmp_path, tiny_digits, monkeypatch):
  hook, _ = _poison_at(3)
  with_hook(monkeypatch, hook)
  config = tiny_digits(num_train_steps=6)
  with pytest.raises(guards.NonFiniteError,
                     match=r"non-finite g/grad_norm = nan at step 3"):
    train.train_and_evaluate(config, str(tmp_path))
  ckpt = checkpointing.Checkpointer(str(tmp_path), 3)
  assert ckpt.latest_step() == 2
  ckpt.close()
  assert all_finite(restore_latest(config, str(tmp_path)))


def test_nonfinite_rollback_skips_the_batch_a_bounded_number_of_times(
    tmp_path, tiny_digits, monkeypatch, caplog):
  hook, hits = _poison_at(3)
  with_hook(monkeypatch, hook)
  state = train.train_and_evaluate(
      tiny_digits(num_train_steps=6, nonfinite_rollbacks=1), str(tmp_path / "a"))
  assert hits == [3] and int(state.step) == 6 and all_finite(jax.device_get(state))
  assert "skipping the batch of step 3 (0 rollbacks left)" in caplog.text
  # Failing again after the allowed rollbacks stops the run.
  hook, hits = _poison_at(3, times=5)
  with_hook(monkeypatch, hook)
  with pytest.raises(guards.NonFiniteError, match="at step 3"):
    train.train_and_evaluate(tiny_digits(num_train_steps=6, nonfinite_rollbacks=2),
                             str(tmp_path / "b"))
  assert hits == [3, 3, 3]
