"""Checkpoint I/O for training: the train-state orbax calls (`TrainCheckpointer`).

Model directories (config.json + variables/, what convert and training export and every
loader reads) live in `vqgan_jax/model_dir.py`.
"""

import os
from typing import Any, Dict


class TrainCheckpointer:
  """Asynchronous, keep-N orbax checkpoints of a train state plus a JSON `meta` item.

  Steps are saved under `directory/<step>/{state, meta}`; orbax commits each one
  atomically, so a process killed mid-save leaves the previous checkpoints intact.
  """

  def __init__(self, directory: str, max_to_keep: int = 3):
    import orbax.checkpoint as ocp
    self._ocp = ocp
    self.directory = os.path.abspath(directory)
    self.manager = ocp.CheckpointManager(
        self.directory, options=ocp.CheckpointManagerOptions(
            max_to_keep=max_to_keep, enable_async_checkpointing=True, create=True))

  def latest_step(self):
    return self.manager.latest_step()

  def save(self, step: int, state, meta: Dict[str, Any]) -> bool:
    ocp = self._ocp
    if step in (self.manager.all_steps() or []):
      return False
    return self.manager.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)), force=True)

  def restore(self, step: int, abstract_state):
    """Restores onto `abstract_state` (ShapeDtypeStructs carrying the target shardings)."""
    ocp = self._ocp
    out = self.manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract_state), meta=ocp.args.JsonRestore()))
    return out["state"], out["meta"]

  def restore_meta(self, step: int) -> Dict[str, Any]:
    """The JSON `meta` item of checkpoint `step` alone (no arrays are read)."""
    ocp = self._ocp
    return self.manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]

  def close(self):
    self.manager.wait_until_finished()
    self.manager.close()
