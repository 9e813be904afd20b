"""The reference side of bench/gpt_train.py: taming's own PyTorch transformer training step.

Run with a Python that has torch, against a taming-transformers checkout:
    python bench/taming_gpt_reference.py --taming /path/to/taming-transformers \
        [--layers 8 --heads 8 --width 512 --vocab 1024 --block 256 --batch 4 --steps 5]
Prints one JSON line with the median ms of one step over --steps after 2 warm-ups (on the
CPU by default; --device cuda times it on a GPU, --dtype bfloat16 under torch.autocast),
and the median CPU seconds of all threads per step (OpenMP threads that spin while waiting
count too).

The model is `taming.modules.transformer.mingpt.GPT(vocab, block, n_layer, n_head, n_embd)`
(dropout 0, taming's defaults) in train mode. One step is what Net2NetTransformer's
training_step does for the transformer: `logits, loss = gpt(idx, targets=targets)` (mean
cross-entropy over B*T tokens), `loss.backward()`, `opt.step()`, `opt.zero_grad()`, with
the AdamW that `Net2NetTransformer.configure_optimizers` builds (the decay group: every
nn.Linear weight, wd 0.01; the no_decay group: biases, LayerNorm and Embedding weights and
pos_emb; betas (0.9, 0.95); lr 4.5e-6 x batch as main.py scales it). idx and targets are
tokens[:, :-1] and tokens[:, 1:] of uniform random tokens int64[B, block + 1].

Nothing is downloaded and no taming code is copied: mingpt's `transformers` import (only
top_k_top_p_filtering, unused here) and cond_transformer's pytorch_lightning / main imports
are replaced in sys.modules when absent (taming_train_reference's stubs), and
configure_optimizers runs on a stand-in `self` that holds only `transformer` and
`learning_rate`, the two attributes it reads.
"""

import argparse
import json
import statistics
import sys
import time
import types

from taming_train_reference import _install_stubs, _module


def _stub_transformers() -> list:
  try:
    import transformers  # noqa: F401
    return []
  except ImportError:
    mod = _module("transformers")

    def top_k_top_p_filtering(*args, **kwargs):
      raise NotImplementedError("transformers is stubbed by bench/taming_gpt_reference.py")
    mod.top_k_top_p_filtering = top_k_top_p_filtering
    sys.modules["transformers"] = mod
    return ["transformers"]


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("--taming", required=True, help="taming-transformers checkout")
  parser.add_argument("--layers", type=int, default=8)
  parser.add_argument("--heads", type=int, default=8)
  parser.add_argument("--width", type=int, default=512)
  parser.add_argument("--vocab", type=int, default=1024)
  parser.add_argument("--block", type=int, default=256)
  parser.add_argument("--batch", type=int, default=4)
  parser.add_argument("--steps", type=int, default=5)
  parser.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32",
                      help="bfloat16: the forward under torch.autocast (params stay fp32)")
  parser.add_argument("--device", default="cpu", help="torch device: cpu or cuda")
  parser.add_argument("--threads", type=int, default=0,
                      help="torch.set_num_threads (0: torch's default)")
  args = parser.parse_args()
  sys.path.insert(0, args.taming)
  import torch
  if args.threads:
    torch.set_num_threads(args.threads)
  stubs = _stub_transformers() + _install_stubs()
  from taming.models.cond_transformer import Net2NetTransformer
  from taming.modules.transformer.mingpt import GPT

  torch.manual_seed(0)
  model = GPT(vocab_size=args.vocab, block_size=args.block, n_layer=args.layers,
              n_head=args.heads, n_embd=args.width).to(args.device)
  model.train()
  holder = types.SimpleNamespace(transformer=model, learning_rate=4.5e-6 * args.batch)
  opt = Net2NetTransformer.configure_optimizers(holder)
  gen = torch.Generator().manual_seed(0)
  tokens = torch.randint(0, args.vocab, (args.batch, args.block + 1), generator=gen)
  idx = tokens[:, :-1].contiguous().to(args.device)
  targets = tokens[:, 1:].contiguous().to(args.device)
  sync = torch.cuda.synchronize if args.device.startswith("cuda") else (lambda: None)
  device_type = "cuda" if args.device.startswith("cuda") else "cpu"

  def step():
    t0, c0 = time.perf_counter(), time.process_time()
    with torch.autocast(device_type, dtype=torch.bfloat16, enabled=args.dtype == "bfloat16"):
      _, loss = model(idx, targets=targets)
    loss.backward()
    opt.step()
    opt.zero_grad()
    sync()
    return time.perf_counter() - t0, time.process_time() - c0, float(loss.detach())

  for _ in range(2):
    step()
  times, cpu_times, loss = [], [], None
  for _ in range(args.steps):
    t, cpu, loss = step()
    times.append(t)
    cpu_times.append(cpu)
  ms = statistics.median(times) * 1e3
  print(json.dumps({
      "bench": "taming_gpt_reference", "ms_per_step": round(ms, 1),
      "ms_min_max": [round(min(times) * 1e3, 1), round(max(times) * 1e3, 1)],
      "tokens_per_s": round(args.batch * args.block * 1e3 / ms, 1), "steps": args.steps,
      "process_cpu_s_per_step": round(statistics.median(cpu_times), 3),
      "batch": args.batch, "block": args.block, "layers": args.layers, "heads": args.heads,
      "width": args.width, "vocab": args.vocab, "dtype": args.dtype, "loss": round(loss, 4),
      "params": sum(p.numel() for p in model.parameters()),
      "decay_group_size": len(opt.param_groups[0]["params"]),
      "no_decay_group_size": len(opt.param_groups[1]["params"]),
      "stubbed_modules": stubs, "torch": torch.__version__, "device": args.device,
      "threads": torch.get_num_threads()}))


if __name__ == "__main__":
  main()
