"""The VQGAN objective against taming's VQLPIPSWithDiscriminator (vqgan_tiny fixture)."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vqgan_test_utils import nhwc, shared_lpips_random
from vqgan_jax import losses
from vqgan_jax.convert import taming
from vqgan_jax.convert.torch_reader import read_state_dict
from vqgan_jax.nn.discriminator import NLayerDiscriminator
from vqgan_jax.nn.lpips import LPIPS
from vqgan_jax.nn.vqgan import VQGANConfig, VQModel, conv_out_apply

CFG = losses.LossConfig(disc_start=3, disc_weight=0.8, codebook_weight=1.0)


@pytest.fixture(scope="module")
def parts(vqgan_tiny_converted, vqgan_tiny_ref):
  cfg, variables = vqgan_tiny_converted
  lp_sd = read_state_dict(shared_lpips_random())
  x0 = jnp.zeros((1, 32, 32, 3))
  lp_expected = jax.eval_shape(lambda: LPIPS().init(jax.random.PRNGKey(0), x0, x0))
  lp_vars = taming.convert_state_dict(lp_sd, lp_expected, prefix="loss.perceptual_loss.",
                                      ignore=("scaling_layer.",))
  return VQGANConfig.from_dict(cfg["vqgan"]), variables, lp_vars


def _gen_loss(parts, ref, step, with_adaptive_weight=True):
  cfg, variables, lp_vars = parts
  x = jnp.asarray(nhwc(ref["x"]))
  model = VQModel(cfg)
  feats, qloss, _ = model.apply(variables["vqgan"], x, method=VQModel.encode_decode_features)
  disc = NLayerDiscriminator(ndf=16, n_layers=2)
  disc_fn = lambda r: (disc.apply(variables["discriminator"], r, train=False), None)
  lpips_fn = lambda a, b: LPIPS().apply(lp_vars, a, b)
  return losses.generator_loss(
      x, feats, variables["vqgan"]["params"]["decoder"]["conv_out"], conv_out_apply, qloss,
      lpips_fn, disc_fn, step, CFG, with_adaptive_weight=with_adaptive_weight)


@pytest.mark.parametrize("step", [2, 3])
def test_generator_loss_and_log_entries(parts, vqgan_tiny_ref, step):
  ref = vqgan_tiny_ref
  loss, logs = jax.jit(functools.partial(_gen_loss, parts, ref))(step)
  atol = {"total_loss": 2e-5 if step == 3 else 6e-6, "quant_loss": 5e-7, "nll_loss": 6e-6,
          "rec_loss": 6e-6, "p_loss": 2e-7, "d_weight": 3e-4, "disc_factor": 1e-5,
          "g_loss": 5e-7}
  for key, tol in atol.items():
    np.testing.assert_allclose(logs["scalars"][key], ref[f"lossG_step{step}__{key}"], atol=tol,
                               rtol=0, err_msg=key)
  np.testing.assert_allclose(loss, ref[f"lossG_step{step}"], atol=atol["total_loss"], rtol=0)
  np.testing.assert_allclose(logs["x_rec"], nhwc(ref["dec"]), atol=2e-4, rtol=0)


def test_adaptive_weight_from_gradient_norms(parts, vqgan_tiny_ref):
  """d_weight = clip(|grad nll| / (|grad g| + 1e-4), 0, 1e4) * 0.8 with the recorded norms."""
  ref = vqgan_tiny_ref
  expected = np.clip(ref["d_weight_nll_grad_norm"] / (ref["d_weight_g_grad_norm"] + 1e-4), 0,
                     1e4) * 0.8
  _, logs = jax.jit(functools.partial(_gen_loss, parts, ref))(3)
  np.testing.assert_allclose(logs["scalars"]["d_weight"], expected, rtol=2e-5)
  np.testing.assert_allclose(expected, ref["lossG_step3__d_weight"], rtol=2e-5)


def test_validation_path_has_zero_d_weight(parts, vqgan_tiny_ref):
  ref = vqgan_tiny_ref
  loss, logs = _gen_loss(parts, ref, 3, with_adaptive_weight=False)
  np.testing.assert_allclose(loss, ref["lossG_nograd_step3"], atol=6e-6, rtol=0)
  assert float(logs["scalars"]["d_weight"]) == 0.0


@pytest.mark.parametrize("step", [2, 3])
def test_discriminator_loss_eval_mode(vqgan_tiny_converted, vqgan_tiny_ref, step):
  ref = vqgan_tiny_ref
  disc_vars = vqgan_tiny_converted[1]["discriminator"]
  disc = NLayerDiscriminator(ndf=16, n_layers=2)
  real = disc.apply(disc_vars, nhwc(ref["x"]), train=False)
  fake = disc.apply(disc_vars, nhwc(ref["dec"]), train=False)
  loss, logs = losses.discriminator_loss(real, fake, step, CFG)
  np.testing.assert_allclose(loss, ref[f"lossD_step{step}"], atol=2e-5, rtol=0)
  np.testing.assert_allclose(logs["logits_real"], ref[f"lossD_step{step}__logits_real"], atol=4e-7)
  np.testing.assert_allclose(logs["logits_fake"], ref[f"lossD_step{step}__logits_fake"], atol=5e-7)


def test_adopt_weight_and_fixed_weight_closed_forms():
  assert float(losses.adopt_weight(0.7, 2, 3)) == 0.0
  assert float(losses.adopt_weight(0.7, 3, 3)) == np.float32(0.7)
  g = jnp.array([3.0, 4.0])
  np.testing.assert_allclose(losses.adaptive_weight(g, jnp.zeros(2), 2.0), 1e4 * 2.0)
  np.testing.assert_allclose(losses.adaptive_weight(g, g, 1.0), 5.0 / 5.0001, rtol=1e-6)
