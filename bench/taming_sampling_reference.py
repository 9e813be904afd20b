"""The reference side of bench/sampling.py: taming's `sample_with_past` (KV cache) and, with
--uncached, Net2NetTransformer.sample's full recompute per token.

    python bench/taming_sampling_reference.py --taming /path/to/taming-transformers \
        [--layers 8 --heads 8 --width 512 --vocab 1024 --block 256 --batch 4 --steps 256]

Prints one JSON line: the median wall seconds of one call over --repeats after one
warm-up. The model is `taming.modules.transformer.mingpt.GPT` (eval, no_grad), conditioned
on one start token per row; `sample_with_past(x, model, steps, sample_logits=True,
top_k=None)` (top_k None: taming's function then skips its transformers filtering), as
scripts/sample_fast.py calls it. Nothing is copied from taming: it is imported from the
checkout (bench/taming_gpt_reference.py's stubs stand in for transformers and friends).
"""

import argparse
import json
import statistics
import sys
import time

from taming_gpt_reference import _stub_transformers
from taming_train_reference import _install_stubs


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("--taming", required=True)
  parser.add_argument("--layers", type=int, default=8)
  parser.add_argument("--heads", type=int, default=8)
  parser.add_argument("--width", type=int, default=512)
  parser.add_argument("--vocab", type=int, default=1024)
  parser.add_argument("--block", type=int, default=256)
  parser.add_argument("--batch", type=int, default=4)
  parser.add_argument("--steps", type=int, default=256)
  parser.add_argument("--repeats", type=int, default=2)
  parser.add_argument("--uncached", action="store_true",
                      help="also time the uncached loop (one full forward per token)")
  parser.add_argument("--threads", type=int, default=0)
  args = parser.parse_args()
  sys.path.insert(0, args.taming)
  import torch
  if args.threads:
    torch.set_num_threads(args.threads)
  stubs = _stub_transformers() + _install_stubs()
  from taming.modules.transformer.mingpt import GPT, sample_with_past
  torch.manual_seed(0)
  # sample_with_past feeds up to 1 + steps - 1 positions: block >= steps.
  model = GPT(vocab_size=args.vocab, block_size=args.block, n_layer=args.layers,
              n_head=args.heads, n_embd=args.width).eval()
  c = torch.zeros(args.batch, 1, dtype=torch.long)

  def cached():
    with torch.no_grad():
      t0 = time.perf_counter()
      sample_with_past(c, model, steps=args.steps, sample_logits=True, top_k=None)
      return time.perf_counter() - t0

  def uncached():
    with torch.no_grad():
      t0 = time.perf_counter()
      x = c
      for _ in range(args.steps):
        logits, _ = model(x[:, -args.block:])
        probs = torch.softmax(logits[:, -1], -1)
        x = torch.cat([x, torch.multinomial(probs, 1)], 1)
      return time.perf_counter() - t0

  out = {"bench": "taming_sampling_reference", "batch": args.batch, "steps": args.steps,
         "layers": args.layers, "heads": args.heads, "width": args.width,
         "vocab": args.vocab, "block": args.block, "torch": torch.__version__,
         "threads": torch.get_num_threads(), "stubbed_modules": stubs}
  cached()
  s = statistics.median(cached() for _ in range(args.repeats))
  out.update(cached_s=round(s, 3), cached_tokens_per_s=round(args.batch * args.steps / s, 1))
  if args.uncached:
    s = uncached()
    out.update(uncached_s=round(s, 3),
               uncached_tokens_per_s=round(args.batch * args.steps / s, 1))
  print(json.dumps(out))


if __name__ == "__main__":
  main()
