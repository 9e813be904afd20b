"""The fields every trainer shares, their validation, and strict config variants.

A trainer's config = `base_config()` + its own parts (`model`, `loss`, `data`, ...).
`validate_base(config, ...)` returns one message per bad generic field; each trainer
adds the messages of its own fields. Recipes in `configs/*.py` parse their argument with
`parse_variant`, so `configs/x.py:smal` is an error naming the known variants instead of
silently giving the full-size model.
"""

import os
import re
from typing import Dict, List, Sequence, Tuple

import ml_collections

# (regex over the '/'-joined param path, rule), first match wins; see sharding.py.
DEFAULT_SHARDING_RULES = ((r".*(kernel|embedding)$", "fsdp"), (r".*", "replicate"))
SHARDING_RULE_KINDS = ("fsdp", "replicate")
ACCUM_LOOPS = ("unrolled", "scan")
# Generic fields a resume must find unchanged (each trainer adds its model/data fields).
RESUME_FIELDS = ("seed", "batch_size", "optim.accum_steps", "dtype")


def base_config() -> ml_collections.ConfigDict:
  """The generic fields with their defaults (no model, loss or data)."""
  c = ml_collections.ConfigDict()
  c.batch_size = 12                # global batch, all processes together
  c.total_steps = 100000
  c.seed = 23                      # taming's default seed
  c.dtype = "float32"              # compute dtype: float32 or bfloat16 (params stay fp32)
  c.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1))
  # Tuples, not lists: ml_collections only overrides tuples from the command line.
  c.sharding_rules = DEFAULT_SHARDING_RULES
  c.optim = ml_collections.ConfigDict(dict(
      learning_rate=-1.0,          # > 0: this learning rate; else the trainer's rule
      b1=0.9,
      b2=0.999,
      eps=1e-8,
      accum_steps=1,               # micro-batches per global batch (gradient accumulation)
      # How micro-batches are looped: "unrolled" at trace time (XLA:CPU runs convolutions
      # inside a while loop ~10x slower) or "scan" (compile time independent of accum_steps).
      accum_loop="unrolled",
  ))
  c.init_from = ""                 # weights to start from (fine-tuning)
  c.allow_resume_changes = False   # resume even if seed/batch/model differ from the checkpoint
  c.log_every = 50
  c.image_every = 750
  c.num_images = 8
  c.eval_every = 2000
  c.ckpt_every = 1000
  c.keep_ckpts = 3
  c.compilation_cache_dir = ""
  return c


def parse_variant(arg, known: Sequence[str], where: str) -> str:
  """The recipe variant named by `arg` ("" or None: the full recipe).

  Raises ValueError naming `where` (the config file) and the known variants for
  anything else, a typo included.
  """
  arg = (arg or "").strip()
  if arg and arg not in known:
    raise ValueError(f"{where}: unknown config variant {arg!r}; known variants: "
                     f"{', '.join(known)} (or none, for the full recipe)")
  return arg


def _get(config, dotted: str):
  for part in dotted.split("."):
    config = config[part]
  return config


def fingerprint(config, fields: Sequence[str]) -> Dict[str, object]:
  """{dotted field: JSON-able value} of `fields`; a ConfigDict field is expanded."""
  out = {}
  for name in fields:
    value = _get(config, name)
    if isinstance(value, ml_collections.ConfigDict):
      for k, v in value.to_dict().items():
        out[f"{name}.{k}"] = _jsonable(v)
    else:
      out[name] = _jsonable(value)
  return out


def _jsonable(v):
  if isinstance(v, (tuple, list)):
    return [_jsonable(x) for x in v]
  return v


def fingerprint_diff(saved: Dict[str, object], now: Dict[str, object]) -> List[str]:
  """'field: checkpoint X, config Y' for each field of `saved` that `now` changes."""
  out = []
  for k in sorted(saved):
    if k in now and _jsonable(saved[k]) != _jsonable(now[k]):
      out.append(f"{k}: checkpoint {saved[k]!r}, config {now[k]!r}")
  return out


def learning_rate(config, per_example_rate: float = 0.0) -> float:
  """`optim.learning_rate` if > 0, else per_example_rate x global batch (taming's rule)."""
  if config.optim.learning_rate > 0:
    return float(config.optim.learning_rate)
  return float(per_example_rate) * int(config.batch_size)


def _check_rules(rules) -> List[str]:
  errors = []
  try:
    pairs = [tuple(r) for r in rules]
  except TypeError:
    return [f"sharding_rules: expected (regex, rule) pairs, got {rules!r}"]
  for i, pair in enumerate(pairs):
    if len(pair) != 2:
      errors.append(f"sharding_rules[{i}]: expected (regex, rule), got {pair!r}")
      continue
    pattern, rule = pair
    try:
      re.compile(pattern)
    except (re.error, TypeError) as e:
      errors.append(f"sharding_rules[{i}]: {pattern!r} is not a regular expression ({e})")
    if rule not in SHARDING_RULE_KINDS:
      errors.append(f"sharding_rules[{i}]: rule {rule!r} is not one of "
                    f"{list(SHARDING_RULE_KINDS)}")
  return errors


def sharding_rules(config) -> Tuple[Tuple[str, str], ...]:
  return tuple(tuple(r) for r in config.sharding_rules)


def validate_base(config, num_devices: int = 1, process_count: int = 1) -> List[str]:
  """One message per bad generic field, naming it and what was expected."""
  errors = []
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
  if b >= 1 and b % process_count:
    errors.append(f"batch_size: {b} must be a multiple of the {process_count} processes")
  if config.optim.accum_loop not in ACCUM_LOOPS:
    errors.append(f"optim.accum_loop: expected one of {list(ACCUM_LOOPS)}, got "
                  f"{config.optim.accum_loop!r}")
  for name in ("b1", "b2"):
    if not 0 <= float(config.optim[name]) < 1:
      errors.append(f"optim.{name}: expected a value in [0, 1), got {config.optim[name]}")
  if float(config.optim.eps) <= 0:
    errors.append(f"optim.eps: expected > 0, got {config.optim.eps}")
  for name in ("total_steps", "log_every", "image_every", "eval_every", "ckpt_every",
               "keep_ckpts"):
    if int(config[name]) < 1:
      errors.append(f"{name}: expected a positive integer, got {config[name]}")
  if int(config.num_images) < 0:
    errors.append(f"num_images: expected >= 0, got {config.num_images}")
  if config.init_from and not os.path.exists(config.init_from):
    errors.append(f"init_from: {config.init_from} does not exist (expected a model directory "
                  "or a taming .ckpt)")
  data, fsdp = int(config.mesh.data), int(config.mesh.fsdp)
  if fsdp < 1 or (data != -1 and data < 1):
    errors.append(f"mesh: expected data = -1 or >= 1 and fsdp >= 1, got {config.mesh.to_dict()}")
  elif num_devices % fsdp or (data != -1 and data * fsdp != num_devices):
    errors.append(f"mesh: data ({data}) x fsdp ({fsdp}) does not fit the {num_devices} devices "
                  "(data = -1 takes what fsdp leaves)")
  errors += _check_rules(config.sharding_rules)
  return errors
