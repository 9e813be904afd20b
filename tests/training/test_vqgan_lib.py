"""Train-step semantics: dead-code restart, EMA / Gumbel training, schedules, bf16."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

import training_worker as W
from vqgan_jax.nn.vqgan import VQGANConfig, VQModel
from vqgan_jax.training import vqgan_lib

TINY = VQGANConfig(ch=32, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(), resolution=16,
                   z_channels=8, embed_dim=8, n_embed=16)


def _setup(model_cfg=TINY, dtype="float32", **config_kw):
  """build_setup of a tiny config: model_cfg, D at ndf 8 with 1 layer, GAN terms from step
  0, no LPIPS (the CLI test and tests/test_losses.py cover it; it doubles compile time)."""
  c = W.tiny_config(disc_start=0, disc_ndf=8, disc_num_layers=1)
  c.model.update(dataclasses.asdict(model_cfg))
  c.dtype = dtype
  c.optim.eps = 1e-8
  c.update(config_kw)
  return vqgan_lib.build_setup(c)


lpips_params = None  # no LPIPS term in these steps


def _batch(seed=0, n=4):
  return {"image": jax.random.uniform(jax.random.PRNGKey(seed), (n, 16, 16, 3), minval=-1,
                                      maxval=1)}


def test_dead_code_restart_redraws_only_unused_codes():
  setup = _setup(dead_code_restart_every=1)
  assert setup.dead_code_restart_every == 1
  state = vqgan_lib.init_state(setup, jax.random.PRNGKey(0))
  batch = _batch()
  step = jax.jit(lambda s, b: vqgan_lib.train_step(setup, s, lpips_params, b))
  # The latents the restart draws from: this batch's pre-quant latents at the old params.
  _, _, info = jax.jit(lambda p, x: setup.model.apply({"params": p}, x, train=True,
                                                      method=VQModel.encode))(
      state.ae_params, batch["image"])
  latents = np.asarray(info["prequant"]).reshape(-1, TINY.embed_dim)
  used = np.unique(np.asarray(info["indices"]))
  no_restart = jax.jit(lambda s, b: vqgan_lib.train_step(
      dataclasses.replace(setup, dead_code_restart_every=0), s, lpips_params, b))
  plain, _ = no_restart(state, batch)
  new, _ = step(state, batch)
  before = np.asarray(plain.ae_params["quantize"]["embedding"]["embedding"])
  after = np.asarray(new.ae_params["quantize"]["embedding"]["embedding"])
  unused = np.setdiff1d(np.arange(TINY.n_embed), used)
  assert len(unused) > 0
  np.testing.assert_array_equal(after[used], before[used])       # used codes: Adam update only
  for code in unused:                                            # unused: a latent of the batch
    assert np.min(np.abs(latents - after[code]).max(axis=1)) < 1e-5, code
  assert int(new.code_usage.sum()) == 0                          # counts restart from zero


def test_ema_codebook_trains_outside_the_optimizer():
  setup = _setup(dataclasses.replace(TINY, quantizer="ema", ema_decay=0.5))
  state = vqgan_lib.init_state(setup, jax.random.PRNGKey(0))
  assert "quantize" not in state.ae_params
  new, metrics = jax.jit(lambda s, b: vqgan_lib.train_step(setup, s, lpips_params, b))(
      state, _batch())
  old_cb = state.model_state["ema_codebook"]["quantize"]["embedding"]
  new_cb = new.model_state["ema_codebook"]["quantize"]["embedding"]
  assert not np.allclose(old_cb, new_cb)
  assert np.all(np.isfinite(jax.tree_util.tree_leaves(jax.device_get(metrics))))


def test_gumbel_training_uses_the_temperature_schedule():
  sched = vqgan_lib.gumbel_temperature_schedule(2, 12, 0.5, 1.0, 0.1)
  np.testing.assert_allclose([sched(0), sched(1), sched(2), sched(7), sched(12), sched(20)],
                             [0.5, 0.75, 1.0, 0.1 + 0.45 * (1 + np.cos(np.pi * 0.5)), 0.1, 0.1],
                             rtol=1e-6)
  setup = dataclasses.replace(_setup(dataclasses.replace(TINY, quantizer="gumbel")),
                              temperature=sched)
  state = vqgan_lib.init_state(setup, jax.random.PRNGKey(0))
  step = jax.jit(lambda s, b: vqgan_lib.train_step(setup, s, lpips_params, b))
  state, m0 = step(state, _batch())
  state, m1 = step(state, _batch(1))
  assert float(m0["temperature"]) == 0.5 and float(m1["temperature"]) == 0.75
  assert np.isfinite(float(m1["total_loss"]))


def test_bfloat16_step_keeps_float32_params():
  setup = _setup(dtype="bfloat16")
  assert setup.model.dtype == jnp.bfloat16 and setup.disc.dtype == jnp.bfloat16
  state = vqgan_lib.init_state(setup, jax.random.PRNGKey(0))
  step = jax.jit(lambda s, b: vqgan_lib.train_step(setup, s, lpips_params, b))
  # The convolutions really run in bf16 (a dtype ignored somewhere would leave f32 ones),
  # all but the quantizer's 1x1 quant_conv / post_quant_conv (embed_dim 8), kept in f32
  # next to the codebook by design (forward, and the two convs of its gradient).
  hlo = step.lower(state, _batch()).as_text()
  convs = [line.split(" : ")[-1] for line in hlo.splitlines() if "stablehlo.convolution" in line]
  f32 = [c for c in convs if "bf16" not in c]
  assert len(convs) > 100 and len(f32) <= 3, f32
  assert all("1x1x8x8xf32" in c for c in f32), f32
  new, metrics = step(state, _batch())
  assert all(x.dtype == jnp.float32 for x in jax.tree_util.tree_leaves(new.ae_params))
  assert all(np.isfinite(float(v)) for v in metrics.values())
