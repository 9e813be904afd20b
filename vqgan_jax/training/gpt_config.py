"""The transformer training config: its own fields on top of config_lib's, and their checks.

The first stage is defined once: `first_stage` points at its model directory (or taming
.ckpt), and the vocabulary (`transformer.vocab_size = -1`), the latent grid and the
block size (`transformer.block_size = -1`: conditioning + image tokens - 1) are read
from it and from the data: extracted codes (`data.codes`, written by
`python -m vqgan_jax.extract_codes`, whose metadata names the VQGAN) or images encoded
on the fly (`data.on_the_fly`).
"""

import dataclasses
from typing import List

import ml_collections

from vqgan_jax.net2net import COND_KINDS, Net2NetConfig
from vqgan_jax.nn.gpt import GPTConfig
from vqgan_jax.training import config_lib

SCHEDULES = ("constant", "cosine")


def base_config() -> ml_collections.ConfigDict:
  """The generic fields (config_lib.base_config) plus the transformer's own."""
  from vqgan_jax.data.config import default_data_config
  c = config_lib.base_config()
  c.sharding_rules = ((r".*(kernel|embedding|pos_emb)$", "fsdp"), (r".*", "replicate"))
  c.first_stage = ""               # VQGAN model dir or taming .ckpt ("" = the codes' VQGAN)
  c.first_stage_yaml = ""          # its taming project YAML, for a .ckpt
  c.cond_stage = ""                # cond VQGAN for net2net.cond = "vq" ("" = the codes')
  c.cond_stage_yaml = ""
  # minGPT (GPTConfig); -1: derived from the first stage and the conditioning.
  c.transformer = ml_collections.ConfigDict(dict(
      dataclasses.asdict(GPTConfig()), vocab_size=-1, block_size=-1))
  # taming's Net2NetTransformer fields (Net2NetConfig), the grids come from the data.
  n2n = dataclasses.asdict(Net2NetConfig())
  for k in ("z_shape", "cond_shape", "first_stage_key", "cond_stage_key"):
    n2n.pop(k)
  c.net2net = ml_collections.ConfigDict(n2n)
  # AdamW as taming's configure_optimizers: betas (0.9, 0.95), weight decay 0.01 on the
  # Dense kernels only; lr = base_learning_rate x global batch (main.py's rule).
  c.optim.update(dict(base_learning_rate=4.5e-6, b1=0.9, b2=0.95, weight_decay=0.01,
                      schedule="constant", warmup_steps=0, min_lr_ratio=0.0,
                      grad_clip_norm=0.0))
  c.data = ml_collections.ConfigDict(dict(
      codes="",                    # a code dataset directory (extract_codes)
      train_split="train",
      val_split="validation",      # "" = no validation
      on_the_fly=False,            # encode images from `data.images` inside the step
      images=default_data_config(),
  ))
  # Sample grids every image_every steps: greedy and top-k, as taming's log_images.
  c.sample = ml_collections.ConfigDict(dict(top_k=100, top_p=-1.0, temperature=1.0))
  c.image_every = 1000
  c.num_images = 4
  return c


# What a resume must find unchanged, beyond config_lib.RESUME_FIELDS.
RESUME_FIELDS = config_lib.RESUME_FIELDS + (
    "first_stage", "cond_stage", "transformer", "net2net", "data.codes", "data.train_split",
    "data.on_the_fly")


def learning_rate(config) -> float:
  """optim.learning_rate if set, else taming's base_learning_rate x global batch."""
  return config_lib.learning_rate(config, config.optim.base_learning_rate)


def validate_config(config, num_devices: int = 1, process_count: int = 1) -> List[str]:
  """One message per bad field (generic and transformer's); the sizes that depend on the
  first stage are checked once it is loaded (gpt_lib.build_setup)."""
  errors = config_lib.validate_base(config, num_devices, process_count)
  t = config.transformer
  try:
    fields = dict(t.to_dict())
    for k in ("vocab_size", "block_size"):
      if fields[k] == -1:
        fields[k] = 1  # derived later
    errors += [f"transformer.{e}" for e in GPTConfig(**fields).validate()]
  except TypeError as e:
    errors.append(f"transformer: {e}")
  n = config.net2net
  if n.cond not in COND_KINDS:
    errors.append(f"net2net.cond: expected one of {COND_KINDS}, got {n.cond!r}")
  if not 0.0 <= float(n.pkeep) <= 1.0:
    errors.append(f"net2net.pkeep: expected a probability in [0, 1], got {n.pkeep}")
  if not 0.0 <= float(n.label_dropout) < 1.0:
    errors.append(f"net2net.label_dropout: expected a probability in [0, 1), got "
                  f"{n.label_dropout}")
  if n.cond == "first_stage":
    errors.append("net2net.cond: 'first_stage' conditioning (taming's __is_first_stage__) "
                  "converts and samples, but training it needs the conditioning images' "
                  "codes, which code datasets do not hold; use 'vq' with the first stage as "
                  "--cond_vqgan when extracting")
  d = config.data
  if bool(d.codes) == bool(d.on_the_fly):
    errors.append("data: set exactly one of data.codes (a directory written by "
                  "`python -m vqgan_jax.extract_codes`) and data.on_the_fly=True (encode "
                  "data.images in the step)")
  if d.on_the_fly:
    from vqgan_jax.data.config import validate_data_config
    errors += [e.replace("data.", "data.images.", 1) if e.startswith("data.") else
               f"data.images: {e}" for e in validate_data_config(d.images)]
    if n.cond != "sos":
      errors.append(f"data.on_the_fly: encodes the images only (unconditional); a "
                    f"{n.cond!r} conditioning needs extracted codes (data.codes)")
    if not config.first_stage:
      errors.append("first_stage: data.on_the_fly needs the VQGAN (a model directory or "
                    "taming .ckpt)")
  o = config.optim
  if o.learning_rate <= 0 and o.base_learning_rate <= 0:
    errors.append("optim.base_learning_rate: expected > 0 (or set optim.learning_rate)")
  if float(o.weight_decay) < 0:
    errors.append(f"optim.weight_decay: expected >= 0, got {o.weight_decay}")
  if o.schedule not in SCHEDULES:
    errors.append(f"optim.schedule: expected one of {SCHEDULES}, got {o.schedule!r}")
  if int(o.warmup_steps) < 0:
    errors.append(f"optim.warmup_steps: expected >= 0, got {o.warmup_steps}")
  if not 0.0 <= float(o.min_lr_ratio) <= 1.0:
    errors.append(f"optim.min_lr_ratio: expected a value in [0, 1], got {o.min_lr_ratio}")
  if float(o.grad_clip_norm) < 0:
    errors.append(f"optim.grad_clip_norm: expected >= 0 (0: no clipping), got "
                  f"{o.grad_clip_norm}")
  s = config.sample
  if not float(s.temperature) > 0:
    errors.append(f"sample.temperature: expected > 0, got {s.temperature}")
  if int(s.top_k) < 0:
    errors.append(f"sample.top_k: expected >= 0 (0: no top-k), got {s.top_k}")
  if float(s.top_p) > 1.0:
    errors.append(f"sample.top_p: expected <= 1 (< 0: no top-p), got {s.top_p}")
  return errors


VARIANTS = ("small",)


def recipe(c: ml_collections.ConfigDict, arg, where: str) -> ml_collections.ConfigDict:
  """`c`, or its `:small` variant; any other variant is an error naming the known ones."""
  return make_small(c) if config_lib.parse_variant(arg, VARIANTS, where) == "small" else c


def make_small(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """The `:small` variant of any recipe: a 4-layer, width-128 GPT that trains on 2 CPU
  cores in minutes, with the recipe's conditioning and permuter."""
  c.transformer.update(dict(n_layer=4, n_head=4, n_embd=128, scan_layers=False,
                            remat="none", dtype="float32"))
  c.batch_size = 16
  c.optim.learning_rate = 1e-3
  c.optim.schedule = "cosine"
  c.optim.warmup_steps = 50
  c.optim.min_lr_ratio = 0.1
  c.optim.grad_clip_norm = 1.0
  c.total_steps = 1000
  c.log_every = 50
  c.image_every = 500
  c.eval_every = 500
  c.ckpt_every = 250
  c.num_images = 4
  c.mesh.fsdp = 1
  return c
