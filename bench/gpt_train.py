"""Benchmark: tokens/s (and MFU) of the full GPT training step, one jit.

Prints one JSON line. The step (`make_train_step`): the forward of vqgan_jax.nn.gpt.GPT on
tokens[:, :-1], `gpt.cross_entropy` against tokens[:, 1:], the backward, and an optax
AdamW update (b1 0.9, b2 0.95, eps 1e-8, weight decay 0.01 on `gpt.decay_mask`: taming's
Net2NetTransformer.configure_optimizers groups; lr 4.5e-6 x batch as main.py scales it),
jitted with the train state donated. Tokens are uniform random int32[B, block + 1], so
every step trains on T = block positions. Defaults: 8 layers, 8 heads, width 512,
vocab 1024, block 256, batch 4, float32; `--preset cin_1.4b` is taming's class-conditional
ImageNet transformer (48 layers, 24 heads, width 1536, vocab 16384, block 256: 1,410.6M
params).

Reported: init_s (jitted init of params and AdamW state), compile_s (lower + compile of
the step), first_step_s, median step_ms over --steps after --warmup, tokens_per_s, and
process_cpu_s_per_step (median CPU seconds of all threads per step: on a CPU shared with
other busy processes it shows how much of the wall time was spent computing); FLOPs:
  model_flops_per_step = B * T * (6 * N + 12 * L * T * C)
with N = L * 12 * C^2 + C * V, the weights that enter matmuls (the q, k, v, proj and 4x MLP
kernels of every layer, and the head; not the biases, LayerNorms or the embedding lookups),
L layers, width C, vocab V, T = block positions: 6 FLOPs per weight per token for the
forward + backward matmuls, and 12 * L * T * C per token for the two attention matmuls
(q k^T and p v, forward + backward, over the full T x T, as PaLM's appendix B counts them,
i.e. the causal half is not subtracted). achieved_tflops and mfu (with --peak-tflops, the
peak of all devices together) use it; xla_flops_per_step (cost_analysis of the lowered
step) is reported beside it (with --scan XLA counts the scanned layer once, not L times).

    python bench/gpt_train.py [--steps 10] [--taming /path/to/taming-transformers
        --reference-python /venv-with-torch/bin/python [--reference-threads 1]]
    python bench/gpt_train.py --preset cin_1.4b --dtype bfloat16 --scan --remat dots \\
        --batch 32,64,96,128 --peak-tflops 989

A comma list in --batch runs each batch in turn and stops at the first that does not fit
in memory; the top-level figures are those of the largest batch that fit, and `sweep`
lists every attempt. With --taming, bench/taming_gpt_reference.py times taming's PyTorch
step (mingpt.GPT + its AdamW groups) for the same sizes in the same run, right after ours
(on the CPU unless --reference-device), and the speed-up is added.
"""

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax

from vqgan_jax.nn import gpt

PRESETS = {
    "default": dict(layers=8, heads=8, width=512, vocab=1024, block=256),
    # taming's cIN transformer (the 1.4B class-conditional ImageNet model).
    "cin_1.4b": dict(layers=48, heads=24, width=1536, vocab=16384, block=256),
}
BASE_LEARNING_RATE = 4.5e-6  # taming's base_learning_rate; main.py multiplies by the batch


def model_flops_per_token(c: gpt.GPTConfig, seq_len: int) -> float:
  """6 * N + 12 * L * T * C with N = L * 12 * C^2 + C * V (see the module docstring)."""
  n_matmul = c.n_layer * 12 * c.n_embd ** 2 + c.n_embd * c.vocab_size
  return 6.0 * n_matmul + 12.0 * c.n_layer * seq_len * c.n_embd


def make_train_step(config: gpt.GPTConfig, learning_rate: float
                    ) -> tuple[Callable, Callable]:
  """(init, step), both jitted.

  init(rng) -> state {"step": int32[], "params", "opt_state"};
  step(state, tokens int32[B, T + 1]) -> (state, {"loss": float32[]}), state donated.
  The single place to swap in the trainer's step (vqgan_jax.training.gpt_lib).
  """
  model = gpt.GPT(config)
  tx = optax.adamw(learning_rate, b1=0.9, b2=0.95, eps=1e-8, weight_decay=0.01,
                   mask=gpt.decay_mask)

  def init(rng):
    params = gpt.init_params(config, rng)
    return {"step": jnp.zeros((), jnp.int32), "params": params, "opt_state": tx.init(params)}

  def loss_fn(params, tokens):
    logits = model.apply({"params": params}, tokens[:, :-1], train=True)
    return gpt.cross_entropy(logits, tokens[:, 1:])[0]

  def step(state, tokens):
    loss, grads = jax.value_and_grad(loss_fn)(state["params"], tokens)
    updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
    params = optax.apply_updates(state["params"], updates)
    return ({"step": state["step"] + 1, "params": params, "opt_state": opt_state},
            {"loss": loss})

  return jax.jit(init), jax.jit(step, donate_argnums=(0,))


def _hlo_flops(stage) -> float:
  cost = stage.cost_analysis()
  if isinstance(cost, (list, tuple)):
    cost = cost[0] if cost else {}
  return float((cost or {}).get("flops", float("nan")))


def _is_oom(err: Exception) -> bool:
  text = str(err)
  return "RESOURCE_EXHAUSTED" in text or "Out of memory" in text or "out of memory" in text


def bench_one(config: gpt.GPTConfig, batch: int, steps: int, warmup: int) -> dict:
  """Times the train step at one batch size. Raises what XLA raises (e.g. out of memory)."""
  init, step = make_train_step(config, BASE_LEARNING_RATE * batch)
  t0 = time.perf_counter()
  state = jax.block_until_ready(init(jax.random.PRNGKey(0)))
  init_s = time.perf_counter() - t0
  tokens = jnp.asarray(np.random.default_rng(0).integers(
      0, config.vocab_size, (batch, config.block_size + 1)), jnp.int32)
  t0 = time.perf_counter()
  lowered = step.lower(state, tokens)
  xla_flops = _hlo_flops(lowered)
  compiled = lowered.compile()
  compile_s = time.perf_counter() - t0
  t0 = time.perf_counter()
  state, metrics = jax.block_until_ready(compiled(state, tokens))
  first_step_s = time.perf_counter() - t0
  for _ in range(warmup):
    state, metrics = jax.block_until_ready(compiled(state, tokens))
  times, cpu_times = [], []
  for _ in range(steps):
    t0, c0 = time.perf_counter(), time.process_time()
    state, metrics = jax.block_until_ready(compiled(state, tokens))
    times.append(time.perf_counter() - t0)
    cpu_times.append(time.process_time() - c0)
  loss = float(metrics["loss"])
  if not np.isfinite(loss):
    raise SystemExit(f"non-finite loss {loss} at batch {batch}")
  step_s = statistics.median(times)
  seq = config.block_size
  flops = batch * seq * model_flops_per_token(config, seq)
  return {"batch": batch, "tokens_per_step": batch * seq, "init_s": round(init_s, 2),
          "compile_s": round(compile_s, 2), "first_step_s": round(first_step_s, 3),
          "steps": steps, "step_ms": round(step_s * 1e3, 2),
          "step_ms_min_max": [round(min(times) * 1e3, 2), round(max(times) * 1e3, 2)],
          "tokens_per_s": round(batch * seq / step_s, 1),
          "process_cpu_s_per_step": round(statistics.median(cpu_times), 3),
          "loss": round(loss, 4),
          "model_flops_per_step": flops, "xla_flops_per_step": xla_flops,
          "achieved_tflops": round(flops / step_s / 1e12, 4)}


def main():
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--preset", choices=sorted(PRESETS), default="default")
  for name in ("layers", "heads", "width", "vocab", "block"):
    parser.add_argument(f"--{name}", type=int, default=None,
                        help=f"overrides the preset's {name}")
  parser.add_argument("--batch", default="4", help="a batch size, or a comma list to sweep")
  parser.add_argument("--dtype", choices=gpt.DTYPES, default="float32")
  parser.add_argument("--scan", action="store_true", help="GPTConfig.scan_layers")
  parser.add_argument("--remat", choices=gpt.REMAT_POLICIES, default="none")
  parser.add_argument("--attention", choices=gpt.ATTENTION_IMPLS, default="xla")
  parser.add_argument("--steps", type=int, default=10, help="timed steps (median)")
  parser.add_argument("--warmup", type=int, default=2, help="untimed steps after the first")
  parser.add_argument("--peak-tflops", type=float, default=None,
                      help="peak TFLOP/s of all devices together, for MFU")
  parser.add_argument("--taming", default=None, help="taming-transformers checkout")
  parser.add_argument("--reference-python", default=sys.executable,
                      help="a Python with torch, for the reference run")
  parser.add_argument("--reference-steps", type=int, default=5)
  parser.add_argument("--reference-device", default="cpu", help="torch device of the reference")
  parser.add_argument("--reference-threads", type=int, default=0,
                      help="torch threads of the reference (0: torch's default)")
  args = parser.parse_args()
  sizes = dict(PRESETS[args.preset])
  sizes.update({k: getattr(args, k) for k in sizes if getattr(args, k) is not None})
  try:
    batches = [int(b) for b in args.batch.split(",")]
  except ValueError:
    parser.error(f"--batch: expected an int or a comma list of ints, got {args.batch!r}")
  config = gpt.GPTConfig(vocab_size=sizes["vocab"], block_size=sizes["block"],
                         n_layer=sizes["layers"], n_head=sizes["heads"], n_embd=sizes["width"],
                         dtype=args.dtype, scan_layers=args.scan, remat=args.remat,
                         attention=args.attention)
  errors = config.validate()
  if errors:
    parser.error("; ".join(errors))

  load_start = os.getloadavg()[0]
  sweep = []
  for batch in batches:
    try:
      sweep.append(bench_one(config, batch, args.steps, args.warmup))
    except Exception as err:  # pylint: disable=broad-except
      if not _is_oom(err):
        raise
      sweep.append({"batch": batch, "error": "out of memory"})
      break
  fitted = [r for r in sweep if "error" not in r]
  if not fitted:
    raise SystemExit(f"no batch in {batches} fits: {sweep}")
  best = fitted[-1]
  result = {"bench": "gpt_train",
            "what": "forward + cross_entropy + backward + AdamW (decay_mask), one jit, state "
                    "donated",
            "preset": args.preset, **sizes, "dtype": args.dtype, "scan_layers": args.scan,
            "remat": args.remat, "attention": args.attention,
            "params": gpt.param_count(config), **best,
            "flops_formula": "B*T*(6*N + 12*L*T*C), N = 12*L*C^2 + C*V",
            "backend": jax.default_backend(), "device": str(jax.devices()[0]),
            "device_count": jax.device_count(), "cpu_count": os.cpu_count(),
            "loadavg_1m_start_end": [round(load_start, 2), round(os.getloadavg()[0], 2)],
            "jax": jax.__version__, "python": platform.python_version()}
  if len(batches) > 1:
    result["sweep"] = [{k: r[k] for k in ("batch", "step_ms", "tokens_per_s", "error")
                        if k in r} for r in sweep]
  if args.peak_tflops:
    result["peak_tflops"] = args.peak_tflops
    result["mfu"] = round(best["achieved_tflops"] / args.peak_tflops, 4)

  if args.taming:
    ref_script = os.path.join(os.path.dirname(os.path.abspath(__file__)),
                              "taming_gpt_reference.py")
    cmd = [args.reference_python, ref_script, "--taming", args.taming,
           "--batch", str(best["batch"]), "--steps", str(args.reference_steps),
           "--dtype", args.dtype, "--threads", str(args.reference_threads),
           "--device", args.reference_device]
    for name in ("layers", "heads", "width", "vocab", "block"):
      cmd += [f"--{name}", str(sizes[name])]
    out = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if out.returncode:
      raise SystemExit(f"reference run failed:\n{out.stderr[-4000:]}")
    ref = json.loads(out.stdout.strip().splitlines()[-1])
    result["reference"] = ref
    result["reference_ms_per_step"] = ref["ms_per_step"]
    result["reference_tokens_per_s"] = ref["tokens_per_s"]
    result["speedup_vs_reference"] = round(ref["ms_per_step"] / best["step_ms"], 2)
  print(json.dumps(result))


if __name__ == "__main__":
  main()
