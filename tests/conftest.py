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

from vqgan_test_utils import FIXTURES, TAMING_TINY, nhwc, shared_lpips_random, tiny  # noqa: F401


@pytest.fixture(scope="session")
def vqgan_tiny_converted():
  """(config dict, variables) of vqgan_tiny.ckpt converted with its project YAML."""
  from vqgan_jax.convert.checkpoint import convert_taming_checkpoint
  return convert_taming_checkpoint(tiny("vqgan_tiny.ckpt"), tiny("vqgan_tiny-project.yaml"))


@pytest.fixture(scope="session")
def vqgan_tiny_ref():
  return np.load(tiny("vqgan_tiny.npz"))
