"""VQGAN train state and the jitted train / eval steps (pure JAX: no TF, no clu).

One train step = taming's two optimizer steps on one global batch: the autoencoder
update (L1 + LPIPS + codebook + adaptive GAN loss), then the discriminator update on
the reconstructions of that same forward pass (taming re-decodes after the AE update;
we reuse x_rec, the documented deviation of the reference inventory). The step's rng
is fold_in(PRNGKey(seed), step), so a resumed run repeats the same randomness.
"""

import dataclasses
import functools
from typing import Any, Callable, Dict, Optional

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax

from vqgan_jax import losses
from vqgan_jax import metrics as metrics_lib
from vqgan_jax.nn.discriminator import NLayerDiscriminator
from vqgan_jax.nn.inception import FIDInception
from vqgan_jax.nn.lpips import LPIPS
from vqgan_jax.nn.vqgan import VQModel, conv_out_apply
from vqgan_jax.training import accumulation
from vqgan_jax.training import sharding as sharding_lib
from vqgan_jax.training import steps as steps_lib


@flax.struct.dataclass
class VQGANTrainState:
  step: jax.Array                 # int32[], batches done
  ae_params: Any
  ae_opt_state: Any
  model_state: Any                # VQModel's other collections (ema_codebook, remap)
  d_params: Any
  d_state: Any                    # batch_stats (or actnorm_state)
  d_opt_state: Any
  code_usage: jax.Array           # int32[n_codes], counts since the last dead-code restart


@dataclasses.dataclass(frozen=True)
class VQGANTrainSetup:
  """Everything static the steps need, built once from the config."""
  model: VQModel
  disc: NLayerDiscriminator
  lpips: Optional[LPIPS]          # None when loss.perceptual_weight is 0 (no VGG16 at all)
  loss: losses.LossConfig
  tx_ae: optax.GradientTransformation
  tx_d: optax.GradientTransformation
  seed: int
  image_size: int
  accum_steps: int = 1
  accum_unroll: bool = True       # micro-batches unrolled (True) or in a lax.scan
  dead_code_restart_every: int = 0
  temperature: Optional[Callable] = None   # step -> Gumbel temperature

  @property
  def n_codes(self) -> int:
    return self.model.config.n_embed


def gumbel_temperature_schedule(warm_up_steps, max_decay_steps, start, maximum, minimum):
  """taming's LambdaWarmUpCosineScheduler (used for the Gumbel temperature)."""
  def fn(step):
    step = jnp.asarray(step, jnp.float32)
    warm = (maximum - start) / max(warm_up_steps, 1) * step + start
    t = jnp.minimum((step - warm_up_steps) / max(max_decay_steps - warm_up_steps, 1), 1.0)
    cos = minimum + 0.5 * (maximum - minimum) * (1 + jnp.cos(t * jnp.pi))
    return jnp.where(step < warm_up_steps, warm, cos)
  return fn


def build_setup(config) -> VQGANTrainSetup:
  """The setup a training config describes (trainer, benchmark and tests use this)."""
  from vqgan_jax.training import vqgan_config
  dtype = jnp.bfloat16 if config.dtype == "bfloat16" else jnp.float32
  mc = vqgan_config.model_config(config)
  lr = vqgan_config.learning_rate(config)
  o = config.optim
  adam = lambda: optax.adam(lr, b1=o.b1, b2=o.b2, eps=o.eps)
  temperature = None
  if mc.quantizer == "gumbel":
    t = config.gumbel_temperature
    temperature = gumbel_temperature_schedule(t.warm_up_steps, t.max_decay_steps, t.start,
                                              t.max, t.min)
  loss = vqgan_config.loss_config(config)
  return VQGANTrainSetup(
      model=VQModel(mc, dtype=dtype),
      disc=NLayerDiscriminator(input_nc=mc.out_ch, ndf=config.loss.disc_ndf,
                               n_layers=config.loss.disc_num_layers,
                               use_actnorm=config.loss.use_actnorm, dtype=dtype),
      lpips=LPIPS(dtype=dtype) if loss.perceptual_weight > 0 else None, loss=loss,
      tx_ae=adam(), tx_d=adam(), seed=int(config.seed), image_size=int(config.data.crop_size),
      accum_steps=int(o.accum_steps), accum_unroll=o.accum_loop == "unrolled",
      dead_code_restart_every=int(config.dead_code_restart_every), temperature=temperature)


def init_state(setup: VQGANTrainSetup, rng, init_variables: Optional[Dict] = None):
  """A fresh train state; `init_variables` ({"vqgan", "discriminator"}) overrides weights."""
  k_ae, k_d = jax.random.split(rng)
  s = setup.image_size
  x = jnp.zeros((1, s, s, setup.model.config.in_channels), jnp.float32)
  ae_vars = setup.model.init({"params": k_ae}, x)
  d_vars = setup.disc.init({"params": k_d}, x, train=False)
  if init_variables:
    ae_vars = dict(ae_vars, **init_variables.get("vqgan", {}))
    if "discriminator" in init_variables:
      d_vars = dict(d_vars, **init_variables["discriminator"])
  ae_vars, d_vars = dict(ae_vars), dict(d_vars)
  ae_params, d_params = ae_vars.pop("params"), d_vars.pop("params")
  return VQGANTrainState(
      step=jnp.zeros((), jnp.int32), ae_params=ae_params,
      ae_opt_state=setup.tx_ae.init(ae_params), model_state=ae_vars, d_params=d_params,
      d_state=d_vars, d_opt_state=setup.tx_d.init(d_params),
      code_usage=jnp.zeros((setup.n_codes,), jnp.int32))


def _dead_code_restart(setup, code_usage, ae_params, model_state, latents, rng):
  """Re-draws codes unused since the last restart (code_usage == 0) from the batch's latents
  (in the quantizer's lookup space: projected / normalised with those options)."""
  unused = code_usage == 0
  flat = latents.reshape(-1, latents.shape[-1])
  pick = flat[jax.random.randint(rng, (setup.n_codes,), 0, flat.shape[0])]
  def refresh(codebook):
    return jnp.where(unused[:, None], pick.astype(codebook.dtype), codebook)
  if setup.model.config.quantizer == "ema":
    ema = dict(model_state["ema_codebook"])
    ema["quantize"] = dict(ema["quantize"], embedding=refresh(ema["quantize"]["embedding"]),
                           embed_avg=refresh(ema["quantize"]["embed_avg"]))
    return ae_params, dict(model_state, ema_codebook=ema)
  q = ae_params["quantize"]
  if "embedding" in q:
    q = dict(q, embedding=dict(q["embedding"], embedding=refresh(q["embedding"]["embedding"])))
  else:
    q = dict(q, embed=dict(q["embed"], embedding=refresh(q["embed"]["embedding"])))
  return dict(ae_params, quantize=q), model_state


def train_step(setup: VQGANTrainSetup, state: VQGANTrainState, lpips_params, batch):
  """One AE + D update on batch {"image": float32[B, S, S, C]}; returns (state, metrics)."""
  step = state.step
  rng = jax.random.fold_in(jax.random.PRNGKey(setup.seed), step)
  k = setup.accum_steps
  micro = accumulation.microbatches(batch, k)
  quant_kw = {}
  if setup.model.config.quantizer == "gumbel":
    quant_kw["temperature"] = setup.temperature(step) if setup.temperature else 1.0
  mutable = [c for c in ("ema_codebook",) if c in state.model_state]
  disc_mutable = list(state.d_state.keys())

  def ae_loss(ae_params, model_state, d_state, x, rng):
    r_model, r_lpips = jax.random.split(rng)
    variables = dict(model_state, params=ae_params)
    out, new_model = setup.model.apply(
        variables, x, train=True, method=VQModel.encode_decode_features, mutable=mutable,
        rngs={"dropout": r_model, "gumbel": r_model, "remap": r_model}, **quant_kw)
    feats, qloss, info = out
    def disc_fn(r):
      return setup.disc.apply(dict(d_state, params=state.d_params), r, train=True,
                              mutable=disc_mutable)
    lpips_train = setup.loss.lpips_dropout_in_train
    lpips_fn = None if setup.lpips is None else (
        lambda a, b: setup.lpips.apply(lpips_params, a, b, train=lpips_train,
                                       rngs={"dropout": r_lpips}))
    conv_out = functools.partial(conv_out_apply, dtype=setup.model.dtype)
    loss, logs = losses.generator_loss(x, feats, ae_params["decoder"]["conv_out"], conv_out,
                                       qloss, lpips_fn, disc_fn, step, setup.loss)
    new_model_state = dict(model_state, **new_model)
    return loss, (logs, new_model_state, info)

  def ae_grad(params, carry, xs):
    model_state, d_state = carry
    x, r = xs
    (_, (logs, model_state, info)), g = jax.value_and_grad(ae_loss, has_aux=True)(
        params, model_state, d_state, x, r)
    d_state = dict(d_state, **logs["disc_aux"])
    out = (logs["scalars"], jax.lax.stop_gradient(logs["x_rec"]), info["code_counts"],
           info["perplexity"], info.get("lookup", info["prequant"]))
    return g, (model_state, d_state), out

  unroll = setup.accum_unroll
  rngs = jax.random.split(jax.random.fold_in(rng, 0), k)
  ae_grads, (model_state, d_state), (g_logs, x_rec, counts, perplexity, latents) = (
      accumulation.accumulate_gradients(ae_grad, state.ae_params, (micro["image"], rngs), k,
                                        unroll, carry=(state.model_state, state.d_state)))
  updates, ae_opt_state = setup.tx_ae.update(ae_grads, state.ae_opt_state, state.ae_params)
  ae_params = optax.apply_updates(state.ae_params, updates)

  def d_loss(d_params, d_state, x, x_rec):
    variables = dict(d_state, params=d_params)
    real, new = setup.disc.apply(variables, x, train=True, mutable=disc_mutable)
    fake, new = setup.disc.apply(dict(variables, **new), x_rec, train=True, mutable=disc_mutable)
    loss, logs = losses.discriminator_loss(real, fake, step, setup.loss)
    return loss, (logs, dict(d_state, **new))

  def d_grad(params, d_state, xs):
    (_, (logs, d_state)), g = jax.value_and_grad(d_loss, has_aux=True)(params, d_state, *xs)
    return g, d_state, logs

  d_grads, d_state, d_logs = accumulation.accumulate_gradients(
      d_grad, state.d_params, (micro["image"], x_rec), k, unroll, carry=d_state)
  updates, d_opt_state = setup.tx_d.update(d_grads, state.d_opt_state, state.d_params)
  d_params = optax.apply_updates(state.d_params, updates)

  batch_counts = counts.sum(0)
  code_usage = state.code_usage + batch_counts
  if setup.dead_code_restart_every:
    restart = (step + 1) % setup.dead_code_restart_every == 0
    new_ae, new_ms = _dead_code_restart(setup, code_usage, ae_params, model_state, latents,
                                        jax.random.fold_in(rng, 1))
    ae_params = jax.tree_util.tree_map(lambda a, b: jnp.where(restart, a, b), new_ae, ae_params)
    model_state = jax.tree_util.tree_map(lambda a, b: jnp.where(restart, a, b), new_ms,
                                         model_state)
    code_usage = jnp.where(restart, jnp.zeros_like(code_usage), code_usage)
  metrics = {k_: jnp.mean(v) for k_, v in {**g_logs, **d_logs}.items()}
  metrics.update(perplexity=jnp.mean(perplexity),
                 code_usage=jnp.mean((batch_counts > 0).astype(jnp.float32)))
  if quant_kw:
    metrics["temperature"] = jnp.asarray(quant_kw["temperature"], jnp.float32)
  new_state = VQGANTrainState(step=step + 1, ae_params=ae_params, ae_opt_state=ae_opt_state,
                              model_state=model_state, d_params=d_params, d_state=d_state,
                              d_opt_state=d_opt_state, code_usage=code_usage)
  return new_state, metrics


def reconstruction_metrics(model: VQModel, variables, x, mask, n_codes: int,
                           lpips: Optional[LPIPS] = None, lpips_params=None,
                           inception_variables=None):
  """Sums over the real rows (mask 1) of a batch x float32[B, H, W, C] in [-1, 1]:
  L1, PSNR, SSIM (images of 11 px and more), LPIPS (when given), count, and the code
  histogram int32[n_codes] of the deterministic reconstruction (clipped to [-1, 1]).

  With `inception_variables` (pytorch-fid's Inception), also the rows' pool3 features
  of the inputs and reconstructions as their PNGs would hold them (`fid.unit_levels`):
  'pool3_real', 'pool3_fake' float32[B, 2048], plus 'mask' [B] to select the real rows.
  """
  mask = mask.astype(jnp.float32)
  x_rec, _, info = model.apply(variables, x, train=False, rngs={"remap": jax.random.PRNGKey(0)})
  x_rec = jnp.clip(x_rec, -1.0, 1.0)
  l1 = jnp.mean(jnp.abs(x - x_rec), axis=(1, 2, 3))
  one_hot_counts = jax.vmap(lambda i: jnp.bincount(i.ravel(), length=n_codes))(
      info["indices"])
  out = {"l1": jnp.sum(l1 * mask), "psnr": jnp.sum(metrics_lib.psnr(x, x_rec) * mask),
         "count": jnp.sum(mask),
         "code_counts": jnp.sum(one_hot_counts * mask[:, None].astype(jnp.int32), axis=0)}
  if min(x.shape[1:3]) >= 11:  # SSIM's 11 x 11 Gaussian window fits
    out["ssim"] = jnp.sum(metrics_lib.ssim(x, x_rec) * mask)
  if lpips is not None:
    out["lpips"] = jnp.sum(lpips.apply(lpips_params, x, x_rec) * mask)
  if inception_variables is not None:
    from vqgan_jax import fid
    both = jnp.concatenate([fid.unit_levels(x), fid.unit_levels(x_rec)])  # one network
    pool3 = fid.inception_outputs(FIDInception(), inception_variables, both)["pool3"]
    out["pool3_real"], out["pool3_fake"] = jnp.split(pool3, 2)
    out["mask"] = mask
  return out


def eval_step(setup: VQGANTrainSetup, state: VQGANTrainState, lpips_params, batch,
              inception_variables=None):
  """`reconstruction_metrics` of the state's model on {"image", "mask"}."""
  variables = dict(state.model_state, params=state.ae_params)
  return reconstruction_metrics(setup.model, variables, batch["image"], batch["mask"],
                                setup.n_codes, setup.lpips, lpips_params, inception_variables)


class ReconstructionTotals:
  """`reconstruction_metrics` outputs summed over batches (host side).

  `add(out)` takes one batch's fetched output; with Inception rows in it, their pool3
  features go to `fake` (reconstructions) and, unless `real` is None (its statistics
  already known), to `real` (inputs). `means()` gives {metric: mean over the images,
  code_usage, perplexity, num_images}; `code_counts` the summed code histogram.
  """

  def __init__(self, real=None, fake=None):
    self.real, self.fake = real, fake
    self.sums = None

  def add(self, out: Dict[str, Any]) -> "ReconstructionTotals":
    out = dict(out)
    rows = {k: out.pop(k) for k in ("pool3_real", "pool3_fake", "mask") if k in out}
    if rows:
      self.fake.update({"pool3": rows["pool3_fake"]}, rows["mask"])
      if self.real is not None:
        self.real.update({"pool3": rows["pool3_real"]}, rows["mask"])
    self.sums = out if self.sums is None else jax.tree_util.tree_map(np.add, self.sums, out)
    return self

  @property
  def code_counts(self):
    return self.sums["code_counts"]

  def means(self) -> Dict[str, float]:
    n = float(self.sums["count"])
    out = {k: float(v) / n for k, v in self.sums.items() if k not in ("count", "code_counts")}
    out.update(code_usage=metrics_lib.code_usage(self.code_counts),
               perplexity=metrics_lib.perplexity(self.code_counts), num_images=n)
    return out


def reconstruct(setup: VQGANTrainSetup, state: VQGANTrainState, images):
  """(images, deterministic reconstructions) float32[B, S, S, C], for image grids.

  The inputs come back too: with replicated outputs, every process then holds the
  whole grid, whichever process fed which rows.
  """
  variables = dict(state.model_state, params=state.ae_params)
  rec, _, _ = setup.model.apply(variables, images, train=False,
                                rngs={"remap": jax.random.PRNGKey(0)})
  return images, jnp.clip(rec, -1.0, 1.0)


class CompiledSteps:
  """The state's shardings and the jitted steps over a mesh."""

  def __init__(self, setup: VQGANTrainSetup, mesh, rules=sharding_lib.DEFAULT_RULES):
    self.setup, self.mesh = setup, mesh
    self._init = functools.partial(init_state, setup)
    self.abstract_state, self.state_sharding = steps_lib.sharded_abstract_state(
        self._init, mesh, rules)
    self.lpips_sharding = None
    if setup.lpips is not None:
      x = jnp.zeros((1, 16, 16, 3))
      lp_abstract = jax.eval_shape(lambda: setup.lpips.init(jax.random.PRNGKey(0), x, x))
      self.lpips_sharding = sharding_lib.infer_shardings(lp_abstract, mesh, rules)
    batch_sh = sharding_lib.batch_sharding(mesh)
    repl = sharding_lib.replicated(mesh)
    self.train = steps_lib.jit_train_step(functools.partial(train_step, setup),
                                          self.state_sharding, mesh, (self.lpips_sharding,))
    self.eval = jax.jit(functools.partial(eval_step, setup),
                        in_shardings=(self.state_sharding, self.lpips_sharding,
                                      {"image": batch_sh, "mask": batch_sh}),
                        out_shardings=repl)
    self.inception_sharding = repl
    self.eval_with_inception = jax.jit(
        functools.partial(eval_step, setup),
        in_shardings=(self.state_sharding, self.lpips_sharding,
                      {"image": batch_sh, "mask": batch_sh}, repl),
        out_shardings=repl)
    self.reconstruct = jax.jit(functools.partial(reconstruct, setup),
                               in_shardings=(self.state_sharding, batch_sh), out_shardings=repl)

  def init(self, rng, init_variables=None):
    """A sharded fresh state (optimizer scalars included, so step 2 does not recompile)."""
    if init_variables is None:
      return steps_lib.init_sharded(self._init, rng, self.state_sharding)
    return jax.device_put(init_state(self.setup, rng, init_variables), self.state_sharding)

  def put_lpips(self, lpips_variables):
    """LPIPS weights on the mesh (None when the setup has no LPIPS term)."""
    if self.setup.lpips is None:
      return None
    return jax.device_put(lpips_variables, self.lpips_sharding)
