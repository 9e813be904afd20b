"""VQModel parity with taming's outputs (tests/fixtures/taming_tiny) and shape checks."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vqgan_test_utils import nhwc, tiny
from vqgan_jax.convert.checkpoint import convert_taming_checkpoint
from vqgan_jax.nn.vqgan import VQGANConfig, VQModel, abstract_variables, param_count


def _apply(config, variables, *args, method, **kw):
  return VQModel(config).apply(variables, *args, method=method, **kw)


@pytest.fixture(scope="module")
def tiny_model(vqgan_tiny_converted):
  cfg, variables = vqgan_tiny_converted
  return VQGANConfig.from_dict(cfg["vqgan"]), variables["vqgan"]


def test_encoder_and_prequant_latent(tiny_model, vqgan_tiny_ref):
  cfg, v = tiny_model
  x = nhwc(vqgan_tiny_ref["x"])
  enc = _apply(cfg, v, x, method=lambda m, x: m.encoder(x))
  np.testing.assert_allclose(enc, nhwc(vqgan_tiny_ref["enc_out"]), atol=1e-4, rtol=0)
  h = _apply(cfg, v, x, method=VQModel.encode_to_prequant)
  np.testing.assert_allclose(h, nhwc(vqgan_tiny_ref["h"]), atol=6e-5, rtol=0)
  # Our own error, measured against the reference run in float64.
  np.testing.assert_allclose(h, nhwc(vqgan_tiny_ref["h_f64"]), atol=1e-5, rtol=0)


def test_quantize_and_decode(tiny_model, vqgan_tiny_ref):
  cfg, v = tiny_model
  ref = vqgan_tiny_ref
  z_q, loss, info = _apply(cfg, v, nhwc(ref["x"]), method=VQModel.encode)
  np.testing.assert_array_equal(info["indices"], ref["indices"])
  np.testing.assert_allclose(z_q, nhwc(ref["z_q"]), atol=1e-4, rtol=0)
  np.testing.assert_allclose(loss, ref["emb_loss_legacy"], atol=5e-7, rtol=0)
  dec = _apply(cfg, v, z_q, method=VQModel.decode)
  np.testing.assert_allclose(dec, nhwc(ref["dec"]), atol=2e-4, rtol=0)
  np.testing.assert_allclose(dec, nhwc(ref["dec_f64"]), atol=5e-5, rtol=0)
  rows = _apply(cfg, v, ref["indices"], method=lambda m, i: m.quantize.embed_indices(i))
  np.testing.assert_allclose(rows, nhwc(ref["z_q_codebook"]), atol=6e-6, rtol=0)
  np.testing.assert_allclose(v["params"]["quantize"]["embedding"]["embedding"], ref["codebook"],
                             atol=0, rtol=0)
  dec_i = _apply(cfg, v, ref["indices"], method=VQModel.decode_indices)
  np.testing.assert_allclose(dec_i, nhwc(ref["dec"]), atol=2e-4, rtol=0)
  # Usage statistics: 33 distinct codes over the 192 positions (fixture README).
  assert int((np.asarray(info["code_counts"]) > 0).sum()) == 33
  assert int(np.asarray(info["code_counts"]).sum()) == ref["indices"].size
  p = np.bincount(ref["indices"].ravel(), minlength=64) / ref["indices"].size
  np.testing.assert_allclose(info["perplexity"], np.exp(-np.sum(p * np.log(p + 1e-10))), rtol=1e-5)


@pytest.mark.parametrize("legacy", [True, False])
def test_codebook_loss_both_beta_placements(tiny_model, vqgan_tiny_ref, legacy):
  cfg, v = tiny_model
  cfg = dataclasses.replace(cfg, legacy=legacy)
  ref = vqgan_tiny_ref
  name = "legacy" if legacy else "fixed"
  h = jnp.asarray(nhwc(ref["h"]))
  def loss_fn(params, h):
    return _apply(cfg, {"params": params}, h, method=lambda m, h: m.quantize(h)[1])
  loss, (g_params, g_h) = jax.value_and_grad(loss_fn, argnums=(0, 1))(v["params"], h)
  np.testing.assert_allclose(loss, ref[f"emb_loss_{name}"], atol=5e-7, rtol=0)
  np.testing.assert_allclose(g_h, nhwc(ref[f"emb_loss_{name}_grad_h"]), atol=4e-8, rtol=1e-5)
  np.testing.assert_allclose(g_params["quantize"]["embedding"]["embedding"],
                             ref[f"emb_loss_{name}_grad_codebook"], atol=7e-8, rtol=1e-5)


def test_straight_through_gradient_is_identity(tiny_model, vqgan_tiny_ref):
  cfg, v = tiny_model
  h = jnp.asarray(nhwc(vqgan_tiny_ref["h"]))
  g = jax.grad(lambda h: _apply(cfg, v, h, method=lambda m, h: m.quantize(h)[0]).sum())(h)
  np.testing.assert_array_equal(g, np.ones_like(h))


def test_gumbel_deterministic_and_replayed_noise():
  cfg, variables = convert_taming_checkpoint(tiny("gumbel_tiny.ckpt"),
                                             tiny("gumbel_tiny-project.yaml"))
  cfg, v = VQGANConfig.from_dict(cfg["vqgan"]), variables["vqgan"]
  assert cfg.quantizer == "gumbel"
  ref = np.load(tiny("gumbel_tiny.npz"))
  h = _apply(cfg, v, nhwc(ref["x"]), method=VQModel.encode_to_prequant)
  np.testing.assert_allclose(h, nhwc(ref["g_h"]), atol=6e-5, rtol=0)
  logits = _apply(cfg, v, h, method=lambda m, h: m.quantize.logits(h))
  np.testing.assert_allclose(logits, nhwc(ref["g_logits"]), atol=3e-4, rtol=0)
  # Evaluation default: argmax of the logits.
  z_q, kl, info = _apply(cfg, v, h, method=lambda m, h: m.quantize(h))
  np.testing.assert_array_equal(info["indices"], ref["g_indices_argmax"])
  np.testing.assert_allclose(z_q, nhwc(ref["g_z_q_argmax"]), atol=4e-5, rtol=0)
  np.testing.assert_allclose(kl, ref["g_kl"], atol=4e-9, rtol=0)
  dec = _apply(cfg, v, z_q, method=VQModel.decode)
  np.testing.assert_allclose(dec, nhwc(ref["g_dec_argmax"]), atol=3e-4, rtol=0)
  # Taming's sampling, replayed with the noise it drew.
  noise = nhwc(ref["g_gumbel_noise"])
  z_q, kl, info = _apply(cfg, v, h, method=lambda m, h: m.quantize(h, gumbel_noise=noise))
  np.testing.assert_array_equal(info["indices"], ref["g_indices"])
  np.testing.assert_allclose(z_q, nhwc(ref["g_z_q"]), atol=4e-5, rtol=0)
  np.testing.assert_allclose(kl, ref["g_kl"], atol=4e-9, rtol=0)
  dec = _apply(cfg, v, z_q, method=VQModel.decode)
  np.testing.assert_allclose(dec, nhwc(ref["g_dec"]), atol=3e-4, rtol=0)
  # Sampling with our own rng draws codes from softmax(logits): differs from argmax somewhere.
  _, _, info = _apply(cfg, v, h, method=lambda m, h: m.quantize(h, sample=True),
                      rngs={"gumbel": jax.random.PRNGKey(1)})
  assert (np.asarray(info["indices"]) != ref["g_indices_argmax"]).any()


def test_depth_cond_stage_of_net2net():
  """Second architecture: ch_mult [2,1,1] (2 channels per group), nin shortcuts, 1 channel."""
  cfg, variables = convert_taming_checkpoint(tiny("n2n_depth_tiny.ckpt"),
                                             tiny("n2n_depth_tiny-project.yaml"))
  ccfg, v = VQGANConfig.from_dict(cfg["cond_stage"]), variables["cond_stage"]
  ref = np.load(tiny("n2n_depth_tiny.npz"))
  depth = nhwc(ref["depth"])
  h = _apply(ccfg, v, depth, method=VQModel.encode_to_prequant)
  np.testing.assert_allclose(h, nhwc(ref["cond_h"]), atol=7e-5, rtol=0)
  z_q, _, info = _apply(ccfg, v, depth, method=VQModel.encode)
  np.testing.assert_allclose(z_q, nhwc(ref["cond_z_q"]), atol=1e-4, rtol=0)
  np.testing.assert_array_equal(np.asarray(info["indices"]).reshape(2, -1), ref["n2n_c_indices"])
  dec = _apply(ccfg, v, z_q, method=VQModel.decode)
  np.testing.assert_allclose(dec, nhwc(ref["cond_dec"]), atol=2e-4, rtol=0)
  # The first stage of the same file: codes of the square batch.
  fcfg, fv = VQGANConfig.from_dict(cfg["vqgan"]), variables["vqgan"]
  _, _, info = _apply(fcfg, fv, nhwc(ref["x_sq"]), method=VQModel.encode)
  np.testing.assert_array_equal(np.asarray(info["indices"]).reshape(2, -1), ref["n2n_z_indices"])


def test_decode_codes_sampled_by_the_reference_transformer():
  cfg, variables = convert_taming_checkpoint(tiny("n2n_class_tiny.ckpt"))
  fcfg, fv = VQGANConfig.from_dict(cfg["vqgan"]), variables["vqgan"]
  ref = np.load(tiny("n2n_class_tiny.npz"))
  dec = _apply(fcfg, fv, ref["greedy_kv"].reshape(2, 8, 8), method=VQModel.decode_indices)
  np.testing.assert_allclose(dec, nhwc(ref["greedy_decoded"]), atol=2e-4, rtol=0)


F16 = dict(ch=128, ch_mult=(1, 1, 2, 2, 4), num_res_blocks=2, attn_resolutions=(16,),
           resolution=256, z_channels=256, embed_dim=256)


@pytest.mark.parametrize("fields,expected", [
    (dict(F16, n_embed=1024), 72_141_699),          # vqgan_imagenet_f16_1024
    (dict(F16, n_embed=16384), 76_073_859),         # vqgan_imagenet_f16_16384
    (dict(F16, ch_mult=(1, 1, 2, 4), attn_resolutions=(32,), n_embed=8192), 66_890_627),
    (dict(F16, ch_mult=(1, 1, 2, 4), attn_resolutions=(32,), n_embed=8192,
          quantizer="gumbel"), 68_995_971),         # vqgan_gumbel_f8
])
def test_parameter_counts_of_released_architectures(fields, expected):
  """Counts computed analytically from taming's code (reference inventory, section 1.4)."""
  assert param_count(abstract_variables(VQGANConfig(**fields))["params"]) == expected


@pytest.mark.parametrize("ch_mult,hw", [((1, 1, 1), (32, 48)), ((1, 1, 1, 1), (40, 24)),
                                        ((1, 1, 1, 1, 1), (32, 80)),
                                        ((1, 1, 1, 1, 1, 1), (64, 96))])
def test_shapes_for_f4_to_f32_and_non_square(ch_mult, hw):
  cfg = VQGANConfig(ch=32, ch_mult=ch_mult, num_res_blocks=1, attn_resolutions=(8,),
                    resolution=2 ** (len(ch_mult) + 2), z_channels=8, embed_dim=4, n_embed=16)
  f = cfg.downsample_factor
  x = jax.random.uniform(jax.random.PRNGKey(0), (2, hw[0], hw[1], 3), minval=-1, maxval=1)
  model = VQModel(cfg)
  v = model.init(jax.random.PRNGKey(1), x)
  rec, loss, info = jax.jit(model.apply)(v, x)
  assert info["indices"].shape == (2, hw[0] // f, hw[1] // f)
  assert info["indices"].dtype == jnp.int32
  assert rec.shape == x.shape and rec.dtype == jnp.float32
  assert np.isfinite(np.asarray(rec)).all() and np.isfinite(float(loss))


def test_attention_placement_follows_config_resolution():
  cfg = VQGANConfig(ch=32, ch_mult=(1, 1, 1), num_res_blocks=2, attn_resolutions=(16,),
                    resolution=32, z_channels=8, embed_dim=4, n_embed=16)
  p = abstract_variables(cfg)["params"]
  assert set(p["encoder"]["down_1"]) == {"block_0", "attn_0", "block_1", "attn_1", "downsample"}
  assert "attn_0" not in p["encoder"]["down_0"] and "attn_0" not in p["encoder"]["down_2"]
  assert {"attn_0", "attn_1", "attn_2"} <= set(p["decoder"]["up_1"])
  assert "upsample" not in p["decoder"]["up_0"] and "downsample" not in p["encoder"]["down_2"]


def test_double_z_and_give_pre_end():
  cfg = VQGANConfig(ch=32, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(), resolution=16,
                    z_channels=8, embed_dim=4, n_embed=16, double_z=True, give_pre_end=True)
  x = jnp.zeros((1, 16, 16, 3))
  v = VQModel(cfg).init(jax.random.PRNGKey(0), x)
  assert v["params"]["encoder"]["conv_out"]["kernel"].shape[-1] == 16
  assert v["params"]["quant_conv"]["kernel"].shape[-2:] == (16, 4)
  out, _, _ = VQModel(cfg).apply(v, x)
  assert out.shape == (1, 16, 16, 32)  # features before norm_out


def test_config_validation_names_fields():
  errors = VQGANConfig(ch=24, quantizer="kmeans").validate()
  assert any(e.startswith("quantizer:") for e in errors)
  assert any("divisible by 32" in e for e in errors)
  with pytest.raises(ValueError, match="unknown field"):
    VQGANConfig.from_dict({"ch": 32, "chanels": 3})


@pytest.mark.parametrize("hw,c", [((8, 12), 32), ((5, 7), 64)])
def test_subpixel_upsample_equals_nearest_then_conv(hw, c):
  from vqgan_jax.nn.vqgan import Upsample
  x = jax.random.normal(jax.random.PRNGKey(0), (2, hw[0], hw[1], c))
  v = Upsample().init(jax.random.PRNGKey(1), x)
  direct = Upsample(subpixel_min_pixels=10 ** 9).apply(v, x)
  subpixel = Upsample(subpixel_min_pixels=0).apply(v, x)
  # Second path written out: nearest x2 by indexing, then a plain convolution.
  up = np.asarray(x)[:, np.arange(2 * hw[0]) // 2][:, :, np.arange(2 * hw[1]) // 2]
  k, b = v["params"]["conv"]["kernel"], v["params"]["conv"]["bias"]
  expect = jax.lax.conv_general_dilated(up, k, (1, 1), ((1, 1), (1, 1)),
                                        dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                        precision="highest") + b
  np.testing.assert_allclose(direct, expect, atol=1e-5, rtol=0)
  np.testing.assert_allclose(subpixel, expect, atol=1e-5, rtol=0)
