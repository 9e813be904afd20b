"""Helpers shared by the tests: fixture paths, NCHW->NHWC, the big shared LPIPS file."""

import os
import pathlib

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
