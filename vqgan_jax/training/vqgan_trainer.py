"""What VQGAN training adds to the shared loop: its task (state, step, data, eval, grids).

`train_and_evaluate(config, workdir)` runs `loop.train` with a `VQGANTask`: the setup
of `vqgan_lib.build_setup`, its jitted steps over the config's mesh and sharding rules,
image batches from `vqgan_jax.data.pipeline`, validation (L1, LPIPS, PSNR, SSIM, code
usage and perplexity over the whole validation split; rFID with `eval.inception`), fixed input | reconstruction
grids, and the exported model directory (kind "vqgan").
"""

from typing import Any, Dict, Optional

import jax
import numpy as np
from absl import logging

from vqgan_jax.nn.lpips import load_pretrained_lpips
from vqgan_jax.training import config_lib, loop, sharding, steps as steps_lib
from vqgan_jax.training import vqgan_config, vqgan_lib


class VQGANTask(loop.TrainTask):
  """The VQGAN's side of the loop (see loop.TrainTask)."""

  loss_key = "total_loss"

  def __init__(self, config, workdir: str):
    from vqgan_jax.data import pipeline
    self.config, self.workdir = config, workdir
    self.setup = vqgan_lib.build_setup(config)
    self.mesh = sharding.make_mesh(config.mesh.data, config.mesh.fsdp)
    self.steps = vqgan_lib.CompiledSteps(self.setup, self.mesh,
                                         config_lib.sharding_rules(config))
    self.abstract_state = self.steps.abstract_state
    self.lpips = None
    if self.setup.lpips is not None:
      self.lpips = self.steps.put_lpips(load_pretrained_lpips(config.loss.lpips_weights or None))
    # Image folders are prepared once, by process 0; the others then find them ready.
    counts = loop.main_process_first(lambda: pipeline.prepare_data(config.data, workdir),
                                     "vqgan_jax:prepare_data")
    self.num_eval = counts["eval"]
    self._grid_batch = None
    self.inception, self._real_fid = None, None
    inception = config.get("eval", {}).get("inception", "")
    if inception:
      from vqgan_jax.nn.inception import load_inception
      try:
        variables = load_inception(inception)
      except (OSError, ValueError) as e:
        raise loop.TrainingError(f"eval.inception: {e}") from None
      self.inception = jax.device_put(variables, self.steps.inception_sharding)

  def _batch_kwargs(self):
    return dict(process_index=jax.process_index(), process_count=jax.process_count(),
                workdir=self.workdir)

  def init_state(self, rng):
    return self.steps.init(rng)

  def init_from(self, path: str, rng):
    """Weights of a model directory or taming .ckpt, checked key by key against the model."""
    from vqgan_jax.api import read_model
    try:
      cfg, variables = read_model(path)
    except (OSError, ValueError, KeyError) as e:
      raise loop.TrainingError(f"init_from: {e}") from None
    if "vqgan" not in variables:
      raise loop.TrainingError(f"init_from: {path} holds no VQGAN (it has {sorted(variables)})")
    a = self.abstract_state
    errors = steps_lib.tree_shape_errors(dict(a.model_state, params=a.ae_params),
                                         variables["vqgan"], f"init_from {path}")
    if errors:
      raise loop.TrainingError(
          "init_from: the checkpoint's VQGAN does not fit the config's model (set the "
          "config's model fields to the checkpoint's architecture):\n  " + "\n  ".join(errors))
    out = {"vqgan": variables["vqgan"]}
    if "discriminator" in variables:
      expected = dict(a.d_state, params=a.d_params)
      if steps_lib.tree_shape_errors(expected, variables["discriminator"], path):
        logging.warning("init_from: the checkpoint's discriminator %s differs from the "
                        "config's; starting the discriminator from scratch",
                        cfg.get("discriminator"))
      else:
        out["discriminator"] = variables["discriminator"]
    return self.steps.init(rng, out)

  def fingerprint(self) -> Dict[str, Any]:
    return config_lib.fingerprint(self.config, vqgan_config.RESUME_FIELDS)

  def train_batches(self, start_step: int):
    from vqgan_jax.data import pipeline
    it = pipeline.create_train_iterator(
        self.config.data, global_batch_size=int(self.config.batch_size),
        seed=int(self.config.seed), start_step=start_step, **self._batch_kwargs())
    for batch in it:
      yield sharding.global_batch(batch, self.mesh)

  def train_step(self, state, batch):
    return self.steps.train(state, self.lpips, batch)

  def learning_rate(self, step: int) -> float:
    return vqgan_config.learning_rate(self.config)

  def evaluate(self, state) -> Optional[Dict[str, float]]:
    """Means over the whole validation split, the codebook's usage on it and, with
    eval.inception, the rFID of the reconstructions against the validation images."""
    from vqgan_jax import fid
    from vqgan_jax.data import pipeline
    if not self.num_eval:
      return None
    real = fid.FeatureSet() if self.inception is not None and self._real_fid is None else None
    totals = vqgan_lib.ReconstructionTotals(
        real, fid.FeatureSet() if self.inception is not None else None)
    for batch in pipeline.create_eval_iterator(
        self.config.data, global_batch_size=int(self.config.batch_size), **self._batch_kwargs()):
      batch = sharding.global_batch(batch, self.mesh)
      if self.inception is None:
        out = self.steps.eval(state, self.lpips, batch)
      else:
        out = self.steps.eval_with_inception(state, self.lpips, batch, self.inception)
      totals.add(jax.device_get(out))
    result = {f"val/{k}": v for k, v in totals.means().items()}
    if totals.fake is not None:
      if real is not None:  # the validation images do not change: their statistics are kept
        self._real_fid = real.mu_sigma()
      result["val/rfid"] = fid.scores(self._real_fid, totals.fake)["fid"]
    return result

  def _grid_inputs(self):
    """The grid's images on the mesh: the first validation images (else the first
    training batch of the run), so a resumed run shows the same ones."""
    from vqgan_jax.data import pipeline
    if self._grid_batch is None:
      n = int(self.config.num_images)
      devices = self.mesh.devices.size
      gb = -(-n // devices) * devices
      if self.num_eval:
        it = pipeline.create_eval_iterator(self.config.data, global_batch_size=gb,
                                           **self._batch_kwargs())
        rows = min(n, self.num_eval)
      else:
        it = pipeline.create_train_iterator(self.config.data, global_batch_size=gb,
                                            seed=int(self.config.seed), start_step=0,
                                            **self._batch_kwargs())
        rows = n
      local = next(it)
      it.close()
      self._grid_batch = (sharding.global_batch({"image": local["image"]}, self.mesh)["image"],
                          rows)
    return self._grid_batch

  def image_grid(self, state) -> Optional[np.ndarray]:
    """uint8 grid: input | reconstruction, one image per row (same on every process)."""
    from vqgan_jax.images import image_grid
    if not self.config.num_images:
      return None
    images, rows = self._grid_inputs()
    x, rec = jax.device_get(self.steps.reconstruct(state, images))
    return image_grid([x[:rows], rec[:rows]])

  def export(self, state, directory: str) -> str:
    from vqgan_jax import model_dir
    setup = self.setup
    variables = {"vqgan": dict(jax.device_get(state.model_state),
                               params=jax.device_get(state.ae_params)),
                 "discriminator": dict(jax.device_get(state.d_state),
                                       params=jax.device_get(state.d_params))}
    model_cfg = {"vqgan": setup.model.config.to_dict(), "loss": self.config.loss.to_dict(),
                 "discriminator": {"input_nc": setup.disc.input_nc, "ndf": setup.disc.ndf,
                                   "n_layers": setup.disc.n_layers,
                                   "use_actnorm": setup.disc.use_actnorm}}
    return model_dir.save_model_dir(directory, variables, model_cfg, kind="vqgan")


def train_and_evaluate(config, workdir: str) -> Dict[str, Any]:
  """Runs (or resumes) VQGAN training; returns the loop's summary."""
  if config.compilation_cache_dir:
    jax.config.update("jax_compilation_cache_dir", config.compilation_cache_dir)
  return loop.train(config, workdir, VQGANTask(config, workdir))
