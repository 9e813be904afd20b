"""Autoregressive sampling: a KV-cached sampler and a sliding-window sampler, both jitted.

    codes = sample_tokens(gpt_config, params, c_tokens, steps=256, rng=key, top_k=100)
    grid = sample_window(gpt_config, params, cond, (42, 64), (16, 16), rng=key, top_k=100)

The conditioning (and any kept prefix of image tokens) is fed in one prefill call; then
a `lax.fori_loop` feeds one token per step into the cache, so the compiled program does
not depend on the number of steps' values, only on the shapes. Each sample has its own
PRNG key (`jax.random.split(rng, B)`), folded with the step index: a sample does not
depend on which other samples share its batch.

`sample_window` samples latents larger than the model's window as taming's
sample_conditional.py does: for every position (raster order) the window of the trained
grid size is placed by `window_placement` on each axis (at the border for the first
half-window, centred on the current token in the interior, clamped at the far border),
the spatial conditioning is cropped to the same window, and one full forward of
cat(cond_window, codes_window)[:-1] gives the logits of the current token. The whole
loop is one `lax.fori_loop`: no Python per token. A completion keeps the raster prefix
before `start` on every row (taming's script re-applies its start column on each row).

Classifier-free guidance (beyond taming; class-conditional models trained with
`net2net.label_dropout`): with `guidance` g != 1 the logits are
uncond + g * (cond - uncond), the unconditional ones from the "no class" token.

`filter_logits` is transformers 4.3.1's `top_k_top_p_filtering`, which taming's
`sample_with_past` uses: top-k keeps every logit >= the k-th largest (ties kept); top-p
sorts, keeps the smallest prefix whose probability reaches top_p (the token that
crosses it included). Unlike taming, top-p works without top-k.
"""

from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np

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
    if not 0.0 <= float(top_p) <= 1.0:
      raise ValueError(f"filter_logits: top_p must lie in [0, 1] (None: no nucleus step), "
                       f"got {top_p}")
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
                  top_p: Optional[float] = None, greedy: bool = False,
                  guidance: float = 1.0, uncond_tokens=None):
  """int32[B, steps] continuing cat(c_tokens, z_prefix) under the GPT `params`.

  Needs n_c + n_prefix + steps - 1 <= block_size (the last token is never fed back).
  With `guidance` != 1, `uncond_tokens` int[B, n_c] (the "no class" token) give the
  unconditional logits. The jitted program is cached per (shapes, steps, settings).
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
  guided = float(guidance) != 1.0
  if guided:
    if uncond_tokens is None:
      raise ValueError("sample_tokens: guidance != 1 needs uncond_tokens (the 'no class' "
                       "token of a model trained with label dropout)")
    uncond_tokens = jnp.broadcast_to(jnp.asarray(uncond_tokens, jnp.int32), c_tokens.shape)
  cfg = _plain(config)
  fn = _compiled(cfg, int(steps), need, float(temperature), top_k if top_k else None,
                 None if top_p is None else float(top_p), bool(greedy),
                 float(guidance) if guided else None)
  return fn({"params": gpt_lib.unstack_blocks(params)}, c_tokens, prefix, rng,
            uncond_tokens if guided else c_tokens)


def _plain(config: gpt_lib.GPTConfig) -> gpt_lib.GPTConfig:
  """The config for inference: unrolled layers, no remat."""
  return gpt_lib.GPTConfig(**dict(config.to_dict(), scan_layers=False, remat="none"))


def _guide(logits, guidance):
  """[2B, ...] logits (cond rows first) -> [B, ...] uncond + g * (cond - uncond)."""
  if guidance is None:
    return logits
  cond, uncond = jnp.split(logits, 2, axis=0)
  return uncond + guidance * (cond - uncond)


_CACHE = {}


def _compiled(cfg, steps, cache_len, temperature, top_k, top_p, greedy, guidance):
  key = ("tokens", cfg, steps, cache_len, temperature, top_k, top_p, greedy, guidance)
  if key not in _CACHE:
    model = gpt_lib.GPT(cfg)
    pick = lambda logits, keys, i: _pick(_guide(logits, guidance), keys, i, temperature,
                                         top_k, top_p, greedy)
    twice = (lambda x: jnp.concatenate([x, x], axis=0)) if guidance is not None else (
        lambda x: x)

    def run(variables, c_tokens, prefix, rng, uncond_tokens):
      b = c_tokens.shape[0]
      keys = jax.random.split(rng, b)
      if guidance is not None:
        c_tokens = jnp.concatenate([c_tokens, uncond_tokens], axis=0)
      start = jnp.concatenate([c_tokens, twice(prefix)], axis=1)
      n0 = start.shape[1]
      cache = gpt_lib.init_cache(cfg, start.shape[0], cache_len, per_layer=True)
      logits, cache = model.apply(variables, start, cache=cache, index=0)
      first = pick(logits[:, -1], keys, 0)
      out = jnp.zeros((b, steps), jnp.int32).at[:, 0].set(first)

      def body(i, carry):
        out, cache = carry
        prev = twice(jax.lax.dynamic_slice_in_dim(out, i - 1, 1, axis=1))
        logits, cache = model.apply(variables, prev, cache=cache, index=n0 + i - 1)
        tok = pick(logits[:, -1], keys, i)
        return jax.lax.dynamic_update_slice_in_dim(out, tok[:, None], i, axis=1), cache

      out, _ = jax.lax.fori_loop(1, steps, body, (out, cache))
      return out

    _CACHE[key] = jax.jit(run)
  return _CACHE[key]


# ---- sliding window --------------------------------------------------------------------------

def window_placement(i, size: int, window: int):
  """(origin, local) of the window on one axis for the token at index i of `size`:
  taming's placement generalised from its hard-coded 16 (half = window // 2): at the
  border while i <= half, the token at local index `half` in the interior, clamped to
  [size - window, size) at the far border. Works on ints and traced values."""
  half = window // 2
  if isinstance(i, (int, np.integer)):
    local = i if i <= half else (window - (size - i) if size - i < window - half else half)
    return i - local, local
  local = jnp.where(i <= half, i, jnp.where(size - i < window - half, window - (size - i),
                                            half))
  return i - local, local


def sample_window(config: gpt_lib.GPTConfig, params, cond, latent_shape, window_shape,
                  rng=None, z_init=None, start: int = 0, temperature: float = 1.0,
                  top_k: Optional[int] = None, top_p: Optional[float] = None,
                  greedy: bool = False):
  """int32[B, H, W] codes (raster order; the Identity permuter) of a latent of
  `latent_shape` (H, W) sampled through a `window_shape` (h, w) window.

  cond: int32[B, n_c] conditioning tokens used as they are at every step (start token,
    class), or int32[B, H, W] spatial conditioning codes, cropped with the window.
  z_init: int32[B, H, W] codes whose raster prefix before `start` is kept (completion).
  """
  H, W = (int(v) for v in latent_shape)
  wh, ww = (int(v) for v in window_shape)
  cond = jnp.asarray(cond, jnp.int32)
  b = cond.shape[0]
  spatial = cond.ndim == 3
  if wh > H or ww > W:
    raise ValueError(f"sample_window: the {wh}x{ww} window is larger than the {H}x{W} latent; "
                     "sample it with sample_tokens")
  if spatial and tuple(cond.shape[1:]) != (H, W):
    raise ValueError(f"sample_window: spatial conditioning codes must cover the latent "
                     f"({H}x{W}); got {cond.shape[1]}x{cond.shape[2]}")
  if not spatial and cond.ndim != 2:
    raise ValueError(f"sample_window: cond must be int[B, n_c] or int[B, H, W]; got "
                     f"{list(cond.shape)}")
  n_c = wh * ww if spatial else cond.shape[1]
  if n_c + wh * ww - 1 > config.block_size:
    raise ValueError(f"sample_window: {n_c} conditioning + {wh * ww} window tokens need "
                     f"{n_c + wh * ww - 1} positions, more than the block size "
                     f"{config.block_size}")
  if not 0 <= int(start) < H * W:
    raise ValueError(f"sample_window: start {start} must lie in [0, {H * W})")
  if not greedy and rng is None:
    raise ValueError("sample_window: sampling needs an rng (or greedy=True)")
  if start and z_init is None:
    raise ValueError(f"sample_window: a completion from start {start} needs z_init")
  z = (jnp.zeros((b, H, W), jnp.int32) if z_init is None
       else jnp.asarray(z_init, jnp.int32))
  if tuple(z.shape) != (b, H, W):
    raise ValueError(f"sample_window: z_init must be int32[{b}, {H}, {W}]; got "
                     f"{list(z.shape)}")
  rng = jax.random.PRNGKey(0) if rng is None else rng
  fn = _compiled_window(_plain(config), (H, W), (wh, ww), spatial, float(temperature),
                        top_k if top_k else None, None if top_p is None else float(top_p),
                        bool(greedy))
  return fn({"params": gpt_lib.unstack_blocks(params)}, cond, z, jnp.int32(start), rng)


def _compiled_window(cfg, latent, window, spatial, temperature, top_k, top_p, greedy):
  key = ("window", cfg, latent, window, spatial, temperature, top_k, top_p, greedy)
  if key not in _CACHE:
    model = gpt_lib.GPT(cfg)
    H, W = latent
    wh, ww = window

    def run(variables, cond, z, start, rng):
      b = z.shape[0]
      keys = jax.random.split(rng, b)
      head = variables["params"]["head"]["kernel"]

      def body(t, z):
        i, j = t // W, t % W
        i0, li = window_placement(i, H, wh)
        j0, lj = window_placement(j, W, ww)
        zwin = jax.lax.dynamic_slice(z, (0, i0, j0), (b, wh, ww)).reshape(b, wh * ww)
        if spatial:
          c = jax.lax.dynamic_slice(cond, (0, i0, j0), (b, wh, ww)).reshape(b, wh * ww)
        else:
          c = cond
        tokens = jnp.concatenate([c, zwin], axis=1)[:, :-1]
        hidden = model.apply(variables, tokens, return_hidden=True)
        pos = c.shape[1] + li * ww + lj - 1
        h = jax.lax.dynamic_index_in_dim(hidden, pos, axis=1, keepdims=False)
        logits = jnp.dot(h, head.astype(h.dtype)).astype(jnp.float32)
        tok = _pick(logits, keys, t, temperature, top_k, top_p, greedy)
        return jax.lax.dynamic_update_slice(z, tok[:, None, None], (0, i, j))

      return jax.lax.fori_loop(start, H * W, body, z)

    _CACHE[key] = jax.jit(run)
  return _CACHE[key]
