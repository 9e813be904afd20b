"""Helpers shared by the tests: fixture paths, NCHW->NHWC, the big shared LPIPS file."""

import os
import pathlib
import textwrap

import numpy as np
import pytest

FIXTURES = pathlib.Path(__file__).parent / "fixtures"
TAMING_TINY = FIXTURES / "taming_tiny"
SHARED_TAMING_TINY = pathlib.Path(__file__).resolve().parents[2] / "shared/fixtures/taming_tiny"


def nhwc(a):
  """NCHW (torch layout of the fixtures) -> NHWC."""
  return np.transpose(np.asarray(a), (0, 2, 3, 1))


def tiny(name: str) -> str:
  return str(TAMING_TINY / name)


def shared_lpips_random() -> str:
  """Path of the 29 MB random LPIPS checkpoint, which stays outside the repo."""
  path = os.environ.get("VQGAN_JAX_LPIPS_RANDOM", str(SHARED_TAMING_TINY / "lpips_random.ckpt"))
  if not os.path.isfile(path):
    pytest.skip(f"{path} is absent (the 29 MB random-LPIPS fixture lives in "
                "../shared/fixtures/taming_tiny; set VQGAN_JAX_LPIPS_RANDOM to its path)")
  return path


def assert_trees_equal(a, b):
  """Same structure and bitwise-equal leaves."""
  import jax
  la, lb = jax.tree_util.tree_flatten_with_path(a)[0], jax.tree_util.tree_flatten_with_path(b)[0]
  assert [p for p, _ in la] == [p for p, _ in lb]
  for (path, x), (_, y) in zip(la, lb):
    np.testing.assert_array_equal(x, y, err_msg=jax.tree_util.keystr(path))


def xla_flags(devices: int) -> str:
  """XLA_FLAGS for a subprocess with `devices` fake CPU devices (and this session's flags)."""
  return f"{os.environ.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count={devices}"


# Python source that makes TensorFlow, TFDS, clu and ml_collections look uninstalled, for
# `python -c` scripts that check a tool runs without them. A meta_path finder that raised
# for them would also break the probes of libraries that merely ask whether they are
# installed (etils.epath calls importlib.util.find_spec("tensorflow")); a None entry in
# sys.modules is what absence looks like to both: `import` raises ModuleNotFoundError and
# find_spec returns None. The finder catches any submodule import that gets past its
# parent. `NOTHING_BLOCKED_LOADED` then asserts that neither they nor the training
# library were imported, and prints "ok".
WITHOUT_TENSORFLOW = textwrap.dedent("""
    import importlib.abc, sys
    BLOCKED = ("tensorflow", "tensorflow_datasets", "clu", "ml_collections")

    class Block(importlib.abc.MetaPathFinder):
      def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
          raise ModuleNotFoundError(f"No module named {name!r} (blocked)", name=name)
        return None

    for name in BLOCKED:
      sys.modules[name] = None
    sys.meta_path.insert(0, Block())
""")
NOTHING_BLOCKED_LOADED = textwrap.dedent("""
    loaded = sorted(m for m, mod in sys.modules.items() if mod is not None and (
        m.split(".")[0] in BLOCKED or m.startswith("vqgan_jax.training")))
    assert not loaded, loaded
    print("ok")
""")


def parse_cli_flags(argv, default_config: str):
  """What `training.cli.run` does with the command line `argv`, on a fresh set of flags."""
  from absl import flags
  from vqgan_jax.training import cli
  fv = flags.FlagValues()
  with pytest.MonkeyPatch.context() as mp:
    mp.setattr("sys.argv", argv)
    with cli.flag_errors_as_messages():
      cli.define_flags(default_config, fv)
    cli.parse_flags(argv, fv)
  return fv


# ---- FID Inception on deterministic random weights (tests/fixtures/inception_random) ----

def random_fid_state_dict(shapes, seed=0):
  """torch key -> float32 array, drawn in sorted key order from default_rng(seed)."""
  rng = np.random.default_rng(seed)
  out = {}
  for key in sorted(shapes):
    shape = tuple(shapes[key])
    if key.endswith("conv.weight"):
      v = rng.standard_normal(shape) * np.sqrt(2.0 / np.prod(shape[1:]))
    elif key.endswith("bn.weight"):
      v = rng.uniform(0.8, 1.2, shape)
    elif key.endswith(("bn.bias", "bn.running_mean")):
      v = rng.uniform(-0.2, 0.2, shape)
    elif key.endswith("bn.running_var"):
      v = rng.uniform(0.5, 1.5, shape)
    elif key == "fc.weight":
      v = rng.standard_normal(shape) * np.sqrt(1.0 / shape[1])
    elif key == "fc.bias":
      v = rng.uniform(-0.1, 0.1, shape)
    else:
      raise KeyError(key)
    out[key] = v.astype(np.float32)
  return out


def torch_inception_shapes():
  """torch key -> torch shape of the FID InceptionV3 state dict, from our model's tree."""
  from vqgan_jax.convert.taming import _flatten
  from vqgan_jax.nn.inception import inception_shapes
  shapes = {}
  for coll, tree in inception_shapes().items():
    for path, leaf in _flatten(tree).items():
      shape = tuple(leaf.shape)
      if len(shape) == 4:
        shape = (shape[3], shape[2], shape[0], shape[1])  # HWIO -> OIHW
      elif len(shape) == 2:
        shape = shape[::-1]
      leaf_name = {"kernel": "weight", "scale": "weight", "mean": "running_mean",
                   "var": "running_var"}.get(path[-1], path[-1])
      shapes[".".join(path[:-1] + (leaf_name,))] = shape  # torch names have no list indices
  return shapes
