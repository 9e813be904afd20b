"""Benchmark: images/s through pytorch-fid's Inception (batch 50, 299x299, float32), ours
(`vqgan_jax.fid.InceptionFeatures`, jitted over every device) against pytorch-fid 0.3.0's
`InceptionV3([3])` on the same machine in the same run.

    python bench/fid.py [--reference-python /venv-with-torch-and-pytorch-fid/bin/python]
    python bench/fid.py --images 50000 --batch 500     # on an accelerator: FID-50k time

Prints one JSON line. Weights are random (the trunk's speed does not depend on them);
inputs are already 299x299, so only the network is timed. compile_s is reported apart
from the median of --repeats timed batches; fid50k_s extrapolates the time of 50,000
images from the measured rate (trunk only: decoding PNGs is the host's share).
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

# FLOPs of one 299x299 image through the trunk and fc (multiply-adds x 2), for MFU.
INCEPTION_FLOPS = 2 * 5.713e9

REFERENCE = r'''
import json, statistics, sys, time
import torch
import torch.library as L
_orig = L.register_fake  # torchvision's compiled ops need a matching CUDA build; skip them
L.register_fake = lambda *a, **k: (lambda f: f)
import torchvision  # noqa
L.register_fake = _orig
from pytorch_fid import inception as pfi
pfi.load_state_dict_from_url = lambda *a, **k: None  # random weights: no download
torch.nn.Module.load_state_dict = lambda self, *a, **k: None
batch, repeats, threads = (int(v) for v in sys.argv[1:4])
if threads:
  torch.set_num_threads(threads)
model = pfi.InceptionV3([3]).eval()
x = torch.rand(batch, 3, 299, 299)
with torch.no_grad():
  t0 = time.perf_counter(); model(x); first = time.perf_counter() - t0
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter(); model(x); times.append(time.perf_counter() - t0)
med = statistics.median(times)
print(json.dumps({"first_s": round(first, 3), "batch_s": round(med, 3),
                  "images_per_s": round(batch / med, 2), "torch": torch.__version__,
                  "threads": torch.get_num_threads()}))
'''


def main():
  p = argparse.ArgumentParser()
  p.add_argument("--batch", type=int, default=50)
  p.add_argument("--repeats", type=int, default=3)
  p.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32")
  p.add_argument("--peak_tflops", type=float, default=0.0,
                 help="the device's peak (e.g. 989 for an H200's dense bf16): adds MFU")
  p.add_argument("--reference-python", default=None,
                 help="a Python with torch and pytorch-fid 0.3.0: times it too")
  p.add_argument("--threads", type=int, default=0, help="torch threads (0: its default)")
  args = p.parse_args()

  from vqgan_jax import fid
  from vqgan_jax.nn.inception import inception_shapes
  shapes = inception_shapes()
  rng = np.random.default_rng(0)
  variables = jax.tree_util.tree_map(
      lambda s: (rng.standard_normal(s.shape) * 0.05).astype(np.float32), shapes)
  variables["batch_stats"] = jax.tree_util.tree_map(np.abs, variables["batch_stats"])
  net = fid.InceptionFeatures(variables,
                              dtype=jnp.bfloat16 if args.dtype == "bfloat16" else jnp.float32)
  batch = -(-args.batch // net.local_multiple) * net.local_multiple
  x = rng.uniform(0, 1, (batch, 299, 299, 3)).astype(np.float32)
  t0 = time.perf_counter()
  net(x)
  compile_s = time.perf_counter() - t0
  times = []
  for _ in range(args.repeats):
    t0 = time.perf_counter()
    net(x)
    times.append(time.perf_counter() - t0)
  med = statistics.median(times)
  rate = batch / med
  out = {"bench": "fid_inception", "batch": batch, "dtype": args.dtype,
         "compile_and_first_s": round(compile_s, 2), "batch_s": round(med, 3),
         "images_per_s": round(rate, 2), "fid50k_s": round(50000 / rate, 1),
         "tflops": round(rate * INCEPTION_FLOPS / 1e12, 3),
         "backend": jax.default_backend(), "device": str(jax.devices()[0]),
         "devices": jax.device_count(), "cpu_count": os.cpu_count(), "jax": jax.__version__,
         "python": platform.python_version()}
  if args.peak_tflops:
    out["mfu"] = round(out["tflops"] / args.peak_tflops, 4)
  if args.reference_python:
    res = subprocess.run([args.reference_python, "-c", REFERENCE, str(batch),
                          str(args.repeats), str(args.threads)],
                         capture_output=True, text=True, check=False)
    if res.returncode:
      out["reference_error"] = res.stderr.strip().splitlines()[-1:]
    else:
      ref = json.loads(res.stdout.strip().splitlines()[-1])
      out["reference"] = ref
      out["speedup_vs_pytorch_fid"] = round(rate / ref["images_per_s"], 2)
  print(json.dumps(out))


if __name__ == "__main__":
  sys.exit(main())
