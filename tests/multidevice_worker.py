"""Subprocess helper for the scale-out tests (run with a chosen device count).

Modes:
  compare   one process, 8 devices: a step over 8 devices equals one over 1;
            then saves the 8-device state as a checkpoint (--ckpt_out) and
            as arrays (--npz_out).
  restore   restores --ckpt_in onto all devices of this process, checks it
            against --npz_in, steps once and saves --ckpt_out / --npz_out.
  train     one of --num_processes processes (jax.distributed on 127.0.0.1):
            3 steps on fixed global batches; writes this process's copy of
            the final parameters to --npz_out.
"""
import argparse
import os
import re
import sys

import jax
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from sgan_jax import checkpointing, config_lib, sharding  # noqa: E402
from sgan_jax.state import abstract_train_state, create_train_state  # noqa: E402
from sgan_jax.step import make_train_step  # noqa: E402
from sgan_jax.synthetic import synthetic_batch  # noqa: E402


def fixed_batch(config, step):
  """The global batch of `step` as host arrays (the same on every process)."""
  return jax.device_get(synthetic_batch(config, seed=100 + step))


# Biases of G's block convs feed batch norms (directly, or through residual
# sums that the next norm centres), so their true gradient is zero and what
# Adam sees is rounding noise: each step moves them by about +-lr, in a
# direction that depends on the reduction order. They cannot change any
# output, so they are compared only against that bound. G's BN running
# averages see those biases too; training never reads them (batch statistics
# only), so they get a loose tolerance.
GRADIENT_FREE = re.compile(r"stage\d+_block\d+'\]\['conv\d'\]\['bias'\]")
RUNNING_STATS = re.compile(r"g_state\['batch_stats'\]")


def host_arrays(state):
  """{path: this process's copy} for every array of a (replicated) state."""
  flat = jax.tree_util.tree_flatten_with_path(state)[0]
  return {jax.tree_util.keystr(p): np.asarray(x.addressable_data(0)) for p, x in flat}


def compare_arrays(a, b, lr, steps):
  """a == b to float tolerance; gradient-free biases within Adam's bound."""
  assert a.keys() == b.keys()
  for path in a:
    if GRADIENT_FREE.search(path):
      assert np.max(np.abs(a[path] - b[path])) <= 2 * lr * steps + 1e-6, path
    elif RUNNING_STATS.search(path):
      np.testing.assert_allclose(a[path], b[path], rtol=1e-2, atol=1e-3,
                                 err_msg=path)
    else:
      np.testing.assert_allclose(a[path], b[path], rtol=2e-4, atol=2e-5,
                                 err_msg=path)


def run_steps(config, mesh, steps):
  state = create_train_state(config, jax.random.PRNGKey(0), mesh)
  train_step = make_train_step(mesh)
  for i in range(steps):
    batch = sharding.to_global(sharding.process_rows(fixed_batch(config, i),
                                                     config.global_batch_size), mesh)
    state, metrics = train_step(state, batch)
  return state, metrics


def load_npz(path):
  with np.load(path) as f:
    return dict(f)


def main():
  p = argparse.ArgumentParser()
  p.add_argument("--mode", required=True)
  p.add_argument("--config", required=True, help="path of tests/configs/tiny.py")
  p.add_argument("--ckpt_in"), p.add_argument("--ckpt_out")
  p.add_argument("--npz_in"), p.add_argument("--npz_out")
  p.add_argument("--num_processes", type=int, default=1)
  p.add_argument("--process_id", type=int, default=0)
  p.add_argument("--port", type=int, default=0)
  args = p.parse_args()
  if args.num_processes > 1:
    sharding.initialize_distributed(f"127.0.0.1:{args.port}", args.num_processes,
                                    args.process_id)
  config = config_lib.load_config(args.config)
  mesh = sharding.make_mesh()

  if args.mode == "compare":
    assert jax.device_count() == 8, jax.devices()
    one = sharding.make_mesh(jax.devices()[:1])
    s8, m8 = run_steps(config, mesh, 2)
    s1, m1 = run_steps(config, one, 2)
    compare_arrays(host_arrays(s8), host_arrays(s1), config.optim.g_lr, 2)
    for k in m1:
      np.testing.assert_allclose(m8[k], m1[k], rtol=2e-4, atol=2e-5, err_msg=k)
    print("8-device step == 1-device step")
    state = s8
  elif args.mode == "restore":
    ckpt = checkpointing.Checkpointer(args.ckpt_in, 3)
    state = ckpt.restore(abstract_train_state(config, mesh))
    ckpt.close()
    saved = load_npz(args.npz_in)
    restored = host_arrays(state)
    assert restored.keys() == saved.keys()
    for path in saved:
      np.testing.assert_array_equal(restored[path], saved[path], err_msg=path)
    assert all(x.sharding.mesh.size == jax.device_count()
               for x in jax.tree.leaves(state))
    print(f"restored on {jax.device_count()} device(s)")
    batch = sharding.to_global(fixed_batch(config, 7), mesh)
    state, _ = make_train_step(mesh)(state, batch)
  elif args.mode == "train":
    state, _ = run_steps(config, mesh, 3)
    np.savez(args.npz_out, **host_arrays(state))
    print(f"process {jax.process_index()} of {jax.process_count()} done")
    return
  else:
    raise SystemExit(f"unknown mode {args.mode}")
  if args.ckpt_out:
    ckpt = checkpointing.Checkpointer(args.ckpt_out, 3)
    ckpt.save(state)
    ckpt.wait()
    ckpt.close()
    np.savez(args.npz_out, **host_arrays(state))


if __name__ == "__main__":
  main()
