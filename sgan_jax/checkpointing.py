"""Orbax checkpoints of the whole train state in `workdir/checkpoints/<step>`.

What survives what:
- Orbax writes each checkpoint into a temporary directory and renames it only
  when complete, so a kill (even -9) during a save leaves the earlier
  checkpoints as they were and a restart never picks the half-written one.
- A failed write (full disk, I/O error) raises `CheckpointError` naming the
  directory; the earlier checkpoints stay valid.
- A checkpoint that is corrupt, or that was written for another architecture
  or config, raises `CheckpointError` naming it and the first mismatching
  array; nothing is silently re-initialised.
Each checkpoint holds two items: `default`, the train state (arrays and JSON
metadata through TensorStore, never pickles), and `data`, each process's
input-loader state (grain's JSON, `process_<i>-of-<n>.json`), so a resume
continues the data stream where it stood without replaying it. The static
`StepSpec` is not saved: the config defines it. The workdir may be a
local path or a cloud-storage URL (`sgan_jax.storage`).
"""
import dataclasses
import importlib.util
from typing import Optional

import flax
import grain
import jax
import orbax.checkpoint as ocp

from sgan_jax import storage
from sgan_jax.utils import path_names


class CheckpointError(RuntimeError):
  """A checkpoint could not be written, read, or does not fit the config."""


_STATE, _DATA = "default", "data"   # the items (the state's is Orbax's default name)


@dataclasses.dataclass
class _LoaderState:
  """A loader state (bytes) as grain's checkpoint handler saves and restores
  it: frozen at the step saved, whatever the loader has read ahead since."""
  state: Optional[bytes] = None

  def get_state(self) -> bytes:
    return self.state

  def set_state(self, state: bytes):
    self.state = state

  def start_prefetch(self):
    """grain's handler calls it after restoring; nothing to start here."""


class Checkpointer:
  """Periodic saves keeping the newest `max_to_keep`, and resume.

  `read_only` opens someone else's checkpoints without creating, deleting or
  writing anything.
  """

  def __init__(self, workdir: storage.PathLike, max_to_keep: int,
               read_only: bool = False):
    self.directory = storage.path(workdir) / "checkpoints"
    if (str(self.directory).startswith("gs://")
        and importlib.util.find_spec("google.cloud.storage") is None):
      # Orbax asks the GCS client about the bucket's layout.
      raise CheckpointError(
          f"checkpoints in {self.directory} need the google-cloud-storage "
          f"package: pip install 'sgan_jax[gcs]' (or google-cloud-storage)")
    if read_only and not self.directory.is_dir():
      raise CheckpointError(f"no checkpoints directory at {self.directory}")
    self._manager = ocp.CheckpointManager(
        self.directory,
        options=ocp.CheckpointManagerOptions(
            max_to_keep=max_to_keep, create=not read_only, read_only=read_only),
        item_handlers={_STATE: ocp.StandardCheckpointHandler(),
                       _DATA: grain.checkpoint.CheckpointHandler()})

  def latest_step(self):
    return self._manager.latest_step()

  def all_steps(self):
    """The steps of the complete checkpoints kept, in increasing order."""
    return sorted(self._manager.all_steps())

  def save(self, state, data_state: Optional[bytes] = None,
           force: bool = False) -> bool:
    """Starts an asynchronous save of `state` at its step, with this
    process's loader state `data_state` (`input_pipeline.TrainBatches.state`)."""
    tree = flax.serialization.to_state_dict(state)
    step = int(state.step)
    items = {_STATE: ocp.args.StandardSave(tree)}
    if data_state is not None:
      items[_DATA] = grain.checkpoint.CheckpointSave(_LoaderState(data_state))
    try:
      return self._manager.save(step, args=ocp.args.Composite(**items), force=force)
    except Exception as e:  # includes the error of an earlier async save
      raise CheckpointError(self._write_failure(step, e)) from e

  def wait(self):
    """Blocks until every started save is on disk; raises if one failed."""
    try:
      self._manager.wait_until_finished()
    except Exception as e:
      raise CheckpointError(self._write_failure(None, e)) from e

  def _write_failure(self, step, error) -> str:
    good = [s for s in self._manager.all_steps() if s != step]
    return (f"saving a checkpoint{'' if step is None else f' of step {step}'} "
            f"in {self.directory} failed: {type(error).__name__}: {error}. "
            f"Free disk space or fix the file system, then re-run to resume "
            f"from the last complete checkpoint "
            f"({max(good) if good else 'none yet'}).")

  def check_compatible(self, target, step: int):
    """Raises CheckpointError unless checkpoint `step` fits `target`'s arrays."""
    where = self.directory / str(step)
    try:
      saved = path_names(self._manager.item_metadata(step)[_STATE])
    except Exception as e:
      raise CheckpointError(f"checkpoint {where} is unreadable (corrupt or "
                            f"incomplete): {type(e).__name__}: {e}") from e
    wanted = path_names(flax.serialization.to_state_dict(target))
    for key in sorted(wanted.keys() | saved.keys()):
      if key not in saved:
        raise CheckpointError(f"checkpoint {where} does not fit this config: it "
                              f"has no array '{key}' (another architecture?)")
      if key not in wanted:
        raise CheckpointError(f"checkpoint {where} does not fit this config: it "
                              f"has an array '{key}' this config does not")
      if tuple(saved[key].shape) != tuple(wanted[key].shape):
        raise CheckpointError(
            f"checkpoint {where} does not fit this config: '{key}' has shape "
            f"{tuple(saved[key].shape)} there but {tuple(wanted[key].shape)} here "
            f"(another architecture or config?). Use a new --workdir to start fresh.")

  def restore(self, target, step=None):
    """The saved state at `step` (default: newest), laid out like `target`
    (a state, or `state.abstract_train_state`)."""
    step = self.latest_step() if step is None else step
    if step is None:
      raise CheckpointError(f"no checkpoint in {self.directory}")
    self.check_compatible(target, step)
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct,
                            flax.serialization.to_state_dict(target))
    try:
      tree = self._manager.restore(
          step, args=ocp.args.Composite(**{_STATE: ocp.args.StandardRestore(abstract)})
      )[_STATE]
    except Exception as e:
      raise CheckpointError(
          f"checkpoint {self.directory / str(step)} could not be "
          f"read (corrupt or truncated file?): {type(e).__name__}: {e}") from e
    return flax.serialization.from_state_dict(target, tree)

  def restore_data_state(self, step: int) -> Optional[bytes]:
    """This process's loader state saved with checkpoint `step`, or None if
    the checkpoint has none (saved before loader states were kept)."""
    if not (self.directory / str(step) / _DATA).exists():
      return None
    try:
      restored = self._manager.restore(step, args=ocp.args.Composite(
          **{_DATA: grain.checkpoint.CheckpointRestore(_LoaderState())}))[_DATA]
    except Exception as e:
      raise CheckpointError(
          f"the data-loader state of checkpoint {self.directory / str(step)} "
          f"could not be read: {type(e).__name__}: {e}") from e
    return restored.state

  def close(self):
    """Waits for saves in flight (raising CheckpointError if one failed)."""
    try:
      self._manager.close()
    except Exception as e:
      raise CheckpointError(self._write_failure(None, e)) from e
