"""Helpers for the transformer-training tests, and the subprocess entry of the mesh test.

Imported by tests/training/test_gpt_*.py for the tiny setup, params, batches, the shared
code dataset and comparisons; run as a script for what needs its own process (jax fixes
the device count when it starts):

  XLA_FLAGS=--xla_force_host_platform_device_count=8 python gpt_worker.py sharding OUT
      One train step of `random_setup` from `initial_state` on ("data", 8) and on
      ("data", 4) x ("fsdp", 2), with the GPT's sharding rules
      (gpt_config.base_config().sharding_rules); writes OUT/<mesh>.npz (the state after
      the step and its metrics) and prints one JSON line (the leaves sharded over fsdp,
      compile-cache sizes). test_gpt_sharding.py compares them with its own
      single-device step, computed in-process while this runs.

The tiny GPT (2 layers, 2 heads, width 32) over 4x4 code grids (16x16 images through the
tiny taming VQGAN, factor 4) keeps every traced step to a few seconds on 2 CPU cores.
"""

import json
import os
import sys
import time

import numpy as np

from training_worker import compare, flatten, host_copy  # noqa: F401  (re-exported)

GRID = (4, 4)        # code grid of a 16x16 image under the tiny VQGAN (factor 4)
IMAGE_SIZE = 16
VOCAB = 64           # the tiny VQGAN's codebook
N_CLASSES = 10
BATCH = 8


def tiny_config(**optim):
  """gpt_config.base_config() with a tiny GPT and a fixed learning rate (no data)."""
  from vqgan_jax.training import gpt_config
  c = gpt_config.base_config()
  c.transformer.update(dict(n_layer=2, n_head=2, n_embd=32))
  c.optim.update(dict(learning_rate=1e-3, b1=0.9, b2=0.95, eps=1e-8, weight_decay=0.01))
  c.optim.update(optim)
  c.batch_size = BATCH
  c.total_steps = 100
  c.seed = 5
  return c


def tiny_setup(cond: str = "sos", permuter: str = "identity", pkeep: float = 1.0,
               label_dropout: float = 0.0, accum_steps: int = 1,
               accum_loop: str = "unrolled", n_layer: int = 2, config=None, **optim):
  """lib.build_setup of `tiny_config` over 4x4 code grids, with the given conditioning
  ("sos", "class" with 10 classes, or "vq" with 2x2 conditioning codes)."""
  from vqgan_jax.net2net import Net2NetConfig
  from vqgan_jax.nn.gpt import GPTConfig
  from vqgan_jax.training import gpt_lib
  c = config if config is not None else tiny_config(accum_steps=accum_steps,
                                                    accum_loop=accum_loop, **optim)
  n2n = Net2NetConfig(cond=cond, sos_token=0, n_classes=N_CLASSES if cond == "class" else 0,
                      permuter=permuter, z_shape=GRID,
                      cond_shape=(2, 2) if cond == "vq" else (), pkeep=pkeep,
                      label_dropout=label_dropout)
  t = c.transformer
  gpt = GPTConfig(vocab_size=VOCAB, block_size=n2n.n_cond_tokens + n2n.n_z_tokens - 1,
                  n_layer=n_layer, n_head=t.n_head, n_embd=t.n_embd)
  assert n2n.validate(gpt, VOCAB, VOCAB) == []
  return gpt_lib.build_setup(c, gpt, n2n)


def fake_batch(setup, seed: int = 0, batch: int = BATCH):
  """{"z": int32[B, 4, 4]} (+ "label" int32[B] or "c" int32[B, 2, 2]): skewed random codes,
  a function of the seed."""
  rng = np.random.default_rng(seed)
  p = np.arange(1, VOCAB + 1, dtype=np.float64) ** -1.2
  out = {"z": rng.choice(VOCAB, size=(batch,) + GRID, p=p / p.sum()).astype(np.int32)}
  if setup.n2n.cond == "class":
    out["label"] = rng.integers(0, N_CLASSES, batch).astype(np.int32)
  if setup.n2n.cond == "vq":
    out["c"] = rng.integers(0, VOCAB, (batch,) + tuple(setup.n2n.cond_shape)).astype(np.int32)
  return out


def init_params(setup, seed: int = 0, std: float = 0.1):
  """Random GPT params (host numpy, the structure of gpt.init_params): every leaf
  N(0, std), LayerNorm scales 1 + N(0, std). Drawn in numpy: flax's init runs op by op
  outside jit, which costs seconds (on 8 fake devices, 7 s); and nonzero positional
  embeddings and biases make every parameter matter."""
  import jax
  from vqgan_jax.nn import gpt as gpt_nn
  rng = np.random.default_rng(seed)

  def leaf(path, a):
    x = rng.normal(0.0, std, a.shape)
    return (x + (getattr(path[-1], "key", "") == "scale")).astype(a.dtype)
  return jax.tree_util.tree_map_with_path(leaf, gpt_nn.abstract_params(setup.gpt_config))


# ---- the shared code dataset ------------------------------------------------------------

_CODES = {}


def write_class_images(root, per_class, seed: int, classes=("cat", "dog")):
  """<root>/<class>/img_i.png, 16x16 RGB: class-dependent colour ramps plus noise."""
  from PIL import Image
  rng = np.random.default_rng(seed)
  yy, xx = np.mgrid[:IMAGE_SIZE, :IMAGE_SIZE] / (IMAGE_SIZE - 1)
  for k, name in enumerate(classes):
    os.makedirs(os.path.join(root, name), exist_ok=True)
    for i in range(per_class):
      base = (xx if k == 0 else yy)[..., None] * np.array([200, 120, 60]) + 30
      img = np.clip(base + rng.normal(0, 25, base.shape), 0, 255).astype(np.uint8)
      Image.fromarray(img).save(os.path.join(root, name, f"img_{i}.png"))
  return str(root)


def code_dataset(tmp_path_factory, vqgan_tiny_converted):
  """(codes dir, VQGAN model dir): 16x16 images in two class folders encoded by the tiny
  VQGAN with `python -m vqgan_jax.extract_codes` (in-process): "train" (12 examples) and
  "validation" (6), labels from the folders. Built once per session (memoised here:
  every test module that imports this gets the same directory)."""
  if "dir" not in _CODES:
    from unittest import mock
    from vqgan_jax import api, extract_codes
    from vqgan_jax.model_dir import save_model_dir
    root = tmp_path_factory.mktemp("gpt_codes")
    config, variables = vqgan_tiny_converted
    vqgan = save_model_dir(str(root / "vqgan_tiny"), variables, config, kind=config["kind"])
    out = str(root / "codes")
    model = api.load_vqgan(vqgan)
    with mock.patch.object(extract_codes, "load_vqgan", lambda *a, **k: model):
      for split, n, seed in (("train", 6, 0), ("validation", 3, 1)):
        images = write_class_images(str(root / split), n, seed)
        rc = extract_codes.main(["--vqgan", vqgan, "--images", images, "--out", out,
                                 "--split", split, "--size", str(IMAGE_SIZE), "--labels",
                                 "folders", "--batch_size", "16", "--no_tfrecord",
                                 "--workers", "2"])
        assert rc == 0, f"extract_codes failed for split {split}"
    _CODES["dir"] = (out, vqgan)
  return _CODES["dir"]


# ---- the mesh comparison (subprocess) ---------------------------------------------------

def random_setup():
  """The step's randomness at once: class labels dropped, inputs corrupted (pkeep); a
  non-identity permuter, gradient clipping, weight decay. (No GPT dropout: taming's
  configs use none, and its threefry kernels would add seconds of XLA compile time to
  each of the three steps compiled for this setup.)

  Adam's eps is 1e-3 (taming: 1e-8), as in training_worker.tiny_config: the attention key
  biases get a zero gradient up to rounding noise (~1e-10: a constant added to every
  logit of a query), which Adam's first step maps to about +-lr whatever its size, so
  two summation orders of the same gradient could not be compared at 1e-5 there."""
  return tiny_setup(cond="class", permuter="random", pkeep=0.6, label_dropout=0.3, eps=1e-3,
                    grad_clip_norm=1.0, weight_decay=0.1)


def initial_state(setup, seed: int = 2):
  """A host (numpy) train state at step 3 from `init_params(setup, seed)`."""
  import jax.numpy as jnp
  from vqgan_jax.training import gpt_lib
  state = gpt_lib.init_state(setup, None, init_params(setup, seed))
  return host_copy(state.replace(step=jnp.asarray(3, jnp.int32)))


MESHES = {"data8": (8, 1), "data4_fsdp2": (4, 2)}


def sharding_main(out_dir: str):
  """One step of `random_setup` from `initial_state` on each mesh of MESHES, with the
  GPT's sharding rules; writes <out_dir>/<mesh>.npz (the flattened state after the step,
  "metrics/<name>" entries) and prints one JSON line: per mesh its shape, the state's
  leaves whose spec names "fsdp", and the compile-cache size after two steps."""
  import jax
  from vqgan_jax.training import gpt_config, gpt_lib, sharding as sharding_lib
  if jax.device_count() != 8:
    raise SystemExit(f"expected 8 devices (XLA_FLAGS), got {jax.device_count()}")
  setup = random_setup()
  rules = tuple(tuple(r) for r in gpt_config.base_config().sharding_rules)
  batch = fake_batch(setup, 5)
  host = initial_state(setup)
  result = {}
  for name, (data, fsdp) in MESHES.items():
    t0 = time.perf_counter()
    mesh = sharding_lib.make_mesh(data=data, fsdp=fsdp)
    steps = gpt_lib.CompiledSteps(setup, mesh, rules)
    state = jax.device_put(host, steps.state_sharding)
    state, metrics = steps.train(state, None, sharding_lib.global_batch(batch, mesh))
    flat = flatten(host_copy(state))
    flat.update({f"metrics/{k}": np.asarray(v) for k, v in jax.device_get(metrics).items()})
    np.savez(os.path.join(out_dir, f"{name}.npz"), **flat)
    sharded = []
    for path, leaf in jax.tree_util.tree_flatten_with_path(state)[0]:
      spec = [str(s) for s in leaf.sharding.spec]
      if "fsdp" in spec:
        sharded.append({"path": sharding_lib.path_str(path), "spec": spec,
                        "shape": list(leaf.shape),
                        "shard_shape": list(leaf.addressable_shards[0].data.shape)})
    steps.train(state, None, sharding_lib.global_batch(batch, mesh))  # a chained step
    result[name] = {"seconds": round(time.perf_counter() - t0, 1), "mesh": dict(mesh.shape),
                    "fsdp_sharded": sharded, "cache_size": steps._train._cache_size()}
  print(json.dumps(result))


if __name__ == "__main__":
  if len(sys.argv) != 3 or sys.argv[1] != "sharding":
    raise SystemExit("usage: gpt_worker.py sharding OUT_DIR")
  sharding_main(sys.argv[2])
