"""FLOPs of a JAX function, counted from its jaxpr (no execution).

Counts the two operations that dominate this model's cost, matmuls
(`dot_general`) and convolutions (`conv_general_dilated`), at 2 FLOPs per
multiply-add, recursing into every sub-jaxpr (jit, custom derivatives,
loops times their trip count). Elementwise work is left out. Because the
count is taken on the *differentiated* program, it includes exactly the
backward passes, the Jacobian power iteration and the differentiation
through it that the step performs.
"""
import math

import jax
from jax.extend import core as jex_core


def _dot_flops(eqn):
  lhs, rhs = (v.aval.shape for v in eqn.invars[:2])
  (lc, rc), (lb, rb) = eqn.params["dimension_numbers"]
  contract = math.prod(lhs[d] for d in lc)
  batch = math.prod(lhs[d] for d in lb)
  lhs_free = math.prod(s for d, s in enumerate(lhs) if d not in lc and d not in lb)
  rhs_free = math.prod(s for d, s in enumerate(rhs) if d not in rc and d not in rb)
  return 2 * batch * lhs_free * rhs_free * contract


def _conv_flops(eqn):
  out = eqn.outvars[0].aval.shape
  rhs = eqn.invars[1].aval.shape
  dn = eqn.params["dimension_numbers"]
  # Each output element takes (kernel spatial size x input features per group)
  # multiply-adds; the kernel's output-feature dimension is already in `out`.
  kernel_spatial = math.prod(rhs[d] for d in dn.rhs_spec[2:])
  in_features = rhs[dn.rhs_spec[1]]
  return 2 * math.prod(out) * kernel_spatial * in_features


def _sub_jaxprs(eqn):
  for value in eqn.params.values():
    for item in (value if isinstance(value, (list, tuple)) else (value,)):
      if isinstance(item, jex_core.ClosedJaxpr):
        yield item.jaxpr
      elif isinstance(item, jex_core.Jaxpr):
        yield item


def count_jaxpr(jaxpr) -> int:
  total = 0
  for eqn in jaxpr.eqns:
    name = eqn.primitive.name
    if name == "dot_general":
      total += _dot_flops(eqn)
    elif name == "conv_general_dilated":
      total += _conv_flops(eqn)
    trips = eqn.params.get("length", 1) if name == "scan" else 1
    for sub in _sub_jaxprs(eqn):
      total += trips * count_jaxpr(sub)
  return total


def count(fn, *args, **kwargs) -> int:
  """Matmul and convolution FLOPs of one call of `fn(*args, **kwargs)`."""
  return count_jaxpr(jax.make_jaxpr(fn)(*args, **kwargs).jaxpr)
