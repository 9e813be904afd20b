"""`python -m vqgan_jax.plan`: what a train step needs on a mesh you do not have.

    python -m vqgan_jax.plan --config=configs/transformer_cin.py --mesh data=4,fsdp=16 \
        --dtype bfloat16 [--batch 256] [--peak_tflops 459 --mfu 0.4]
    python -m vqgan_jax.plan --config=configs/vqgan_imagenet_f16_16384.py --mesh data=8,fsdp=1

Lowers and compiles the real train step of either trainer (the VQGAN's with its LPIPS and
discriminator, or the transformer's) for a simulated mesh of data x fsdp devices: fake CPU
devices and abstract arrays, so nothing is allocated. Prints a table and one JSON line:
per-device bytes of parameters, optimizer state (from the state's shardings), the batch,
and XLA's temporaries (activations kept for the backward pass and scratch, from the
compiled program's memory analysis), the peak estimate, FLOPs per step (XLA's cost
analysis of the per-device program, times the devices), and for each accelerator whether
the step fits its memory and the largest global batch that does (peak memory is
extrapolated linearly in the batch from a second compile at twice the batch). With
--peak_tflops, the step time at --mfu. Figures are XLA:CPU's: an accelerator's compiler
fuses and schedules differently (TPU and GPU temporaries are usually smaller), so treat
them as a plan, not a promise.

Transformer configs whose vocabulary or block size is derived from data (-1) need
--vocab_size / --block_size; the latent grid defaults to the square the block implies.
Any config field can be overridden as in training (--config.batch_size=...).
"""

import json
import math
import os
import sys
from typing import Dict, Optional, Tuple

from absl import app, flags
from ml_collections import config_flags

# name: (memory in bytes, peak dense bf16 TFLOP/s)
ACCELERATORS = {
    "H100-80G": (80e9, 989.0),
    "H200-141G": (141e9, 989.0),
    "TPU-v4-32G": (32 * 2**30, 275.0),
    "TPU-v5e-16G": (16 * 2**30, 197.0),
    "TPU-v5p-95G": (95 * 2**30, 459.0),
}

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Training config file (either trainer's).",
                                lock_config=False)
flags.DEFINE_string("mesh", "data=1,fsdp=1", "simulated mesh: data=D,fsdp=F")
flags.DEFINE_integer("batch", 0, "global batch (default: the config's batch_size)")
flags.DEFINE_enum("dtype", None, ["float32", "bfloat16"], "compute dtype (default: config's)")
flags.DEFINE_float("peak_tflops", 0.0, "per-device peak TFLOP/s for the step-time estimate")
flags.DEFINE_float("mfu", 0.4, "model FLOPs utilisation assumed for the step time")
flags.DEFINE_integer("vocab_size", 0, "transformer vocabulary when the config derives it")
flags.DEFINE_integer("block_size", 0, "transformer block size when the config derives it")
flags.DEFINE_boolean("fit", True, "compile at twice the batch to find the largest that fits")


class PlanError(Exception):
  """A plan that cannot be made: the message names the flag or field."""


def parse_mesh(text: str) -> Tuple[int, int]:
  out = {}
  for part in text.split(","):
    key, _, value = part.partition("=")
    if key.strip() not in ("data", "fsdp") or not value.strip().isdigit():
      raise PlanError(f"--mesh {text!r}: expected data=D,fsdp=F with positive integers")
    out[key.strip()] = int(value)
  data, fsdp = out.get("data", 1), out.get("fsdp", 1)
  if data < 1 or fsdp < 1:
    raise PlanError(f"--mesh {text!r}: data and fsdp must be >= 1")
  return data, fsdp


def _nbytes(tree) -> int:
  """Bytes of one device's share of abstract arrays that carry their shardings."""
  import jax
  total = 0
  for leaf in jax.tree_util.tree_leaves(tree):
    shape = leaf.sharding.shard_shape(leaf.shape) if getattr(leaf, "sharding", None) else leaf.shape
    total += math.prod(shape) * leaf.dtype.itemsize
  return total


def _with_sharding(tree, shardings):
  import jax
  return jax.tree_util.tree_map(
      lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), tree, shardings)


def _vqgan_program(config, mesh, batch: int):
  """(jitted train step, abstract args, {part: abstract tree}) of the VQGAN trainer."""
  import jax
  import jax.numpy as jnp
  from vqgan_jax.training import config_lib, sharding, vqgan_lib
  setup = vqgan_lib.build_setup(config)
  steps = vqgan_lib.CompiledSteps(setup, mesh, config_lib.sharding_rules(config))
  lpips = None
  if setup.lpips is not None:
    x = jnp.zeros((1, 16, 16, 3))
    lpips = _with_sharding(jax.eval_shape(lambda: setup.lpips.init(jax.random.PRNGKey(0), x, x)),
                           steps.lpips_sharding)
  s = int(config.data.crop_size)
  images = jax.ShapeDtypeStruct((batch, s, s, setup.model.config.in_channels), jnp.float32,
                                sharding=sharding.batch_sharding(mesh))
  state = steps.abstract_state
  parts = {"params": (state.ae_params, state.d_params),
           "optimizer": (state.ae_opt_state, state.d_opt_state),
           "frozen": lpips, "batch": images}
  return steps.train, (state, lpips, {"image": images}), parts


def _gpt_program(config, mesh, batch: int):
  import jax
  import jax.numpy as jnp
  from vqgan_jax import net2net as n2n_lib
  from vqgan_jax.nn import gpt as gpt_lib
  from vqgan_jax.training import config_lib, gpt_lib as lib, sharding
  t = dict(config.transformer.to_dict())
  for field, flag in (("vocab_size", FLAGS.vocab_size), ("block_size", FLAGS.block_size)):
    if flag:
      t[field] = flag
    if t[field] <= 0:
      raise PlanError(f"transformer.{field} is derived from the data in this config: pass "
                      f"--{field}")
  t["dtype"] = config.dtype if config.dtype != "float32" else t["dtype"]
  gpt_cfg = gpt_lib.GPTConfig(**t)
  n = dict(config.net2net.to_dict())
  n_cond = 1 if n["cond"] in ("sos", "class") else None
  if n_cond is None:
    raise PlanError(f"net2net.cond={n['cond']!r}: the planner sizes 'sos' and 'class' "
                    "transformers (set net2net.cond to one of them for a comparable plan)")
  n_z = gpt_cfg.block_size - n_cond + 1
  side = int(round(math.sqrt(n_z)))
  if side * side != n_z:
    raise PlanError(f"transformer.block_size {gpt_cfg.block_size} does not imply a square "
                    f"latent ({n_z} tokens)")
  n["z_shape"] = (side, side)
  n2n = n2n_lib.Net2NetConfig.from_dict(n)
  setup = lib.build_setup(config, gpt_cfg, n2n, None, side)
  steps = lib.CompiledSteps(setup, mesh, config_lib.sharding_rules(config))
  bs = sharding.batch_sharding(mesh)
  data = {"z": jax.ShapeDtypeStruct((batch, side, side), jnp.int32, sharding=bs)}
  if n2n.cond == "class":
    data["label"] = jax.ShapeDtypeStruct((batch,), jnp.int32, sharding=bs)
  state = steps.abstract_state
  parts = {"params": state.params, "optimizer": state.opt_state, "frozen": None, "batch": data}
  return steps._train, (state, None, data), parts  # noqa: SLF001


def _compile(config, mesh, batch: int):
  kind = "transformer" if "transformer" in config else "vqgan"
  build = _gpt_program if kind == "transformer" else _vqgan_program
  train, args, parts = build(config, mesh, batch)
  compiled = train.lower(*args).compile()
  mem = compiled.memory_analysis()
  cost = compiled.cost_analysis()
  if isinstance(cost, (list, tuple)):
    cost = cost[0] if cost else {}
  sizes = {k: _nbytes(v) if v is not None else 0 for k, v in parts.items()}
  peak = (mem.argument_size_in_bytes + mem.output_size_in_bytes - mem.alias_size_in_bytes
          + mem.temp_size_in_bytes)
  return kind, dict(
      params_bytes=sizes["params"], optimizer_bytes=sizes["optimizer"],
      frozen_bytes=sizes["frozen"], batch_bytes=sizes["batch"],
      temp_bytes=int(mem.temp_size_in_bytes), argument_bytes=int(mem.argument_size_in_bytes),
      output_bytes=int(mem.output_size_in_bytes), alias_bytes=int(mem.alias_size_in_bytes),
      peak_bytes=int(peak), flops_per_device=float(cost.get("flops", 0.0)))


def _scanned_flops(config, mesh, batch: int) -> float:
  """Per-device FLOPs of a scanned transformer's step: f(1) + (L - 1) (f(2) - f(1)) from
  the same step with 1 and 2 unscanned layers (same remat policy, batch and mesh)."""
  import copy
  flops = []
  for layers in (1, 2):
    c = copy.deepcopy(config)
    c.transformer.n_layer, c.transformer.scan_layers = layers, False
    flops.append(_compile(c, mesh, batch)[1]["flops_per_device"])
  return flops[0] + (int(config.transformer.n_layer) - 1) * (flops[1] - flops[0])


def plan(config, data: int, fsdp: int, batch: int = 0, dtype: Optional[str] = None,
         fit: bool = True, peak_tflops: float = 0.0, mfu: float = 0.4) -> Dict:
  """The plan of `config`'s train step on a data x fsdp mesh (see the module doc)."""
  import jax
  from vqgan_jax.training import sharding
  n = data * fsdp
  devices = jax.devices()
  if len(devices) < n:
    raise PlanError(f"--mesh needs {n} devices and jax sees {len(devices)}: run as "
                    "`python -m vqgan_jax.plan` (it sets the fake device count) or set "
                    f"XLA_FLAGS=--xla_force_host_platform_device_count={n} before jax starts")
  if dtype:
    config.dtype = dtype
  config.mesh.data, config.mesh.fsdp = data, fsdp
  batch = int(batch or config.batch_size)
  if batch % n:
    raise PlanError(f"the global batch {batch} does not split over the {n} devices "
                    "(batches split over data x fsdp)")
  config.batch_size = batch
  config.optim.accum_steps = 1
  mesh = sharding.make_mesh(data, fsdp, devices[:n])
  kind, first = _compile(config, mesh, batch)
  flops_method = "xla cost analysis"
  if kind == "transformer" and config.transformer.scan_layers and config.transformer.n_layer > 2:
    first["flops_per_device"] = _scanned_flops(config, mesh, batch)
    flops_method = ("xla cost analysis of unscanned 1- and 2-layer steps, extrapolated per "
                    "layer (XLA counts a scanned loop's body once)")
  out = {"plan": kind, "mesh": {"data": data, "fsdp": fsdp}, "devices": n,
         "global_batch": batch, "dtype": config.dtype, **first,
         "flops_per_step": first["flops_per_device"] * n, "flops_method": flops_method}
  slope = None
  if fit:
    _, second = _compile(config, mesh, 2 * batch)
    slope = (second["peak_bytes"] - first["peak_bytes"]) / batch  # per example of the batch
    out["peak_bytes_per_example"] = slope
  fits = {}
  for name, (capacity, tflops) in ACCELERATORS.items():
    entry = {"fits": first["peak_bytes"] <= capacity}
    if slope and slope > 0:
      largest = int((capacity - first["peak_bytes"]) / slope) + batch
      entry["largest_batch"] = max(0, largest // n * n)
    entry["step_s_at_mfu"] = out["flops_per_step"] / (n * tflops * 1e12 * mfu)
    fits[name] = entry
  out["accelerators"] = fits
  if peak_tflops:
    out["step_s"] = out["flops_per_step"] / (n * peak_tflops * 1e12 * mfu)
  out["mfu_assumed"] = mfu
  return out


def _size(b: float) -> str:
  for unit, scale in (("GiB", 2**30), ("MiB", 2**20)):
    if b >= scale:
      return f"{b / scale:8.2f} {unit}"
  return f"{b / 2**10:8.2f} KiB"


def _seconds(s: float) -> str:
  return f"{s:.3g} s" if s >= 1 else f"{s * 1e3:.3g} ms"


def table(p: Dict) -> str:
  gib = _size
  rows = [f"{p['plan']} train step, mesh data={p['mesh']['data']} x fsdp={p['mesh']['fsdp']} "
          f"({p['devices']} devices), global batch {p['global_batch']}, {p['dtype']}",
          f"  per device: parameters   {gib(p['params_bytes'])}",
          f"              optimizer    {gib(p['optimizer_bytes'])}",
          f"              frozen nets  {gib(p['frozen_bytes'])}",
          f"              batch        {gib(p['batch_bytes'])}",
          f"              temporaries  {gib(p['temp_bytes'])}  (activations, gradients, scratch)",
          f"              peak         {gib(p['peak_bytes'])}",
          f"  FLOPs per step {p['flops_per_step']:.3e}  ({p['flops_per_device']:.3e} per device)"]
  if "peak_bytes_per_example" in p:
    rows.append(f"  + {p['peak_bytes_per_example'] / 2**20:.1f} MiB per device per example")
  rows.append(f"  {'accelerator':14s} fits  largest batch  step at MFU {p['mfu_assumed']}")
  for name, e in p["accelerators"].items():
    rows.append(f"  {name:14s} {'yes ' if e['fits'] else 'no  '}  "
                f"{e.get('largest_batch', '-')!s:>13s}  {_seconds(e['step_s_at_mfu'])}")
  if "step_s" in p:
    rows.append(f"  step time at --peak_tflops: {_seconds(p['step_s'])}")
  return "\n".join(rows)


def main(argv):
  del argv
  try:
    data, fsdp = parse_mesh(FLAGS.mesh)
    if FLAGS.config is None:
      raise PlanError("--config is required (a configs/*.py file, with :small if wanted)")
    p = plan(FLAGS.config, data, fsdp, FLAGS.batch, FLAGS.dtype, FLAGS.fit, FLAGS.peak_tflops,
             FLAGS.mfu)
  except (PlanError, ValueError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  print(table(p))
  print(json.dumps(p))
  return 0


def run():
  # The fake devices must exist before jax starts its CPU backend: read --mesh first.
  n, args = 1, sys.argv[1:]
  for i, arg in enumerate(args):
    value = arg.split("=", 1)[1] if arg.startswith("--mesh=") else (
        args[i + 1] if arg == "--mesh" and i + 1 < len(args) else None)
    if value is not None:
      try:
        d, f = parse_mesh(value)
        n = d * f
      except PlanError:
        pass  # reported by main
  flags_env = os.environ.get("XLA_FLAGS", "")
  if "xla_force_host_platform_device_count" not in flags_env:
    os.environ["XLA_FLAGS"] = f"{flags_env} --xla_force_host_platform_device_count={n}".strip()
  os.environ.setdefault("JAX_PLATFORMS", "cpu")
  app.run(main)


if __name__ == "__main__":
  run()
