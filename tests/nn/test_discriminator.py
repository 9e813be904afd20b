"""PatchGAN discriminator: parity with taming's outputs (taming_tiny), shapes, init, ActNorm."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vqgan_test_utils import nhwc, tiny
from vqgan_jax.convert.taming import convert_state_dict
from vqgan_jax.convert.torch_reader import read_state_dict
from vqgan_jax.nn.discriminator import (ActNorm, BatchNorm, NLayerDiscriminator, hinge_d_loss,
                                        vanilla_d_loss)

# vqgan_tiny's loss config: disc_ndf 16, disc_num_layers 2, BatchNorm.
TINY = dict(input_nc=3, ndf=16, n_layers=2)


def _param_count(tree):
  return sum(int(np.prod(x.shape)) for x in jax.tree_util.tree_leaves(tree))


def _abstract_variables(disc, shape):
  return jax.eval_shape(lambda x: disc.init(jax.random.PRNGKey(0), x, train=False),
                        jax.ShapeDtypeStruct(shape, jnp.float32))


@pytest.fixture(scope="module")
def tiny_disc():
  """(module, variables) with vqgan_tiny.ckpt's `loss.discriminator.*` weights."""
  disc = NLayerDiscriminator(**TINY)
  expected = _abstract_variables(disc, (1, 32, 48, 3))
  sd = read_state_dict(tiny("vqgan_tiny.ckpt"))
  variables = convert_state_dict(sd, expected, prefix="loss.discriminator.",
                                 source="vqgan_tiny.ckpt")
  return disc, jax.tree_util.tree_map(jnp.asarray, variables)


def test_eval_logits_match_taming(tiny_disc, vqgan_tiny_ref):
  disc, v = tiny_disc
  ref = vqgan_tiny_ref
  for inp, key in (("x", "disc_logits_real"), ("dec", "disc_logits_fake")):
    logits = disc.apply(v, nhwc(ref[inp]), train=False)
    assert logits.shape == (2, 6, 10, 1) and logits.dtype == jnp.float32
    np.testing.assert_allclose(logits, nhwc(ref[key]), atol=2e-6, rtol=0, err_msg=key)


def test_two_train_calls_match_taming(tiny_disc, vqgan_tiny_ref):
  """Real then fake in train mode, as taming's D step: batch stats, running-stat updates."""
  disc, v = tiny_disc
  ref = vqgan_tiny_ref
  apply = jax.jit(lambda v, x: disc.apply(v, x, train=True, mutable=["batch_stats"]))
  real, upd = apply(v, nhwc(ref["x"]))
  v2 = {**v, "batch_stats": upd["batch_stats"]}
  fake, upd = apply(v2, nhwc(ref["dec"]))
  np.testing.assert_allclose(real, nhwc(ref["disc_train_logits_real"]), atol=4e-5, rtol=0)
  np.testing.assert_allclose(fake, nhwc(ref["disc_train_logits_fake"]), atol=2e-4, rtol=0)
  stats = upd["batch_stats"]
  for i in (3, 6):
    np.testing.assert_allclose(stats[f"main_{i}"]["mean"],
                               ref[f"disc_train_after__main.{i}.running_mean"], atol=3e-6, rtol=0)
    np.testing.assert_allclose(stats[f"main_{i}"]["var"],
                               ref[f"disc_train_after__main.{i}.running_var"], atol=2e-5, rtol=0)
  hinge = hinge_d_loss(real, fake)
  np.testing.assert_allclose(hinge, ref["disc_train_hinge"], atol=1e-5, rtol=0)
  np.testing.assert_allclose(hinge, ref["lossD_train_step3"], atol=1e-5, rtol=0)


def test_batchnorm_is_torch_batchnorm():
  """Biased variance to normalise, unbiased in the running average, momentum 0.1."""
  x = jax.random.normal(jax.random.PRNGKey(1), (4, 3, 5, 6)) * 2.0 + 0.5
  bn = BatchNorm()
  v = bn.init(jax.random.PRNGKey(0), x, train=True)
  np.testing.assert_array_equal(v["batch_stats"]["mean"], np.zeros(6))
  y, upd = bn.apply(v, x, train=True, mutable=["batch_stats"])
  xs = np.asarray(x, np.float64).reshape(-1, 6)
  mean, var, n = xs.mean(0), xs.var(0), xs.shape[0]
  want = (xs - mean) / np.sqrt(var + 1e-5) * np.asarray(v["params"]["scale"])
  np.testing.assert_allclose(np.asarray(y).reshape(-1, 6), want, atol=2e-5)
  np.testing.assert_allclose(upd["batch_stats"]["mean"], 0.1 * mean, atol=1e-6)
  np.testing.assert_allclose(upd["batch_stats"]["var"], 0.9 + 0.1 * var * n / (n - 1), atol=1e-6)
  y_eval = bn.apply({**v, **upd}, x, train=False)
  want_eval = ((xs - 0.1 * mean) / np.sqrt(0.9 + 0.1 * var * n / (n - 1) + 1e-5)
               * np.asarray(v["params"]["scale"]))
  np.testing.assert_allclose(np.asarray(y_eval).reshape(-1, 6), want_eval, atol=2e-5)


def test_default_output_shape_and_param_counts():
  disc = NLayerDiscriminator()
  v = _abstract_variables(disc, (1, 256, 256, 3))
  assert _param_count(v["params"]) == 2_765_633
  out = jax.eval_shape(lambda v, x: disc.apply(v, x, train=False), v,
                       jax.ShapeDtypeStruct((2, 256, 256, 3), jnp.float32))
  assert out.shape == (2, 30, 30, 1) and out.dtype == jnp.float32
  disc2 = NLayerDiscriminator(n_layers=2)
  v2 = _abstract_variables(disc2, (1, 256, 256, 3))
  assert _param_count(v2["params"]) == 663_361
  assert sorted(v["params"]) == ["main_0", "main_11", "main_2", "main_3", "main_5", "main_6",
                                 "main_8", "main_9"]
  assert "bias" not in v["params"]["main_2"] and "bias" in v["params"]["main_11"]


def test_init_follows_taming_weights_init():
  disc = NLayerDiscriminator()
  v = jax.jit(lambda k: disc.init(k, jnp.zeros((1, 32, 32, 3)), train=False))(
      jax.random.PRNGKey(0))
  p = v["params"]
  k = np.asarray(p["main_8"]["kernel"])
  assert abs(k.mean()) < 1e-3 and abs(k.std() - 0.02) < 1e-3
  s = np.asarray(p["main_9"]["scale"])
  assert abs(s.mean() - 1.0) < 5e-3 and abs(s.std() - 0.02) < 5e-3
  np.testing.assert_array_equal(p["main_9"]["bias"], 0.0)
  b = np.asarray(p["main_0"]["bias"])  # torch default U(+-1/sqrt(3*16))
  assert np.abs(b).max() <= 1 / np.sqrt(48) and b.std() > 0.05
  np.testing.assert_array_equal(v["batch_stats"]["main_9"]["mean"], 0.0)
  np.testing.assert_array_equal(v["batch_stats"]["main_9"]["var"], 1.0)


def test_wrong_channel_count_is_reported():
  with pytest.raises(ValueError, match="input_nc=3"):
    NLayerDiscriminator().init(jax.random.PRNGKey(0), jnp.zeros((1, 64, 64, 1)), train=False)


def test_actnorm_data_dependent_init_then_stored():
  x = jax.random.normal(jax.random.PRNGKey(2), (4, 8, 8, 5)) * 3.0 - 1.0
  an = ActNorm()
  v = an.init(jax.random.PRNGKey(0), x, train=True)
  assert bool(v["actnorm_state"]["initialized"])
  y = np.asarray(an.apply(v, x, train=True, mutable=["actnorm_state"])[0]).reshape(-1, 5)
  np.testing.assert_allclose(y.mean(0), 0.0, atol=1e-5)
  np.testing.assert_allclose(y.std(0, ddof=1), 1.0, atol=1e-5)
  # A second call on other data uses the stored loc/scale.
  x2 = x * 0.5 + 2.0
  y2 = an.apply(v, x2, train=True, mutable=["actnorm_state"])[0]
  want = v["params"]["scale"] * (x2 + v["params"]["loc"])
  np.testing.assert_allclose(y2, want, atol=1e-6)


def test_actnorm_initialises_on_first_training_apply():
  x = jax.random.normal(jax.random.PRNGKey(3), (2, 4, 4, 3)) + 4.0
  an = ActNorm()
  v = an.init(jax.random.PRNGKey(0), x, train=False)
  assert not bool(v["actnorm_state"]["initialized"])
  np.testing.assert_array_equal(v["params"]["loc"], 0.0)
  y, upd = an.apply(v, x, train=True, mutable=["params", "actnorm_state"])
  assert bool(upd["actnorm_state"]["initialized"])
  np.testing.assert_allclose(upd["params"]["loc"], -np.asarray(x).reshape(-1, 3).mean(0),
                             atol=1e-5)
  np.testing.assert_allclose(np.asarray(y).reshape(-1, 3).mean(0), 0.0, atol=1e-5)


def test_actnorm_discriminator():
  disc = NLayerDiscriminator(ndf=8, n_layers=2, use_actnorm=True)
  x = jax.random.uniform(jax.random.PRNGKey(4), (3, 32, 32, 3), minval=-1, maxval=1)
  v = jax.jit(lambda k, x: disc.init(k, x, train=True))(jax.random.PRNGKey(0), x)
  assert "bias" in v["params"]["main_2"] and v["params"]["main_3"]["loc"].shape == (16,)
  assert "batch_stats" not in v
  assert all(bool(s["initialized"]) for s in v["actnorm_state"].values())
  # After the init call the first norm's output is standardised per channel.
  _, inter = jax.jit(lambda v, x: disc.apply(
      v, x, train=True, mutable=["actnorm_state", "intermediates"],
      capture_intermediates=lambda m, _: m.name == "main_3"))(v, x)
  h = np.asarray(inter["intermediates"]["main_3"]["__call__"][0]).reshape(-1, 16)
  np.testing.assert_allclose(h.mean(0), 0.0, atol=1e-4)
  # 1 / (std + 1e-6) with std ~ 0.01 here: unit std up to ~1e-4 relative.
  np.testing.assert_allclose(h.std(0, ddof=1), 1.0, atol=5e-4)
  out = jax.eval_shape(lambda v, x: disc.apply(v, x, train=False), v, x)
  assert out.shape == (3, 6, 6, 1)  # 32 -> 16 -> 8 (stride 2) -> 7 -> 6 (stride 1, k4, p1)


def test_losses():
  real = jnp.array([[2.0, 0.5], [-1.0, 0.0]])
  fake = jnp.array([[-2.0, 0.5], [1.0, -0.5]])
  want_hinge = 0.5 * (np.mean([0, 0.5, 2, 1]) + np.mean([0, 1.5, 2, 0.5]))
  np.testing.assert_allclose(hinge_d_loss(real, fake), want_hinge, rtol=1e-6)
  sp = lambda t: np.log1p(np.exp(t))
  want_vanilla = 0.5 * (np.mean(sp(-np.asarray(real))) + np.mean(sp(np.asarray(fake))))
  np.testing.assert_allclose(vanilla_d_loss(real, fake), want_vanilla, rtol=1e-6)
  assert hinge_d_loss(real.astype(jnp.bfloat16), fake).dtype == jnp.float32
