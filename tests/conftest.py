"""Session-wide test setup: the persistent XLA compilation cache and the converted tiny
taming model fixtures (helpers such as fixture paths live in vqgan_test_utils.py)."""

import os

# A persistent XLA compilation cache outside the repo, shared by test sessions and
# inherited by the CLI subprocesses: a process compiling a step that an earlier one
# compiled loads it in a fraction of the time (the key covers the jax version, the
# program and the backend). Must be set before jax is imported.
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", os.path.join(
    os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "vqgan_jax",
    "xla_cache_tests"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "-1")
# XLA:CPU compiles about 40% faster without LLVM's optimisations, and the tests' models
# are tiny: compilation, not execution, is what the suite spends its time on. The
# numbers are the same computation (every comparison keeps its tolerance).
if "xla_backend_optimization_level" not in os.environ.get("XLA_FLAGS", ""):
  os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                             " --xla_backend_optimization_level=0").strip()

import numpy as np
import pytest

from vqgan_test_utils import FIXTURES, TAMING_TINY, nhwc, shared_lpips_random, tiny  # noqa: F401


@pytest.fixture(scope="session")
def vqgan_tiny_converted():
  """(config dict, variables) of vqgan_tiny.ckpt converted with its project YAML."""
  from vqgan_jax.convert.checkpoint import convert_taming_checkpoint
  return convert_taming_checkpoint(tiny("vqgan_tiny.ckpt"), tiny("vqgan_tiny-project.yaml"))


@pytest.fixture(scope="session")
def vqgan_tiny_ref():
  return np.load(tiny("vqgan_tiny.npz"))


@pytest.fixture(scope="session")
def inception_pth(tmp_path_factory):
  """pytorch-fid's Inception with `random_fid_state_dict` weights, as a torch .pth file
  written by tests/torch_writer.py (95 MB, once per test process)."""
  from torch_writer import save_state_dict
  from vqgan_test_utils import random_fid_state_dict, torch_inception_shapes
  path = tmp_path_factory.mktemp("inception") / "pt_inception-random.pth"
  return str(save_state_dict(path, random_fid_state_dict(torch_inception_shapes())))
