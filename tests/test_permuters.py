"""vqgan_jax.permuters against taming's permuter.py (fixture permuters.json)."""

import json
import os

import numpy as np
import pytest

from vqgan_jax import permuters
from vqgan_jax.permuters import PermuterError

FIXTURE = os.path.join(os.path.dirname(__file__), "fixtures", "taming_tiny", "permuters.json")

with open(FIXTURE, "r", encoding="utf-8") as _f:
  GRIDS = json.load(_f)["grids"]

# (H, W, taming class, fixture entry) for every grid and class of the fixture.
CASES = [(g["H"], g["W"], cls, entry) for g in GRIDS for cls, entry in g["permuters"].items()]


def _case_id(case):
  return f"{case[2]}-{case[0]}x{case[1]}"


def _grids():
  return sorted({(g["H"], g["W"]) for g in GRIDS})


def test_fixture_covers_every_class_on_three_grids():
  assert _grids() == [(4, 4), (4, 6), (8, 8)]
  for g in GRIDS:
    assert set(g["permuters"]) == set(permuters.TAMING_CLASSES) | {"AbstractPermuter"}
  assert sorted(permuters.TAMING_CLASSES.values()) == sorted(permuters.NAMES)


@pytest.mark.parametrize("case", CASES, ids=_case_id)
def test_matches_taming(case):
  height, width, cls, entry = case
  if cls == "AbstractPermuter":  # taming's base class; forward is not implemented
    assert "forward_error" in entry
    assert cls not in permuters.TAMING_CLASSES
    with pytest.raises(PermuterError, match="abstract"):
      permuters.from_taming(cls, {"H": height, "W": width})
    return
  name = permuters.TAMING_CLASSES[cls]
  if "constructor_error" in entry:  # taming cannot build it: neither do we
    with pytest.raises(PermuterError, match=rf"{name}.*{cls}.*{height}x{width} grid"):
      permuters.make_permuter(name, height, width)
    return
  if "reverse_error" in entry:  # only ZCurve off power-of-two grids (below)
    assert cls == "ZCurve"
    with pytest.raises(PermuterError, match=r"ZCurve.*power-of-two.*not a permutation"):
      permuters.make_permuter(name, height, width)
    return
  p = permuters.make_permuter(name, height, width)
  assert (p.name, p.height, p.width) == (name, height, width)
  assert p.forward_idx.dtype == np.int32 and p.backward_idx.dtype == np.int32
  n = height * width
  # Identity registers no buffers: forward and backward are both raster order.
  want_fwd = entry.get("forward_shuffle_idx", list(range(n)))
  want_bwd = entry.get("backward_shuffle_idx", list(range(n)))
  np.testing.assert_array_equal(p.forward_idx, want_fwd)
  np.testing.assert_array_equal(p.backward_idx, want_bwd)
  raster = np.arange(n)[None]
  np.testing.assert_array_equal(p.apply(raster), [entry["forward_applied"]])
  np.testing.assert_array_equal(p.reverse(raster), [entry["reverse_applied"]])
  assert entry["roundtrip_ok"]
  assert p.is_identity == (cls == "Identity")


def test_zcurve_forward_matches_taming_where_its_reverse_fails():
  entry = next(g for g in GRIDS if (g["H"], g["W"]) == (4, 6))["permuters"]["ZCurve"]
  assert "reverse_error" in entry and entry["forward_is_permutation"]
  np.testing.assert_array_equal(permuters.zcurve_forward(4, 6), entry["forward_shuffle_idx"])
  np.testing.assert_array_equal(permuters.zcurve_forward(4, 6), entry["forward_applied"])
  # taming's backward buffer there is the raw Morton code (values up to 27 for 24 tokens).
  np.testing.assert_array_equal(permuters.zcurve_codes(4, 6), entry["backward_shuffle_idx"])


def test_zcurve_needs_power_of_two_with_width_at_most_twice_height():
  for height, width in [(2, 2), (2, 4), (8, 8), (16, 32)]:
    p = permuters.make_permuter("zcurve", height, width)
    np.testing.assert_array_equal(p.backward_idx, permuters.zcurve_codes(height, width))
  # Powers of two, yet taming's Morton codes skip values: also refused.
  for height, width in [(4, 2), (2, 8), (6, 6)]:
    with pytest.raises(PermuterError, match=rf"{height}x{width} grid"):
      permuters.make_permuter("zcurve", height, width)


def test_known_values_on_16x16():
  spiral = permuters.make_permuter("spiral_out", 16, 16).forward_idx
  np.testing.assert_array_equal(spiral[:5], [135, 119, 120, 136, 152])
  np.testing.assert_array_equal(spiral[-4:], [207, 223, 239, 255])
  np.testing.assert_array_equal(permuters.make_permuter("random", 16, 16).forward_idx[:8],
                                [183, 34, 185, 233, 216, 181, 160, 27])


def test_unknown_name_lists_the_known_ones():
  with pytest.raises(PermuterError, match="'spiral'.*identity, subsample, zcurve"):
    permuters.make_permuter("spiral", 4, 4)
  with pytest.raises(PermuterError, match="height must be a positive integer"):
    permuters.make_permuter("identity", 0, 4)


def _valid_permuters():
  for height, width in _grids() + [(16, 16), (2, 4)]:
    for name in permuters.NAMES:
      try:
        yield permuters.make_permuter(name, height, width)
      except PermuterError:
        pass


def test_apply_then_reverse_is_identity_numpy():
  rng = np.random.default_rng(0)
  for p in _valid_permuters():
    x = rng.integers(0, 1024, size=(3, p.length), dtype=np.int32)
    np.testing.assert_array_equal(p.reverse(p.apply(x)), x)
    np.testing.assert_array_equal(p.apply(p.reverse(x)), x)
    np.testing.assert_array_equal(p.apply(x), x[:, p.forward_idx])


def test_apply_then_reverse_is_identity_jax():
  jax = pytest.importorskip("jax")
  x = np.random.default_rng(0).integers(0, 1024, size=(3, 16), dtype=np.int32)
  xj = jax.numpy.asarray(x)
  # One grid only: every new shape costs a compilation.
  for p in _valid_permuters():
    if (p.height, p.width) != (4, 4):
      continue
    yj = p.apply(xj)
    assert isinstance(yj, jax.Array) and yj.dtype == xj.dtype
    np.testing.assert_array_equal(np.asarray(yj), p.apply(x))
    np.testing.assert_array_equal(np.asarray(p.reverse(yj)), x)
  # Under jit the indices are constants of the traced program.
  p = permuters.make_permuter("spiral_in", 4, 4)
  roundtrip = jax.jit(lambda v: p.reverse(p.apply(v)))
  np.testing.assert_array_equal(np.asarray(roundtrip(xj)), x)


def test_axis_argument():
  p = permuters.make_permuter("spiral_out", 4, 4)
  x = np.random.default_rng(1).normal(size=(2, 16, 5)).astype(np.float32)
  y = p.apply(x, axis=1)
  np.testing.assert_array_equal(y, np.moveaxis(p.apply(np.moveaxis(x, 1, -1)), -1, 1))
  np.testing.assert_array_equal(p.reverse(y, axis=-2), x)
  with pytest.raises(PermuterError, match="needs 16 tokens along axis 2"):
    p.apply(x)
  with pytest.raises(PermuterError, match="out of range"):
    p.apply(x, axis=3)


def test_indices_are_read_only():
  p = permuters.make_permuter("random", 4, 4)
  with pytest.raises(ValueError):
    p.forward_idx[0] = 1


def test_from_buffers_recovers_each_name():
  valid = list(_valid_permuters())
  for p in valid:
    got = permuters.from_buffers(p.forward_idx.astype(np.int64), p.backward_idx.tolist(),
                                 p.height, p.width)
    # On small grids several orderings coincide: the first of NAMES wins.
    same = [q.name for q in valid if (q.height, q.width) == (p.height, p.width)
            and np.array_equal(q.forward_idx, p.forward_idx)]
    assert got.name == same[0]
    assert got == permuters.make_permuter(same[0], p.height, p.width)
  # The fixture's buffers, as a converted checkpoint holds them.
  for height, width, cls, entry in CASES:
    if "forward_shuffle_idx" in entry and "reverse_error" not in entry:
      got = permuters.from_buffers(entry["forward_shuffle_idx"],
                                   entry["backward_shuffle_idx"], height, width)
      assert got.name == permuters.TAMING_CLASSES[cls]


def test_from_buffers_custom_and_invalid():
  fwd = np.array([1, 0, 2, 3, 5, 4])
  got = permuters.from_buffers(fwd, fwd, 2, 3)
  assert got.name == "custom" and not got.is_identity
  with pytest.raises(PermuterError, match=r"forward_shuffle_idx is not a permutation of "
                     r"range\(6\).*missing \[5\]"):
    permuters.from_buffers([0, 1, 2, 3, 4, 4], fwd, 2, 3)
  with pytest.raises(PermuterError, match="backward_shuffle_idx is not the inverse"):
    permuters.from_buffers([1, 2, 0, 3, 4, 5], [1, 2, 0, 3, 4, 5], 2, 3)
  with pytest.raises(PermuterError, match=r"must have shape \(6,\)"):
    permuters.from_buffers(np.arange(4), np.arange(4), 2, 3)
  with pytest.raises(PermuterError, match="must hold integers"):
    permuters.from_buffers(np.arange(6.0), np.arange(6), 2, 3)
  # taming's ZCurve buffers on 4x6 (backward = raw Morton codes) are rejected.
  entry = next(g for g in GRIDS if (g["H"], g["W"]) == (4, 6))["permuters"]["ZCurve"]
  with pytest.raises(PermuterError, match="backward_shuffle_idx is not a permutation"):
    permuters.from_buffers(entry["forward_shuffle_idx"], entry["backward_shuffle_idx"], 4, 6)


def test_from_taming_targets_and_class_names():
  for cls, name in permuters.TAMING_CLASSES.items():
    # A grid that is not square where the ordering allows it.
    height, width = {"subsample": (4, 4), "spiral_out": (4, 4), "spiral_in": (4, 4),
                     "zcurve": (4, 8)}.get(name, (4, 6))
    want = permuters.make_permuter(name, height, width)
    target = f"taming.modules.transformer.permuter.{cls}"
    if cls == "Identity":  # taming's Identity takes no params: the grid comes separately
      assert permuters.from_taming(target, {}, height=height, width=width) == want
      assert permuters.from_taming(cls, None, height, width) == want
      with pytest.raises(PermuterError, match="height is unknown"):
        permuters.from_taming(cls, {})
    else:
      params = {"H": height, "W": width}
      assert permuters.from_taming(target, params) == want
      assert permuters.from_taming(cls, params) == want
      assert permuters.from_taming(cls, params, height, width) == want


def test_from_taming_errors():
  with pytest.raises(PermuterError, match="'Spiral' is unknown.*SpiralOut"):
    permuters.from_taming("Spiral", {"H": 4, "W": 4})
  with pytest.raises(PermuterError, match="expected a class of"):
    permuters.from_taming("my.module.ZCurve", {"H": 4, "W": 4})
  with pytest.raises(PermuterError, match=r"unexpected params \['size'\]"):
    permuters.from_taming("ZCurve", {"H": 4, "W": 4, "size": 4})
  with pytest.raises(PermuterError, match=r"params\['W'\] = 4 disagrees with width=8"):
    permuters.from_taming("ZCurve", {"H": 4, "W": 4}, 4, 8)
  with pytest.raises(PermuterError, match="SpiralOut.*4x6 grid"):
    permuters.from_taming("SpiralOut", {"H": 4, "W": 6})


def test_module_imports_no_jax_or_tensorflow():
  import subprocess
  import sys
  code = ("import sys, vqgan_jax.permuters; "
          "print(any(m.split('.')[0] in ('jax', 'tensorflow', 'torch') for m in sys.modules))")
  out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       check=True, cwd=os.path.dirname(os.path.dirname(__file__)))
  assert out.stdout.strip() == "False"
