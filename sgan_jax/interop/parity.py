"""Step-level parity with the authors' PyTorch code.

`python -m sgan_jax.interop.parity --official_dir=DIR [--batch=8] [--seed=0]`
`python -m sgan_jax.interop.parity --official_dir=DIR --free_steps=20 [--batch=4]
 [--queue_batches=3]` (many steps, `interop.long_run`)

DIR is a checkout of `xiao7199/structural-adversarial-objectives` (its
`model.py`, `utils.py`, `main_cls.py`, ...). Needs torch
(`pip install -e '.[interop]'`).

It builds the authors' D, G and EMA copies on the CPU with their own classes
and initialisation, converts them into an sgan_jax state
(`interop.pytorch.state_from_torch`), then feeds both implementations the same
batches, the same z for each phase and the same power-iteration start `u`,
and runs two full training steps in each (D phase, G phase, EMA, enqueue).
Each step is compared from the same state (the reference's, converted, Adam
moments included): every loss term, the per-sample sigmas, the embeddings,
D's and G's gradients, G's buffers, the queue, and the optimiser and EMA
updates, each as `max|jax - ref| / max|ref|` (per tensor; the worst tensor is
named), once in float32 and once with both implementations in float64. Then
the parameters after both steps, each implementation run on its own.

It exits 1 if a row exceeds its tolerance: in float32 1e-4, or 1e-3 for the
rows in `ILL_CONDITIONED` (rows in `FLOAT32_UNGATED` are shown only); in
float64 `FLOAT64_TOLERANCE`. docs/fidelity.md explains the measurements.

The reference step is `interop.reference.ReferenceTrainer` (the authors'
modules and loss functions around a transcription of their loop body), on
one process, so the batch statistics are over the same rows in both.
"""
import argparse
import os
import sys
import time

import jax
import numpy as np

from sgan_jax import config_lib
from sgan_jax.interop import long_run, pytorch
from sgan_jax.interop.comparison import (FLOAT64_TOLERANCE, as_float64,
                                         draw_step_inputs, jax_inputs,
                                         make_jax_functions, over_all, per_tensor,
                                         synced_state, whole,
                                         zero_gradient_biases)
from sgan_jax.interop.reference import ReferenceTrainer, import_reference
from sgan_jax.state import StepSpec, create_train_state

DEFAULT_TOLERANCE = 1e-4
# Rows whose float32 error the computation amplifies, with the reason
# (docs/fidelity.md has the measurements).
_ADAM_REASON = ("Adam divides each gradient entry by its own magnitude, so "
                "entries whose gradient is within float32 rounding of zero take "
                "steps of +-lr in either implementation")
ILL_CONDITIONED = {
    "D gradient": (
        "the second-order gradient of the Jacobian term; the reference's own "
        "float32 gradient is as far from its float64 one"),
    **{f"free-running {name}": _ADAM_REASON for name in
       ("D parameters", "D_ema parameters", "G parameters", "G_ema parameters")},
}
# Float32 rows no float32 implementation can reproduce to 1e-3: shown in the
# float32 table, gated in the float64 one.
FLOAT32_UNGATED = {
    "G gradient (except conv biases)*": (
        "G's gradient passes back through D and G's batch norms: perturbing z "
        "by float32 rounding moves it by more than 1e-3, in the reference too"),
}


def _tolerance(name):
  return 1e-3 if name in ILL_CONDITIONED else DEFAULT_TOLERANCE


# --------------------------------------------------------------- comparison

def row(name, measure, jax_value, ref32, ref64=None):
  """(name, jax vs ref32, where, ref32 vs ref64, jax vs ref64)."""
  diff, where = measure(jax_value, ref32)
  if ref64 is None:
    return name, diff, where, None, None
  return name, diff, where, measure(ref32, ref64)[0], measure(jax_value, ref64)[0]


def print_table(title, rows, gated=True):
  """Prints the rows and returns whether they pass: a row passes when
  sgan_jax is within its tolerance of the reference, or of the reference run
  in float64. In float32 (`gated`), rows in `FLOAT32_UNGATED` are shown, not
  gated; float64 rows must all be within FLOAT64_TOLERANCE."""
  fmt = lambda x: "        -" if x is None else f"{x:9.2e}"
  print(f"\n{title}")
  print(f"  {'quantity':38s} {'vs ref':>9s} {'ref-ref64':>9s} {'vs ref64':>9s} "
        f"{'tolerance':>9s}  worst tensor")
  ok = True
  for name, diff, where, floor, diff64 in rows:
    if gated and name in FLOAT32_UNGATED:
      print(f"  {name:38s} {fmt(diff)} {fmt(floor)} {fmt(diff64)} {'(info)':>9s}  {where}")
      continue
    tol = _tolerance(name) if gated else FLOAT64_TOLERANCE
    passed = diff <= tol or (diff64 is not None and diff64 <= tol)
    ok &= passed
    print(f"  {name:38s} {fmt(diff)} {fmt(floor)} {fmt(diff64)} {tol:9.0e}  {where}"
          f"{'' if passed else '  <-- FAIL'}")
  return ok


def step_rows(trainer, jax_fns, start, template, args, shadow=None):
  """Steps `trainer` (and sgan_jax from `start`, its state) on `args`; returns
  (rows, wall seconds of each step call). `shadow`, a float64 reference synced to
  `trainer`, adds the reference's own rounding error (column ref-ref64)."""
  jax_step, g_gradient, arithmetic = jax_fns
  batch, noise = jax_inputs(args, np.asarray(jax.tree.leaves(start.d_params)[0]).dtype)
  t0 = time.perf_counter()
  values_ref, grads_ref = trainer.step(*args)
  seconds = {"PyTorch": time.perf_counter() - t0}
  if shadow is not None:
    # The float64 run's G phase plays against `trainer`'s updated D: their own
    # D updates differ where Adam amplifies rounding.
    values64, grads64 = shadow.step(*args, after_d_update=lambda: shadow.take_d_parameters(trainer))
  t0 = time.perf_counter()
  new, values, d_grads, g_inputs = jax.device_get(jax_step(start, batch, noise))
  seconds["sgan_jax"] = time.perf_counter() - t0
  # Compared in float64; fed back to sgan_jax in the template's dtype.
  as_jax = lambda ckpt, like=as_float64(template): pytorch.state_from_torch(ckpt, like)
  checkpoint = trainer.checkpoint()
  after, grads = as_jax(checkpoint), as_jax(grads_ref)
  after64 = as_jax(shadow.checkpoint()) if shadow is not None else None
  g64 = as_jax(grads64) if shadow is not None else None
  pick = lambda tree, *path: None if tree is None else _get(tree, path)
  g_grads = jax.device_get(g_gradient(start, as_jax(checkpoint, template).d_params,
                                      *g_inputs, batch, noise))
  zero = zero_gradient_biases(g_grads)
  rows = [row(k, whole, values[k], v, None if shadow is None else values64[k])
          for k, v in values_ref.items()]
  rows += [
      row("D gradient", per_tensor, d_grads, grads.d_params, pick(g64, "d_params")),
      row("G gradient (except conv biases)*", lambda a, b: per_tensor(a, b, zero),
          g_grads, grads.g_params, pick(g64, "g_params")),
      row("G gradient, conv biases (0 exactly)*", lambda a, b: over_all(a, b, zero),
          g_grads, grads.g_params, pick(g64, "g_params"))]
  for name, path in (("G BN running mean/var", ("g_state", "batch_stats")),
                     ("G spectral-norm u", ("g_state", "spectral"))):
    rows.append(row(name, per_tensor, _get(new, path), _get(after, path), pick(after64, *path)))
  for name, field in (("queue: unit embeddings", "queue_emb"), ("queue: D_ema keys", "queue_keys"),
                      ("queue pointer", "queue_ptr")):
    rows.append(row(name, whole, getattr(new, field), getattr(after, field),
                    pick(after64, field)))
  fed = as_jax(grads_ref, template)
  updated = jax.device_get(arithmetic(start, fed.d_params, fed.g_params))
  rows += [row(f"{name} (update rule)**", per_tensor, updated[name], getattr(after, field))
           for name, field in (("D parameters", "d_params"), ("D_ema parameters", "d_ema_params"),
                               ("G parameters", "g_params"), ("G_ema parameters", "g_ema_params"))]
  return rows, seconds


def _get(tree, path):
  for p in path:
    tree = tree[p] if isinstance(tree, dict) else getattr(tree, p)
  return tree


def free_rows(free_state, trainer, template):
  """Each implementation run on its own: max error / largest parameter."""
  free = jax.device_get(free_state)
  ref = pytorch.state_from_torch(trainer.checkpoint(), as_float64(template))
  return [row(f"free-running {name}", over_all, getattr(free, field), getattr(ref, field))
          for name, field in (("D parameters", "d_params"), ("D_ema parameters", "d_ema_params"),
                              ("G parameters", "g_params"), ("G_ema parameters", "g_ema_params"))]


FOOTNOTE = ("  *  against the reference's updated D (an own D update differs where Adam "
            "amplifies rounding)\n  ** applied to the reference's gradients")


# --------------------------------------------------------------------- main

def _import_torch():
  try:   # torch is optional: only the interop extra installs it
    import torch  # pylint: disable=import-outside-toplevel
  except ImportError:
    raise SystemExit("the parity check needs torch: pip install -e '.[interop]'")
  torch.set_num_threads(os.cpu_count() or 1)


def run_parity(official_dir: str, batch: int = 8, seed: int = 0, steps: int = 2) -> bool:
  """Both implementations, `steps` steps, in float32 and in float64; prints
  the tables, returns whether every gated row passed."""
  _import_torch()
  config = config_lib.reference_config()
  config.global_batch_size = batch
  config_lib.validate(config, 1, 1)
  spec = StepSpec.from_config(config)
  ref = import_reference(official_dir)
  # The reference in float32; a float64 copy synced to it before every step
  # (how far float32 rounding moves the reference itself); and a float64 run
  # of its own, which sgan_jax in float64 is compared with.
  ref32, shadow64, ref64 = (ReferenceTrainer(ref, spec, seed, dtype)
                            for dtype in ("float32", "float64", "float64"))
  template = jax.device_get(create_train_state(config, jax.random.PRNGKey(seed)))
  # The step reads its network shapes and dtype from the state's spec.
  spec64 = spec.with_compute_dtype("float64")
  template64 = as_float64(template).replace(spec=spec64)
  fns32, fns64 = make_jax_functions(spec), make_jax_functions(spec64)
  rng = np.random.default_rng(seed)
  free32 = synced_state(ref32, template)
  with jax.enable_x64(True):
    free64 = synced_state(ref64, template64)
  ok = True
  for step in range(1, steps + 1):
    # A new batch each step, as in training: re-feeding a batch would put
    # near-duplicates of its keys in the queue and make the neighbour choice
    # a near-tie.
    args = draw_step_inputs(rng, spec, batch, np.float32)
    jax_args = jax_inputs(args)
    shadow64.sync_from(ref32)
    rows, secs = step_rows(ref32, fns32, synced_state(ref32, template), template, args, shadow64)
    free32 = fns32[0](free32, *jax_args)[0]
    print(f"step {step}, float32: PyTorch step {secs['PyTorch']:.2f} s, sgan_jax step and "
          f"logged values {secs['sgan_jax']:.2f} s"
          f"{' (with compilation)' if step == 1 else ''}", flush=True)
    ok &= print_table(f"step {step}, float32, both from the same state", rows)
    print(FOOTNOTE)
    with jax.enable_x64(True):
      rows64, _ = step_rows(ref64, fns64, synced_state(ref64, template64), template64, args)
      free64 = fns64[0](free64, *as_float64(jax_args))[0]
    ok &= print_table(f"step {step}, float64, both from the same state", rows64, gated=False)
  ok &= print_table(f"after {steps} steps, float32, each implementation on its own "
                    "(max error / largest parameter)", free_rows(free32, ref32, template))
  with jax.enable_x64(True):
    rows64 = free_rows(free64, ref64, template64)
  ok &= print_table(f"after {steps} steps, float64, each on its own", rows64, gated=False)
  print("\nPARITY " + ("PASSED" if ok else "FAILED") + f" (batch {batch}, seed {seed})")
  return ok


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--official_dir", required=True,
                      help="checkout of xiao7199/structural-adversarial-objectives")
  parser.add_argument("--batch", type=int, default=8, help="batch size (one device)")
  parser.add_argument("--seed", type=int, default=0, help="init, data and noise seed")
  parser.add_argument("--free_steps", type=int, default=0,
                      help="instead: run both in float64 on their own for this many "
                           "steps, comparing after each (interop.long_run)")
  parser.add_argument("--queue_batches", type=int, default=3,
                      help="with --free_steps: queue length in batches (it wraps "
                           "around every this many steps)")
  args = parser.parse_args(argv)
  if args.batch < 2:
    parser.error("--batch must be at least 2 (covariances need two samples)")
  if args.free_steps < 0 or args.queue_batches < 1:
    parser.error("--free_steps must be >= 0 and --queue_batches >= 1")
  _import_torch()
  if args.free_steps:
    ok = long_run.run(args.official_dir, args.batch, args.seed, args.free_steps,
                      args.queue_batches)
  else:
    ok = run_parity(args.official_dir, args.batch, args.seed)
  sys.exit(0 if ok else 1)


if __name__ == "__main__":
  main()
