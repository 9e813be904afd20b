"""Checkpoint I/O: every orbax call of the project lives in this module.

A *model directory* (what `python -m vqgan_jax.convert` writes, and what training
exports) holds:
  config.json   {"format": "vqgan_jax/1", "vqgan": {...}, ...}: what builds the models
  variables/    an orbax checkpoint of {"vqgan": variables, "discriminator": ...}
"""

import json
import os
import shutil
from typing import Any, Dict, Tuple

import jax
import numpy as np

FORMAT = "vqgan_jax/1"


def _checkpointer():
  import orbax.checkpoint as ocp  # deferred: orbax is slow to import
  return ocp.StandardCheckpointer()


def save_model_dir(out_dir: str, variables: Dict[str, Any], config: Dict[str, Any]) -> str:
  """Writes `variables` (a dict of variable trees) and `config` to `out_dir`.

  An existing model directory is only replaced once the new one is complete: we
  write into `out_dir.tmp` and rename.
  """
  out_dir = os.path.abspath(out_dir)
  tmp = out_dir + ".tmp"
  if os.path.exists(tmp):
    shutil.rmtree(tmp)
  os.makedirs(tmp)
  ckptr = _checkpointer()
  ckptr.save(os.path.join(tmp, "variables"), jax.tree_util.tree_map(np.asarray, variables))
  ckptr.wait_until_finished()
  with open(os.path.join(tmp, "config.json"), "w") as f:
    json.dump(dict(config, format=FORMAT), f, indent=2, sort_keys=True)
  if os.path.exists(out_dir):
    old = out_dir + ".old"
    if os.path.exists(old):
      shutil.rmtree(old)
    os.rename(out_dir, old)
    os.rename(tmp, out_dir)
    shutil.rmtree(old)
  else:
    os.rename(tmp, out_dir)
  return out_dir


def is_model_dir(path: str) -> bool:
  return os.path.isdir(path) and os.path.isfile(os.path.join(path, "config.json"))


def load_model_dir(path: str) -> Tuple[Dict[str, Any], Dict[str, Any]]:
  """Reads a model directory: (config dict, {name: variables as numpy arrays})."""
  path = os.path.abspath(path)
  cfg_path = os.path.join(path, "config.json")
  if not os.path.isfile(cfg_path):
    raise FileNotFoundError(f"{path}: not a vqgan_jax model directory (no config.json); "
                            "convert a taming .ckpt with `python -m vqgan_jax.convert CKPT OUT_DIR`")
  with open(cfg_path) as f:
    try:
      config = json.load(f)
    except json.JSONDecodeError as e:
      raise ValueError(f"{cfg_path}: not valid JSON ({e})") from None
  if config.get("format") != FORMAT:
    raise ValueError(f"{cfg_path}: field 'format' is {config.get('format')!r}, expected {FORMAT!r}")
  var_path = os.path.join(path, "variables")
  if not os.path.isdir(var_path):
    raise FileNotFoundError(f"{path}: missing the 'variables' checkpoint folder")
  restored = _checkpointer().restore(var_path)
  return config, jax.tree_util.tree_map(np.asarray, restored)


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

  def wait(self):
    self.manager.wait_until_finished()

  def close(self):
    self.manager.wait_until_finished()
    self.manager.close()
