"""Transformer train state and the jitted train / eval steps (pure JAX: no TF, no clu).

One train step on a global batch of code grids (or images, encoded in the step by the
frozen first stage): the image codes are flattened and permuted, the conditioning
tokens built (start token, class id with optional label dropout, or conditioning codes),
the inputs corrupted by taming's pkeep, and the GPT trained with cross-entropy on the
uncorrupted codes; AdamW with taming's decay groups (Dense kernels only), optional
warmup + cosine schedule and gradient clipping. The step's rng is
fold_in(PRNGKey(seed), step), so a resumed run repeats the same randomness.
"""

import dataclasses
import math
from typing import Any, Callable, Optional

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax

from vqgan_jax import net2net as n2n_lib
from vqgan_jax import permuters as permuters_lib
from vqgan_jax.nn import gpt as gpt_lib
from vqgan_jax.nn.vqgan import VQModel
from vqgan_jax.training import accumulation
from vqgan_jax.training import sharding as sharding_lib
from vqgan_jax.training import steps as steps_lib

LN2 = math.log(2.0)

# FSDP shards the big matrices: Dense kernels, the token embedding, the positional one.
SHARDING_RULES = ((r".*(kernel|embedding|pos_emb)$", "fsdp"), (r".*", "replicate"))


@flax.struct.dataclass
class GPTTrainState:
  step: jax.Array                 # int32[], batches done
  params: Any
  opt_state: Any


@dataclasses.dataclass(frozen=True)
class GPTTrainSetup:
  """Everything static the steps need (see `build_setup`)."""
  gpt_config: gpt_lib.GPTConfig
  n2n: n2n_lib.Net2NetConfig
  tx: optax.GradientTransformation
  schedule: Callable[[Any], Any]
  seed: int
  accum_steps: int = 1
  accum_unroll: bool = True
  first_stage: Optional[VQModel] = None   # set when images are encoded in the step
  image_size: int = 0             # of the codes: the coordinate map of a "coord" model

  @property
  def gpt(self) -> gpt_lib.GPT:
    return gpt_lib.GPT(self.gpt_config)

  @property
  def permuter(self) -> permuters_lib.Permuter:
    return self.n2n.make_permuter()


def make_schedule(lr: float, total_steps: int, schedule: str = "constant",
                  warmup_steps: int = 0, min_lr_ratio: float = 0.0):
  """step -> learning rate: linear warmup from 0, then constant or cosine to lr*min_ratio."""
  warmup_steps = int(warmup_steps)
  if schedule == "cosine":
    return optax.warmup_cosine_decay_schedule(
        0.0, lr, warmup_steps, max(int(total_steps), warmup_steps + 1), lr * min_lr_ratio)
  if warmup_steps:
    return optax.join_schedules([optax.linear_schedule(0.0, lr, warmup_steps),
                                 optax.constant_schedule(lr)], [warmup_steps])
  return optax.constant_schedule(lr)


def make_optimizer(schedule, b1: float, b2: float, eps: float, weight_decay: float,
                   grad_clip_norm: float = 0.0) -> optax.GradientTransformation:
  """AdamW with weight decay on the Dense kernels only (taming's two param groups)."""
  adamw = optax.adamw(schedule, b1=b1, b2=b2, eps=eps, weight_decay=weight_decay,
                      mask=gpt_lib.decay_mask)
  if grad_clip_norm > 0:
    return optax.chain(optax.clip_by_global_norm(grad_clip_norm), adamw)
  return adamw


def build_setup(config, gpt_config: gpt_lib.GPTConfig, n2n: n2n_lib.Net2NetConfig,
                first_stage: Optional[VQModel] = None, image_size: int = 0) -> GPTTrainSetup:
  """The setup of a training config whose sizes are resolved (see gpt_trainer.resolve)."""
  from vqgan_jax.training import gpt_config as gpt_config_lib
  o = config.optim
  schedule = make_schedule(gpt_config_lib.learning_rate(config), int(config.total_steps),
                           o.schedule, int(o.warmup_steps), float(o.min_lr_ratio))
  tx = make_optimizer(schedule, float(o.b1), float(o.b2), float(o.eps),
                      float(o.weight_decay), float(o.grad_clip_norm))
  return GPTTrainSetup(gpt_config=gpt_config, n2n=n2n, tx=tx, schedule=schedule,
                       seed=int(config.seed), accum_steps=int(o.accum_steps),
                       accum_unroll=o.accum_loop == "unrolled", first_stage=first_stage,
                       image_size=int(image_size))


def init_state(setup: GPTTrainSetup, rng, params=None) -> GPTTrainState:
  """A fresh state; `params` (either layout) replaces the initial weights."""
  if params is None:
    params = gpt_lib.init_params(setup.gpt_config, rng)
  else:
    params = gpt_lib.to_layout(params, setup.gpt_config)
  return GPTTrainState(step=jnp.zeros((), jnp.int32), params=params,
                       opt_state=setup.tx.init(params))


# ---- tokens --------------------------------------------------------------------------------

def image_tokens(setup: GPTTrainSetup, batch, first_stage_vars=None):
  """int32[B, h*w] in the permuter's order: batch["z"] (codes), or batch["image"] encoded."""
  if setup.first_stage is not None:
    _, _, info = setup.first_stage.apply(first_stage_vars, batch["image"],
                                         method=VQModel.encode)
    z = info["indices"]
  else:
    z = batch["z"]
  z = z.reshape(z.shape[0], -1).astype(jnp.int32)
  perm = setup.permuter
  return z if perm.is_identity else perm.apply(z)


def cond_tokens(setup: GPTTrainSetup, batch, batch_size: int, rng=None, train: bool = False):
  """int32[B, n_c]: the start token, the class id (dropped to the "no class" token
  `n_classes` with probability label_dropout in training), or the conditioning codes."""
  n = setup.n2n
  if n.cond == "sos":
    return jnp.full((batch_size, 1), n.sos_token, jnp.int32)
  if n.cond == "class":
    labels = batch["label"].reshape(batch_size, 1).astype(jnp.int32)
    if train and n.label_dropout > 0:
      drop = jax.random.bernoulli(rng, n.label_dropout, labels.shape)
      labels = jnp.where(drop, n.n_classes, labels)
    return labels
  if n.cond == "coord" and "c" not in batch:
    return jnp.broadcast_to(coord_map_tokens(n, setup.image_size), (batch_size, n.n_cond_tokens))
  return batch["c"].reshape(batch_size, -1).astype(jnp.int32)


def coord_map_tokens(n2n: n2n_lib.Net2NetConfig, image_size: int):
  """int32[1, n_c]: CoordStage tokens of taming's FacesHQ coordinate map for an image
  seen whole (size = crop): arange(H*W).reshape(H, W, 1) / (H*W)."""
  ramp = np.arange(image_size * image_size, dtype=np.float32) / (image_size * image_size)
  ramp = jnp.asarray(ramp.reshape(1, image_size, image_size, 1))
  return n2n_lib.coord_tokens(ramp, n2n.coord_n_embed, n2n.coord_down_factor)[1]


def token_nll(setup: GPTTrainSetup, params, batch, rng, train: bool, first_stage_vars=None):
  """Per-token NLL float32[B, h*w] of the image codes (inputs corrupted when training)."""
  z = image_tokens(setup, batch, first_stage_vars)
  b = z.shape[0]
  k_cond, k_keep, k_drop = jax.random.split(rng, 3)
  c = cond_tokens(setup, batch, b, k_cond, train)
  z_in = z
  if train and setup.n2n.pkeep < 1.0:
    z_in = n2n_lib.corrupt(z, k_keep, setup.n2n.pkeep, setup.gpt_config.vocab_size)
  model = setup.gpt
  apply = lambda t: model.apply({"params": params}, t, train=train, rngs={"dropout": k_drop})
  logits = n2n_lib.forward_logits(apply, c, z, z_in)
  return gpt_lib.cross_entropy(logits, z)[1]


def train_step(setup: GPTTrainSetup, state: GPTTrainState, first_stage_vars, batch):
  """(new state, metrics) for one global batch (accumulated over micro-batches)."""
  rng = jax.random.fold_in(jax.random.PRNGKey(setup.seed), state.step)
  k = setup.accum_steps
  xs = (accumulation.microbatches(batch, k), jax.random.split(rng, k))

  def grad_fn(params, carry, x):
    micro, key = x
    loss_fn = lambda p: token_nll(setup, p, micro, key, True, first_stage_vars).mean()
    loss, grads = jax.value_and_grad(loss_fn)(params)
    return grads, carry, loss

  grads, _, losses = accumulation.accumulate_gradients(grad_fn, state.params, xs, k,
                                                       setup.accum_unroll)
  updates, opt_state = setup.tx.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  loss = losses.mean()
  metrics = {"loss": loss, "bits_per_token": loss / LN2,
             "grad_norm": optax.global_norm(grads),
             "learning_rate": jnp.asarray(setup.schedule(state.step), jnp.float32)}
  return GPTTrainState(step=state.step + 1, params=params, opt_state=opt_state), metrics


def eval_step(setup: GPTTrainSetup, state: GPTTrainState, first_stage_vars, batch):
  """Sums over the real examples (batch["mask"] = 1): token NLL and token count."""
  nll = token_nll(setup, state.params, batch, jax.random.PRNGKey(0), False, first_stage_vars)
  mask = batch["mask"].astype(jnp.float32)
  return {"nll_sum": (nll.sum(-1) * mask).sum(), "tokens": mask.sum() * nll.shape[1],
          "count": mask.sum()}


class CompiledSteps:
  """The jitted steps over a mesh, with the state's shardings (traced once)."""

  def __init__(self, setup: GPTTrainSetup, mesh, rules=SHARDING_RULES):
    self.setup, self.mesh = setup, mesh
    init_fn = lambda rng: init_state(setup, rng)
    self.abstract_state, self.state_sharding = steps_lib.sharded_abstract_state(
        init_fn, mesh, rules)
    rep = sharding_lib.replicated(mesh)
    self._train = steps_lib.jit_train_step(
        lambda s, fs, b: train_step(setup, s, fs, b), self.state_sharding, mesh, extra=(rep,))
    self._eval = jax.jit(lambda s, fs, b: eval_step(setup, s, fs, b),
                         in_shardings=(self.state_sharding, rep,
                                       sharding_lib.batch_sharding(mesh)),
                         out_shardings=rep)

  def init(self, rng, params=None):
    return steps_lib.init_sharded(lambda r: init_state(self.setup, r, params), rng,
                                  self.state_sharding)

  def put_replicated(self, tree):
    if tree is None:
      return None
    return jax.device_put(tree, sharding_lib.replicated(self.mesh))

  def train(self, state, first_stage_vars, batch):
    return self._train(state, first_stage_vars, batch)

  def eval(self, state, first_stage_vars, batch):
    return self._eval(state, first_stage_vars, batch)


def count_params(tree) -> int:
  return int(sum(np.prod(x.shape) for x in jax.tree_util.tree_leaves(tree)))
