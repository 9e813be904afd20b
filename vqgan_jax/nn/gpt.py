"""minGPT as taming uses it (`taming/modules/transformer/mingpt.py`), in flax.linen.

    model = GPT(GPTConfig(vocab_size=1024, block_size=512, n_layer=24, n_head=16, n_embd=1024))
    logits = model.apply(variables, tokens)                       # int[B, T] -> f32[B, T, V]

    cache = init_cache(config, batch=B, length=L)                 # functional KV cache
    logits, cache = model.apply(variables, prefix, cache=cache, index=0)      # prefill
    logits, cache = model.apply(variables, next_tok, cache=cache, index=t)    # one token

Semantics of the reference: token embedding plus a learned positional embedding
(zero-initialised), pre-LayerNorm blocks (eps 1e-5) of causal self-attention with separate
query/key/value projections and an exact (erf) GELU 4x MLP, a final LayerNorm and a
bias-free head; N(0, 0.02) init of every kernel and embedding. `n_unmasked` > 0 makes the
first `n_unmasked` positions attend to each other both ways (taming's bidirectional
prefix). With a cache, the keys and values of positions [index, index + t) are written
into fixed-size buffers and every query attends to the positions before it (or to the
whole prefix), so a prefill followed by one token per call gives the uncached logits.

Module names mirror taming's state dict (`blocks_3/attn/query/kernel` is
`transformer.blocks.3.attn.query.weight`). With `scan_layers` the blocks are one scanned
module `blocks` whose params carry a leading layer axis; `stack_blocks` and
`unstack_blocks` convert between the two layouts (checkpoints and model directories
always hold the unstacked one).
"""

import dataclasses
import functools
from typing import Any, Dict, Optional, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from vqgan_jax.nn import configs

REMAT_POLICIES = ("none", "full", "dots", "dots_no_batch")
ATTENTION_IMPLS = ("xla", "cudnn")
DTYPES = ("float32", "bfloat16")


@dataclasses.dataclass(frozen=True)
class GPTConfig:
  """The transformer: taming's `transformer_config.params` plus how to compute it.

  `dtype` is the compute dtype (params stay float32; softmax and logits are float32).
  `scan_layers` runs the blocks as one `nn.scan` (faster compiles for deep models);
  `remat` re-computes each block's activations in the backward pass ("full"), or keeps
  only its matmul outputs ("dots"; "dots_no_batch": those without a batch dimension).
  `attention` "cudnn" asks XLA for cuDNN's fused attention (GPU, bf16/fp16).
  """
  vocab_size: int = 1024
  block_size: int = 256
  n_layer: int = 12
  n_head: int = 8
  n_embd: int = 256
  embd_pdrop: float = 0.0
  resid_pdrop: float = 0.0
  attn_pdrop: float = 0.0
  n_unmasked: int = 0
  dtype: str = "float32"
  scan_layers: bool = False
  remat: str = "none"
  attention: str = "xla"

  def to_dict(self) -> Dict[str, Any]:
    return dataclasses.asdict(self)

  @classmethod
  def from_dict(cls, d: Dict[str, Any]) -> "GPTConfig":
    return configs.from_dict(cls, d)

  def validate(self) -> list:
    """One message per field that cannot build a model."""
    errors = []
    for name in ("vocab_size", "block_size", "n_layer", "n_head", "n_embd"):
      v = getattr(self, name)
      if not isinstance(v, (int, np.integer)) or isinstance(v, bool) or v <= 0:
        errors.append(f"{name}: expected a positive integer, got {v!r}")
    if not errors and self.n_embd % self.n_head:
      errors.append(f"n_head: n_embd={self.n_embd} is not divisible by n_head={self.n_head}")
    for name in ("embd_pdrop", "resid_pdrop", "attn_pdrop"):
      v = getattr(self, name)
      if not 0.0 <= float(v) < 1.0:
        errors.append(f"{name}: expected a probability in [0, 1), got {v!r}")
    if not 0 <= int(self.n_unmasked) <= int(self.block_size):
      errors.append(f"n_unmasked: expected 0..block_size ({self.block_size}), "
                    f"got {self.n_unmasked!r}")
    if self.dtype not in DTYPES:
      errors.append(f"dtype: expected one of {DTYPES}, got {self.dtype!r}")
    if self.remat not in REMAT_POLICIES:
      errors.append(f"remat: expected one of {REMAT_POLICIES}, got {self.remat!r}")
    if self.attention not in ATTENTION_IMPLS:
      errors.append(f"attention: expected one of {ATTENTION_IMPLS}, got {self.attention!r}")
    return errors

  @property
  def head_dim(self) -> int:
    return self.n_embd // self.n_head


def _dense(features: int, name: str, dtype, use_bias: bool = True) -> nn.Dense:
  return nn.Dense(features, use_bias=use_bias, dtype=dtype, name=name,
                  kernel_init=nn.initializers.normal(0.02), bias_init=nn.initializers.zeros)


def _layer_norm(name: str, dtype) -> nn.LayerNorm:
  return nn.LayerNorm(epsilon=1e-5, dtype=dtype, name=name)


def attention_mask(q_pos: jax.Array, k_pos: jax.Array, n_unmasked: int) -> jax.Array:
  """bool[Tq, Tk]: query at absolute position q sees key at k if k <= q, or if both lie in
  the bidirectional prefix [0, n_unmasked)."""
  q, k = q_pos[:, None], k_pos[None, :]
  mask = k <= q
  if n_unmasked:
    mask = mask | ((q < n_unmasked) & (k < n_unmasked))
  return mask


class CausalSelfAttention(nn.Module):
  config: GPTConfig

  @nn.compact
  def __call__(self, x, positions, train: bool, cache: Optional[Dict[str, jax.Array]] = None,
               index=0, layer: Optional[int] = None):
    """`cache`: this layer's {"k", "v"} [B, L, H, D], or with `layer` the stacked cache of
    all layers [n_layer, B, L, H, D], updated in place at that layer (no per-step copy of
    the other layers)."""
    c = self.config
    dtype = jnp.dtype(c.dtype)
    b, t, _ = x.shape
    split = lambda y: y.reshape(b, t, c.n_head, c.head_dim)
    q = split(_dense(c.n_embd, "query", dtype)(x))
    k = split(_dense(c.n_embd, "key", dtype)(x))
    v = split(_dense(c.n_embd, "value", dtype)(x))
    new_cache = None
    if cache is not None:
      # Write this call's keys/values at [index, index + t) of the fixed-size buffers.
      if layer is None:
        k = jax.lax.dynamic_update_slice(cache["k"], k.astype(cache["k"].dtype),
                                         (0, index, 0, 0))
        v = jax.lax.dynamic_update_slice(cache["v"], v.astype(cache["v"].dtype),
                                         (0, index, 0, 0))
        new_cache = {"k": k, "v": v}
      else:
        new_cache = {
            name: jax.lax.dynamic_update_slice(cache[name], y[None].astype(cache[name].dtype),
                                               (layer, 0, index, 0, 0))
            for name, y in (("k", k), ("v", v))}
        k, v = new_cache["k"][layer], new_cache["v"][layer]
      k, v = k.astype(dtype), v.astype(dtype)
      k_pos = jnp.arange(k.shape[1])
    else:
      k_pos = positions
    mask = attention_mask(positions, k_pos, c.n_unmasked)
    if cache is not None:  # slots at or after index + t are not written yet
      mask = mask & (k_pos < index + t)[None, :]
    mask = mask[None, None]
    if train and c.attn_pdrop > 0:
      # jax.nn.dot_product_attention has no dropout: the same computation spelled out.
      logits = jnp.einsum("btnh,bsnh->bnts", q, k,
                          preferred_element_type=jnp.float32) / np.sqrt(c.head_dim)
      logits = jnp.where(mask, logits, jnp.finfo(jnp.float32).min)
      probs = nn.Dropout(c.attn_pdrop)(jax.nn.softmax(logits, axis=-1), deterministic=False)
      y = jnp.einsum("bnts,bsnh->btnh", probs.astype(dtype), v)
    else:
      impl = "cudnn" if c.attention == "cudnn" else None
      y = jax.nn.dot_product_attention(q, k, v, mask=mask, implementation=impl)
    y = _dense(c.n_embd, "proj", dtype)(y.reshape(b, t, c.n_embd))
    y = nn.Dropout(c.resid_pdrop)(y, deterministic=not train)
    return y, new_cache


class Block(nn.Module):
  """x + attn(ln1(x)), then x + mlp(ln2(x)); the MLP is Dense(4C), exact GELU, Dense(C)."""
  config: GPTConfig

  @nn.compact
  def __call__(self, x, positions, train: bool = False, cache=None, index=0,
               layer: Optional[int] = None):
    c = self.config
    dtype = jnp.dtype(c.dtype)
    y, new_cache = CausalSelfAttention(c, name="attn")(_layer_norm("ln1", dtype)(x), positions,
                                                       train, cache, index, layer)
    x = x + y
    h = _dense(4 * c.n_embd, "mlp_0", dtype)(_layer_norm("ln2", dtype)(x))
    h = _dense(c.n_embd, "mlp_2", dtype)(nn.gelu(h, approximate=False))
    x = x + nn.Dropout(c.resid_pdrop)(h, deterministic=not train)
    return x, new_cache


def _remat_policy(name: str):
  return {"full": None, "dots": jax.checkpoint_policies.checkpoint_dots,
          "dots_no_batch": jax.checkpoint_policies.checkpoint_dots_with_no_batch_dims}[name]


class _ScannedBlock(nn.Module):
  """One layer in `nn.scan`'s carry/xs form: carry x, per-layer cache in and out."""
  config: GPTConfig
  train: bool = False

  @nn.compact
  def __call__(self, x, layer_cache, positions, index):
    block_cls = Block
    if self.config.remat != "none":
      block_cls = nn.remat(Block, policy=_remat_policy(self.config.remat),
                           static_argnums=(3,))
    x, new_cache = block_cls(self.config, name="block")(x, positions, self.train, layer_cache,
                                                        index)
    return x, new_cache


class GPT(nn.Module):
  """tokens int[B, T] -> logits float32[B, T, vocab_size]; with a cache, (logits, cache)."""
  config: GPTConfig

  @nn.compact
  def __call__(self, tokens, train: bool = False, cache: Optional[Dict[str, jax.Array]] = None,
               index=0, return_hidden: bool = False):
    c = self.config
    dtype = jnp.dtype(c.dtype)
    t = tokens.shape[1]
    if t > c.block_size:
      raise ValueError(f"GPT: {t} tokens exceed the block size {c.block_size}")
    cache_len = None
    if cache is not None:
      per_layer = isinstance(cache, (tuple, list))
      if per_layer and (c.scan_layers or len(cache) != c.n_layer):
        raise ValueError(f"GPT: a per-layer cache needs unscanned layers and {c.n_layer} "
                         f"entries; got {len(cache)}")
      cache_len = cache[0]["k"].shape[1] if per_layer else cache["k"].shape[2]
    if cache is not None and cache_len > c.block_size:
      raise ValueError(f"GPT: a cache of {cache_len} positions exceeds the block "
                       f"size {c.block_size}")
    if isinstance(index, (int, np.integer)):  # a traced index cannot be checked here
      end = cache_len if cache is not None else c.block_size
      if index < 0 or index + t > end:
        raise ValueError(f"GPT: positions [{index}, {index + t}) do not fit the "
                         f"{'cache of ' if cache is not None else 'block size '}{end}")
    tok = nn.Embed(c.vocab_size, c.n_embd, embedding_init=nn.initializers.normal(0.02),
                   name="tok_emb")(tokens)
    pos_emb = self.param("pos_emb", nn.initializers.zeros, (1, c.block_size, c.n_embd))
    positions = index + jnp.arange(t)
    pos = jax.lax.dynamic_slice_in_dim(pos_emb, index, t, axis=1)
    x = nn.Dropout(c.embd_pdrop)((tok + pos).astype(dtype), deterministic=not train)
    new_cache = None
    if c.scan_layers:
      scan = nn.scan(_ScannedBlock, variable_axes={"params": 0},
                     split_rngs={"params": True, "dropout": True},
                     in_axes=(0, nn.broadcast, nn.broadcast), length=c.n_layer)
      x, new_cache = scan(c, train, name="blocks")(x, cache, positions, index)
    else:
      block_cls = Block
      if c.remat != "none":
        block_cls = nn.remat(Block, policy=_remat_policy(c.remat), static_argnums=(3, 6))
      per_layer = isinstance(cache, (tuple, list))
      new_cache = cache
      layers = []
      for i in range(c.n_layer):
        if per_layer:  # separate buffers per layer: updated in place, never sliced
          x, lc = block_cls(c, name=f"blocks_{i}")(x, positions, train, cache[i], index, None)
          layers.append(lc)
        else:
          x, new_cache = block_cls(c, name=f"blocks_{i}")(
              x, positions, train, new_cache, index, None if cache is None else i)
      if per_layer:
        new_cache = tuple(layers)
    x = _layer_norm("ln_f", dtype)(x)
    if return_hidden:
      return x
    logits = _dense(c.vocab_size, "head", dtype, use_bias=False)(x).astype(jnp.float32)
    if cache is not None:
      return logits, new_cache
    return logits


def init_cache(config: GPTConfig, batch: int, length: Optional[int] = None,
               dtype=None, per_layer: bool = False):
  """Zero key/value buffers {"k", "v"}: [n_layer, batch, length, n_head, head_dim]; with
  `per_layer` (unscanned models), a tuple of n_layer {"k", "v"} [batch, length, ...]:
  what a decoding loop should carry, since every layer's buffer is then updated in place
  (a stacked cache costs a copy of each layer's slice per step)."""
  length = config.block_size if length is None else int(length)
  if not 0 < length <= config.block_size:
    raise ValueError(f"init_cache: length {length} must lie in [1, block_size "
                     f"{config.block_size}]")
  dtype = jnp.dtype(config.dtype if dtype is None else dtype)
  if per_layer:
    shape = (batch, length, config.n_head, config.head_dim)
    return tuple({"k": jnp.zeros(shape, dtype), "v": jnp.zeros(shape, dtype)}
                 for _ in range(config.n_layer))
  shape = (config.n_layer, batch, length, config.n_head, config.head_dim)
  return {"k": jnp.zeros(shape, dtype), "v": jnp.zeros(shape, dtype)}


def init_params(config: GPTConfig, rng, batch: int = 1):
  """Freshly initialised params of `config` (the layout its scan_layers asks for)."""
  tokens = jnp.zeros((batch, config.block_size), jnp.int32)
  return GPT(config).init(rng, tokens)["params"]


@functools.lru_cache(maxsize=32)
def abstract_params(config: GPTConfig):
  """ShapeDtypeStructs of the params (no allocation; cached per config: read only)."""
  return jax.eval_shape(lambda: init_params(config, jax.random.PRNGKey(0)))


def stack_blocks(params: Dict[str, Any], n_layer: int) -> Dict[str, Any]:
  """Unstacked params (`blocks_0`, `blocks_1`, ...) -> the scan layout (`blocks/block`)."""
  missing = [f"blocks_{i}" for i in range(n_layer) if f"blocks_{i}" not in params]
  if missing:
    raise ValueError(f"stack_blocks: params lack {missing}")
  out = {k: v for k, v in params.items() if not k.startswith("blocks_")}
  layers = [params[f"blocks_{i}"] for i in range(n_layer)]

  def stack(*xs):
    if isinstance(xs[0], jax.ShapeDtypeStruct):
      return jax.ShapeDtypeStruct((len(xs),) + tuple(xs[0].shape), xs[0].dtype)
    return jnp.stack(xs) if isinstance(xs[0], jax.Array) else np.stack(xs)
  out["blocks"] = {"block": jax.tree_util.tree_map(stack, *layers)}
  return out


def unstack_blocks(params: Dict[str, Any]) -> Dict[str, Any]:
  """The scan layout (`blocks/block`, leading layer axis) -> `blocks_0`, `blocks_1`, ..."""
  if "blocks" not in params:
    return dict(params)
  out = {k: v for k, v in params.items() if k != "blocks"}
  stacked = params["blocks"]["block"]
  n = jax.tree_util.tree_leaves(stacked)[0].shape[0]
  for i in range(n):
    out[f"blocks_{i}"] = jax.tree_util.tree_map(lambda x, i=i: x[i], stacked)
  return out


def to_layout(params: Dict[str, Any], config: GPTConfig) -> Dict[str, Any]:
  """params in the layout `config.scan_layers` asks for, whichever layout they are in."""
  if config.scan_layers:
    return params if "blocks" in params else stack_blocks(params, config.n_layer)
  return unstack_blocks(params)


def param_count(config: GPTConfig) -> int:
  return int(sum(np.prod(x.shape) for x in jax.tree_util.tree_leaves(abstract_params(config))))


def decay_mask(params) -> Any:
  """True for the leaves taming decays (Dense kernels); False for biases, LayerNorm
  scales, the token embedding and the positional embedding."""
  def is_kernel(path, _):
    return getattr(path[-1], "key", None) == "kernel"
  return jax.tree_util.tree_map_with_path(is_kernel, params)


def cross_entropy(logits, targets) -> Tuple[jax.Array, jax.Array]:
  """(mean loss, per-token loss float32[...]) of int targets under float logits (fp32)."""
  logits = logits.astype(jnp.float32)
  logz = jax.nn.logsumexp(logits, axis=-1)
  picked = jnp.take_along_axis(logits, targets[..., None].astype(jnp.int32), axis=-1)[..., 0]
  per_token = logz - picked
  return per_token.mean(), per_token
