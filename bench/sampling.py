"""Benchmark: tokens/s of the jitted KV-cached sampler, and the wall time of a sliding-window
sample, against taming's `sample_with_past` in the same run.

    python bench/sampling.py [--taming /path/to/taming-transformers \
        --reference-python /venv-with-torch/bin/python [--reference-uncached]]
    python bench/sampling.py --preset cin_1.4b --window 36x64 --dtype bfloat16   # on a GPU

Prints one JSON line. Cached sampling: `vqgan_jax.sampling.sample_tokens` of --steps
tokens (default 256) after one start token per row, batch --batch (4), plain
multinomial sampling (no top-k, as the reference call), GPT 8 layers / 8 heads / width
512 / vocab 1024 / block 256, random weights, float32. compile_s (first call) is
reported apart from the median of --repeats timed calls. Sliding window:
`sampling.sample_window` of a --window latent (42x64 tokens: 672x1024 px at f16) through
a 16x16 window of the same model, one full forward of 256 tokens per sampled token
(as taming's sample_conditional.py), batch --window-batch (1), top-k 100.
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

from vqgan_jax import sampling
from vqgan_jax.nn import gpt

PRESETS = {
    "default": dict(layers=8, heads=8, width=512, vocab=1024, block=256),
    "cin_1.4b": dict(layers=48, heads=24, width=1536, vocab=16384, block=256),
}


def _grid(text):
  h, w = (int(v) for v in text.lower().split("x"))
  return h, w


def timed(fn, repeats):
  t0 = time.perf_counter()
  jax.block_until_ready(fn())
  first = time.perf_counter() - t0
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    jax.block_until_ready(fn())
    times.append(time.perf_counter() - t0)
  return first, statistics.median(times)


def main():
  p = argparse.ArgumentParser()
  p.add_argument("--preset", choices=sorted(PRESETS), default="default")
  p.add_argument("--batch", type=int, default=4)
  p.add_argument("--steps", type=int, default=256)
  p.add_argument("--repeats", type=int, default=2)
  p.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32")
  p.add_argument("--window", type=_grid, default=(42, 64), help="latent HxW; 0x0: skip")
  p.add_argument("--window-batch", type=int, default=1)
  p.add_argument("--taming", default=None)
  p.add_argument("--reference-python", default=sys.executable)
  p.add_argument("--reference-uncached", action="store_true")
  args = p.parse_args()
  s = PRESETS[args.preset]
  cfg = gpt.GPTConfig(vocab_size=s["vocab"], block_size=s["block"], n_layer=s["layers"],
                      n_head=s["heads"], n_embd=s["width"], dtype=args.dtype)
  params = jax.jit(lambda k: gpt.init_params(cfg, k))(jax.random.PRNGKey(0))
  c = jnp.zeros((args.batch, 1), jnp.int32)
  key = jax.random.PRNGKey(1)
  first, med = timed(lambda: sampling.sample_tokens(cfg, params, c, args.steps, rng=key),
                     args.repeats)
  out = {"bench": "sampling", "preset": args.preset, **s, "dtype": args.dtype,
         "batch": args.batch, "steps": args.steps, "params": gpt.param_count(cfg),
         "cached_compile_and_first_s": round(first, 3), "cached_s": round(med, 3),
         "cached_tokens_per_s": round(args.batch * args.steps / med, 1)}
  if args.window[0] > 0:
    wh = ww = int(round((s["block"]) ** 0.5))
    cond = jnp.zeros((args.window_batch, 1), jnp.int32)
    # One run (minutes on a CPU), compiled ahead so compile and run are timed apart.
    z0 = jnp.zeros((args.window_batch,) + tuple(args.window), jnp.int32)
    run = sampling._compiled_window(sampling._plain(cfg), tuple(args.window), (wh, ww),  # noqa: SLF001
                                    False, 1.0, 100, None, False)
    variables = {"params": params}
    t0 = time.perf_counter()
    compiled = run.lower(variables, cond, z0, jnp.int32(0), key).compile()
    compile_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    jax.block_until_ready(compiled(variables, cond, z0, jnp.int32(0), key))
    out.update(window=list(args.window), window_shape=[wh, ww],
               window_batch=args.window_batch, window_compile_s=round(compile_s, 2),
               window_s=round(time.perf_counter() - t0, 2))
  out.update(backend=jax.default_backend(), device=str(jax.devices()[0]),
             cpu_count=os.cpu_count(), jax=jax.__version__, python=platform.python_version())
  if args.taming:
    ref_script = os.path.join(os.path.dirname(os.path.abspath(__file__)),
                              "taming_sampling_reference.py")
    cmd = [args.reference_python, ref_script, "--taming", args.taming, "--batch",
           str(args.batch), "--steps", str(args.steps), "--layers", str(s["layers"]),
           "--heads", str(s["heads"]), "--width", str(s["width"]), "--vocab", str(s["vocab"]),
           "--block", str(s["block"])] + (["--uncached"] if args.reference_uncached else [])
    res = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if res.returncode:
      out["reference_error"] = res.stderr.strip().splitlines()[-1:]
    else:
      ref = json.loads(res.stdout.strip().splitlines()[-1])
      out["reference"] = ref
      out["speedup_vs_reference"] = round(ref["cached_s"] / out["cached_s"], 2)
  print(json.dumps(out))


if __name__ == "__main__":
  main()
