"""Configs (`sgan_jax.config_lib`): validation of every field's type and range
and of combinations, for a config from a file, from flags, or stored in a
workdir (`config.json`); the configs each start of a run keeps."""
import json
import math
import subprocess
import sys

import pytest

from sgan_jax import config_lib, errors, storage

from helpers import load_tiny

# (dotted field, bad value, what the one-line error must say)
BAD_STORED = [
    ("global_batch_size", "512", "global_batch_size must be an integer, got '512'"),
    ("eval", 5, "config field 'eval' must be a group of fields"),
    ("num_classes", 0, "num_classes must be at least 2, got 0"),
    ("num_classes", -3, "num_classes must be at least 2, got -3"),
    ("keep_checkpoints", 0, "keep_checkpoints must be positive, got 0"),
    ("keep_checkpoints", -1, "keep_checkpoints must be positive, got -1"),
    ("optim.ema_decay", 2, r"optim.ema_decay must be in \(0.0, 1.0\), got 2"),
    ("optim.b1", -1, r"optim.b1 must be in \[0.0, 1.0\), got -1"),
    ("optim.d_lr", math.inf, "optim.d_lr must be a finite number, got inf"),
    ("num_train_steps", 10.5, "num_train_steps must be an integer, got 10.5"),
    ("seed", "x", "seed must be an integer, got 'x'"),
    ("augment", "no", "augment must be true or false, got 'no'"),
    ("model.d_widths", [32, "64"], "model.d_widths must be a list of integers"),
    ("eval.svm_c", "big", "eval.svm_c must be a finite number or None, got 'big'"),
    ("loss.knn_weight", True, "loss.knn_weight must be a finite number, got True"),
    ("data_workers", -2, "data_workers must be at least -1, got -2"),
]


def _set(stored, dotted, value):
  *parents, last = dotted.split(".")
  for p in parents:
    stored = stored[p]
  stored[last] = value


@pytest.mark.parametrize("field,value,message", BAD_STORED,
                         ids=[f"{f}={v!r}" for f, v, _ in BAD_STORED])
def test_a_bad_stored_value_is_refused_in_one_line(tmp_path, field, value, message):
  stored = json.loads(load_tiny().to_json())
  _set(stored, field, value)
  # json.dumps writes inf as Infinity, which json.loads reads back as inf.
  (tmp_path / "config.json").write_text(json.dumps(stored))
  with pytest.raises(errors.ConfigError, match=message) as e:
    config_lib.read_run_config(str(tmp_path))
  assert "\n" not in str(e.value)
  assert str(e.value).startswith(str(tmp_path / "config.json"))


@pytest.mark.parametrize("field,value,message", BAD_STORED[2:],
                         ids=[f"{f}={v!r}" for f, v, _ in BAD_STORED[2:]])
def test_a_bad_value_from_a_config_file_is_refused(field, value, message):
  """The same rules hold for a config built in Python (a config file's
  `get_config`, or a notebook): ConfigDict assignment is typed, so only the
  values it lets through are checked here."""
  config = load_tiny()
  try:
    _set(config, field, value)
  except TypeError:
    pytest.skip("ConfigDict itself refuses this type")
  group, _, key = field.rpartition(".")
  if type((config[group] if group else config)[key]) is not type(value):
    pytest.skip("ConfigDict converts this value to the field's type")
  with pytest.raises(errors.ConfigError, match=message):
    config_lib.validate(config)


def test_a_stored_config_that_is_not_an_object_is_refused(tmp_path):
  (tmp_path / "config.json").write_text("[1, 2]")
  with pytest.raises(errors.ConfigError, match="config.json is not a valid config"):
    config_lib.read_run_config(str(tmp_path))


def test_every_packaged_config_passes():
  for name in config_lib.packaged_configs():
    config = config_lib.load_config(name)
    if config.dataset == "image_folder":   # the ImageNet configs: the folder is the user's
      with pytest.raises(errors.ConfigError, match="needs --config.data_dir=ROOT"):
        config_lib.validate(config)
      config.data_dir = "/imagenet"
    config_lib.validate(config)


def test_valid_edge_values_pass():
  config = load_tiny()
  config.optim.b1 = 0.0             # Adam without momentum
  config.optim.d_weight_decay = 0.0
  config.nonfinite_rollbacks = 0
  config.data_workers = -1
  config.eval.linear_c = 1          # an integer where a float is declared
  config_lib.validate(config)


def test_a_resume_with_changed_settings_says_which(tmp_path, monkeypatch):
  from absl import logging
  from sgan_jax import train
  warnings = []
  monkeypatch.setattr(logging, "warning", lambda msg, *a: warnings.append(msg % a))
  config = load_tiny()
  train._keep_config(config, str(tmp_path), None)          # the first start
  assert not warnings and (tmp_path / "config.json").exists()
  train._keep_config(config, str(tmp_path), 2)             # same settings
  assert not warnings
  config.optim.d_lr = 1e-3
  config.loss.knn_weight = 1.0
  train._keep_config(config, str(tmp_path), 4)
  assert warnings == [
      "Resuming at step 4 with 2 setting(s) changed since the last start (kept in "
      "config_resume_4.json): loss.knn_weight: 3.0 -> 1.0; optim.d_lr: 0.0002 -> 0.001"]
  assert json.loads((tmp_path / "config_resume_4.json").read_text())["optim"]["d_lr"] == 1e-3


@pytest.mark.parametrize("field,value,message", [
    ("image_size", 48, "image_size: unsupported resolution 48; supported: [16, 32, 64, 128]"),
    ("model.d_widths", (8, 16, 50), "model.d_widths: width 50 is not divisible into 3 "
                                     "GroupNorm groups of 16 channels"),
    ("num_train_steps", 0, "num_train_steps must be positive, got 0"),
    ("optim.d_lr", -1e-4, "optim.d_lr must be positive, got -0.0001"),
    ("loss.knn_weight", 0.0, "loss.knn_weight must be positive, got 0.0"),
])
def test_config_values_are_rejected_with_exact_messages(field, value, message,
                                                        tiny_config):
  config = tiny_config()
  config.update_from_flattened_dict({field: value})
  with pytest.raises(errors.ConfigError) as err:
    config_lib.validate(config)
  assert str(err.value).startswith(message), str(err.value)


def test_batch_must_divide_devices(tiny_config):
  with pytest.raises(errors.ConfigError,
                     match="global_batch_size 8 must be positive and divisible by "
                           r"the number of processes \(1\) and of devices \(3\)"):
    config_lib.validate(tiny_config(), num_devices=3)


def test_unknown_field_is_rejected(tiny_config):
  config = tiny_config()
  config.unlock()
  config.model.widths = (1, 2)
  with pytest.raises(errors.ConfigError, match="unknown config field 'model.widths'"):
    config_lib.validate(config)


def test_loading_or_validating_a_config_loads_no_network():
  """The networks' rules are checked (above) without config_lib importing
  them where it is loaded: a config file or a workdir's config reads without
  Flax."""
  code = ("import sys; from sgan_jax import config_lib; "
          "print(sorted(m for m in sys.modules if m.split('.')[0] in ('flax', 'jax') "
          "or m.startswith(('sgan_jax.models', 'sgan_jax.evaluators'))))")
  out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       check=True)
  assert out.stdout.strip() == "[]", out.stdout


# --------------------------------------------------- configs of a workdir

def test_every_start_keeps_its_config_and_writes_it_whole(tmp_path, tiny_config):
  first, later = tiny_config(), tiny_config(num_train_steps=8)
  assert config_lib.write_run_config(first, str(tmp_path), 0).name == "config.json"
  assert config_lib.write_run_config(later, str(tmp_path), 4).name == "config_resume_4.json"
  assert config_lib.read_run_config(str(tmp_path)).num_train_steps == 8   # the newest
  assert json.loads((tmp_path / "config.json").read_text())["num_train_steps"] == 4
  assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json",
                                                         "config_resume_4.json"]
  storage.write_text(str(tmp_path / "x.txt"), "whole")   # no temporary file left
  assert sorted(p.name for p in tmp_path.iterdir())[-1] == "x.txt"


@pytest.mark.parametrize("content,message", [
    ('{"num_train_steps": 4, "mod', r"config_resume_4.json is not a valid config "
                                   r"\(JSONDecodeError"),
    ('{"num_train_steps": 4}', "config_resume_4.json: config is missing field"),
])
def test_a_truncated_or_invalid_workdir_config_is_refused_in_one_line(
    tmp_path, tiny_config, content, message):
  config_lib.write_run_config(tiny_config(), str(tmp_path), 0)
  (tmp_path / "config_resume_4.json").write_text(content)
  with pytest.raises(errors.ConfigError, match=message) as err:
    config_lib.read_run_config(str(tmp_path))
  assert "\n" not in str(err.value)


def test_a_workdir_without_config_is_refused(tmp_path):
  with pytest.raises(errors.ConfigError, match="has no config.json: is it a "
                                                   "training workdir"):
    config_lib.read_run_config(str(tmp_path))
