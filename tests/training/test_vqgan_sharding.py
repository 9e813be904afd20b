"""Sharded VQGAN train steps equal the single-device step; gradient accumulation is exact.

The mesh comparison runs training_worker.py in a subprocess with 8 fake CPU devices
(XLA_FLAGS must be set before jax starts): step 1 from the initial state and step 2 from
the single-device state after step 1, on ("data", 8) and ("data", 4) x ("fsdp", 2)
meshes (chained steps are run for the compile-cache check and only reported: see
training_worker.py). Accumulation runs here, on one device.
Tolerance: np.allclose with atol = rtol = 1e-5 on every element of every leaf of the
state (params, optimizer state, batch statistics, code usage) and on every metric.
"""

import json
import os
import pathlib
import subprocess
import sys

import jax
import numpy as np
import pytest

from vqgan_test_utils import xla_flags

import training_worker as W
from vqgan_jax.training import sharding as sharding_lib
from vqgan_jax.training import vqgan_lib

HERE = pathlib.Path(__file__).resolve().parent
REPO = HERE.parents[1]


def _check(entry, what):
  """Fails unless a training_worker.compare() result is within atol + rtol * |ref|."""
  assert entry["ratio"] <= 1.0, (
      f"{what}: |got - ref| exceeds 1e-5 + 1e-5 |ref| at {entry['ratio_leaf']} "
      f"(x{entry['ratio']:.3g}); max abs diff {entry['max_abs']:.3g} at {entry['max_abs_leaf']}")


@pytest.fixture(scope="module")
def sharding_run():
  env = dict(os.environ, XLA_FLAGS=xla_flags(8),
             PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
  proc = subprocess.run([sys.executable, str(HERE / "training_worker.py"), "sharding"],
                        capture_output=True, text=True, env=env, cwd=str(REPO), timeout=600)
  assert proc.returncode == 0, proc.stderr[-4000:]
  return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("mesh", ["data8", "data4_fsdp2"])
def test_sharded_step_equals_single_device(sharding_run, mesh):
  """Steps 1 and 2 (disc_start=0: GAN terms and the D update active) on 8 devices."""
  single, run = sharding_run["single"], sharding_run[mesh]
  # The reference steps really move everything that is compared.
  for step in ("update_step1", "update_step2"):
    for group in ("ae_params", "ae_opt_state", "d_params", "d_opt_state", "d_state"):
      assert single[step][group] > 1e-4, (step, group, single[step][group])
  assert single["metrics"][0]["disc_factor"] == 1.0 and single["metrics"][0]["g_loss"] != 0.0
  for step in ("step1", "step2"):
    _check(run[step]["state"], f"{mesh} {step} state")
    _check(run[step]["metrics"], f"{mesh} {step} metrics")
  # Two chained steps and a third call compile the train step once.
  assert run["cache_size_after_2_chained_steps"] == 1
  assert run["cache_size_after_all"] == 1


def test_fsdp_mesh_shards_params(sharding_run):
  assert sharding_run["data8"]["fsdp_sharded"] == []
  sharded = sharding_run["data4_fsdp2"]["fsdp_sharded"]
  paths = {s["path"] for s in sharded}
  # AE params with their Adam moments and D params are all split.
  for path in ("state/ae_params/decoder/conv_in/kernel",
               "state/ae_opt_state/0/mu/decoder/conv_in/kernel",
               "state/ae_params/quantize/embedding/embedding",
               "state/d_params/main_2/kernel"):
    assert path in paths, path
  for s in sharded:
    i = s["spec"].index("fsdp")
    assert s["shard_shape"][i] * 2 == s["shape"][i], s


# ---------------------------------------------------------------------------------------
# Gradient accumulation: accum_steps=2 vs 1 on the same global batch, one device.


def _step_pair(host_state=None, **setup_kw):
  """{accum_steps: (flat state, metrics, flat initial state)} after one step on fake_batch(0).

  Without LPIPS (tiny_config's perceptual_weight 0): like L1 it is a mean of per-example
  terms, so it adds nothing to what accumulation must get right, but it doubles the
  compile time; and its dropout would draw different masks per microbatch (its rng is
  split per microbatch), which makes accum_steps 2 and 1 incomparable.
  """
  out = {}
  for k in (1, 2):
    setup = W.tiny_setup(accum_steps=k, **setup_kw)
    state = W.init_host_state(setup) if host_state is None else host_state(setup)
    steps = vqgan_lib.CompiledSteps(setup, sharding_lib.make_mesh(devices=jax.devices()[:1]))
    new, metrics = W.one_step(steps, state, None, W.fake_batch(0))
    out[k] = (W.flatten(new), metrics, W.flatten(state))
  return out


def _initialized_actnorm(setup):
  state = W.init_host_state(setup)
  return state.replace(d_state=jax.tree_util.tree_map(np.ones_like, state.d_state))


def test_accumulation_gan_active_equals_full_batch():
  """disc_start=0 with an ActNorm D (initialised: no batch statistics) and a fixed GAN
  weight: every loss term is a mean over examples, so the average of two half-batch
  gradients is the full-batch gradient, for the AE and for the D update. Everything
  but the perplexity (a per-microbatch statistic) must match."""
  pair = _step_pair(_initialized_actnorm, disc_start=0, adaptive_weight=False,
                    use_actnorm=True)
  (s1, m1, init), (s2, m2, _) = pair[1], pair[2]
  changed = W._group_change(s1, init)
  for group in ("ae_params", "ae_opt_state", "d_params", "d_opt_state"):
    assert changed[group] > 1e-4, (group, changed)
  assert m1["disc_factor"] == 1.0 and m1["d_weight"] == pytest.approx(0.8)
  _check(W.compare(s2, s1), "accum 2 vs 1 state")
  # The first Adam moment is 0.5 * gradient and large: a sum instead of a mean, or one
  # microbatch's gradient instead of both, could not pass.
  mu = [k for k in s1 if "_opt_state/0/mu/" in k]
  assert min(max(np.max(np.abs(s1[k])) for k in mu if k.startswith(g)) for g in ("ae", "d_")) > 1e-3
  # The microbatches are real: perplexity is averaged over two half batches.
  assert abs(m2.pop("perplexity") - m1.pop("perplexity")) > 1e-3
  _check(W.compare(m2, m1), "accum 2 vs 1 metrics")


def test_accumulation_taming_disc_before_disc_start():
  """taming's BatchNorm D, adaptive weight, disc_start=1000 (GAN terms weighted by 0):
  D's batch statistics and the adaptive weight differ per microbatch but reach the
  AE update only through a factor 0, so the AE update, the (zero) D update, code
  counts and the mean-of-examples metrics must match; D's running statistics must not
  (they are updated once per microbatch)."""
  pair = _step_pair(disc_start=1000)
  (s1, m1, init), (s2, m2, _) = pair[1], pair[2]
  assert m1["disc_factor"] == 0.0
  same = {k: v for k, v in s1.items() if not k.startswith("d_state/")}
  _check(W.compare({k: s2[k] for k in same}, same), "accum 2 vs 1 state (no D statistics)")
  for k in s1:  # D does not move before disc_start
    if k.startswith("d_params/"):
      np.testing.assert_array_equal(s1[k], init[k])
  stats = W.compare({k: s2[k] for k in s1 if k.startswith("d_state/")},
                    {k: v for k, v in s1.items() if k.startswith("d_state/")})
  assert stats["max_abs"] > 1e-4, stats
  keys = ("l1_loss", "quant_loss", "nll_loss", "rec_loss", "total_loss", "disc_loss",
          "disc_factor", "code_usage")
  _check(W.compare({k: m2[k] for k in keys}, {k: m1[k] for k in keys}), "accum 2 vs 1 metrics")
