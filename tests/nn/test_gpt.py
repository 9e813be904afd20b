"""vqgan_jax.nn.gpt: parity with taming's minGPT (tests/fixtures/taming_tiny), the KV cache,
`n_unmasked`, the scan layout, remat, dropout, init, the decay mask and config errors.

The fixtures' transformers are taming's `mingpt.GPT(vocab 64, block 65 | 128, 2 layers,
2 heads, n_embd 32)`; their weights are fp16 values with noise on every constant parameter
and `head.weight` x32 (logits std ~3), so the greedy decisions have margins >= 0.011.
Everything is jitted once per shape: XLA compilation is what these tests spend time on.
"""

import dataclasses
import functools
import math
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.special import erf

from vqgan_test_utils import assert_trees_equal, tiny
from vqgan_jax.convert import taming
from vqgan_jax.convert.torch_reader import read_state_dict
from vqgan_jax.nn import gpt
from vqgan_jax.nn.gpt import GPT, GPTConfig

# (fixture name, block size) of the two Net2Net fixtures; the rest of the GPT is the same.
FIXTURES = {"n2n_class_tiny": 65, "n2n_depth_tiny": 128}


def _fixture_config(name: str) -> GPTConfig:
  return GPTConfig(vocab_size=64, block_size=FIXTURES[name], n_layer=2, n_head=2, n_embd=32)


@pytest.fixture(scope="module", params=sorted(FIXTURES))
def fixture_model(request):
  """(name, config, params converted from the ckpt's `transformer.*`, npz outputs)."""
  name = request.param
  cfg = _fixture_config(name)
  sd = read_state_dict(tiny(f"{name}.ckpt"))
  variables = taming.convert_state_dict(sd, {"params": gpt.abstract_params(cfg)},
                                        prefix="transformer.", source=f"{name}.ckpt")
  return name, cfg, variables["params"], np.load(tiny(f"{name}.npz"))


@pytest.fixture(scope="module")
def class_model():
  """(config, params) of n2n_class_tiny: the trained weights of most tests below."""
  cfg = _fixture_config("n2n_class_tiny")
  sd = read_state_dict(tiny("n2n_class_tiny.ckpt"))
  params = taming.convert_state_dict(sd, {"params": gpt.abstract_params(cfg)},
                                     prefix="transformer.")["params"]
  return cfg, params


@functools.cache
def _forward(cfg: GPTConfig):
  """jit(params, tokens int[B, T]) -> logits float32[B, T, V] (eval mode)."""
  return jax.jit(lambda p, tokens: GPT(cfg).apply({"params": p}, tokens))


@functools.cache
def _cached_call(cfg: GPTConfig):
  """jit(params, tokens int[B, t], cache, index int32[]) -> (logits f32[B, t, V], cache)."""
  return jax.jit(lambda p, tokens, cache, index: GPT(cfg).apply(
      {"params": p}, tokens, cache=cache, index=index))


@functools.cache
def _loss_grads(cfg: GPTConfig):
  """jit(params, tokens int[B, T+1]) -> ((next-token loss, logits f32[B, T, V]), grads)."""
  def loss(p, tokens):
    logits = GPT(cfg).apply({"params": p}, tokens[:, :-1])
    return gpt.cross_entropy(logits, tokens[:, 1:])[0], logits
  return jax.jit(jax.value_and_grad(loss, has_aux=True))


@functools.partial(jax.jit, static_argnums=(0, 3))
def _greedy_kv(cfg: GPTConfig, params, cond, steps: int):
  """Greedy decoding as taming's sample_with_past(sample_logits=False): prefill the
  conditioning cond int[B, Tc], then one token per call. -> int32[B, steps]. The cache
  holds just the Tc + steps - 1 positions that are fed (shorter than the block)."""
  model = GPT(cfg)
  b, n_c = cond.shape
  cache = gpt.init_cache(cfg, b, length=n_c + steps - 1)
  logits, cache = model.apply({"params": params}, cond, cache=cache, index=0)
  out = jnp.zeros((b, steps), jnp.int32).at[:, 0].set(jnp.argmax(logits[:, -1], -1))

  def step(i, carry):
    out, cache = carry
    prev = jax.lax.dynamic_slice_in_dim(out, i - 1, 1, axis=1)
    logits, cache = model.apply({"params": params}, prev, cache=cache, index=n_c + i - 1)
    return out.at[:, i].set(jnp.argmax(logits[:, 0], -1).astype(jnp.int32)), cache

  return jax.lax.fori_loop(1, steps, step, (out, cache))[0]


def _random_params(cfg: GPTConfig, seed: int = 0, scale: float = 0.3):
  """Params of `cfg` with every leaf drawn ~N(0, scale^2) (LayerNorm scales around 1), so
  biases, LayerNorms and pos_emb all matter; numpy float32 leaves."""
  rng = np.random.default_rng(seed)

  def draw(path, leaf):
    x = rng.normal(0.0, scale, leaf.shape).astype(np.float32)
    return x + 1.0 if jax.tree_util.keystr(path).endswith("['scale']") else x
  return jax.tree_util.tree_map_with_path(draw, gpt.abstract_params(cfg))


# --- parity with taming ------------------------------------------------------------------


def test_logits_and_loss_match_taming(fixture_model):
  name, cfg, params, ref = fixture_model
  idx = ref["gpt_idx"]
  # `n2n.transformer(gpt_idx)[0]` over the full block.
  np.testing.assert_allclose(_forward(cfg)(params, idx), ref["gpt_logits"], atol=3e-4, rtol=0)
  if name == "n2n_class_tiny":
    # `n2n.transformer(gpt_idx[:, :-1], targets=gpt_idx[:, 1:])[1]` (mean cross-entropy).
    loss, per_token = gpt.cross_entropy(_forward(cfg)(params, idx[:, :-1]), idx[:, 1:])
    np.testing.assert_allclose(loss, ref["gpt_loss"], atol=1e-4, rtol=0)
    assert per_token.shape == (2, 64) and per_token.dtype == jnp.float32
    # Net2NetTransformer.forward: the transformer on cat(c, z)[:, :-1], logits[:, Tc - 1:]
    # (same shapes as above: no second compile), and shared_step's loss.
    c, z = ref["n2n_c_indices"], ref["n2n_z_indices"]
    logits = _forward(cfg)(params, np.concatenate([c, z], 1)[:, :-1])[:, c.shape[1] - 1:]
    np.testing.assert_allclose(logits, ref["n2n_logits"], atol=3e-4, rtol=0)
    np.testing.assert_array_equal(ref["n2n_target"], z)
    np.testing.assert_allclose(gpt.cross_entropy(logits, z)[0], ref["n2n_loss"], atol=9e-5,
                               rtol=0)


def test_greedy_decoding_matches_taming(fixture_model):
  """sample_with_past(c_indices, steps=64, sample_logits=False) and n2n.sample(..., sample=
  False) (equal in the fixture): the conditioning tokens are the prefix (identity
  permuter)."""
  _, cfg, params, ref = fixture_model
  c = ref["n2n_c_indices"]
  np.testing.assert_array_equal(ref["greedy_kv"], ref["greedy_naive"])
  got = np.asarray(_greedy_kv(cfg, params, c, ref["greedy_kv"].shape[1]))
  np.testing.assert_array_equal(got, ref["greedy_kv"])


def test_converted_tree_has_every_param_and_no_mask_buffer(class_model):
  cfg, params = class_model
  assert jax.tree_util.tree_structure(params) == jax.tree_util.tree_structure(
      gpt.abstract_params(cfg))
  assert sorted(params) == ["blocks_0", "blocks_1", "head", "ln_f", "pos_emb", "tok_emb"]
  assert sorted(params["blocks_0"]["attn"]) == ["key", "proj", "query", "value"]
  assert "bias" not in params["head"]
  assert gpt.param_count(cfg) == sum(x.size for x in jax.tree_util.tree_leaves(params))


# --- KV cache ----------------------------------------------------------------------------


def _check_cached_equals_uncached(cfg, params, tokens, prefill, atol):
  """Prefill tokens[:, :prefill], then one token per call; every call's logits must equal
  those of one uncached forward over all of `tokens`."""
  full = np.asarray(_forward(cfg)(params, tokens))
  call = _cached_call(cfg)
  cache = gpt.init_cache(cfg, tokens.shape[0])
  logits, cache = call(params, tokens[:, :prefill], cache, 0)
  np.testing.assert_allclose(logits, full[:, :prefill], atol=atol, rtol=0,
                             err_msg=f"prefill of {prefill}")
  for t in range(prefill, tokens.shape[1]):
    logits, cache = call(params, tokens[:, t:t + 1], cache, t)
    np.testing.assert_allclose(logits[:, 0], full[:, t], atol=atol, rtol=0,
                               err_msg=f"step at position {t} after a prefill of {prefill}")
  assert cache["k"].shape == (cfg.n_layer, tokens.shape[0], cfg.block_size, cfg.n_head,
                              cfg.head_dim)
  assert cache["k"].dtype == jnp.dtype(cfg.dtype)


@pytest.mark.parametrize("variant,prefills", [
    ({}, (1, 7)),
    # The bidirectional prefix is prefilled in one call (as the conditioning is).
    ({"scan_layers": True, "remat": "full", "n_unmasked": 5}, (5,)),
])
def test_cached_equals_uncached(class_model, variant, prefills):
  base, params = class_model
  cfg = dataclasses.replace(base, block_size=16, **variant)
  params = gpt.to_layout(dict(params, pos_emb=params["pos_emb"][:, :16]), cfg)
  tokens = np.random.default_rng(1).integers(0, 64, (2, 16)).astype(np.int32)
  for prefill in prefills:
    _check_cached_equals_uncached(cfg, params, tokens, prefill, atol=2e-5)


def test_cached_equals_uncached_bfloat16(class_model):
  """bfloat16 compute (params float32, cache bfloat16): same computation up to rounding;
  and within a loose bound of the float32 logits (std ~3 on these weights)."""
  base, params = class_model
  cfg = dataclasses.replace(base, block_size=16, dtype="bfloat16")
  params = dict(params, pos_emb=params["pos_emb"][:, :16])
  tokens = np.random.default_rng(2).integers(0, 64, (2, 16)).astype(np.int32)
  _check_cached_equals_uncached(cfg, params, tokens, 1, atol=0.25)
  lo = np.asarray(_forward(cfg)(params, tokens))
  hi = np.asarray(_forward(dataclasses.replace(cfg, dtype="float32"))(params, tokens))
  assert lo.dtype == np.float32
  np.testing.assert_allclose(lo, hi, atol=0.5, rtol=0)
  assert np.mean(np.abs(lo - hi)) < 0.05
  assert np.mean(lo.argmax(-1) == hi.argmax(-1)) > 0.9


def test_cache_length_errors(class_model):
  cfg, params = class_model
  assert gpt.init_cache(cfg, 3, length=8, dtype=jnp.float32)["v"].shape == (2, 3, 8, 2, 16)
  assert gpt.init_cache(dataclasses.replace(cfg, dtype="bfloat16"), 1)["k"].dtype == jnp.bfloat16
  for length in (0, 66):
    with pytest.raises(ValueError, match=r"init_cache: length .* block_size 65"):
      gpt.init_cache(cfg, 1, length=length)
  too_long = {k: jnp.zeros((2, 1, 66, 2, 16)) for k in ("k", "v")}
  with pytest.raises(ValueError, match="cache of 66 positions exceeds the block size 65"):
    jax.eval_shape(lambda: GPT(cfg).apply({"params": params}, jnp.zeros((1, 1), jnp.int32),
                                          cache=too_long))


def test_cached_prefill_shorter_than_the_prefix():
  """taming's prefill (forward_with_past, past=None) masks with mask[:T, :T]: T < n_unmasked
  tokens see each other both ways and nothing else, as the uncached forward does."""
  cfg = GPTConfig(vocab_size=32, block_size=6, n_layer=1, n_head=2, n_embd=16, n_unmasked=4)
  params = _random_params(cfg)
  tokens = np.array([[1, 2], [3, 4]], np.int32)

  @jax.jit
  def both(p, t):
    cached, _ = GPT(cfg).apply({"params": p}, t, cache=gpt.init_cache(cfg, 2), index=0)
    return cached, GPT(cfg).apply({"params": p}, t)
  cached, uncached = both(params, tokens)
  np.testing.assert_allclose(cached, uncached, atol=1e-5, rtol=0)


@pytest.mark.parametrize("cached", [True, False])
def test_positions_past_the_block_raise(class_model, cached):
  """taming raises here (pos_emb[:, past_length] out of range); a Python-int index can be
  checked when tracing."""
  cfg, params = class_model
  cache = gpt.init_cache(cfg, 1) if cached else None
  with pytest.raises(ValueError):
    jax.eval_shape(lambda: GPT(cfg).apply({"params": params}, jnp.zeros((1, 2), jnp.int32),
                                          cache=cache, index=64))


# --- n_unmasked against an independent numpy forward ---------------------------------------


def _numpy_gpt(params, tokens, n_head: int, n_unmasked: int):
  """float64 numpy minGPT: logits[B, T, V] with taming's mask tril(T, T) whose
  [:n_unmasked, :n_unmasked] block is all ones."""
  p = jax.tree_util.tree_map(lambda a: np.asarray(a, np.float64), params)
  b, t = tokens.shape

  def ln(x, q):
    mu = x.mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(((x - mu) ** 2).mean(-1, keepdims=True) + 1e-5) * q["scale"] + \
        q["bias"]

  def dense(x, q):
    return x @ q["kernel"] + q.get("bias", 0.0)

  mask = np.tril(np.ones((t, t), bool))
  mask[:n_unmasked, :n_unmasked] = True
  x = p["tok_emb"]["embedding"][tokens] + p["pos_emb"][0, :t]
  for i in range(sum(k.startswith("blocks_") for k in p)):
    blk = p[f"blocks_{i}"]
    h = ln(x, blk["ln1"])
    c = h.shape[-1]
    q, k, v = (dense(h, blk["attn"][n]).reshape(b, t, n_head, c // n_head).transpose(0, 2, 1, 3)
               for n in ("query", "key", "value"))
    att = np.where(mask, q @ k.transpose(0, 1, 3, 2) / math.sqrt(c // n_head), -np.inf)
    att = np.exp(att - att.max(-1, keepdims=True))
    att /= att.sum(-1, keepdims=True)
    x = x + dense((att @ v).transpose(0, 2, 1, 3).reshape(b, t, c), blk["attn"]["proj"])
    h = dense(ln(x, blk["ln2"]), blk["mlp_0"])
    x = x + dense(0.5 * h * (1.0 + erf(h / math.sqrt(2.0))), blk["mlp_2"])
  return dense(ln(x, p["ln_f"]), p["head"])


def test_numpy_reference_matches_taming(class_model):
  """The reference below is itself checked against taming's logits (n_unmasked 0)."""
  cfg, params = class_model
  ref = np.load(tiny("n2n_class_tiny.npz"))
  np.testing.assert_allclose(_numpy_gpt(params, ref["gpt_idx"], cfg.n_head, 0),
                             ref["gpt_logits"], atol=3e-4, rtol=0)


def test_n_unmasked_matches_numpy_reference():
  n_unmasked = 4
  cfg = GPTConfig(vocab_size=32, block_size=10, n_layer=1, n_head=2, n_embd=16,
                  n_unmasked=n_unmasked, attn_pdrop=1e-9)
  params = _random_params(cfg)
  tokens = np.random.default_rng(4).integers(0, 32, (2, 10)).astype(np.int32)
  want = _numpy_gpt(params, tokens, 2, n_unmasked)
  got = np.asarray(_forward(cfg)(params, tokens))
  np.testing.assert_allclose(got, want, atol=1e-4, rtol=0)
  # train=True with attn_pdrop > 0 takes its own einsum/softmax path (attention dropout);
  # at a vanishing rate it must give the same logits, mask and prefix included.
  train = jax.jit(lambda p, t: GPT(cfg).apply({"params": p}, t, train=True,
                                              rngs={"dropout": jax.random.PRNGKey(0)}))
  np.testing.assert_allclose(train(params, tokens), want, atol=1e-4, rtol=0)
  # What the prefix means: changing token 2 (inside the prefix) changes positions 0 and 1;
  # changing token 6 (after it) changes no earlier position.
  for pos, changes_earlier in ((2, True), (6, False)):
    changed = tokens.copy()
    changed[:, pos] = (changed[:, pos] + 1) % 32
    diff = np.abs(np.asarray(_forward(cfg)(params, changed)) - got).max(axis=(0, 2))
    assert (diff[:pos] > 1e-3).all() if changes_earlier else (diff[:pos] == 0).all()
    assert (diff[pos:] > 1e-3).all()


def test_attention_mask():
  pos = jnp.arange(5)
  np.testing.assert_array_equal(gpt.attention_mask(pos, pos, 0), np.tril(np.ones((5, 5), bool)))
  want = np.tril(np.ones((5, 5), bool))
  want[:3, :3] = True
  np.testing.assert_array_equal(gpt.attention_mask(pos, pos, 3), want)
  # A query at absolute position 3 against a 5-slot cache.
  np.testing.assert_array_equal(gpt.attention_mask(jnp.array([3]), pos, 2),
                                [[True, True, True, True, False]])


# --- scan layout, remat --------------------------------------------------------------------


def test_stack_unstack_round_trip(class_model):
  cfg, params = class_model
  stacked = gpt.stack_blocks(params, cfg.n_layer)
  assert sorted(stacked) == ["blocks", "head", "ln_f", "pos_emb", "tok_emb"]
  assert stacked["blocks"]["block"]["attn"]["query"]["kernel"].shape == (2, 32, 32)
  scan_cfg = dataclasses.replace(cfg, scan_layers=True)
  assert jax.tree_util.tree_structure(stacked) == jax.tree_util.tree_structure(
      gpt.abstract_params(scan_cfg))
  assert_trees_equal(gpt.unstack_blocks(stacked), params)
  assert_trees_equal(gpt.to_layout(params, scan_cfg), stacked)
  assert_trees_equal(gpt.to_layout(stacked, scan_cfg), stacked)
  assert_trees_equal(gpt.to_layout(stacked, cfg), params)
  assert_trees_equal(gpt.to_layout(params, cfg), params)
  with pytest.raises(ValueError, match=r"stack_blocks: params lack \['blocks_2'\]"):
    gpt.stack_blocks(params, 3)


def test_scan_and_remat_give_the_same_logits_and_grads(class_model):
  """Remat changes what the backward pass recomputes, and scan how the layers are laid out:
  neither changes the numbers. Unrolled with remat "full" against scanned with remat
  "dots" (scan's grads, unstacked, are the unrolled ones); both against the plain forward."""
  cfg, params = class_model
  unrolled = dataclasses.replace(cfg, remat="full")
  scanned = dataclasses.replace(cfg, scan_layers=True, remat="dots")
  tokens = np.random.default_rng(5).integers(0, 64, (2, 65)).astype(np.int32)
  (loss, logits), grads = _loss_grads(unrolled)(params, tokens)
  (loss2, logits2), grads2 = _loss_grads(scanned)(gpt.stack_blocks(params, 2), tokens)
  plain = _forward(cfg)(params, tokens[:, :-1])  # compiled by the parity test already
  np.testing.assert_allclose(logits, plain, atol=1e-5, rtol=0)
  np.testing.assert_allclose(logits2, plain, atol=1e-5, rtol=0)
  np.testing.assert_allclose(loss2, loss, rtol=1e-6)
  np.testing.assert_allclose(loss, gpt.cross_entropy(plain, tokens[:, 1:])[0], rtol=1e-6)
  grads2 = gpt.unstack_blocks(grads2)
  assert jax.tree_util.tree_structure(grads2) == jax.tree_util.tree_structure(grads)
  assert np.abs(grads["blocks_0"]["attn"]["query"]["kernel"]).max() > 1e-4
  jax.tree_util.tree_map_with_path(
      lambda path, a, b: np.testing.assert_allclose(b, a, atol=1e-5, rtol=1e-4,
                                                    err_msg=jax.tree_util.keystr(path)),
      grads, grads2)


# --- optimizer mask, init, dropout ---------------------------------------------------------


@pytest.mark.parametrize("scan_layers", [False, True])
def test_decay_mask_is_true_exactly_for_dense_kernels(scan_layers):
  cfg = GPTConfig(vocab_size=32, block_size=8, n_layer=2, n_head=2, n_embd=16,
                  scan_layers=scan_layers)
  params = gpt.abstract_params(cfg)
  flat = {"/".join(k.key for k in path): v for path, v in
          jax.tree_util.tree_flatten_with_path(gpt.decay_mask(params))[0]}
  decayed = sorted(k for k, v in flat.items() if v)
  prefix = "blocks/block/" if scan_layers else "blocks_0/"
  assert flat["head/kernel"] is True
  for name in ("attn/query", "attn/key", "attn/value", "attn/proj", "mlp_0", "mlp_2"):
    assert flat[f"{prefix}{name}/kernel"] is True
    assert flat[f"{prefix}{name}/bias"] is False
  for name in ("tok_emb/embedding", "pos_emb", "ln_f/scale", "ln_f/bias", f"{prefix}ln1/scale",
               f"{prefix}ln1/bias", f"{prefix}ln2/scale", f"{prefix}ln2/bias"):
    assert flat[name] is False, name
  # taming's groups: decay = the weights of every nn.Linear (6 per block, and the head).
  assert decayed == sorted(k for k in flat if k.endswith("/kernel"))
  assert len(decayed) == (1 if scan_layers else cfg.n_layer) * 6 + 1


def test_init_statistics():
  cfg = GPTConfig(vocab_size=512, block_size=16, n_layer=1, n_head=2, n_embd=64)
  params = jax.jit(lambda r: gpt.init_params(cfg, r))(jax.random.PRNGKey(0))
  flat = {"/".join(k.key for k in path): np.asarray(v) for path, v in
          jax.tree_util.tree_flatten_with_path(params)[0]}
  assert sorted(k for k in flat if "blocks_0" not in k) == [
      "head/kernel", "ln_f/bias", "ln_f/scale", "pos_emb", "tok_emb/embedding"]
  for name, x in flat.items():
    assert x.dtype == np.float32, name
    if name.endswith("kernel") or name == "tok_emb/embedding":
      assert abs(x.std() - 0.02) < 0.002 and abs(x.mean()) < 0.002, (name, x.std(), x.mean())
    elif name.endswith("scale"):
      np.testing.assert_array_equal(x, 1.0, err_msg=name)
    else:  # biases, LayerNorm biases, pos_emb
      np.testing.assert_array_equal(x, 0.0, err_msg=name)
  assert flat["pos_emb"].shape == (1, 16, 64)
  assert flat["head/kernel"].shape == (64, 512)
  assert flat["blocks_0/mlp_0/kernel"].shape == (64, 256)


def test_dropout_in_training_only():
  cfg = GPTConfig(vocab_size=32, block_size=10, n_layer=1, n_head=2, n_embd=16,
                  embd_pdrop=0.1, resid_pdrop=0.1, attn_pdrop=0.1)
  params = _random_params(cfg)
  tokens = np.random.default_rng(6).integers(0, 32, (2, 10)).astype(np.int32)

  @jax.jit
  def run(p, t, r):  # (train, eval) logits, both given the rng
    model = GPT(cfg)
    return (model.apply({"params": p}, t, train=True, rngs={"dropout": r}),
            model.apply({"params": p}, t, rngs={"dropout": r}))

  a, eval_a = run(params, tokens, jax.random.PRNGKey(0))
  b, eval_b = run(params, tokens, jax.random.PRNGKey(1))
  np.testing.assert_array_equal(run(params, tokens, jax.random.PRNGKey(0))[0], a)
  assert np.abs(a - b).max() > 1e-3
  assert np.abs(a - eval_a).max() > 1e-3
  # Evaluation ignores rngs; without one, training with dropout cannot run.
  np.testing.assert_array_equal(eval_a, eval_b)
  np.testing.assert_allclose(eval_a, _numpy_gpt(params, tokens, 2, 0), atol=1e-4, rtol=0)
  with pytest.raises(Exception, match="dropout"):
    jax.eval_shape(lambda: GPT(cfg).apply({"params": params}, tokens, train=True))


# --- config and input errors ---------------------------------------------------------------


def test_too_many_tokens_for_the_block(class_model):
  cfg, params = class_model
  tokens = jnp.zeros((1, 66), jnp.int32)
  with pytest.raises(ValueError, match="GPT: 66 tokens exceed the block size 65"):
    jax.eval_shape(lambda: GPT(cfg).apply({"params": params}, tokens))


@pytest.mark.parametrize("fields,message", [
    ({"n_embd": 30, "n_head": 4}, "n_head: n_embd=30 is not divisible by n_head=4"),
    ({"vocab_size": 0}, "vocab_size: expected a positive integer, got 0"),
    ({"n_layer": True}, "n_layer: expected a positive integer, got True"),
    ({"block_size": 2.0}, "block_size: expected a positive integer, got 2.0"),
    ({"attn_pdrop": 1.0}, r"attn_pdrop: expected a probability in \[0, 1\), got 1.0"),
    ({"embd_pdrop": -0.1}, r"embd_pdrop: expected a probability in \[0, 1\), got -0.1"),
    ({"n_unmasked": 300}, r"n_unmasked: expected 0..block_size \(256\), got 300"),
    ({"dtype": "float16"}, "dtype: expected one of .*'bfloat16'.*, got 'float16'"),
    ({"remat": "some"}, "remat: expected one of .*'dots'.*, got 'some'"),
    ({"attention": "flash"}, "attention: expected one of .*'cudnn'.*, got 'flash'"),
])
def test_validate_names_the_field(fields, message):
  errors = GPTConfig(**fields).validate()
  assert len(errors) == 1, errors
  assert re.fullmatch(message, errors[0]), errors


def test_validate_reports_every_field_and_config_round_trip():
  assert GPTConfig().validate() == []
  errors = GPTConfig(vocab_size=-1, remat="x", dtype="y").validate()
  assert [e.split(":")[0] for e in errors] == ["vocab_size", "dtype", "remat"]
  cfg = GPTConfig(vocab_size=16384, block_size=256, n_layer=48, n_head=24, n_embd=1536,
                  scan_layers=True)
  assert GPTConfig.from_dict(cfg.to_dict()) == cfg
  assert cfg.head_dim == 64
  # taming's cIN transformer: 1,410.6M parameters (12C^2 + 13C per block, 2VC, TC, 2C).
  assert gpt.param_count(cfg) == 48 * (12 * 1536**2 + 13 * 1536) + 2 * 16384 * 1536 + \
      256 * 1536 + 2 * 1536 == 1_410_640_896
  with pytest.raises(ValueError, match=r"GPTConfig: unknown field\(s\) \['n_heads'\]"):
    GPTConfig.from_dict(dict(cfg.to_dict(), n_heads=3))
