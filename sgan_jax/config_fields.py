"""The type and the range of every config field, checked the same way for a
config from a file, from flags, or from a workdir's `config.json`.

Types come from the reference config (`config_lib.reference_config`): a
field holds what its reference value holds (an integer field an integer and
not a bool, a float field any finite number, a bool field a bool, a tuple
field a list or tuple of such values, a placeholder its declared type or
None). Ranges are the rules below; a value outside gets one line naming the
field, the value and what it must be.
"""
import math
from typing import Any, Iterator, Tuple

import ml_collections

from sgan_jax.errors import ConfigError

# Integer fields and their least value; every other integer field is a count
# (at least 1), except `seed` (below).
_INT_MINIMUM = {"nonfinite_rollbacks": 0, "data_workers": -1, "num_classes": 2,
                "prepare_size": -1}
_SEED_LIMIT = 2 ** 32
# Float fields that may be zero (every other float must be positive).
_NON_NEGATIVE = ("optim.d_weight_decay",)
# Float fields in [low, high) or (low, high), as (low, high, low included).
_INTERVALS = {"optim.b1": (0.0, 1.0, True), "optim.b2": (0.0, 1.0, True),
              "optim.ema_decay": (0.0, 1.0, False),
              "eval.val_fraction": (0.0, 1.0, False)}


def _type_of(reference: ml_collections.ConfigDict, key: str):
  value = reference[key]
  return reference.get_ref(key).get_type() if value is None else type(value)


def _leaves(reference, prefix="") -> Iterator[Tuple[str, str, Any]]:
  """(dotted name, key, reference ConfigDict) of every non-dict field."""
  for key in reference.keys():
    if isinstance(reference[key], ml_collections.ConfigDict):
      yield from _leaves(reference[key], f"{prefix}{key}.")
    else:
      yield f"{prefix}{key}", key, reference


def _field_value(config, dotted: str):
  for part in dotted.split("."):
    config = config[part]
  return config


def _is(value, kind) -> bool:
  if kind is bool:
    return isinstance(value, bool)
  if kind is int:
    return isinstance(value, int) and not isinstance(value, bool)
  if kind is float:
    return (isinstance(value, (int, float)) and not isinstance(value, bool)
            and math.isfinite(value))
  return isinstance(value, kind)


def _kind_name(kind) -> str:
  return {bool: "true or false", int: "an integer", float: "a finite number",
          str: "a string"}.get(kind, kind.__name__)


def check_types(config, reference: ml_collections.ConfigDict) -> None:
  """Each field of `config` holds a value of its reference's type (the field
  names must already match: `config_lib` checks them first)."""
  for name, key, ref in _leaves(reference):
    value, kind = _field_value(config, name), _type_of(ref, key)
    if kind is tuple:
      kinds = {type(v) for v in ref[key]}
      element = float if kinds <= {int, float} and float in kinds else kinds.pop()
      ok = isinstance(value, (list, tuple)) and all(_is(v, element) for v in value)
      want = f"a list of {_kind_name(element).replace('an ', '').replace('a ', '')}s"
    else:
      ok = (value is None and ref[key] is None) or _is(value, kind)
      want = _kind_name(kind) + (" or None" if ref[key] is None else "")
    if not ok:
      raise ConfigError(f"{name} must be {want}, got {value!r}")


def check_ranges(config, reference: ml_collections.ConfigDict) -> None:
  """Counts at least 1, positive finite rates and weights, decays and betas
  in their intervals (after `check_types`)."""
  for name, key, ref in _leaves(reference):
    value, kind = _field_value(config, name), _type_of(ref, key)
    if value is None or kind in (bool, str):
      continue
    if kind is tuple:
      for i, v in enumerate(value):
        if isinstance(v, (int, float)) and not v > 0:
          raise ConfigError(f"{name}[{i}] must be positive, got {v}")
    elif name == "seed":
      if not 0 <= value < _SEED_LIMIT:
        raise ConfigError(f"seed must be in [0, 2**32), got {value}")
    elif kind is int:
      least = _INT_MINIMUM.get(name, 1)
      if value < least:
        want = "positive" if least == 1 else f"at least {least}"
        raise ConfigError(f"{name} must be {want}, got {value}")
    elif name in _INTERVALS:
      low, high, closed = _INTERVALS[name]
      if not ((low <= value if closed else low < value) and value < high):
        raise ConfigError(f"{name} must be in {'[' if closed else '('}{low}, {high}), "
                          f"got {value}")
    elif name in _NON_NEGATIVE:
      if value < 0:
        raise ConfigError(f"{name} must be zero or positive, got {value}")
    elif not value > 0:
      raise ConfigError(f"{name} must be positive, got {value}")
