"""The VQGAN training loop: config -> setup -> resume -> steps -> logs, images, checkpoints.

Resume order (one rule): the workdir's latest checkpoint > `config.init_from` > scratch.
Checkpoints are written every `ckpt_every` steps, on SIGTERM and at the end; the data
stream of step k is a function of (seed, k), so a killed run re-launched with the same
command continues exactly where it stopped.
"""

import json
import os
import signal
import time
from typing import Any, Dict, Optional

import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import logging

from vqgan_jax.nn.discriminator import NLayerDiscriminator
from vqgan_jax.nn.lpips import LPIPS, load_pretrained_lpips
from vqgan_jax.nn.vqgan import VQModel
from vqgan_jax.training import checkpointing, sharding, vqgan_config, vqgan_lib


def build_setup(config) -> vqgan_lib.VQGANTrainSetup:
  dtype = jnp.bfloat16 if config.dtype == "bfloat16" else jnp.float32
  mc = vqgan_config.model_config(config)
  lr = vqgan_config.learning_rate(config)
  adam = lambda: optax.adam(lr, b1=config.optim.b1, b2=config.optim.b2)
  temperature = None
  if mc.quantizer == "gumbel":
    t = config.gumbel_temperature
    temperature = vqgan_lib.gumbel_temperature_schedule(
        t.warm_up_steps, t.max_decay_steps, t.start, t.max, t.min)
  return vqgan_lib.VQGANTrainSetup(
      model=VQModel(mc, dtype=dtype),
      disc=NLayerDiscriminator(input_nc=mc.out_ch, ndf=config.loss.disc_ndf,
                               n_layers=config.loss.disc_num_layers,
                               use_actnorm=config.loss.use_actnorm, dtype=dtype),
      lpips=LPIPS(dtype=dtype), loss=vqgan_config.loss_config(config), tx_ae=adam(),
      tx_d=adam(), seed=int(config.seed), image_size=int(config.data.crop_size),
      accum_steps=int(config.optim.accum_steps),
      dead_code_restart_every=int(config.dead_code_restart_every), temperature=temperature)


def _init_variables(config, setup) -> Dict[str, Any]:
  """Weights to start from (fine-tuning): a model directory or a taming .ckpt."""
  from vqgan_jax.api import read_model
  cfg, variables = read_model(config.init_from)
  want = setup.model.config.to_dict()
  got = dict(cfg["vqgan"])
  diff = {k: (got.get(k), v) for k, v in want.items()
          if k not in ("resolution", "attn_resolutions", "legacy", "beta", "dropout")
          and got.get(k) != v}
  if diff:
    raise ValueError(f"init_from: {config.init_from} holds a different model; differing "
                     f"fields (checkpoint, config): {diff}")
  out = {"vqgan": variables["vqgan"]}
  dcfg = cfg.get("discriminator")
  if dcfg and (dcfg["ndf"], dcfg["n_layers"], dcfg["use_actnorm"]) == (
      config.loss.disc_ndf, config.loss.disc_num_layers, config.loss.use_actnorm):
    out["discriminator"] = variables["discriminator"]
  elif dcfg:
    logging.warning("init_from: the checkpoint's discriminator %s differs from the config's; "
                    "starting the discriminator from scratch", dcfg)
  return out


class _Preemption:
  """Turns SIGTERM into a flag the loop checks between steps."""

  def __init__(self):
    self.requested = False
    self._previous = signal.signal(signal.SIGTERM, self._handle)

  def _handle(self, signum, frame):
    logging.warning("SIGTERM received: saving a checkpoint and stopping")
    self.requested = True

  def restore(self):
    signal.signal(signal.SIGTERM, self._previous)


def evaluate(config, steps, state, lpips, workdir) -> Optional[Dict[str, float]]:
  """L1, LPIPS, PSNR over the whole validation split, and the share of codes used."""
  from vqgan_jax.data import pipeline
  if not pipeline.eval_source_kind(config.data):
    return None
  totals = None
  for batch in pipeline.create_eval_iterator(
      config.data, global_batch_size=int(config.batch_size), process_index=jax.process_index(),
      process_count=jax.process_count(), workdir=workdir):
    out = jax.device_get(steps.eval(state, lpips, sharding.global_batch(batch, steps.mesh)))
    totals = out if totals is None else jax.tree_util.tree_map(np.add, totals, out)
  if not totals or totals["count"] == 0:
    return None
  n = float(totals["count"])
  return {"val/l1": float(totals["l1"]) / n, "val/lpips": float(totals["lpips"]) / n,
          "val/psnr": float(totals["psnr"]) / n,
          "val/code_usage": float(np.mean(totals["code_counts"] > 0)),
          "val/num_images": n}


def _save_grid(workdir, step, images, writer):
  from PIL import Image
  from vqgan_jax.training.writers import image_grid
  grid = image_grid(images)
  writer.images(step, {"inputs_reconstructions": grid[None]})
  if jax.process_index() == 0:
    os.makedirs(os.path.join(workdir, "images"), exist_ok=True)
    path = os.path.join(workdir, "images", f"step_{step:07d}.png")
    Image.fromarray(grid).save(path)
    return path


def train_and_evaluate(config, workdir: str) -> Dict[str, Any]:
  """Runs (or resumes) training; returns a summary with the last metrics and paths."""
  from vqgan_jax.data import pipeline
  from vqgan_jax.training.writers import Writer
  os.makedirs(workdir, exist_ok=True)
  if config.compilation_cache_dir:
    jax.config.update("jax_compilation_cache_dir", config.compilation_cache_dir)
  setup = build_setup(config)
  mesh = sharding.make_mesh(config.mesh.data, config.mesh.fsdp)
  steps = vqgan_lib.CompiledSteps(setup, mesh)
  lpips = steps.put_lpips(load_pretrained_lpips(config.loss.lpips_weights or None))
  ckpt = checkpointing.TrainCheckpointer(os.path.join(workdir, "checkpoints"),
                                         config.keep_ckpts)
  latest = ckpt.latest_step()
  if latest is not None:
    abstract = jax.eval_shape(lambda: vqgan_lib.init_state(setup, jax.random.PRNGKey(0)))
    abstract = jax.tree_util.tree_map(
        lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract,
        steps.state_sharding)
    state, meta = ckpt.restore(latest, abstract)
    logging.info("resumed from %s step %d", ckpt.directory, latest)
  elif config.init_from:
    state = steps.init(jax.random.PRNGKey(config.seed), _init_variables(config, setup))
    logging.info("initialised from %s", config.init_from)
  else:
    state = steps.init(jax.random.PRNGKey(config.seed))
  start = int(jax.device_get(state.step))
  total = int(config.total_steps)
  is_main = jax.process_index() == 0
  writer = Writer(workdir, total, is_main)
  if is_main:
    with open(os.path.join(workdir, "config.json"), "w") as f:
      f.write(config.to_json_best_effort(indent=2))
  train_iter = pipeline.create_train_iterator(
      config.data, global_batch_size=int(config.batch_size), seed=int(config.seed),
      start_step=start, process_index=jax.process_index(), process_count=jax.process_count(),
      workdir=workdir)
  summary = {"workdir": os.path.abspath(workdir), "start_step": start}
  if start == 0:
    before = evaluate(config, steps, state, lpips, workdir)
    if before:
      writer.scalars(0, before)
      summary["val_before"] = before
  preempt = _Preemption()
  grid_images = None
  metrics = {}
  t0 = time.time()
  try:
    for step in range(start, total):
      batch = next(train_iter)
      if grid_images is None:
        grid_images = batch["image"][:config.num_images]
      state, metrics = steps.train(state, lpips, sharding.global_batch(batch, mesh))
      done = step + 1
      writer.report_progress(done)
      last = done == total or preempt.requested
      if done % config.log_every == 0 or last:
        values = jax.device_get(metrics)
        if not all(np.isfinite(v) for v in values.values()):
          raise FloatingPointError(f"non-finite metrics at step {done}: {values}")
        writer.scalars(done, {f"train/{k}": v for k, v in values.items()})
        writer.scalars(done, {"train/learning_rate": vqgan_config.learning_rate(config)})
      if done % config.image_every == 0 or last:
        n = (len(grid_images) // len(mesh.devices.flat)) * len(mesh.devices.flat) or None
        if n and jax.process_count() == 1:
          x = sharding.global_batch({"image": grid_images[:n]}, mesh)["image"]
          rec = jax.device_get(steps.reconstruct(state, x))
          summary["image_grid"] = _save_grid(workdir, done, [grid_images[:n], rec], writer)
      if done % config.eval_every == 0 or last:
        val = evaluate(config, steps, state, lpips, workdir)
        if val:
          writer.scalars(done, val)
          summary["val_after"] = val
      if done % config.ckpt_every == 0 or last:
        ckpt.save(done, state, {"step": done, "seed": int(config.seed)})
      if preempt.requested:
        break
  finally:
    preempt.restore()
    ckpt.close()
    writer.close()
  summary.update(end_step=int(jax.device_get(state.step)),
                 seconds=round(time.time() - t0, 1),
                 train=jax.tree_util.tree_map(float, jax.device_get(metrics)),
                 checkpoints=ckpt.directory, tensorboard=writer.logdir)
  if jax.process_count() == 1 and summary["end_step"] == total:
    variables = {"vqgan": dict(jax.device_get(state.model_state),
                               params=jax.device_get(state.ae_params)),
                 "discriminator": dict(jax.device_get(state.d_state),
                                       params=jax.device_get(state.d_params))}
    model_cfg = {"vqgan": setup.model.config.to_dict(), "loss": config.loss.to_dict(),
                 "discriminator": {"input_nc": setup.disc.input_nc, "ndf": setup.disc.ndf,
                                   "n_layers": setup.disc.n_layers,
                                   "use_actnorm": setup.disc.use_actnorm}}
    summary["model_dir"] = checkpointing.save_model_dir(os.path.join(workdir, "model"),
                                                        variables, model_cfg)
  if is_main:
    with open(os.path.join(workdir, "summary.json"), "w") as f:
      json.dump(summary, f, indent=2)
  return summary
