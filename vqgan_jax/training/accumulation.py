"""Gradient accumulation: a global batch as k micro-batches, looped two ways.

`microbatches` splits a batch strided (micro-batch i takes rows i, i + k, ...), so every
micro-batch stays spread over all devices of the data axes. `loop_microbatches` runs a
body over them either unrolled at trace time or as a `lax.scan`:
  "unrolled"  XLA's CPU backend runs convolutions inside a while loop about 10x slower
              than at top level, and conv models accumulate few micro-batches.
  "scan"      compile time does not grow with k (transformers with many micro-batches).
Both give the same numbers (tests/training/test_steps.py).
"""

from typing import Any, Callable, Tuple

import jax
import jax.numpy as jnp


def microbatches(batch, k: int):
  """Every leaf [B, ...] -> [k, B/k, ...], micro-batch i holding rows i, i + k, ..."""
  def split(a):
    if a.shape[0] % k:
      raise ValueError(f"batch of {a.shape[0]} rows does not split into {k} micro-batches")
    return a.reshape((a.shape[0] // k, k) + a.shape[1:]).swapaxes(0, 1)
  return jax.tree_util.tree_map(split, batch)


def loop_microbatches(body: Callable[[Any, Any], Tuple[Any, Any]], carry, xs, length: int,
                      unroll: bool = True):
  """lax.scan(body, carry, xs) semantics: (final carry, outputs stacked on axis 0)."""
  if not unroll:
    return jax.lax.scan(body, carry, xs, length=length)
  outs = []
  for i in range(length):
    carry, out = body(carry, jax.tree_util.tree_map(lambda a: a[i], xs))
    outs.append(out)
  return carry, jax.tree_util.tree_map(lambda *a: jnp.stack(a), *outs)


def accumulate_gradients(grad_fn: Callable, params, xs, length: int, unroll: bool = True,
                         carry=None):
  """Mean gradient of `grad_fn` over micro-batches.

  grad_fn(params, carry, x) -> (grads, carry, out); `carry` threads state (batch
  statistics, codebook EMA) from one micro-batch to the next. Returns
  (mean grads, final carry, outputs stacked over micro-batches).
  """
  def body(c, x):
    grads, inner = c
    g, inner, out = grad_fn(params, inner, x)
    return (jax.tree_util.tree_map(jnp.add, grads, g), inner), out

  zeros = jax.tree_util.tree_map(jnp.zeros_like, params)
  (grads, carry), outs = loop_microbatches(body, (zeros, carry), xs, length, unroll)
  return jax.tree_util.tree_map(lambda g: g / length, grads), carry, outs
