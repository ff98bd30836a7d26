"""Where arrays live: the device mesh, and how batches and state are laid out.

One named mesh axis, `data`, over every device of every process. The train
state is replicated and the batch is split along `data`. The step is written
on *global* arrays and jitted with these layouts (`data_parallel_jit`), so
XLA inserts the cross-device reductions itself: every batch statistic (the
covariances of `gaussian_jsd`, the k-NN search, G's batch norm) is over the
global batch, whatever the device or process count.

Multi-host: `initialize_distributed` starts `jax.distributed`; each process
then feeds its own rows (`to_global`; the loader's share of the global
batch: `input_pipeline.train_batch_keys`).
"""
from typing import Optional, Sequence

import jax
from jax.experimental import multihost_utils
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

DATA_AXIS = "data"


def initialize_distributed(coordinator_address: Optional[str] = None,
                           num_processes: Optional[int] = None,
                           process_id: Optional[int] = None,
                           auto: bool = False) -> None:
  """Joins a multi-process run: explicit settings, or auto-detection (TPU
  pods, SLURM, ...) when `auto`. Does nothing when neither is given."""
  if coordinator_address is None and not auto:
    return
  # On CPU hosts the cross-process collectives need an implementation.
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  if coordinator_address is None:
    jax.distributed.initialize()
  else:
    jax.distributed.initialize(coordinator_address, num_processes, process_id)


def make_mesh(devices: Optional[Sequence] = None) -> Mesh:
  """A 1-D `data` mesh over `devices` (default: all devices of all processes)."""
  devices = jax.devices() if devices is None else devices
  return Mesh(np.asarray(devices), (DATA_AXIS,))


def batch_sharding(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P(DATA_AXIS))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def data_parallel_jit(step_fn, mesh: Mesh):
  """`step_fn(state, batch) -> (state, metrics)` jitted with the state
  replicated (and donated), the batch split along `data`, outputs replicated."""
  rep, data = replicated(mesh), batch_sharding(mesh)
  return jax.jit(step_fn, in_shardings=(rep, data), out_shardings=(rep, rep),
                 donate_argnums=0)


def to_global(local_batch, mesh: Mesh):
  """Assembles each process's NumPy rows into one global, sharded jax.Array."""
  sharding = batch_sharding(mesh)
  return jax.tree.map(
      lambda x: jax.make_array_from_process_local_data(sharding, x), local_batch)


def process_rows(global_batch, num_rows: int):
  """This process's contiguous share of a batch that every process holds."""
  per = num_rows // jax.process_count()
  start = jax.process_index() * per
  return jax.tree.map(lambda x: x[start:start + per], global_batch)


def to_host(x) -> np.ndarray:
  """A (possibly multi-process, sharded) array as one full NumPy array."""
  if jax.process_count() == 1:
    return np.asarray(jax.device_get(x))
  return np.asarray(multihost_utils.process_allgather(x, tiled=True))
