"""Autoregressive sampling with a fixed-shape KV cache, jitted once per (batch, length).

    codes = sample_tokens(gpt_config, params, c_tokens, steps=256, rng=key, top_k=100)

The conditioning (and any kept prefix of image tokens) is fed in one prefill call; then
a `lax.fori_loop` feeds one token per step into the cache, so the compiled program does
not depend on the number of steps' values, only on the shapes. Each sample has its own
PRNG key (`jax.random.split(rng, B)`), folded with the step index: a sample does not
depend on which other samples share its batch.

`filter_logits` is transformers 4.3.1's `top_k_top_p_filtering`, which taming's
`sample_with_past` uses: top-k keeps every logit >= the k-th largest (ties kept); top-p
sorts, keeps the smallest prefix whose probability reaches top_p (the token that
crosses it included). Unlike taming, top-p works without top-k.
"""

from typing import Optional

import jax
import jax.numpy as jnp

from vqgan_jax.nn import gpt as gpt_lib


def filter_logits(logits, top_k: Optional[int] = None, top_p: Optional[float] = None):
  """Logits with the tokens outside the top-k / nucleus set to -inf (last axis)."""
  logits = jnp.asarray(logits, jnp.float32)
  v = logits.shape[-1]
  if top_k is not None and top_k > 0:
    k = min(max(int(top_k), 1), v)
    kth = jax.lax.top_k(logits, k)[0][..., -1:]
    logits = jnp.where(logits < kth, -jnp.inf, logits)
  if top_p is not None:
    order = jnp.argsort(-logits, axis=-1, stable=True)
    sorted_logits = jnp.take_along_axis(logits, order, axis=-1)
    cum = jnp.cumsum(jax.nn.softmax(sorted_logits, axis=-1), axis=-1)
    remove = cum > top_p
    # Keep the token that crosses the threshold: shift the mask right by one.
    remove = jnp.concatenate([jnp.zeros_like(remove[..., :1]), remove[..., :-1]], axis=-1)
    inverse = jnp.argsort(order, axis=-1)
    logits = jnp.where(jnp.take_along_axis(remove, inverse, axis=-1), -jnp.inf, logits)
  return logits


def _pick(logits, keys, step, temperature, top_k, top_p, greedy):
  """One token per row: argmax, or a draw from the filtered, tempered distribution."""
  if greedy:
    return jnp.argmax(logits, axis=-1).astype(jnp.int32)
  logits = filter_logits(logits / temperature, top_k, top_p)
  draw = lambda key, row: jax.random.categorical(jax.random.fold_in(key, step), row)
  return jax.vmap(draw)(keys, logits).astype(jnp.int32)


def sample_tokens(config: gpt_lib.GPTConfig, params, c_tokens, steps: int, rng=None,
                  z_prefix=None, temperature: float = 1.0, top_k: Optional[int] = None,
                  top_p: Optional[float] = None, greedy: bool = False):
  """int32[B, steps] continuing cat(c_tokens, z_prefix) under the GPT `params`.

  Needs n_c + n_prefix + steps - 1 <= block_size (the last token is never fed back).
  The jitted program is cached per (shapes, steps, sampling settings).
  """
  c_tokens = jnp.asarray(c_tokens, jnp.int32)
  b = c_tokens.shape[0]
  prefix = (jnp.zeros((b, 0), jnp.int32) if z_prefix is None
            else jnp.asarray(z_prefix, jnp.int32))
  if prefix.shape[0] != b:
    raise ValueError(f"sample_tokens: {b} conditionings but {prefix.shape[0]} prefixes")
  if steps < 1:
    raise ValueError(f"sample_tokens: steps must be >= 1, got {steps}")
  need = c_tokens.shape[1] + prefix.shape[1] + steps - 1
  if need > config.block_size:
    raise ValueError(f"sample_tokens: {c_tokens.shape[1]} conditioning + {prefix.shape[1]} "
                     f"prefix + {steps} sampled tokens need {need} positions; the block "
                     f"size is {config.block_size}")
  if not greedy and rng is None:
    raise ValueError("sample_tokens: sampling needs an rng (or greedy=True)")
  if not greedy and not temperature > 0:
    raise ValueError(f"sample_tokens: temperature must be > 0, got {temperature}")
  rng = jax.random.PRNGKey(0) if rng is None else rng
  cfg = gpt_lib.GPTConfig(**dict(config.to_dict(), scan_layers=False, remat="none"))
  fn = _compiled(cfg, int(steps), need, float(temperature), top_k if top_k else None,
                 None if top_p is None else float(top_p), bool(greedy))
  return fn({"params": gpt_lib.unstack_blocks(params)}, c_tokens, prefix, rng)


_CACHE = {}


def _compiled(cfg, steps, cache_len, temperature, top_k, top_p, greedy):
  key = (cfg, steps, cache_len, temperature, top_k, top_p, greedy)
  if key not in _CACHE:
    model = gpt_lib.GPT(cfg)

    def run(variables, c_tokens, prefix, rng):
      b = c_tokens.shape[0]
      keys = jax.random.split(rng, b)
      start = jnp.concatenate([c_tokens, prefix], axis=1)
      n0 = start.shape[1]
      cache = gpt_lib.init_cache(cfg, b, cache_len)
      logits, cache = model.apply(variables, start, cache=cache, index=0)
      first = _pick(logits[:, -1], keys, 0, temperature, top_k, top_p, greedy)
      out = jnp.zeros((b, steps), jnp.int32).at[:, 0].set(first)

      def body(i, carry):
        out, cache = carry
        prev = jax.lax.dynamic_slice_in_dim(out, i - 1, 1, axis=1)
        logits, cache = model.apply(variables, prev, cache=cache, index=n0 + i - 1)
        tok = _pick(logits[:, -1], keys, i, temperature, top_k, top_p, greedy)
        return jax.lax.dynamic_update_slice_in_dim(out, tok[:, None], i, axis=1), cache

      out, _ = jax.lax.fori_loop(1, steps, body, (out, cache))
      return out

    _CACHE[key] = jax.jit(run)
  return _CACHE[key]
