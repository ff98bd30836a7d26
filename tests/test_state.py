"""`sgan_jax.state`: the spec read from the config, and the initial state."""
import dataclasses
import inspect

import jax
import numpy as np
import pytest

from sgan_jax import config_lib, losses
from sgan_jax.state import (LossSpec, ModelSpec, OptimSpec, StepSpec,
                            TrainState, create_train_state)

_SECTIONS = {"model": ModelSpec, "loss": LossSpec, "optim": OptimSpec}


def _names(cls):
  return [f.name for f in dataclasses.fields(cls)]


def test_each_spec_section_has_exactly_its_config_sections_fields():
  config = config_lib.reference_config()
  for section, cls in _SECTIONS.items():
    assert sorted(_names(cls)) == sorted(config[section].keys()), section
  # The rest of the spec: the sections and top-level fields of the config.
  for name in _names(StepSpec):
    assert name in config, name
    field_type = {f.name: f.type for f in dataclasses.fields(StepSpec)}[name]
    assert (field_type is _SECTIONS.get(name)) == (name in _SECTIONS), name


def test_from_config_reads_every_field_by_name():
  config = config_lib.reference_config()
  config.model.d_widths = [64, 128, 256, 256]   # a list, as from JSON
  config.queue_size = 2048
  config.loss.knn_weight = 2.5
  config.optim.ema_decay = 0.9
  spec = StepSpec.from_config(config)
  assert spec.model.d_widths == (64, 128, 256, 256)   # a tuple: hashable
  assert spec.queue_size == 2048 and spec.loss.knn_weight == 2.5
  assert spec.optim.ema_decay == 0.9
  for section, cls in _SECTIONS.items():
    for name in _names(cls):
      expected = config[section][name]
      expected = tuple(expected) if isinstance(expected, list) else expected
      assert getattr(getattr(spec, section), name) == expected, (section, name)
  for name in ("image_size", "num_classes", "queue_size"):
    assert getattr(spec, name) == config[name]


def test_specs_are_compared_by_value_and_shared_by_jit():
  config = config_lib.reference_config()
  a, b = StepSpec.from_config(config), StepSpec.from_config(config)
  assert a is not b and a == b and hash(a) == hash(b)
  config.loss.probe_weight = 0.5
  assert StepSpec.from_config(config) != a
  assert a.with_compute_dtype("bfloat16").model.compute_dtype == "bfloat16"
  assert a.with_compute_dtype("bfloat16").loss == a.loss
  with pytest.raises(dataclasses.FrozenInstanceError):
    a.model.z_dim = 3
  traces = []

  @jax.jit
  def count(state):
    traces.append(1)
    return state.step + 1

  arrays = dict(step=np.int32(0), rng=np.zeros(2, np.uint32), d_params={},
                d_opt_state={}, d_ema_params={}, g_params={}, g_opt_state={},
                g_ema_params={}, g_state={}, queue_emb=np.zeros((2, 2)),
                queue_keys=np.zeros((2, 2)), queue_ptr=np.int32(0))
  count(TrainState(spec=a, **arrays))
  count(TrainState(spec=b, **arrays))
  assert len(traces) == 1   # equal specs: one trace


def test_train_state_arrays_are_its_fields_and_the_spec_is_static():
  """The checkpointed tree is the state's array fields; the spec is no leaf
  (checkpoints hold no spec: the config defines it)."""
  arrays = [f.name for f in dataclasses.fields(TrainState) if f.name != "spec"]
  assert arrays == ["step", "rng", "d_params", "d_opt_state", "d_ema_params",
                    "g_params", "g_opt_state", "g_ema_params", "g_state",
                    "queue_emb", "queue_keys", "queue_ptr"]
  spec = StepSpec.from_config(config_lib.reference_config())
  state = TrainState(spec=spec, **{name: np.float32(i) for i, name in enumerate(arrays)})
  leaves = jax.tree.leaves(state)
  assert [float(x) for x in leaves] == list(range(len(arrays)))


def _distinct_loss_spec():
  """A LossSpec whose every field holds a value no other field holds."""
  values = dict(eps=0.25, knn_k=7, skip_nearest_fake=False, renormalize_mean=False,
                jacobian_iters=3, knn_weight=1.5, smoothness_weight=2.5,
                norm_hinge_weight=3.5, probe_weight=4.5)
  assert sorted(values) == sorted(_names(LossSpec))
  return LossSpec(**values)


def test_loss_spec_maps_every_field_to_its_loss_keyword():
  spec = _distinct_loss_spec()
  settings, weights = spec.settings(), spec.d_weights()
  assert settings._asdict() == dict(eps=0.25, k=7, skip_nearest_fake=False,
                                    renormalize_mean=False, knn_weight=1.5)
  assert weights._asdict() == dict(smoothness_weight=2.5, norm_hinge_weight=3.5,
                                   probe_weight=4.5)
  # Every field reaches the losses, except the power iteration's count (the
  # step reads that one itself).
  passed = {**settings._asdict(), **weights._asdict()}
  assert len(passed) == len(_names(LossSpec)) - 1
  assert "jacobian_iters" in _names(LossSpec)


def test_the_loss_keywords_are_those_of_the_public_losses():
  """`LossSettings` and `DWeights` carry the keyword arguments of
  `discriminator_loss`, and `LossSettings` those of `generator_loss`, with the
  reference config's values as their defaults."""
  def keywords(fn):
    return {name: p.default for name, p in inspect.signature(fn).parameters.items()
            if p.kind is inspect.Parameter.KEYWORD_ONLY}
  d_keywords, g_keywords = keywords(losses.discriminator_loss), keywords(losses.generator_loss)
  assert sorted(d_keywords) == sorted(losses.LossSettings._fields + losses.DWeights._fields)
  assert sorted(g_keywords) == sorted(losses.LossSettings._fields)
  reference = StepSpec.from_config(config_lib.reference_config()).loss
  for given in (reference.settings(), reference.d_weights()):
    for name, value in given._asdict().items():
      assert d_keywords[name] == value, name
      assert g_keywords.get(name, value) == value, name


def test_initial_state(tiny_config):
  config = tiny_config()
  state = jax.device_get(create_train_state(config, jax.random.PRNGKey(0)))
  # The EMAs start equal to the networks.
  jax.tree.map(np.testing.assert_array_equal, state.d_params, state.d_ema_params)
  jax.tree.map(np.testing.assert_array_equal, state.g_params, state.g_ema_params)
  # The queue starts as random unit vectors.
  np.testing.assert_allclose(np.linalg.norm(state.queue_emb, axis=1), 1, rtol=1e-5)
  np.testing.assert_allclose(np.linalg.norm(state.queue_keys, axis=1), 1, rtol=1e-5)
  assert state.queue_emb.shape == (config.queue_size, config.model.embed_dim)
  assert state.queue_keys.shape == (config.queue_size, config.model.d_widths[-1])
  assert int(state.step) == 0 and int(state.queue_ptr) == 0
  assert state.spec == StepSpec.from_config(config)
