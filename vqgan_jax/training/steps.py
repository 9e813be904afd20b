"""Compiling train steps for any train state: shardings, donation, init, tree checks.

    abstract, shardings = sharded_abstract_state(init_fn, mesh, rules)
    train = jit_train_step(step_fn, shardings, mesh, extra=(frozen_sharding,))
    state, metrics = train(state, frozen_params, batch)     # state donated

`init_fn(rng) -> state` is traced once for the abstract state; the step is
`step_fn(state, *extra, batch) -> (state, metrics)`, batches split over ("data", "fsdp")
and metrics replicated. Pure JAX: no TensorFlow, no clu.
"""

from typing import Any, Callable, Dict, List, Sequence

import jax
import numpy as np

from vqgan_jax.training import sharding as sharding_lib


def sharded_abstract_state(init_fn: Callable, mesh, rules=sharding_lib.DEFAULT_RULES):
  """(abstract state, its shardings): init_fn(PRNGKey(0)) traced once, without computing
  anything; the abstract leaves carry their shardings (what a restore needs)."""
  abstract = jax.eval_shape(init_fn, jax.random.PRNGKey(0))
  shardings = sharding_lib.infer_shardings(abstract, mesh, rules)
  abstract = jax.tree_util.tree_map(
      lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract, shardings)
  return abstract, shardings


def jit_train_step(step_fn: Callable, state_sharding, mesh, extra: Sequence[Any] = ()):
  """jax.jit of step_fn(state, *extra, batch) -> (state, metrics), donating the state.

  `extra` holds the shardings of the arguments between state and batch (frozen
  networks, ...); batch leaves are split over the data axes, metrics replicated.
  """
  return jax.jit(step_fn, in_shardings=(state_sharding, *extra,
                                        sharding_lib.batch_sharding(mesh)),
                 out_shardings=(state_sharding, sharding_lib.replicated(mesh)),
                 donate_argnums=(0,))


def init_sharded(init_fn: Callable, rng, state_sharding):
  """init_fn(rng) computed straight into its shardings (optimizer scalars included, so
  the second step does not recompile for a different input sharding)."""
  return jax.jit(init_fn, out_shardings=state_sharding)(rng)


def tree_shape_errors(expected, got, where: str) -> List[str]:
  """Key-by-key differences between two trees of arrays/ShapeDtypeStructs.

  One line each for a missing key, an unexpected key and a key of another shape, with
  `where` (e.g. the checkpoint path) in front.
  """
  flat_e = _flat(expected)
  flat_g = _flat(got)
  errors = []
  for k in sorted(set(flat_e) - set(flat_g)):
    errors.append(f"{where}: missing {k} (expected shape {flat_e[k]})")
  for k in sorted(set(flat_g) - set(flat_e)):
    errors.append(f"{where}: unexpected {k} (shape {flat_g[k]})")
  for k in sorted(set(flat_e) & set(flat_g)):
    if flat_e[k] != flat_g[k]:
      errors.append(f"{where}: {k} has shape {flat_g[k]}, the config's model expects "
                    f"{flat_e[k]}")
  return errors


def _flat(tree) -> Dict[str, tuple]:
  leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
  return {sharding_lib.path_str(p): tuple(np.shape(x)) for p, x in leaves}
