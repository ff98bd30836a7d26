"""Orbax checkpoints of the whole train state in `workdir/checkpoints/<step>`.

Orbax writes each checkpoint to a temporary directory and renames it when it
is complete, so a restart only ever sees finished checkpoints. The static
`StepSpec` is not saved (the config in `workdir/config.json` defines it); the
arrays are restored into the layout (shapes, dtypes, shardings) of a freshly
created state.
"""
import os

import flax
import jax
import orbax.checkpoint as ocp


class Checkpointer:
  """Periodic saves keeping the newest `max_to_keep`, and resume."""

  def __init__(self, workdir: str, max_to_keep: int):
    self.directory = os.path.abspath(os.path.join(workdir, "checkpoints"))
    self._manager = ocp.CheckpointManager(
        self.directory,
        options=ocp.CheckpointManagerOptions(max_to_keep=max_to_keep,
                                             create=True))

  def latest_step(self):
    return self._manager.latest_step()

  def save(self, state, force: bool = False) -> bool:
    """Starts an asynchronous save of `state` at its step."""
    tree = flax.serialization.to_state_dict(state)
    return self._manager.save(int(state.step), args=ocp.args.StandardSave(tree),
                              force=force)

  def restore(self, target, step=None):
    """The saved state at `step` (default: newest), laid out like `target`
    (a state, or `train.abstract_train_state`)."""
    step = self.latest_step() if step is None else step
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct,
                            flax.serialization.to_state_dict(target))
    tree = self._manager.restore(step, args=ocp.args.StandardRestore(abstract))
    return flax.serialization.from_state_dict(target, tree)

  def wait(self):
    """Blocks until every started save is on disk."""
    self._manager.wait_until_finished()

  def close(self):
    self._manager.close()
