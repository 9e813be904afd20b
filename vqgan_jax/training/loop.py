"""The training loop both trainers run: resume-or-init, steps, logs, grids, eval, export.

A trainer hands `train(config, workdir, task)` a `TrainTask` (what is model-specific:
the state, the step, the batches, evaluation, image grids, the exported model). The
loop owns the rest, in one place:
  - resume order: the workdir's latest checkpoint > `config.init_from` > scratch; a
    resume first compares the checkpoint's fingerprint (seed, batch, model, data...)
    with the config's and refuses, naming the fields, unless
    `config.allow_resume_changes`;
  - checkpoints every `ckpt_every` steps, on SIGTERM (preemption: saved at once, before
    any grid or evaluation) and at the end;
  - metrics every `log_every` steps, checked for NaN/Inf (the run stops with a message
    naming the step and the last good checkpoint), a progress line, image grids every
    `image_every` and evaluation every `eval_every` steps (and at the end);
  - config.json, summary.json and the exported model directory.
"""

import json
import os
import signal
import time
from typing import Any, Callable, Dict, Iterator, Optional

import jax
import numpy as np
from absl import logging

from vqgan_jax.training import checkpointing, config_lib


class TrainingError(Exception):
  """A run cannot start or go on; the message says why and what to do."""


class TrainTask:
  """What a trainer provides (each trainer module implements one). The state is any
  pytree with an int `step` field."""

  abstract_state: Any = None     # ShapeDtypeStructs with the state's shardings (computed once)
  loss_key: str = "loss"         # the metric shown on the progress line

  def init_state(self, rng) -> Any:
    raise NotImplementedError

  def init_from(self, path: str, rng) -> Any:
    """A state whose weights come from `path`; raises TrainingError naming what differs."""
    raise NotImplementedError

  def fingerprint(self) -> Dict[str, Any]:
    """Config fields a resume must find unchanged ({dotted name: value})."""
    raise NotImplementedError

  def train_batches(self, start_step: int) -> Iterator[Any]:
    """Global batches (placed on the mesh) of steps start_step, start_step + 1, ..."""
    raise NotImplementedError

  def train_step(self, state, batch):
    """(new state, metrics) for one global batch."""
    raise NotImplementedError

  def evaluate(self, state) -> Optional[Dict[str, float]]:
    """Validation metrics ({"val/...": value}), or None without validation data."""
    return None

  def image_grid(self, state) -> Optional[np.ndarray]:
    """uint8[H, W, 3] of fixed images (the same after a resume), on every process."""
    return None

  def learning_rate(self, step: int) -> float:
    return float("nan")

  def export(self, state, directory: str) -> Optional[str]:
    """Writes the trained model to `directory` (single process); returns its path."""
    return None


def every(step: int, n: int) -> bool:
  """True on multiples of n (n <= 0: never)."""
  return n > 0 and step % n == 0


def check_finite(step: int, metrics: Dict[str, float], last_checkpoint) -> None:
  bad = {k: v for k, v in metrics.items() if not np.isfinite(v)}
  if bad:
    where = (f"the last checkpoint is step {last_checkpoint}" if last_checkpoint is not None
             else "no checkpoint was written")
    raise TrainingError(f"non-finite metrics at step {step}: {bad}; training stopped "
                        f"({where}). Lower the learning rate or check the data.")


class Preemption:
  """Turns SIGTERM into a flag the loop checks between steps (a context manager)."""

  def __init__(self):
    self.requested = False
    self._previous = None

  def _handle(self, signum, frame):
    logging.warning("SIGTERM received: saving a checkpoint and stopping")
    self.requested = True

  def __enter__(self):
    self._previous = signal.signal(signal.SIGTERM, self._handle)
    return self

  def __exit__(self, *exc):
    signal.signal(signal.SIGTERM, self._previous)
    return False


def main_process_first(fn: Callable[[], Any], name: str):
  """Runs `fn` on process 0 first; the other processes wait for it, then run it too
  (finding its work done: e.g. image folders prepared once, not by every process)."""
  if jax.process_count() == 1:
    return fn()
  from jax.experimental import multihost_utils
  out = fn() if jax.process_index() == 0 else None
  multihost_utils.sync_global_devices(name)
  return out if jax.process_index() == 0 else fn()


def restore_or_init(task: TrainTask, ckpt: checkpointing.TrainCheckpointer, config):
  """(state, start step, where it came from) by the one resume order."""
  latest = ckpt.latest_step()
  if latest is not None:
    saved = ckpt.restore_meta(latest).get("fingerprint")
    if saved is None:
      logging.warning("%s: checkpoint %d records no config fingerprint; resuming unchecked",
                      ckpt.directory, latest)
    else:
      diff = config_lib.fingerprint_diff(saved, task.fingerprint())
      if diff and not config.allow_resume_changes:
        raise TrainingError(
            f"cannot resume from {ckpt.directory} (step {latest}): the config differs from "
            "the one the checkpoint was written with:\n  " + "\n  ".join(diff) +
            "\nUse the original values, another --workdir, or "
            "--config.allow_resume_changes=True to continue anyway (the run is then not "
            "the same as an uninterrupted one).")
      if diff:
        logging.warning("resuming with config changes: %s", "; ".join(diff))
    state, _ = ckpt.restore(latest, task.abstract_state)
    return state, latest, f"resumed from {ckpt.directory} step {latest}"
  rng = jax.random.PRNGKey(int(config.seed))
  if config.init_from:
    return task.init_from(config.init_from, rng), 0, f"initialised from {config.init_from}"
  return task.init_state(rng), 0, "initialised from scratch"


def _write_json(path: str, obj) -> None:
  with open(path, "w") as f:
    json.dump(obj, f, indent=2)


def _save_grid(workdir: str, step: int, grid: np.ndarray, writer) -> Optional[str]:
  writer.images(step, {"grid": grid[None]})
  if jax.process_index() != 0:
    return None
  from vqgan_jax.images import save_png
  path = os.path.join(workdir, "images", f"step_{step:07d}.png")
  save_png(path, grid)
  return path


def train(config, workdir: str, task: TrainTask) -> Dict[str, Any]:
  """Runs (or resumes) training to `config.total_steps`; returns the summary."""
  from vqgan_jax.training.writers import Progress, Writer
  workdir = os.path.abspath(workdir)
  os.makedirs(workdir, exist_ok=True)
  is_main = jax.process_index() == 0
  ckpt = checkpointing.TrainCheckpointer(os.path.join(workdir, "checkpoints"),
                                         config.keep_ckpts)
  writer = None
  try:
    state, start, origin = restore_or_init(task, ckpt, config)
    logging.info("%s", origin)
    total = int(config.total_steps)
    writer = Writer(workdir, is_main)
    if is_main:
      with open(os.path.join(workdir, "config.json"), "w") as f:
        f.write(config.to_json_best_effort(indent=2))
    summary = {"workdir": workdir, "start_step": start, "origin": origin,
               "checkpoints": ckpt.directory, "tensorboard": writer.logdir, "val": {}}

    def evaluate(step):
      val = task.evaluate(state)
      if val:
        writer.scalars(step, val)
        summary["val"][str(step)] = val
      return val

    if start == 0:
      evaluate(0)
    progress = Progress(total, start, writer.scalars, is_main)
    last_ckpt = ckpt.latest_step()
    metrics = {}
    t0 = time.time()
    with Preemption() as preempt:
      batches = task.train_batches(start)
      for step in range(start, total):
        state, metrics = task.train_step(state, next(batches))
        done = step + 1
        # On SIGTERM the grace period is short: log, save and stop (no grids, no eval).
        finished, preempted = done == total, preempt.requested
        if every(done, config.log_every) or finished or preempted:
          values = {k: float(v) for k, v in jax.device_get(metrics).items()}
          check_finite(done, values, last_ckpt)
          values["learning_rate"] = task.learning_rate(done)
          writer.scalars(done, {f"train/{k}": v for k, v in values.items()})
          progress.update(done, values.get(task.loss_key))
        if not preempted and (every(done, config.image_every) or finished):
          grid = task.image_grid(state)
          if grid is not None:
            summary["image_grid"] = _save_grid(workdir, done, grid, writer)
        if not preempted and (every(done, config.eval_every) or finished):
          evaluate(done)
        if every(done, config.ckpt_every) or finished or preempted:
          meta = {"step": done, "seed": int(config.seed), "fingerprint": task.fingerprint()}
          ckpt.save(done, state, meta)
          last_ckpt = done
        if preempted:
          break
    end = int(jax.device_get(state.step))
    summary.update(end_step=end, seconds=round(time.time() - t0, 1),
                   train={k: float(v) for k, v in jax.device_get(metrics).items()})
    if summary["val"]:
      evaluated = sorted(summary["val"], key=int)
      if evaluated[0] == "0":
        summary["val_before"] = summary["val"]["0"]
      summary["val_after"] = summary["val"][evaluated[-1]]
    if jax.process_count() == 1 and end == total:
      summary["model_dir"] = task.export(state, os.path.join(workdir, "model"))
  finally:
    ckpt.close()
    if writer is not None:
      writer.close()
  if is_main:
    _write_json(os.path.join(workdir, "summary.json"), summary)
  return summary
