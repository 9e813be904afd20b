"""Benchmark: VQGAN encode / decode / encode+decode latency of the ImageNet f16-1024 model.

Prints one JSON line. Architecture: ch 128, ch_mult [1,1,2,2,4], 2 res blocks, attention
at 16, z 256, 1024 codes (72.1 M parameters, random weights); batch 1, float32; each
function is compiled and warmed up first (compile time reported separately), then timed
as the median of `--repeats` runs.

    python bench/vqgan_forward.py [--sizes 128 256] [--repeats 10]
        [--reference-python /venv-with-torch/bin/python --taming /path/to/taming-transformers]

With --taming, taming's PyTorch model (bench/taming_forward_reference.py) is timed in
the same run, right after ours, and the speed-ups are added to the JSON line.
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

from vqgan_jax.nn.vqgan import VQGANConfig, VQModel, param_count

F16_1024 = VQGANConfig(ch=128, ch_mult=(1, 1, 2, 2, 4), num_res_blocks=2, attn_resolutions=(16,),
                       resolution=256, z_channels=256, embed_dim=256, n_embed=1024)


def _time(fn, *args, repeats):
  t0 = time.perf_counter()
  jax.block_until_ready(fn(*args))
  compile_s = time.perf_counter() - t0
  jax.block_until_ready(fn(*args))  # warm-up
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    jax.block_until_ready(fn(*args))
    times.append(time.perf_counter() - t0)
  return compile_s, statistics.median(times) * 1e3


def main():
  parser = argparse.ArgumentParser(description=__doc__)
  parser.add_argument("--sizes", type=int, nargs="+", default=[128, 256])
  parser.add_argument("--repeats", type=int, default=10)
  parser.add_argument("--batch", type=int, default=1)
  parser.add_argument("--taming", default=None, help="taming-transformers checkout")
  parser.add_argument("--reference-python", default=sys.executable,
                      help="a Python with torch, for the reference run")
  args = parser.parse_args()
  model = VQModel(F16_1024)
  variables = jax.jit(model.init)(jax.random.PRNGKey(0),
                                  jnp.zeros((1, 16, 16, 3), jnp.float32))
  encode = jax.jit(lambda v, x: model.apply(v, x, method=VQModel.encode)[:1] +
                   (model.apply(v, x, method=VQModel.encode)[2]["indices"],))
  decode = jax.jit(lambda v, z: model.apply(v, z, method=VQModel.decode))
  both = jax.jit(lambda v, x: model.apply(v, x)[0])
  result = {"bench": "vqgan_forward", "model": "vqgan_imagenet_f16_1024",
            "params": param_count(variables["params"]), "batch": args.batch, "dtype": "float32",
            "backend": jax.default_backend(), "devices": str(jax.devices()[0]),
            "cpu_count": os.cpu_count(), "jax": jax.__version__, "python": platform.python_version()}
  for size in args.sizes:
    x = jax.random.uniform(jax.random.PRNGKey(1), (args.batch, size, size, 3), minval=-1, maxval=1)
    z = jax.random.normal(jax.random.PRNGKey(2), (args.batch, size // 16, size // 16, 256))
    for name, fn, arg in (("encode", encode, x), ("decode", decode, z),
                          ("encode_decode", both, x)):
      compile_s, ms = _time(fn, variables, arg, repeats=args.repeats)
      result[f"{name}_{size}_ms"] = round(ms, 1)
      result[f"{name}_{size}_compile_s"] = round(compile_s, 2)
      result[f"{name}_{size}_images_per_s"] = round(args.batch * 1e3 / ms, 2)
  if args.taming:
    ref_script = os.path.join(os.path.dirname(os.path.abspath(__file__)),
                              "taming_forward_reference.py")
    out = subprocess.run([args.reference_python, ref_script, "--taming", args.taming,
                          "--repeats", str(args.repeats), "--sizes"] +
                         [str(s) for s in args.sizes], capture_output=True, text=True,
                         check=True).stdout.strip().splitlines()[-1]
    ref = json.loads(out)
    result["reference"] = ref
    for size in args.sizes:
      result[f"speedup_{size}"] = round(ref[f"encode_decode_{size}_ms"] /
                                        result[f"encode_decode_{size}_ms"], 2)
  print(json.dumps(result))


if __name__ == "__main__":
  main()
