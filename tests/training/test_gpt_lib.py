"""The transformer's train-step library (vqgan_jax/training/gpt_lib.py), pure: no data files.

AdamW's decay groups, betas and clipping; the learning-rate schedules against their
closed forms; the token NLL of the step against an independent computation (GPT applied
to cat(c, permuted z)[:, :-1], cross-entropy in numpy) for each conditioning; taming's
pkeep (inputs corrupted, targets not) and label dropout, statistically. The step's rng
fold_in(seed, step), sharded steps and gradient accumulation: test_gpt_sharding.py.
"""

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import gpt_worker as W
from vqgan_jax import net2net as n2n_lib
from vqgan_jax.nn import gpt as gpt_nn
from vqgan_jax.training import gpt_lib as lib
from vqgan_jax.training.sharding import path_str


def _flat(tree):
  return {path_str(p): np.asarray(v) for p, v in jax.tree_util.tree_flatten_with_path(tree)[0]}


def _adam_state(opt_state):
  """The ScaleByAdamState inside an optax chain's state."""
  found = [s for s in jax.tree_util.tree_leaves(
      opt_state, is_leaf=lambda x: isinstance(x, optax.ScaleByAdamState))
           if isinstance(s, optax.ScaleByAdamState)]
  assert len(found) == 1, opt_state
  return found[0]


# ---- AdamW --------------------------------------------------------------------------------

def test_weight_decay_only_on_dense_kernels():
  """Zero gradients: Adam's step is 0/(0 + eps) = 0, so only the decoupled weight decay
  moves params: every Dense kernel (the head's included) by -lr * wd * param, nothing
  else (biases, LayerNorms, the token and positional embeddings: taming's no_decay)."""
  setup = W.tiny_setup(learning_rate=0.05, weight_decay=0.1)
  params = W.init_params(setup)
  params = jax.tree_util.tree_map(lambda a: a + 0.01, params)  # pos_emb, biases nonzero
  mask = _flat(gpt_nn.decay_mask(params))
  assert {k for k, v in mask.items() if v} == {k for k in mask if k.endswith("/kernel")}
  assert mask["head/kernel"] and not mask["tok_emb/embedding"] and not mask["pos_emb"]
  grads = jax.tree_util.tree_map(np.zeros_like, params)
  new = _flat(jax.jit(lambda g, p: optax.apply_updates(
      p, setup.tx.update(g, setup.tx.init(p), p)[0]))(grads, params))
  for k, p in _flat(params).items():
    if k.endswith("/kernel"):
      np.testing.assert_allclose(new[k], p * (1 - 0.05 * 0.1), rtol=1e-6, err_msg=k)
    else:
      np.testing.assert_array_equal(new[k], p, err_msg=k)


def test_adamw_betas_and_eps_come_from_the_config():
  setup = W.tiny_setup(learning_rate=0.01, b1=0.8, b2=0.9, eps=0.5, weight_decay=0.0)
  params = W.init_params(setup)
  grads = jax.tree_util.tree_map(lambda a: np.full(a.shape, 0.3, a.dtype), params)
  updates, state = jax.jit(lambda g, p: setup.tx.update(g, setup.tx.init(p), p))(grads, params)
  adam = _adam_state(state)
  for leaf in jax.tree_util.tree_leaves(adam.mu):
    np.testing.assert_allclose(leaf, 0.2 * 0.3, rtol=1e-6)
  for leaf in jax.tree_util.tree_leaves(adam.nu):
    np.testing.assert_allclose(leaf, 0.1 * 0.09, rtol=1e-6)
  # Bias-corrected first step: -lr * g / (|g| + eps).
  for leaf in jax.tree_util.tree_leaves(updates):
    np.testing.assert_allclose(leaf, -0.01 * 0.3 / (0.3 + 0.5), rtol=1e-5)


def test_gradient_clipping_bounds_the_global_norm():
  """clip_by_global_norm before AdamW: Adam's first moment (b1 0.5) holds half the
  clipped gradient: norm 1 for a gradient of norm 10, untouched below the bound."""
  schedule = lib.make_schedule(1e-3, 10)
  tx = lib.make_optimizer(schedule, b1=0.5, b2=0.9, eps=1e-8, weight_decay=0.0,
                          grad_clip_norm=1.0)
  params = W.init_params(W.tiny_setup())
  rng = np.random.default_rng(0)
  grads = jax.tree_util.tree_map(lambda a: rng.normal(size=a.shape).astype(np.float32),
                                 params)
  total = math.sqrt(sum(float(np.sum(a.astype(np.float64) ** 2))
                       for a in jax.tree_util.tree_leaves(grads)))
  first_moment = jax.jit(lambda g, p: _adam_state(tx.update(g, tx.init(p), p)[1]).mu)
  for norm in (10.0, 0.5):
    g = jax.tree_util.tree_map(functools.partial(np.multiply, np.float32(norm / total)), grads)
    clipped = [np.asarray(m, np.float64) / 0.5
               for m in jax.tree_util.tree_leaves(first_moment(g, params))]
    assert math.sqrt(sum(np.sum(a ** 2) for a in clipped)) == pytest.approx(min(norm, 1.0),
                                                                         rel=1e-5)
    scale = min(1.0, 1.0 / norm)
    for a, b in zip(clipped, jax.tree_util.tree_leaves(g)):
      np.testing.assert_allclose(a, b * scale, rtol=1e-5, atol=1e-9)


# ---- schedules ----------------------------------------------------------------------------

def _cosine(step, lr, total, warmup, min_ratio):
  if step < warmup:
    return lr * step / warmup
  t = min(step - warmup, total - warmup) / (total - warmup)
  return lr * min_ratio + (lr - lr * min_ratio) * 0.5 * (1 + math.cos(math.pi * t))


@pytest.mark.parametrize("warmup", [0, 10])
def test_cosine_schedule_matches_the_closed_form(warmup):
  lr, total, ratio = 2e-3, 100, 0.1
  schedule = lib.make_schedule(lr, total, "cosine", warmup, ratio)
  for step in (0, 1, 5, 10, 11, 37, 55, 99, 100, 150):
    assert float(schedule(step)) == pytest.approx(_cosine(step, lr, total, warmup, ratio),
                                                  rel=1e-5, abs=1e-12), step
  assert float(schedule(0)) == pytest.approx(lr if warmup == 0 else 0.0)


def test_constant_schedule_with_and_without_warmup():
  schedule = lib.make_schedule(1e-3, 100, "constant", warmup_steps=4)
  got = [float(schedule(s)) for s in (0, 1, 2, 4, 5, 99, 1000)]
  np.testing.assert_allclose(got, [0.0, 2.5e-4, 5e-4, 1e-3, 1e-3, 1e-3, 1e-3], rtol=1e-6)
  assert float(lib.make_schedule(1e-3, 100)(0)) == pytest.approx(1e-3)


def test_learning_rate_rule_of_build_setup():
  """optim.learning_rate if set, else taming's base_learning_rate x global batch."""
  c = W.tiny_config(learning_rate=-1.0, base_learning_rate=4.5e-6)
  setup = W.tiny_setup(config=c)
  assert float(setup.schedule(0)) == pytest.approx(4.5e-6 * W.BATCH)
  assert float(W.tiny_setup(learning_rate=3e-4).schedule(7)) == pytest.approx(3e-4)


# ---- the token NLL ------------------------------------------------------------------------

@functools.cache
def _apply_fn(gpt_config):
  model = gpt_nn.GPT(gpt_config)
  return jax.jit(lambda p, t: model.apply({"params": p}, t))


@functools.cache
def _nll_fn(setup, train):
  return jax.jit(lambda p, b, r: lib.token_nll(setup, p, b, r, train))


def _independent_nll(setup, params, batch, z_inputs=None, labels=None):
  """float64[B, h*w]: the permuted codes' NLL under GPT(cat(c, z_in)[:, :-1]), numpy CE."""
  n = setup.n2n
  b = batch["z"].shape[0]
  z = batch["z"].reshape(b, -1)[:, setup.permuter.forward_idx]
  if n.cond == "sos":
    c = np.full((b, 1), n.sos_token, np.int32)
  elif n.cond == "class":
    c = (batch["label"] if labels is None else labels).reshape(b, 1)
  else:
    c = batch["c"].reshape(b, -1)
  inputs = np.concatenate([c, z if z_inputs is None else z_inputs], axis=1)[:, :-1]
  logits = np.asarray(_apply_fn(setup.gpt_config)(params, inputs), np.float64)
  logits = logits[:, c.shape[1] - 1:]
  m = logits.max(-1, keepdims=True)
  logp = logits - m - np.log(np.exp(logits - m).sum(-1, keepdims=True))
  return -np.take_along_axis(logp, z[..., None], -1)[..., 0]


@pytest.mark.parametrize("cond", ["sos", "class", "vq"])
def test_token_nll_matches_an_independent_computation(cond):
  setup = W.tiny_setup(cond=cond, permuter="random")
  assert not setup.permuter.is_identity
  params, batch = W.init_params(setup, 1), W.fake_batch(setup, 3)
  got = np.asarray(_nll_fn(setup, False)(params, batch, jax.random.PRNGKey(0)))
  assert got.shape == (W.BATCH, 16)
  np.testing.assert_allclose(got, _independent_nll(setup, params, batch), rtol=1e-5,
                             atol=1e-5)


def test_pkeep_corrupts_the_inputs_only_in_training():
  """With pkeep < 1 the step feeds net2net.corrupt(z) (its key: the second of
  split(rng, 3)) and scores the uncorrupted codes; evaluation ignores pkeep."""
  setup = W.tiny_setup(cond="class", permuter="random", pkeep=0.5)
  clean = W.tiny_setup(cond="class", permuter="random", pkeep=1.0)
  params, batch = W.init_params(setup, 1), W.fake_batch(setup, 4)
  rng = jax.random.PRNGKey(7)
  z = batch["z"].reshape(W.BATCH, -1)[:, setup.permuter.forward_idx]
  z_in = np.asarray(n2n_lib.corrupt(jnp.asarray(z), jax.random.split(rng, 3)[1], 0.5, W.VOCAB))
  assert 0.3 < (z_in == z).mean() < 0.8
  got = np.asarray(_nll_fn(setup, True)(params, batch, rng))
  np.testing.assert_allclose(got, _independent_nll(setup, params, batch, z_in), rtol=1e-5,
                             atol=1e-5)
  evaluated = np.asarray(_nll_fn(setup, False)(params, batch, rng))
  np.testing.assert_array_equal(evaluated, np.asarray(_nll_fn(clean, False)(params, batch, rng)))
  assert np.abs(evaluated - got).max() > 1e-2


def test_corrupt_statistics():
  """Each token kept with probability pkeep, else uniform over the vocabulary (which
  may redraw the same token): P(unchanged) = pkeep + (1 - pkeep) / V."""
  n, v, pkeep = 200_000, 16, 0.7
  z = jnp.asarray(np.arange(n) % v, jnp.int32).reshape(1000, -1)
  out = np.asarray(n2n_lib.corrupt(z, jax.random.PRNGKey(1), pkeep, v))
  p = pkeep + (1 - pkeep) / v
  sigma = math.sqrt(p * (1 - p) / n)
  assert abs((out == np.asarray(z)).mean() - p) < 5 * sigma
  counts = np.bincount(out[out != np.asarray(z)], minlength=v)
  assert counts.shape == (v,) and out.min() >= 0 and out.max() < v
  expected = n * (1 - pkeep) * (1 - 1 / v) / v  # replacements of each value (not its own)
  assert np.all(np.abs(counts - expected) < 6 * math.sqrt(expected)), counts
  np.testing.assert_array_equal(np.asarray(n2n_lib.corrupt(z, jax.random.PRNGKey(1), 1.0, v)),
                                np.asarray(z))


def test_label_dropout_statistics():
  """Class tokens become the "no class" token n_classes with probability label_dropout,
  in training only."""
  setup = W.tiny_setup(cond="class", label_dropout=0.3)
  n = 100_000
  labels = np.arange(n, dtype=np.int32) % W.N_CLASSES
  got = np.asarray(lib.cond_tokens(setup, {"label": labels}, n, jax.random.PRNGKey(2), True))
  assert got.shape == (n, 1)
  dropped = got[:, 0] == W.N_CLASSES
  assert abs(dropped.mean() - 0.3) < 5 * math.sqrt(0.3 * 0.7 / n)
  np.testing.assert_array_equal(got[~dropped, 0], labels[~dropped])
  kept = lib.cond_tokens(setup, {"label": labels}, n, jax.random.PRNGKey(2), False)
  np.testing.assert_array_equal(np.asarray(kept)[:, 0], labels)
