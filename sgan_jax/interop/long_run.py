"""Many-step agreement with the authors' code, both in float64
(`python -m sgan_jax.interop.parity --free_steps=N`).

Two-step parity compares each step from a shared state. This runs both
implementations on their own from the same start for N steps, with the same
batches and noise, and a queue of a few batches, so the queue pointer wraps
around several times and the EMAs, Adam moments and G's running statistics
accumulate. After every step it compares everything each one carries forward
(networks, EMAs, G's buffers, queue and pointer, Adam moments) and the step's
logged values.

A GAN's training is chaotic: a difference of one rounding error grows from
step to step whatever the implementation. So the same comparison is made
for a control, the authors' code against a twin of itself whose parameters
are scaled by (1 +- 2^-52) before every step (`TWIN_PERTURBATION`, the sign
alternating): a rounding-level difference made anew at each step, as two
implementations make one. A difference that only
shows in long runs (wrap-around, EMA or moment accumulation, the order of
updates) would make sgan_jax drift from the reference faster than the twin
does. A row passes when it is within `comparison.FLOAT64_TOLERANCE`, or
within `CONTROL_FACTOR` times the twin's difference in the same column.
"""
import jax
import numpy as np

from sgan_jax import config_lib
from sgan_jax.interop import comparison
from sgan_jax.interop.reference import ReferenceTrainer, import_reference
from sgan_jax.state import StepSpec, create_train_state

TWIN_PERTURBATION = 2.0 ** -52   # one float64 rounding step, relative
CONTROL_FACTOR = 10.0
_NETWORKS = (("D", "d_params"), ("D_ema", "d_ema_params"), ("G", "g_params"),
             ("G_ema", "g_ema_params"), ("G buffers", "g_state"))
_QUEUE = (("queue", "queue_emb"), ("queue keys", "queue_keys"))
COLUMNS = ("losses",) + tuple(n for n, _ in _NETWORKS + _QUEUE) + ("Adam D", "Adam G*")
FOOTNOTE = ("  * without G's conv biases, whose gradient is 0 in exact arithmetic "
            "(rounding noise, which Adam's second moment measures relative to itself)")


def _adam(state):
  """(D's, G's) Adam (mu, nu) of a state."""
  return tuple((s[0].mu, s[0].nu) for s in (state.d_opt_state, state.g_opt_state))


def compare(state, values, reference, values_ref):
  """{column: worst relative difference} between two states (and the step's
  logged values) after one step, and their queue pointers."""
  losses = [k for k in values_ref if k.startswith(("d/", "g/"))]
  out = {"losses": max(comparison.rel_diff(values[k], values_ref[k]) for k in losses)}
  for name, field in _NETWORKS:
    out[name] = comparison.per_tensor(getattr(state, field), getattr(reference, field))[0]
  for name, field in _QUEUE:
    out[name] = comparison.rel_diff(getattr(state, field), getattr(reference, field))
  (d_mine, g_mine), (d_ref, g_ref) = _adam(state), _adam(reference)
  out["Adam D"] = comparison.per_tensor(d_mine, d_ref)[0]
  biases = comparison.zero_gradient_biases(state.g_params)
  out["Adam G*"] = max(comparison.per_tensor(m, r, skip=biases)[0]
                       for m, r in zip(g_mine, g_ref))
  return out, (int(state.queue_ptr), int(reference.queue_ptr))


def _row(step, pointers, diffs, twin):
  passed = pointers[0] == pointers[1] and all(
      diffs[c] <= max(comparison.FLOAT64_TOLERANCE, CONTROL_FACTOR * twin[c])
      for c in COLUMNS)
  ptr = f"{pointers[0]}/{pointers[1]}"
  print(f"{step:>4} {'sgan_jax':>8} {ptr:>5} " + " ".join(f"{diffs[c]:10.2e}" for c in COLUMNS)
        + ("" if passed else "  <-- FAIL"))
  print(f"{'':>4} {'twin':>8} {'':>5} " + " ".join(f"{twin[c]:10.2e}" for c in COLUMNS),
        flush=True)
  return passed


def run(official_dir: str, batch: int = 4, seed: int = 0, steps: int = 20,
        queue_batches: int = 3) -> bool:
  """Prints two rows per step (sgan_jax and the twin, each against the
  reference); returns whether every step passed (module docstring)."""
  config = config_lib.reference_config()
  config.global_batch_size = batch
  config.queue_size = batch * queue_batches
  config_lib.validate(config, 1, 1)
  spec = StepSpec.from_config(config)
  ref = import_reference(official_dir)
  trainer, twin = (ReferenceTrainer(ref, spec, seed, "float64") for _ in range(2))
  twin.sync_from(trainer)
  template = jax.device_get(create_train_state(config, jax.random.PRNGKey(seed)))
  spec64 = spec.with_compute_dtype("float64")
  template = comparison.as_float64(template).replace(spec=spec64)
  rng = np.random.default_rng(seed)
  print(f"{steps} steps, float64, each implementation on its own from the same start; "
        f"batch {batch}, queue {config.queue_size} rows (the pointer wraps every "
        f"{queue_batches} steps). Rows: max relative difference from the reference, of "
        f"sgan_jax and of the reference's twin (scaled by 1 +- 2^-52 before each step)")
  print(f"{'step':>4} {'':>8} {'ptr':>5} " + " ".join(f"{c:>10}" for c in COLUMNS))
  ok = True
  with jax.enable_x64(True):
    jax_step = comparison.make_jax_functions(spec64)[0]
    state = comparison.synced_state(trainer, template)
    for step in range(1, steps + 1):
      args = comparison.draw_step_inputs(rng, spec, batch)
      values_ref, _ = trainer.step(*args)
      twin.perturb((-1) ** step * TWIN_PERTURBATION)
      values_twin, _ = twin.step(*args)
      state, values, _, _ = jax.device_get(jax_step(state, *comparison.jax_inputs(args)))
      reference = comparison.synced_state(trainer, template)
      diffs, pointers = compare(state, values, reference, values_ref)
      twin_diffs, _ = compare(comparison.synced_state(twin, template), values_twin,
                              reference, values_ref)
      ok &= _row(step, pointers, diffs, twin_diffs)
  print(FOOTNOTE)
  print(f"\nLONG-RUN PARITY {'PASSED' if ok else 'FAILED'} ({steps} steps, batch {batch}, "
        f"seed {seed}; each row within {comparison.FLOAT64_TOLERANCE:.0e} or "
        f"{CONTROL_FACTOR:g}x the twin's difference)")
  return ok
