"""vqgan_jax.net2net: taming's Net2NetTransformer against the n2n_*_tiny fixtures, loaded from
the .ckpt and from a converted model directory; the pure helpers (pkeep corruption, coordinate
tokens, nearest resize, segmentation colours); permuted models; and the input checks."""

import copy
import dataclasses
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vqgan_test_utils import nhwc, tiny
from vqgan_jax import model_dir, net2net, permuters
from vqgan_jax.api import read_model
from vqgan_jax.nn.gpt import GPTConfig

# kind -> (fixture file stem, the conditioning of its batch as the model takes it).
FIXTURES = {
    "class": ("n2n_class_tiny", lambda ref: ref["class_label"]),
    "depth": ("n2n_depth_tiny", lambda ref: nhwc(ref["depth"])),
}


@pytest.fixture(scope="module")
def refs():
  return {kind: np.load(tiny(f"{name}.npz")) for kind, (name, _) in FIXTURES.items()}


@pytest.fixture(scope="module")
def converted_dirs(tmp_path_factory):
  """kind -> a model directory written by `python -m vqgan_jax.convert` (in-process)."""
  from vqgan_jax.convert.__main__ import main
  out = {}
  for kind, (name, _) in FIXTURES.items():
    path = str(tmp_path_factory.mktemp("n2n") / name)
    assert main([tiny(f"{name}.ckpt"), path, "--config", tiny(f"{name}-project.yaml")]) == 0
    out[kind] = path
  return out


@pytest.fixture(scope="module")
def models(converted_dirs):
  """(kind, source) -> Net2Net, source "ckpt" (+ YAML) or "dir" (converted model directory)."""
  out = {}
  for kind, (name, _) in FIXTURES.items():
    out[kind, "ckpt"] = net2net.load_transformer(tiny(f"{name}.ckpt"),
                                                 tiny(f"{name}-project.yaml"))
    out[kind, "dir"] = net2net.load_transformer(converted_dirs[kind])
  return out


@pytest.fixture(scope="module")
def raw(converted_dirs):
  """kind -> (config, variables) of the converted directory, for building edited models."""
  return {kind: read_model(path, kinds=("net2net",)) for kind, path in converted_dirs.items()}


def _edited(raw, kind):
  return copy.deepcopy(raw[kind])


# ---- parity with the reference ------------------------------------------------------------

@pytest.mark.parametrize("source", ["ckpt", "dir"])
@pytest.mark.parametrize("kind", ["class", "depth"])
def test_parity_with_reference(models, refs, kind, source):
  n2n, ref = models[kind, source], refs[kind]
  x, cond = nhwc(ref["x_sq"]), FIXTURES[kind][1](ref)
  _, z = n2n.encode_to_z(x)
  assert z.dtype == jnp.int32
  np.testing.assert_array_equal(z, ref["n2n_z_indices"])
  _, c = n2n.encode_to_c(cond)
  np.testing.assert_array_equal(c, ref["n2n_c_indices"])
  logits = n2n.transformer_logits(ref["gpt_idx"])
  assert logits.shape == ref["gpt_logits"].shape and logits.dtype == jnp.float32
  np.testing.assert_allclose(logits, ref["gpt_logits"], atol=3e-4, rtol=0)
  logits, target = n2n(x, cond)
  np.testing.assert_allclose(logits, ref["n2n_logits"], atol=3e-4, rtol=0)
  np.testing.assert_array_equal(target, ref["n2n_target"])
  assert abs(n2n.loss(x, cond) - float(ref["n2n_loss"])) <= 1e-4


def test_dir_and_ckpt_models_agree(models):
  for kind in FIXTURES:
    a, b = models[kind, "ckpt"], models[kind, "dir"]
    assert (a.config, a.transformer_config) == (b.config, b.transformer_config)
    jax.tree_util.tree_map(np.testing.assert_array_equal, jax.device_get(a.variables),
                           jax.device_get(b.variables))
  assert models["class", "dir"].config.cond == "class"
  assert models["class", "dir"].config.n_classes == 10
  assert models["depth", "dir"].config.cond == "vq"
  assert models["depth", "dir"].cond_stage.config.in_channels == 1


def test_greedy_codes_decode_like_reference(models, refs):
  ref = refs["class"]
  images = models["class", "ckpt"].decode_to_img(ref["greedy_kv"])
  assert images.shape == (2, 32, 32, 3)
  np.testing.assert_allclose(images, nhwc(ref["greedy_decoded"]), atol=2e-4, rtol=0)
  # taming's (B, C, h, w) zshape is accepted too.
  again = models["class", "ckpt"].decode_to_img(ref["greedy_kv"], (2, 16, 8, 8))
  np.testing.assert_array_equal(again, images)


# ---- pure helpers ---------------------------------------------------------------------------

def test_corrupt_keeps_a_pkeep_fraction_and_draws_uniform_tokens():
  n, vocab, pkeep = 200_000, 64, 0.7
  z = jnp.full((4, n // 4), -1, jnp.int32)  # outside the vocab: kept iff still -1
  out = np.asarray(net2net.corrupt(z, jax.random.PRNGKey(0), pkeep, vocab))
  assert out.shape == z.shape and out.dtype == np.int32
  kept = out == -1
  sigma = np.sqrt(pkeep * (1 - pkeep) / n)
  assert abs(kept.mean() - pkeep) < 6 * sigma, kept.mean()
  drawn = out[~kept]
  assert drawn.min() >= 0 and drawn.max() < vocab
  counts = np.bincount(drawn, minlength=vocab)
  expected = drawn.size / vocab
  chi2 = ((counts - expected) ** 2 / expected).sum()
  assert chi2 < 150, chi2  # 63 degrees of freedom: mean 63, sd ~11
  # Deterministic per rng; another rng gives another draw.
  again = np.asarray(net2net.corrupt(z, jax.random.PRNGKey(0), pkeep, vocab))
  np.testing.assert_array_equal(again, out)
  other = np.asarray(net2net.corrupt(z, jax.random.PRNGKey(1), pkeep, vocab))
  assert not np.array_equal(other, out)


def test_corrupt_extremes():
  z = jnp.arange(4096, dtype=jnp.int32).reshape(8, 512) % 64
  np.testing.assert_array_equal(net2net.corrupt(z, jax.random.PRNGKey(3), 1.0, 64), z)
  none_kept = np.asarray(net2net.corrupt(jnp.full_like(z, -1), jax.random.PRNGKey(3), 0.0, 64))
  assert none_kept.min() >= 0 and none_kept.max() < 64


def _coord_tokens_numpy(coord, n_embed, f):
  b, h, w, _ = coord.shape
  pooled = coord.reshape(b, h // f, f, w // f, f, 1).mean(axis=(2, 4))
  return np.round(np.clip(pooled, 0, 1) * n_embed).astype(np.int64).reshape(b, -1)


def test_coord_tokens_match_area_mean_clamp_round():
  rng = np.random.default_rng(0)
  coord = rng.uniform(-0.2, 1.2, (2, 32, 48, 1)).astype(np.float32)  # clamp both ends
  quant, tokens = net2net.coord_tokens(jnp.asarray(coord), 1024, 16)
  assert quant.shape == (2, 2, 3, 1) and tokens.shape == (2, 6) and tokens.dtype == jnp.int32
  np.testing.assert_array_equal(tokens, _coord_tokens_numpy(coord, 1024, 16))
  # Exact halves round to even, as torch.round does: 0.5 -> 0, 1.5 -> 2, 2.5 -> 2, 3.5 -> 4.
  blocks = np.array([0.125, 0.375, 0.625, 0.875], np.float32)  # x 4 = k + 0.5 exactly
  coord = np.kron(blocks.reshape(1, 4), np.ones((2, 2), np.float32))[None, :, :, None]
  _, tokens = net2net.coord_tokens(jnp.asarray(coord), 4, 2)
  np.testing.assert_array_equal(tokens, [[0, 2, 2, 4]])


def _aten_nearest_index(size_in: int, size_out: int) -> np.ndarray:
  """The source index of each output pixel in ATen's `nearest_idx` (F.interpolate "nearest"):
  copy for equal sizes, d >> 1 for exactly 2x, else floorf(d * (float)in / out) in float32."""
  d = np.arange(size_out)
  if size_out == size_in:
    return d
  if size_out == 2 * size_in:
    return d >> 1
  scale = np.float32(size_in) / np.float32(size_out)
  return np.minimum(np.floor(d.astype(np.float32) * scale), size_in - 1).astype(np.int64)


@pytest.mark.parametrize("src, dst", [
    ((32, 32), (12, 12)), ((10, 10), (32, 32)), ((32, 10), (12, 32)), ((7, 3), (3, 7)),
    ((16, 16), (16, 16)), ((256, 256), (100, 100)), ((8, 8), (16, 16)), ((256, 256), (64, 64)),
    ((200, 200), (24, 24)), ((30, 30), (22, 22)),
])
def test_torch_nearest_resize_is_floor_indexing(src, dst):
  x = np.arange(2 * src[0] * src[1] * 3, dtype=np.float32).reshape(2, *src, 3)
  y = net2net.torch_nearest_resize(x, dst)
  assert y.shape == (2, *dst, 3)
  rows, cols = _aten_nearest_index(src[0], dst[0]), _aten_nearest_index(src[1], dst[1])
  np.testing.assert_array_equal(y, x[:, rows][:, :, cols])


def test_torch_nearest_resize_takes_jax_arrays():
  x = np.random.default_rng(4).normal(size=(1, 32, 32, 2)).astype(np.float32)
  y = net2net.torch_nearest_resize(jnp.asarray(x), (12, 12))
  rows = _aten_nearest_index(32, 12)
  np.testing.assert_array_equal(y, x[:, rows][:, :, rows])


def test_segmentation_one_hot():
  labels = np.array([[[0, 4], [2, 2]]])
  got = net2net.segmentation_one_hot(labels, 5)
  assert got.shape == (1, 2, 2, 5) and got.dtype == np.float32
  np.testing.assert_array_equal(got.argmax(-1), labels)
  np.testing.assert_array_equal(got.sum(-1), 1.0)
  for bad in (5, -1):
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 5\)"):
      net2net.segmentation_one_hot(np.array([[[0, bad]]]), 5)


def _to_rgb_numpy(x, colorize):
  # taming: F.conv2d(x, colorize[..., None, None]) on NCHW, then min-max over the batch.
  y = np.einsum("bhwl,cl->bhwc", x.astype(np.float64), colorize.astype(np.float64))
  return 2 * (y - y.min()) / (y.max() - y.min()) - 1


def test_to_rgb_of_a_depth_model_with_colorize(raw):
  cfg, variables = _edited(raw, "depth")
  rng = np.random.default_rng(1)
  n = cfg["cond_stage"]["in_channels"]
  variables = dict(variables, colorize={"colorize": rng.normal(size=(3, n)).astype(np.float32)})
  model = net2net.Net2Net(cfg, variables)
  assert model.colorize.shape == (3, n)
  x = rng.normal(size=(2, 8, 8, n)).astype(np.float32)
  rgb = model.to_rgb(x)
  assert rgb.shape == (2, 8, 8, 3)
  np.testing.assert_allclose(rgb, _to_rgb_numpy(x, model.colorize), atol=1e-5)
  assert rgb.min() == pytest.approx(-1) and rgb.max() == pytest.approx(1)
  with pytest.raises(ValueError, match=rf"to_rgb takes float\[B, H, W, {n}\]"):
    model.to_rgb(np.zeros((2, 8, 8, n + 2), np.float32))


def test_to_rgb_of_one_hot_segmentation():
  rng = np.random.default_rng(2)
  stub = types.SimpleNamespace(name="seg", colorize=rng.normal(size=(3, 5)).astype(np.float32))
  seg = net2net.segmentation_one_hot(rng.integers(0, 5, (2, 6, 7)), 5)
  rgb = net2net.Net2Net.to_rgb(stub, seg)
  np.testing.assert_allclose(rgb, _to_rgb_numpy(seg, stub.colorize), atol=1e-5)


def test_to_rgb_without_colorize_says_so(models):
  with pytest.raises(ValueError, match="no colorize matrix"):
    models["class", "ckpt"].to_rgb(np.zeros((1, 2, 2, 1), np.float32))


# ---- permuted models ------------------------------------------------------------------------

def test_permuted_model_orders_codes_and_decode_undoes_it(models, refs, raw):
  cfg, variables = _edited(raw, "class")
  cfg["net2net"]["permuter"] = "zcurve"
  permuted = net2net.Net2Net(cfg, variables)
  plain = models["class", "ckpt"]
  x = nhwc(refs["class"]["x_sq"])
  _, raster = plain.encode_to_z(x)
  _, z = permuted.encode_to_z(x)
  zcurve = permuters.make_permuter("zcurve", 8, 8)
  assert not zcurve.is_identity
  np.testing.assert_array_equal(z, zcurve.apply(np.asarray(raster)))
  np.testing.assert_allclose(permuted.decode_to_img(z), plain.decode_to_img(raster), atol=1e-6,
                             rtol=0)
  with pytest.raises(ValueError, match="zcurve permuter orders a 8x8 grid, not 4x8"):
    permuted.decode_to_img(z[:, :32], (4, 8))


# ---- input checks ---------------------------------------------------------------------------

def test_image_and_conditioning_checks(models, refs):
  cls, depth = models["class", "ckpt"], models["depth", "ckpt"]
  x = nhwc(refs["class"]["x_sq"])
  with pytest.raises(ValueError, match=r"images must be float32\[B, H, W, 3\] \(NHWC\)"):
    cls.encode_to_z(refs["class"]["x_sq"])  # NCHW
  with pytest.raises(ValueError, match="multiples of the downsampling factor 4"):
    cls.encode_to_z(np.zeros((1, 30, 32, 3), np.float32))
  with pytest.raises(ValueError, match=r"conditioning stage takes float32\[B, H, W, 1\]"):
    depth.encode_to_c(np.zeros((2, 32, 32, 3), np.float32))
  with pytest.raises(ValueError, match=r"conditioning stage takes float32\[B, H, W, 1\]"):
    depth.encode_to_c(np.zeros((32, 32, 1), np.float32))
  for bad, seen in ((np.array([3, 10]), r"\[3, 10\]"), (np.array([-1, 2]), r"\[-1, 2\]")):
    with pytest.raises(ValueError, match=rf"class ids must lie in \[0, 10\); got values in {seen}"):
      cls.encode_to_c(bad)
  with pytest.raises(ValueError, match=r"class conditioning takes int class ids \[B\]"):
    cls.encode_to_c(np.array([3.0, 7.0]))
  with pytest.raises(ValueError, match=r"class conditioning takes int class ids \[B\]"):
    cls.encode_to_c(np.zeros((2, 2), np.int64))
  _, c = cls.encode_to_c(np.array([[3], [7]]))  # (B, 1) works like taming's c_indices
  np.testing.assert_array_equal(c, [[3], [7]])
  with pytest.raises(ValueError, match="2 images but 3 conditionings"):
    cls(x, np.array([1, 2, 3]))


def test_token_checks(models):
  cls = models["class", "ckpt"]
  for bad in (64, -1):
    tokens = np.zeros((1, 5), np.int64)
    tokens[0, 2] = bad
    with pytest.raises(ValueError, match=r"tokens must lie in \[0, 64\)"):
      cls.transformer_logits(tokens)
    with pytest.raises(ValueError, match=r"z_indices must lie in \[0, 64\)"):
      cls.forward_tokens(np.zeros((1, 1), np.int32), tokens)
  with pytest.raises(ValueError, match=r"tokens must be integers"):
    cls.transformer_logits(np.zeros((1, 5), np.float32))
  with pytest.raises(ValueError, match=r"tokens must be int\[B, T\]"):
    cls.transformer_logits(np.zeros((5,), np.int32))
  with pytest.raises(ValueError, match="66 tokens exceed the block size 65"):
    cls.transformer_logits(np.zeros((1, 66), np.int32))
  with pytest.raises(ValueError, match=r"1 conditioning \+ 66 image tokens exceed the block "
                                       "size 65"):
    cls.forward_tokens(np.zeros((1, 1), np.int32), np.zeros((1, 66), np.int32))
  with pytest.raises(ValueError, match=r"64 tokens do not fill a 7x7 grid"):
    cls.decode_to_img(np.zeros((1, 64), np.int32), (7, 7))
  with pytest.raises(ValueError, match=r"indices must lie in \[0, 64\)"):
    cls.decode_to_img(np.full((1, 64), 64, np.int32))


def test_config_with_too_small_block_is_refused(raw):
  n2n_cfg = net2net.Net2NetConfig(cond="class", n_classes=10, z_shape=(8, 8))
  small = GPTConfig(vocab_size=64, block_size=32, n_layer=2, n_head=2, n_embd=32)
  errors = n2n_cfg.validate(small, n_codes=64)
  assert any("transformer.block_size: 32 is too small for 1 conditioning + 64 image tokens "
             "(needs at least 64)" in e for e in errors), errors
  assert n2n_cfg.validate(dataclasses.replace(small, block_size=64), n_codes=64) == []
  assert any("transformer.vocab_size: 64 cannot hold" in e for e in
             dataclasses.replace(n2n_cfg, n_classes=65).validate(small, n_codes=64))
  cfg, variables = _edited(raw, "class")
  cfg["transformer"]["block_size"] = 32
  with pytest.raises(ValueError, match="invalid Net2Net model: transformer.block_size: 32 is too "
                                       "small"):
    net2net.Net2Net(cfg, variables)


def test_coordinate_conditioning_checks_and_tokens(raw):
  cfg, variables = _edited(raw, "depth")
  cfg["net2net"].update(cond="coord", coord_n_embed=63, coord_down_factor=4, cond_shape=[8, 8])
  model = net2net.Net2Net(cfg, variables)
  coord = np.random.default_rng(3).uniform(0, 1, (2, 32, 32, 1)).astype(np.float32)
  _, tokens = model.encode_to_c(coord)
  np.testing.assert_array_equal(tokens, _coord_tokens_numpy(coord, 63, 4))
  with pytest.raises(ValueError, match=r"coordinate conditioning takes float32\[B, H, W, 1\]"):
    model.encode_to_c(np.zeros((2, 32, 32, 3), np.float32))
  with pytest.raises(ValueError, match="multiples of 4; got 30x32"):
    model.encode_to_c(np.zeros((2, 30, 32, 1), np.float32))


def test_model_dir_without_transformer_section_says_convert_again(tmp_path, raw):
  cfg, variables = raw["class"]
  old = model_dir.save_model_dir(str(tmp_path / "old"), {"vqgan": variables["vqgan"]},
                                 {"vqgan": cfg["vqgan"]}, kind="net2net")
  with pytest.raises(ValueError, match=r"no 'transformer' section .*convert the \.ckpt again"):
    net2net.load_transformer(old)


def test_coordinate_models_fit_taming_s_vocabulary():
  """taming's FacesHQ transformer: CoordStage n_embed 1024 with a 1024-token vocabulary
  (round(1024 * c) = 1024 only for coordinates of exactly 1)."""
  from vqgan_jax.nn.gpt import GPTConfig
  cfg = net2net.Net2NetConfig(cond="coord", z_shape=(16, 16), cond_shape=(16, 16),
                              coord_n_embed=1024, coord_down_factor=16)
  gpt = GPTConfig(vocab_size=1024, block_size=512, n_layer=1, n_head=1, n_embd=8)
  assert cfg.validate(gpt, 1024) == []
