"""Where arrays live: the device mesh, and how batches and state are laid out.

One named mesh axis, `data`. The train state is replicated and the batch is
sharded along `data`; the step is written on global arrays, so every batch
statistic (covariances, the k-NN search, G's batch norm) is over the global
batch whatever the device count.
"""
import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

DATA_AXIS = "data"


def make_mesh() -> Mesh:
  """A 1-D mesh over every device of every process."""
  return Mesh(np.asarray(jax.devices()), (DATA_AXIS,))


def batch_sharding(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P(DATA_AXIS))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def local_batch_size(global_batch_size: int) -> int:
  """Rows each process feeds; the global batch must split evenly."""
  n = jax.process_count()
  if global_batch_size % n:
    raise ValueError(f"global_batch_size {global_batch_size} is not divisible "
                     f"by the number of processes {n}")
  return global_batch_size // n


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
  from jax.experimental import multihost_utils
  return np.asarray(multihost_utils.process_allgather(x, tiled=True))
