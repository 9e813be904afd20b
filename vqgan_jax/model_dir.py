"""Model directories: what the converter and training write, and every loader reads.

A model directory holds:
  config.json   {"format": "vqgan_jax/model", "format_version": 2, "kind": "vqgan", "vqgan":
                {...}, ...}: what builds the models
  variables/    an orbax checkpoint of {"vqgan": variables, "discriminator": ..., ...}

`kind` says what the directory holds (one of KINDS):
  "vqgan"     a first-stage model (plus its discriminator/LPIPS when it has them)
  "net2net"   a taming Net2NetTransformer: its first stage under "vqgan", a VQ cond stage
              under "cond_stage" when it has one
Version 1 directories ({"format": "vqgan_jax/1"}, no kind) still load, as kind "vqgan".

Needs only jax, numpy and orbax: no TensorFlow, clu or ml_collections, so the API, the
converter and sampling run without them.
"""

import json
import os
import shutil
from typing import Any, Dict, Optional, Sequence, Tuple

import jax
import numpy as np

FORMAT = "vqgan_jax/model"
FORMAT_VERSION = 2
KINDS = ("vqgan", "net2net")
LEGACY_FORMAT = "vqgan_jax/1"  # format_version 1: no "format_version", no "kind"


def variables_fingerprint(variables) -> str:
  """"sha256:<hex>" of every leaf's path, dtype, shape and bytes: two models agree on it
  exactly when their weights do (how a code dataset names the VQGAN that wrote it)."""
  import hashlib
  h = hashlib.sha256()
  for key, leaf in jax.tree_util.tree_flatten_with_path(jax.device_get(variables))[0]:
    leaf = np.ascontiguousarray(leaf)
    h.update(f"{jax.tree_util.keystr(key)}{leaf.dtype}{leaf.shape}".encode())
    h.update(leaf.tobytes())
  return "sha256:" + h.hexdigest()


def _checkpointer():
  import orbax.checkpoint as ocp  # deferred: orbax is slow to import
  return ocp.StandardCheckpointer()


def save_model_dir(out_dir: str, variables: Dict[str, Any], config: Dict[str, Any],
                   kind: str) -> str:
  """Writes `variables` (a dict of variable trees) and `config` to `out_dir`; returns its path.

  config.json gets the format, the format version and `kind` (one of KINDS). An existing
  model directory is only replaced once the new one is complete: we write into
  `out_dir.tmp` and rename.
  """
  if kind not in KINDS:
    raise ValueError(f"{out_dir}: model kind {kind!r} is not one of {KINDS}")
  if "kind" in config and config["kind"] != kind:
    raise ValueError(f"{out_dir}: config field 'kind' is {config['kind']!r} but the directory "
                     f"is being written as kind {kind!r}")
  out_dir = os.path.abspath(out_dir)
  tmp = out_dir + ".tmp"
  if os.path.exists(tmp):
    shutil.rmtree(tmp)
  os.makedirs(tmp)
  ckptr = _checkpointer()
  ckptr.save(os.path.join(tmp, "variables"), jax.tree_util.tree_map(np.asarray, variables))
  ckptr.wait_until_finished()
  with open(os.path.join(tmp, "config.json"), "w") as f:
    json.dump(dict(config, format=FORMAT, format_version=FORMAT_VERSION, kind=kind), f,
              indent=2, sort_keys=True)
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


def _read_config(path: str) -> Dict[str, Any]:
  """config.json of the model directory `path`, checked and with its "kind" filled in."""
  cfg_path = os.path.join(path, "config.json")
  if not os.path.isfile(cfg_path):
    raise FileNotFoundError(
        f"{path}: not a vqgan_jax model directory (no config.json); convert a taming .ckpt "
        "with `python -m vqgan_jax.convert CKPT OUT_DIR`")
  with open(cfg_path) as f:
    try:
      config = json.load(f)
    except json.JSONDecodeError as e:
      raise ValueError(f"{cfg_path}: not valid JSON ({e})") from None
  if not isinstance(config, dict):
    raise ValueError(f"{cfg_path}: expected a JSON object, got {type(config).__name__}")
  fmt = config.get("format")
  if fmt == LEGACY_FORMAT:
    return dict(config, kind="vqgan")
  if fmt != FORMAT:
    raise ValueError(f"{cfg_path}: field 'format' is {fmt!r}, expected {FORMAT!r} "
                     f"(or {LEGACY_FORMAT!r} for a version-1 directory)")
  version = config.get("format_version")
  if not isinstance(version, int) or isinstance(version, bool) or version < 2:
    raise ValueError(f"{cfg_path}: field 'format_version' is {version!r}, expected an integer "
                     f"from 2 to {FORMAT_VERSION}")
  if version > FORMAT_VERSION:
    raise ValueError(f"{cfg_path}: field 'format_version' is {version}, newer than this "
                     f"vqgan_jax reads (at most {FORMAT_VERSION}); upgrade vqgan_jax")
  if config.get("kind") not in KINDS:
    raise ValueError(f"{cfg_path}: field 'kind' is {config.get('kind')!r}, expected one of "
                     f"{list(KINDS)}")
  return config


def load_model_dir(path: str, kinds: Optional[Sequence[str]] = None
                   ) -> Tuple[Dict[str, Any], Dict[str, Any]]:
  """Reads a model directory: (config dict, {name: variables as numpy arrays}).

  The config always carries "kind" (a version-1 directory reads as "vqgan"). With
  `kinds`, a directory of any other kind is refused.
  """
  path = os.path.abspath(path)
  config = _read_config(path)
  if kinds is not None and config["kind"] not in kinds:
    raise ValueError(f"{os.path.join(path, 'config.json')}: field 'kind' is "
                     f"{config['kind']!r}, expected one of {list(kinds)}")
  var_path = os.path.join(path, "variables")
  if not os.path.isdir(var_path):
    raise FileNotFoundError(f"{path}: missing the 'variables' checkpoint folder")
  restored = _checkpointer().restore(var_path)
  return config, jax.tree_util.tree_map(np.asarray, restored)
