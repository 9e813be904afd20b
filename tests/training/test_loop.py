"""Pieces of the shared loop: every(), the NaN stop, progress reports, data preparation
on multi-process runs, tree shape checks, accumulation loops."""

import io

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vqgan_jax.training import accumulation, loop, steps
from vqgan_jax.training.writers import Progress


def test_every():
  assert [s for s in range(1, 11) if loop.every(s, 4)] == [4, 8]
  assert not any(loop.every(s, 0) for s in range(1, 5))


def test_check_finite_names_the_step_and_metric():
  loop.check_finite(3, {"loss": 1.0}, 2)
  with pytest.raises(loop.TrainingError, match=r"at step 5: \{'g_loss': inf\}.*step 4"):
    loop.check_finite(5, {"loss": 1.0, "g_loss": float("inf")}, 4)
  with pytest.raises(loop.TrainingError, match="no checkpoint was written"):
    loop.check_finite(1, {"loss": float("nan")}, None)


def test_progress_reports_rate_eta_and_loss():
  """Every update prints a line and (after the first, which includes compilation) writes
  steps/s; the old ReportProgress without every_steps/every_secs reported nothing."""
  t = [100.0]
  written, out = [], io.StringIO()
  p = Progress(total_steps=100, start_step=0, scalars=lambda s, v: written.append((s, v)),
               clock=lambda: t[0], out=out)
  t[0] += 30.0
  p.update(10, 0.5)            # compilation included
  t[0] += 20.0
  p.update(50, 0.25)           # 40 steps in 20 s: 2 steps/s, 50 left: ETA 25 s
  lines = out.getvalue().splitlines()
  assert lines[0] == "step 10/100 (10.0%)  30s for the first 10 steps (incl. compilation)  loss 0.5000"
  assert lines[1] == "step 50/100 (50.0%)  2.00 steps/s  ETA 25s  loss 0.2500"
  assert written == [(50, {"train/steps_per_sec": 2.0, "train/uptime_sec": 50.0})]
  quiet = Progress(10, 0, lambda s, v: None, is_main=False, out=out)
  quiet.update(1)
  assert len(out.getvalue().splitlines()) == 2   # only process 0 prints


@pytest.mark.parametrize("index", [0, 1])
def test_data_is_prepared_by_process_0_first(monkeypatch, index):
  events = []
  monkeypatch.setattr(jax, "process_count", lambda: 2)
  monkeypatch.setattr(jax, "process_index", lambda: index)
  from jax.experimental import multihost_utils
  monkeypatch.setattr(multihost_utils, "sync_global_devices",
                      lambda name: events.append(("barrier", name)))
  out = loop.main_process_first(lambda: events.append("prepare") or 7, "prep")
  assert out == 7
  # Process 0 prepares and then releases the others, which only then open the data.
  assert events == (["prepare", ("barrier", "prep")] if index == 0
                    else [("barrier", "prep"), "prepare"])


def test_tree_shape_errors_name_every_key():
  want = {"params": {"a": jnp.zeros((2, 3)), "b": jnp.zeros(4)}}
  got = {"params": {"a": np.zeros((3, 3)), "c": np.zeros(1)}}
  assert steps.tree_shape_errors(want, got, "ckpt") == [
      "ckpt: missing params/b (expected shape (4,))",
      "ckpt: unexpected params/c (shape (1,))",
      "ckpt: params/a has shape (3, 3), the config's model expects (2, 3)"]
  assert steps.tree_shape_errors(want, want, "x") == []


@pytest.mark.parametrize("unroll", [True, False])
def test_accumulated_gradient_is_the_full_batch_gradient(unroll):
  """Least squares: the mean of k micro-batch mean gradients = the full-batch gradient
  X^T (X w - y) / n (closed form), for the unrolled loop and for lax.scan."""
  rng = np.random.default_rng(0)
  x, y = rng.normal(size=(12, 3)).astype(np.float32), rng.normal(size=12).astype(np.float32)
  w = rng.normal(size=3).astype(np.float32)
  full = x.T @ (x @ w - y) / len(y)

  def grad_fn(params, carry, batch):
    bx, by = batch
    g = jax.grad(lambda p: 0.5 * jnp.mean((bx @ p - by) ** 2))(params)
    return g, carry + 1, jnp.sum(by)

  micro = accumulation.microbatches((x, y), 3)
  assert micro[0].shape == (3, 4, 3)
  np.testing.assert_array_equal(micro[1][1], y[1::3])  # strided rows
  g, calls, sums = jax.jit(lambda w: accumulation.accumulate_gradients(
      grad_fn, w, micro, 3, unroll, carry=jnp.int32(0)))(w)
  np.testing.assert_allclose(g, full, rtol=1e-5, atol=1e-6)
  assert int(calls) == 3
  np.testing.assert_allclose(sums, [y[i::3].sum() for i in range(3)], rtol=1e-5)
