"""Helpers and a subprocess entry point for the multi-device and multi-process VQGAN tests.

Imported by tests/training/test_*.py for the tiny setup, batches and comparisons; run as
a script for what needs its own process (jax fixes the device count when it starts):

  XLA_FLAGS=--xla_force_host_platform_device_count=8 python training_worker.py sharding
      A single-device reference and the ("data", 8) and ("data", 4) x ("fsdp", 2)
      meshes, two train steps each; prints one JSON line of differences.
  XLA_FLAGS=--xla_force_host_platform_device_count=2 python training_worker.py dist \
      --out DIR --num-processes 2 --process-id I --port P --fsdp 2 --steps 3
      Chained train steps on a global mesh after jax.distributed.initialize (none with
      --num-processes 1); writes this process's own copy of the state before and after
      every step, and the metrics, to DIR/process_I.npz; prints one JSON line.
  python training_worker.py replay --out DIR --steps 3
      Single device: every step of DIR/process_0.npz redone from that run's own state
      before the step; prints one JSON line of differences.

Steps are compared from the same input state: a chained run is not comparable at 1e-5,
because the loss is discontinuous (nearest-code argmin) and ill-conditioned (the
adaptive GAN weight): a 1e-6 change of the AE params moved step-2 gradients by up to
5e-2 in a probe, so the 1e-7 rounding differences of a first step can grow past 1e-5.
The tiny model (ch 32, ch_mult (1, 2), 16x16 images, batch 8, no LPIPS) keeps XLA
compiles short.
"""

import argparse
import functools
import json
import os
import sys
import time

import numpy as np

TINY_BATCH = 8
TINY_SIZE = 16
ATOL = RTOL = 1e-5


def tiny_config(accum_steps: int = 1, use_actnorm: bool = False, **loss_kw):
  """The tiny training config: ch 32, ch_mult (1, 2), 16x16 images, taming's D at ndf 16
  and 2 layers, no LPIPS term (its parity is tested in tests/nn/test_lpips.py and the
  CLI smoke test; here it would only double the compile time).

  Adam here has eps=1e-3 (taming: 1e-8). Some parameters have an exactly zero gradient
  (a conv bias before a one-channel GroupNorm group, attention key biases under the
  softmax), so what reaches them is rounding noise (~1e-10); Adam's first step maps any
  nonzero gradient to about +-lr, so two summation orders of the same gradient
  (1 device vs 8) differed by 1.9e-3 there. With eps = lr = 1e-3 an update is at most
  as sensitive to its gradient as the gradient itself, and comparisons at 1e-5 test
  the step, not Adam's amplification of noise.
  """
  from vqgan_jax.training import vqgan_config
  c = vqgan_config.base_config()
  c.model.update(dict(ch=32, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(8,),
                      resolution=TINY_SIZE, z_channels=8, embed_dim=8, n_embed=32))
  c.loss.update(dict(disc_start=0, disc_weight=0.8, disc_ndf=16, disc_num_layers=2,
                     use_actnorm=use_actnorm, perceptual_weight=0.0))
  c.loss.update(loss_kw)
  c.optim.update(dict(learning_rate=1e-3, b1=0.5, b2=0.9, eps=1e-3, accum_steps=accum_steps))
  c.data.crop_size = TINY_SIZE
  c.batch_size = TINY_BATCH
  c.seed = 0
  return c


def tiny_setup(accum_steps: int = 1, use_actnorm: bool = False, **loss_kw):
  """vqgan_lib.build_setup of `tiny_config`."""
  from vqgan_jax.training import vqgan_lib
  return vqgan_lib.build_setup(tiny_config(accum_steps, use_actnorm, **loss_kw))


def fake_batch(step: int, batch: int = TINY_BATCH) -> np.ndarray:
  """float32[batch, 16, 16, 3] in [-1, 1]: smooth waves plus noise, a function of step."""
  rng = np.random.default_rng(1000 + step)
  yy, xx = np.meshgrid(np.linspace(-1, 1, TINY_SIZE), np.linspace(-1, 1, TINY_SIZE),
                       indexing="ij")
  freq = rng.uniform(1.0, 4.0, (batch, 1, 1, 3))
  phase = rng.uniform(0, 2 * np.pi, (batch, 1, 1, 3))
  img = np.sin(freq * xx[None, :, :, None] + phase) * np.cos(freq * yy[None, :, :, None])
  img = 0.8 * img + 0.2 * rng.uniform(-1, 1, img.shape)
  return np.clip(img, -1, 1).astype(np.float32)


def host_copy(tree):
  """A numpy copy of a fully addressable pytree, safe against later donation."""
  import jax
  return jax.tree_util.tree_map(lambda a: np.array(a, copy=True), jax.device_get(tree))


def init_host_state(setup, seed: int = 0):
  """A fresh train state with init_state's exact structure, drawn in numpy.

  Compiling init_state costs 10 to 20 s on 2 CPU cores (threefry kernels for ~180 params),
  more than a tiny train step, so these tests draw the weights here instead, as taming
  does: conv kernels and biases U(+-1/sqrt(fan_in)) (torch's default), D kernels
  N(0, 0.02) and BatchNorm scales N(1, 0.02), norms' scales 1 and offsets 0, the
  codebook U(+-1/n_embed); optimizer moments, counters and flags are zeros, as
  tx.init and init_state make them. Unknown leaves raise.
  """
  import jax
  from vqgan_jax.training import vqgan_lib
  from vqgan_jax.training.sharding import path_str
  abstract = jax.eval_shape(functools.partial(vqgan_lib.init_state, setup),
                            jax.random.PRNGKey(0))
  rng = np.random.default_rng(seed)
  fan_in = {}
  for path, a in jax.tree_util.tree_flatten_with_path(abstract)[0]:
    name = path_str(path)
    if name.endswith("/kernel"):
      fan_in[name[:-len("kernel")]] = int(np.prod(a.shape[:-1]))

  def leaf(path, a):
    name = path_str(path)
    group, last = name.split("/")[0], name.split("/")[-1]
    module = name[:-len(last)]
    if group not in ("ae_params", "d_params") or not np.issubdtype(a.dtype, np.floating):
      if group in ("d_state",) and last == "var":
        return np.ones(a.shape, a.dtype)
      if group in ("step", "ae_opt_state", "d_opt_state", "code_usage", "d_state",
                   "model_state"):
        return np.zeros(a.shape, a.dtype)
      raise ValueError(f"init_host_state: no rule for {name}")
    if last == "kernel" and group == "d_params":
      return rng.normal(0.0, 0.02, a.shape).astype(a.dtype)
    if last == "kernel" or (last == "bias" and module in fan_in):
      bound = 1.0 / np.sqrt(fan_in[module])
      return rng.uniform(-bound, bound, a.shape).astype(a.dtype)
    if last == "embedding":
      return rng.uniform(-1.0 / a.shape[0], 1.0 / a.shape[0], a.shape).astype(a.dtype)
    if last == "scale" and group == "d_params" and not setup.disc.use_actnorm:
      return rng.normal(1.0, 0.02, a.shape).astype(a.dtype)
    if last == "scale":
      return np.ones(a.shape, a.dtype)
    if last in ("bias", "loc"):
      return np.zeros(a.shape, a.dtype)
    raise ValueError(f"init_host_state: no rule for {name}")

  return jax.tree_util.tree_map_with_path(leaf, abstract)


def flatten(tree, prefix: str = "") -> dict:
  """{prefix + '/'-joined path: numpy array} for every leaf of a pytree."""
  import jax
  from vqgan_jax.training.sharding import path_str
  return {prefix + path_str(path): np.asarray(leaf)
          for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]}


def unflatten_like(template, flat: dict, prefix: str = ""):
  """The pytree `template` with its leaves taken from `flatten(...)` output."""
  import jax
  from vqgan_jax.training.sharding import path_str
  leaves, treedef = jax.tree_util.tree_flatten_with_path(template)
  return jax.tree_util.tree_unflatten(
      treedef, [np.asarray(flat[prefix + path_str(p)]).astype(np.asarray(a).dtype)
                for p, a in leaves])


def compare(got: dict, ref: dict, atol: float = ATOL, rtol: float = RTOL) -> dict:
  """Differences of two {name: array} dicts with the same keys (`ref` is the reference).

  Returns max_abs (max |got - ref| over every element of every leaf) and ratio, the
  largest |got - ref| / (atol + rtol * |ref|) (np.allclose passes iff ratio <= 1), with
  the leaf where each occurs.
  """
  if set(got) != set(ref):
    raise AssertionError(f"keys differ: {sorted(set(got) ^ set(ref))[:10]}")
  out = {"max_abs": 0.0, "max_abs_leaf": None, "ratio": 0.0, "ratio_leaf": None}
  for k in sorted(ref):
    a, b = np.asarray(got[k], np.float64), np.asarray(ref[k], np.float64)
    if a.shape != b.shape:
      raise AssertionError(f"{k}: shape {a.shape} vs {b.shape}")
    if not a.size:
      continue
    diff = np.abs(a - b)
    d, r = float(np.max(diff)), float(np.max(diff / (atol + rtol * np.abs(b))))
    if not (np.isfinite(d) and np.isfinite(r)):
      d = r = float("inf")
    if d > out["max_abs"] or out["max_abs_leaf"] is None:
      out["max_abs"], out["max_abs_leaf"] = d, k
    if r > out["ratio"] or out["ratio_leaf"] is None:
      out["ratio"], out["ratio_leaf"] = r, k
  return out


def local_view(a) -> np.ndarray:
  """The full value of a global array from this process's own shards (no communication)."""
  out = np.zeros(a.shape, a.dtype)
  seen = np.zeros(a.shape, bool)
  for shard in a.addressable_shards:
    out[shard.index] = np.asarray(shard.data)
    seen[shard.index] = True
  if not seen.all():
    raise ValueError(f"an array of shape {a.shape} is not fully held by this process")
  return out


def one_step(steps, host_state, lpips, batch: np.ndarray):
  """steps.train from a fresh device copy of host_state: (flat state, metrics) on the host."""
  import jax
  from vqgan_jax.training import sharding as sharding_lib
  state = jax.device_put(host_state, steps.state_sharding)
  state, metrics = steps.train(state, lpips, {"image": sharding_lib.global_batch(batch,
                                                                                 steps.mesh)})
  return host_copy(state), {k: float(v) for k, v in jax.device_get(metrics).items()}


def _group_change(after: dict, before: dict) -> dict:
  """Max |after - before| per top-level state field (ae_params, d_state, ...)."""
  out = {}
  for k in before:
    group = k.split("/")[0]
    d = float(np.max(np.abs(after[k].astype(np.float64) - before[k]))) if before[k].size else 0.
    out[group] = max(out.get(group, 0.0), d)
  return out


def sharding_main(args):
  """Single device vs ("data", 8) vs ("data", 4) x ("fsdp", 2); GAN terms and D active."""
  import jax
  from vqgan_jax.training import sharding as sharding_lib
  from vqgan_jax.training import vqgan_lib
  if jax.device_count() != 8:
    raise SystemExit(f"expected 8 devices (XLA_FLAGS), got {jax.device_count()}")
  setup = tiny_setup(disc_start=0)
  host0 = init_host_state(setup)
  lpips_host = None
  b0, b1 = fake_batch(0), fake_batch(1)
  t0 = time.perf_counter()
  ref_steps = vqgan_lib.CompiledSteps(setup, sharding_lib.make_mesh(devices=jax.devices()[:1]))
  ref_lpips = ref_steps.put_lpips(lpips_host)
  ref1, ref_m1 = one_step(ref_steps, host0, ref_lpips, b0)
  ref2, ref_m2 = one_step(ref_steps, ref1, ref_lpips, b1)
  flat0, flat1, flat2 = flatten(host0), flatten(ref1), flatten(ref2)
  result = {"single": {"seconds": round(time.perf_counter() - t0, 1),
                       "update_step1": _group_change(flat1, flat0),
                       "update_step2": _group_change(flat2, flat1),
                       "metrics": [ref_m1, ref_m2]}}
  for name, (data, fsdp) in (("data8", (8, 1)), ("data4_fsdp2", (4, 2))):
    t0 = time.perf_counter()
    mesh = sharding_lib.make_mesh(data=data, fsdp=fsdp)
    steps = vqgan_lib.CompiledSteps(setup, mesh)
    lpips = steps.put_lpips(lpips_host)
    # Two chained steps (the second must reuse the first's executable) ...
    state = jax.device_put(host0, steps.state_sharding)
    state, m1 = steps.train(state, lpips, {"image": sharding_lib.global_batch(b0, mesh)})
    s1, m1 = flatten(host_copy(state)), {k: float(v) for k, v in jax.device_get(m1).items()}
    state, m2c = steps.train(state, lpips, {"image": sharding_lib.global_batch(b1, mesh)})
    cache_chained = steps.train._cache_size()
    s2c, m2c = flatten(host_copy(state)), {k: float(v) for k, v in jax.device_get(m2c).items()}
    # ... and the second step again, from the reference's state after step 1.
    s2, m2 = one_step(steps, ref1, lpips, b1)
    sharded = []
    for prefix, tree in (("state/", state), ("lpips/", lpips)):
      for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
        spec = [str(s) for s in leaf.sharding.spec]
        if "fsdp" in spec:
          sharded.append({"path": prefix + sharding_lib.path_str(path), "spec": spec,
                          "shape": list(leaf.shape),
                          "shard_shape": list(leaf.addressable_shards[0].data.shape)})
    result[name] = {
        "seconds": round(time.perf_counter() - t0, 1), "mesh": dict(mesh.shape),
        "cache_size_after_2_chained_steps": cache_chained,
        "cache_size_after_all": steps.train._cache_size(),
        "step1": {"state": compare(s1, flat1), "metrics": compare(m1, ref_m1)},
        "step2": {"state": compare(flatten(s2), flat2), "metrics": compare(m2, ref_m2)},
        "chained_step2_info": {"state": compare(s2c, flat2), "metrics": compare(m2c, ref_m2)},
        "fsdp_sharded": sharded}
  print(json.dumps(result))


def dist_main(args):
  """Chained train steps over a global ("data", "fsdp") mesh; optionally multi-process."""
  import jax
  if args.num_processes > 1:
    jax.distributed.initialize(coordinator_address=f"127.0.0.1:{args.port}",
                               num_processes=args.num_processes, process_id=args.process_id,
                               initialization_timeout=60)
  from vqgan_jax.training import sharding as sharding_lib
  from vqgan_jax.training import vqgan_lib
  setup = tiny_setup(disc_start=0)
  mesh = sharding_lib.make_mesh(data=-1, fsdp=args.fsdp)
  steps = vqgan_lib.CompiledSteps(setup, mesh)
  state = steps.init(jax.random.PRNGKey(0))
  lpips = steps.put_lpips(None)
  # The rows of the global batch held by this process's devices (one contiguous block).
  shape = (TINY_BATCH, TINY_SIZE, TINY_SIZE, 3)
  index_map = sharding_lib.batch_sharding(mesh).addressable_devices_indices_map(shape)
  rows = sorted({(idx[0].start or 0, idx[0].stop or TINY_BATCH) for idx in index_map.values()})
  lo, hi = rows[0][0], rows[-1][1]
  if sum(b - a for a, b in rows) != hi - lo:
    raise SystemExit(f"process {jax.process_index()}: rows {rows} are not contiguous")
  # Each process's own copy of the state (assembled from its shards), so two processes
  # agree only if their replicas really are identical.
  out = flatten(jax.tree_util.tree_map(local_view, state), "state0/")
  metrics_log = {}
  for step in range(args.steps):
    batch = {"image": sharding_lib.global_batch(fake_batch(step)[lo:hi], mesh)}
    if batch["image"].shape != shape:
      raise SystemExit(f"global batch has shape {batch['image'].shape}, expected {shape}")
    state, metrics = steps.train(state, lpips, batch)
    out.update(flatten(jax.tree_util.tree_map(local_view, state), f"state{step + 1}/"))
    for k, v in metrics.items():
      metrics_log.setdefault(k, []).append(float(local_view(v)))
  for k, v in metrics_log.items():
    out["metrics/" + k] = np.asarray(v, np.float64)
  # Image grids: each process feeds its own rows; the replicated output of
  # steps.reconstruct holds every row of the global batch on every process.
  grid_in = fake_batch(99)
  x, rec = steps.reconstruct(state, sharding_lib.global_batch(grid_in[lo:hi], mesh))
  grid_gathered = bool(np.array_equal(local_view(x), grid_in)) and rec.shape == grid_in.shape
  np.savez(os.path.join(args.out, f"process_{jax.process_index()}.npz"), **out)
  final = {k: v for k, v in out.items() if k.startswith(f"state{args.steps}/ae_params")}
  print(json.dumps({"process_index": jax.process_index(), "process_count": jax.process_count(),
                    "devices": jax.device_count(), "local_devices": jax.local_device_count(),
                    "rows": [lo, hi], "cache_size": steps.train._cache_size(),
                    "grid_gathered": grid_gathered,
                    "ae_param_checksum": float(sum(np.sum(v, dtype=np.float64)
                                                   for v in final.values())),
                    "metrics": {k: v[-1] for k, v in metrics_log.items()}}))
  sys.stdout.flush()
  if args.num_processes > 1:
    jax.distributed.shutdown()


def replay_main(args):
  """Redoes every step of DIR/process_0.npz on one device from that run's own states.

  Also runs the same steps chained from this device's own init (reported, not a test:
  see the module docstring).
  """
  import jax
  from vqgan_jax.training import sharding as sharding_lib
  from vqgan_jax.training import vqgan_lib
  if jax.device_count() != 1 or jax.process_count() != 1:
    raise SystemExit(f"replay wants 1 device in 1 process, got {jax.device_count()}")
  run = dict(np.load(os.path.join(args.out, "process_0.npz")))
  setup = tiny_setup(disc_start=0)
  steps = vqgan_lib.CompiledSteps(setup, sharding_lib.make_mesh())
  init = host_copy(steps.init(jax.random.PRNGKey(0)))
  lpips = steps.put_lpips(None)
  result = {"init": compare(flatten(run_state(run, 0, init)), flatten(init)), "steps": []}
  chained = init
  for step in range(args.steps):
    before, after = run_state(run, step, init), run_state(run, step + 1, init)
    state, metrics = one_step(steps, before, lpips, fake_batch(step))
    got = {k: v[step] for k, v in run.items() if k.startswith("metrics/")}
    ref = {"metrics/" + k: v for k, v in metrics.items()}
    result["steps"].append({"state": compare(flatten(after), flatten(state)),
                            "metrics": compare(got, ref)})
    chained, chained_metrics = one_step(steps, chained, lpips, fake_batch(step))
  result["chained_info"] = {
      "state": compare(flatten(run_state(run, args.steps, init)), flatten(chained)),
      "metrics": compare({k: v[-1] for k, v in run.items() if k.startswith("metrics/")},
                         {"metrics/" + k: v for k, v in chained_metrics.items()})}
  result["cache_size"] = steps.train._cache_size()
  print(json.dumps(result))


def run_state(run: dict, step: int, template):
  """The state of a `dist` run before step `step` (0: the initial state)."""
  return unflatten_like(template, run, f"state{step}/")


def main():
  parser = argparse.ArgumentParser(description=__doc__)
  parser.add_argument("mode", choices=("sharding", "dist", "replay"))
  parser.add_argument("--out", default=None, help="directory of the dist/replay files")
  parser.add_argument("--num-processes", type=int, default=1)
  parser.add_argument("--process-id", type=int, default=0)
  parser.add_argument("--port", type=int, default=0)
  parser.add_argument("--fsdp", type=int, default=1)
  parser.add_argument("--steps", type=int, default=3)
  args = parser.parse_args()
  {"sharding": sharding_main, "dist": dist_main, "replay": replay_main}[args.mode](args)


if __name__ == "__main__":
  main()
