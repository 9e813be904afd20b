"""Shared test helpers: fixture paths, NCHW->NHWC, converted tiny taming models."""

import os
import pathlib
import tempfile

# One persistent XLA compilation cache per test session, inherited by the CLI
# subprocesses: a second process compiling the same step loads it in a fraction of
# the time. Must be set before jax is imported.
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR",
                      tempfile.mkdtemp(prefix="vqgan_jax_test_xla_cache_"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "-1")

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


@pytest.fixture(scope="session")
def vqgan_tiny_converted():
  """(config dict, variables) of vqgan_tiny.ckpt converted with its project YAML."""
  from vqgan_jax.convert.checkpoint import convert_taming_checkpoint
  return convert_taming_checkpoint(tiny("vqgan_tiny.ckpt"), tiny("vqgan_tiny-project.yaml"))


@pytest.fixture(scope="session")
def vqgan_tiny_ref():
  return np.load(tiny("vqgan_tiny.npz"))
