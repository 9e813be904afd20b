"""The transformer's train step: its randomness, sharded steps equal to the single-device
step, gradient accumulation equal to the full batch.

The setup draws the step's randomness at once (label dropout, pkeep; with a random
permuter, clipping and weight decay: gpt_worker.random_setup). Its single-device step
is computed here, in-process, while gpt_worker.py runs the same step from the same state
and batch on ("data", 8) and ("data", 4) x ("fsdp", 2) meshes of 8 fake CPU devices in a
subprocess (XLA_FLAGS must be set before jax starts), with the GPT's sharding rules.
Tolerance: np.allclose with atol = rtol = 1e-5 on every element of every leaf of the state
(params, AdamW moments and count) and on every metric. Accumulation runs here, on one
device, without randomness (two micro-batches draw other keys than one batch).
"""

import json
import math
import os
import pathlib
import subprocess
import sys

import jax
import numpy as np
import pytest

import gpt_worker as W
from vqgan_test_utils import xla_flags
from vqgan_jax.training import gpt_lib as lib

HERE = pathlib.Path(__file__).resolve().parent
REPO = HERE.parents[1]


@pytest.fixture(scope="module", autouse=True)
def mesh_run(tmp_path_factory):
  """gpt_worker.py sharding, started with the module: it runs while the in-process tests
  below compute the reference and the accumulation steps."""
  out = str(tmp_path_factory.mktemp("gpt_meshes"))
  env = dict(os.environ, XLA_FLAGS=xla_flags(8),
             PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
  proc = subprocess.Popen([sys.executable, str(HERE / "gpt_worker.py"), "sharding", out],
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                          cwd=str(REPO))
  yield proc, out
  if proc.poll() is None:
    proc.kill()
  proc.communicate()


@pytest.fixture(scope="module")
def mesh_results(mesh_run):
  proc, out = mesh_run
  stdout, stderr = proc.communicate(timeout=600)
  assert proc.returncode == 0, stderr[-4000:]
  info = json.loads(stdout.strip().splitlines()[-1])
  return {name: (info[name], dict(np.load(os.path.join(out, f"{name}.npz"))))
          for name in W.MESHES}


@pytest.fixture(scope="module")
def reference():
  """(setup, state before, flat state after, metrics) of the single-device step."""
  setup = W.random_setup()
  before = W.initial_state(setup)
  step = jax.jit(lambda s, b: lib.train_step(setup, s, None, b))
  batch = W.fake_batch(setup, 5)
  after, metrics = step(before, batch)
  again = step(before, batch)
  return setup, step, before, batch, W.host_copy((after, metrics)), W.host_copy(again)


def test_step_randomness_is_fold_in_seed_step(reference):
  """metrics["loss"] is the mean token NLL with the key split(fold_in(PRNGKey(seed),
  step), accum_steps)[0]; the same state and batch give bitwise the same step; another
  step number, other randomness."""
  setup, step, before, batch, (after, metrics), again = reference
  jax.tree_util.tree_map(np.testing.assert_array_equal, (after, metrics), again)
  assert int(after.step) == 4
  key = jax.random.split(jax.random.fold_in(jax.random.PRNGKey(setup.seed), 3), 1)[0]
  nll = jax.jit(lambda p, b, r: lib.token_nll(setup, p, b, r, True))
  want = float(np.asarray(nll(before.params, batch, key)).mean())
  assert float(metrics["loss"]) == pytest.approx(want, rel=1e-6)
  assert float(metrics["bits_per_token"]) == pytest.approx(want / math.log(2), rel=1e-6)
  assert float(metrics["learning_rate"]) == pytest.approx(1e-3)
  _, other = step(before.replace(step=np.asarray(4, np.int32)), batch)
  assert abs(float(other["loss"]) - float(metrics["loss"])) > 1e-3


# ---------------------------------------------------------------------------------------
# Gradient accumulation: accum_steps=2 vs 1 on the same global batch, one device.

@pytest.fixture(scope="module")
def full_batch_step():
  setup = W.tiny_setup(cond="vq", permuter="random", eps=1e-3, n_layer=1)
  state = W.initial_state(setup)
  batch = W.fake_batch(setup, 6)
  new, metrics = jax.jit(lambda s, b: lib.train_step(setup, s, None, b))(state, batch)
  return state, batch, W.flatten(W.host_copy(new)), W.host_copy(metrics)


@pytest.mark.parametrize("accum_loop", ["unrolled", "scan"])
def test_accumulation_equals_the_full_batch(full_batch_step, accum_loop):
  """Micro-batches of rows (0, 2, 4, 6) and (1, 3, 5, 7): the mean of their gradients is
  the full batch's (the loss is a mean over examples of equal token counts). Adam's eps
  is 1e-3 for the reason given in gpt_worker.random_setup: with 1e-8 the attention key
  biases (zero gradient up to rounding) differ by 1e-4 after one step."""
  state, batch, want, want_metrics = full_batch_step
  setup = W.tiny_setup(cond="vq", permuter="random", eps=1e-3, accum_steps=2,
                       accum_loop=accum_loop, n_layer=1)
  assert setup.accum_unroll == (accum_loop == "unrolled")
  new, metrics = jax.jit(lambda s, b: lib.train_step(setup, s, None, b))(state, batch)
  got = W.flatten(W.host_copy(new))
  before = W.flatten(state)
  assert max(float(np.abs(want[k] - before[k]).max()) for k in want
             if k.startswith("params/")) > 1e-4
  diff = W.compare(got, want, atol=1e-6, rtol=1e-5)
  assert diff["ratio"] <= 1.0, diff
  # The first Adam moment is (1 - b1) x the gradient: the mean over micro-batches, not
  # their sum or one micro-batch's.
  mu = [k for k in want if "/mu/" in k]
  assert max(float(np.abs(want[k]).max()) for k in mu) > 1e-4
  metrics = W.host_copy(metrics)
  for k in ("loss", "bits_per_token", "grad_norm", "learning_rate"):
    assert float(metrics[k]) == pytest.approx(float(want_metrics[k]), rel=1e-5), k


# ---------------------------------------------------------------------------------------
# The meshes (the subprocess).

def _check(diff, what):
  assert diff["ratio"] <= 1.0, (
      f"{what}: |got - ref| exceeds 1e-5 + 1e-5 |ref| at {diff['ratio_leaf']} "
      f"(x{diff['ratio']:.3g}); max abs diff {diff['max_abs']:.3g} at {diff['max_abs_leaf']}")


@pytest.mark.parametrize("mesh", list(W.MESHES))
def test_sharded_step_equals_single_device(reference, mesh_results, mesh):
  _, _, before, _, (after, metrics), _ = reference
  info, got = mesh_results[mesh]
  assert info["mesh"] == dict(zip(("data", "fsdp"), W.MESHES[mesh]))
  ref = W.flatten(after)
  # The reference step really moves the params and the optimizer state.
  flat_before = W.flatten(before)
  for group in ("params/", "opt_state/"):
    assert max(float(np.abs(ref[k] - flat_before[k]).max()) for k in ref
               if k.startswith(group)) > 1e-4, group
  _check(W.compare({k: v for k, v in got.items() if not k.startswith("metrics/")}, ref),
         f"{mesh} state")
  _check(W.compare({k[len("metrics/"):]: v for k, v in got.items() if k.startswith("metrics/")},
                   {k: np.asarray(v) for k, v in metrics.items()}), f"{mesh} metrics")
  assert info["cache_size"] == 1   # the chained second step reused the executable


def test_fsdp_mesh_shards_params_and_moments(mesh_results):
  assert mesh_results["data8"][0]["fsdp_sharded"] == []
  sharded = mesh_results["data4_fsdp2"][0]["fsdp_sharded"]
  paths = {s["path"] for s in sharded}
  for path in ("params/blocks_0/attn/query/kernel", "params/head/kernel",
               "params/tok_emb/embedding", "params/pos_emb",
               "opt_state/1/0/mu/blocks_1/mlp_0/kernel",
               "opt_state/1/0/nu/tok_emb/embedding"):
    assert path in paths, sorted(paths)
  assert not any(p.endswith(("/bias", "/scale")) for p in paths)
  for s in sharded:
    i = s["spec"].index("fsdp")
    assert s["shard_shape"][i] * 2 == s["shape"][i], s
