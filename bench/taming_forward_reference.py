"""The reference side of bench/vqgan_forward.py: taming's PyTorch Encoder/Decoder.

Run with a Python that has torch, against a local taming-transformers checkout:
    python bench/taming_forward_reference.py --taming /path/to/taming-transformers
Prints one JSON line with encode+decode ms (batch 1, float32, no grad, median).
Same architecture and protocol as bench/vqgan_forward.py (quantizer included).
"""

import argparse
import json
import statistics
import sys
import time


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("--taming", required=True, help="taming-transformers checkout")
  parser.add_argument("--sizes", type=int, nargs="+", default=[128, 256])
  parser.add_argument("--repeats", type=int, default=10)
  args = parser.parse_args()
  sys.path.insert(0, args.taming)
  import torch
  from taming.modules.diffusionmodules.model import Decoder, Encoder
  torch.set_grad_enabled(False)
  dd = dict(double_z=False, z_channels=256, resolution=256, in_channels=3, out_ch=3, ch=128,
            ch_mult=[1, 1, 2, 2, 4], num_res_blocks=2, attn_resolutions=[16], dropout=0.0)
  enc, dec = Encoder(**dd).eval(), Decoder(**dd).eval()
  quant_conv, post_quant_conv = torch.nn.Conv2d(256, 256, 1), torch.nn.Conv2d(256, 256, 1)
  codebook = torch.nn.Embedding(1024, 256)

  def quantize(h):  # VectorQuantizer2's nearest-code lookup
    z = h.permute(0, 2, 3, 1).reshape(-1, 256)
    d = (z ** 2).sum(1, keepdim=True) + (codebook.weight ** 2).sum(1) - 2 * z @ codebook.weight.t()
    zq = codebook(d.argmin(1)).view(h.shape[0], h.shape[2], h.shape[3], 256)
    return zq.permute(0, 3, 1, 2)

  result = {"bench": "taming_forward_reference", "torch": torch.__version__,
            "threads": torch.get_num_threads()}
  for size in args.sizes:
    x = torch.rand(1, 3, size, size) * 2 - 1
    run = lambda: dec(post_quant_conv(quantize(quant_conv(enc(x)))))
    for _ in range(2):
      run()
    times = []
    for _ in range(args.repeats):
      t0 = time.perf_counter()
      run()
      times.append(time.perf_counter() - t0)
    result[f"encode_decode_{size}_ms"] = round(statistics.median(times) * 1e3, 1)
  print(json.dumps(result))


if __name__ == "__main__":
  main()
