"""Mesh and sharding rules: sharding is data, resolved over param paths.

Mesh axes are ("data", "fsdp"). Batches are split over both axes. Parameters and
optimizer state follow `(regex over the '/'-joined path, rule)` pairs, first match wins:
  "fsdp"       shard the largest dimension divisible by the fsdp axis size (else replicate)
  "replicate"  keep a full copy on every device
"""

import re
from typing import Any, Sequence, Tuple

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

DEFAULT_RULES = ((r".*(kernel|embedding)$", "fsdp"), (r".*", "replicate"))


def make_mesh(data: int = -1, fsdp: int = 1, devices: Sequence[Any] = None) -> Mesh:
  """A ("data", "fsdp") mesh over all (or the given) devices; data=-1 takes the rest."""
  devices = list(devices if devices is not None else jax.devices())
  n = len(devices)
  if fsdp < 1 or n % fsdp:
    raise ValueError(f"mesh.fsdp: {fsdp} does not divide the {n} devices")
  if data == -1:
    data = n // fsdp
  if data * fsdp != n:
    raise ValueError(f"mesh: data ({data}) x fsdp ({fsdp}) must equal the {n} devices")
  # Mesh() gives Auto axis types, which FSDP inside nn.Conv needs.
  return Mesh(np.asarray(devices).reshape(data, fsdp), ("data", "fsdp"))


def batch_sharding(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P(("data", "fsdp")))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def path_str(path) -> str:
  parts = []
  for k in path:
    parts.append(str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k)))))
  return "/".join(parts)


def _spec(shape: Tuple[int, ...], rule: str, fsdp_size: int) -> P:
  if rule == "replicate" or fsdp_size == 1 or not shape:
    return P()
  if rule != "fsdp":
    raise ValueError(f"unknown sharding rule {rule!r}; expected 'fsdp' or 'replicate'")
  order = sorted(range(len(shape)), key=lambda i: -shape[i])
  for i in order:
    if shape[i] % fsdp_size == 0:
      spec = [None] * len(shape)
      spec[i] = "fsdp"
      return P(*spec)
  return P()


def infer_shardings(tree, mesh: Mesh, rules=DEFAULT_RULES):
  """NamedShardings for every leaf of `tree` (arrays or ShapeDtypeStructs)."""
  fsdp_size = mesh.shape["fsdp"]
  compiled = [(re.compile(pattern), rule) for pattern, rule in rules]
  def one(path, leaf):
    name = path_str(path)
    shape = tuple(getattr(leaf, "shape", ()))
    for pattern, rule in compiled:
      if pattern.fullmatch(name):
        return NamedSharding(mesh, _spec(shape, rule, fsdp_size))
    return NamedSharding(mesh, P())
  return jax.tree_util.tree_map_with_path(one, tree)


def global_batch(local_batch, mesh: Mesh):
  """Per-process numpy batch -> global jax arrays split over ("data", "fsdp")."""
  sharding = batch_sharding(mesh)
  return jax.tree_util.tree_map(
      lambda a: jax.make_array_from_process_local_data(sharding, np.asarray(a)), local_batch)
