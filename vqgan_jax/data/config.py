"""The data config: its fields, their defaults, and their validation.

`default_data_config()` is the one place that lists every field of `config.data`.
`validate_data_config(cfg)` returns one message per bad field (empty list: the config
is good); `check_data_config(cfg)` raises a `ValueError` holding all of them.

Which source feeds which split:
  train: `train_images` (a folder or a .txt list) if set, else TFDS `name`/`train_split`.
  eval:  `val_images` if set, else TFDS `name`/`val_split` if both are set, else none.
"""

import os
from typing import Any, List

import ml_collections


def default_data_config() -> ml_collections.ConfigDict:
  """Returns `config.data` with every field at its default."""
  c = ml_collections.ConfigDict()
  # TFDS dataset name, optionally with config/version ("imagenet2012", "celeb_a:2.1.0");
  # "" when the data comes from `train_images`.
  c.name = ""
  # Where TFDS datasets are read from (a local path or "gs://..."); "" = TFDS's default
  # (~/tensorflow_datasets). Nothing is ever downloaded.
  c.data_dir = ""
  # TFDS split names; slices work ("train[:90%]"). `val_split` "" = no TFDS eval data.
  c.train_split = "train"
  c.val_split = "validation"
  # Feature holding the image in TFDS examples; nested features as "a/b".
  c.image_key = "image"
  # A folder of images (searched recursively) or a text file with one image path per
  # line (relative paths are relative to the text file's folder). Wins over `name`.
  c.train_images = ""
  c.val_images = ""
  # Where image folders/lists are turned into TFDS datasets; "" = <workdir>/data.
  c.prepared_dir = ""
  # Output images are crop_size x crop_size: smallest side resized to crop_size, then
  # a random (train) or centre (eval) crop, as taming's ImagePaths.
  c.crop_size = 256
  # Random horizontal flips of training images (taming does not flip: off by default).
  c.flip = False
  # Shuffle buffer (examples) for TFDS datasets stored as tfrecord (no random access).
  c.shuffle_buffer = 4096
  # Batches prepared ahead of the training step.
  c.prefetch = 2
  return c


_STR_FIELDS = ("name", "data_dir", "train_split", "val_split", "image_key", "train_images",
               "val_images", "prepared_dir")


def _get(cfg: Any, field: str) -> Any:
  if isinstance(cfg, dict):
    return cfg.get(field, _MISSING)
  return getattr(cfg, field, _MISSING)


_MISSING = object()


def _is_int(x: Any) -> bool:
  return isinstance(x, int) and not isinstance(x, bool)


def validate_data_config(cfg: Any) -> List[str]:
  """Returns one message per bad field of `cfg` (a ConfigDict, dict or object).

  Each message names the field (`data.<field>`), what it holds and what was expected.
  Missing fields, wrong types, unknown keys (ConfigDict/dict only), paths that do not
  exist, and a config with no training source are reported.
  """
  errors = []
  defaults = default_data_config()
  known = set(defaults.keys())
  if isinstance(cfg, (dict, ml_collections.ConfigDict)):
    for key in sorted(set(cfg.keys()) - known):
      errors.append(f"data.{key}: unknown field (known fields: {', '.join(sorted(known))})")

  values = {}
  for field in sorted(known):
    value = _get(cfg, field)
    if value is _MISSING:
      errors.append(f"data.{field}: missing (default: {defaults[field]!r})")
    values[field] = value

  for field in _STR_FIELDS:
    v = values[field]
    if v is _MISSING:
      continue
    if v is None and field in ("data_dir", "prepared_dir"):
      continue
    if not isinstance(v, str):
      errors.append(f"data.{field}: expected a string, got {type(v).__name__} {v!r}")

  for field, minimum in (("crop_size", 1), ("shuffle_buffer", 1), ("prefetch", 0)):
    v = values[field]
    if v is not _MISSING and (not _is_int(v) or v < minimum):
      errors.append(f"data.{field}: expected an int >= {minimum}, got {v!r}")
  v = values["flip"]
  if v is not _MISSING and not isinstance(v, bool):
    errors.append(f"data.flip: expected a bool, got {v!r}")

  def s(field):  # the string value, or "" when missing/bad (already reported)
    v = values[field]
    return v if isinstance(v, str) else ""

  for field in ("train_images", "val_images"):
    path = s(field)
    if path and not os.path.exists(path):
      errors.append(f"data.{field}: {path!r} does not exist (expected an image folder or "
                    "a text file listing image paths)")
  if not s("train_images") and not s("name"):
    errors.append("data.name / data.train_images: no training data (expected a TFDS "
                  "dataset name in data.name or an image folder/list in data.train_images)")
  if s("name") and not s("train_images") and not s("train_split"):
    errors.append("data.train_split: empty (expected a TFDS split such as 'train')")
  if (s("name") and not s("train_images")) or (s("name") and s("val_split")
                                               and not s("val_images")):
    if not s("image_key"):
      errors.append("data.image_key: empty (expected the TFDS image feature, e.g. 'image')")
  return errors


def check_data_config(cfg: Any) -> None:
  """Raises `ValueError` listing every bad field of `cfg` (see `validate_data_config`)."""
  errors = validate_data_config(cfg)
  if errors:
    raise ValueError("Invalid data config:\n  " + "\n  ".join(errors))


def eval_source_kind(cfg: Any) -> str:
  """Says where eval data comes from: "images", "tfds" or "" (no eval data)."""
  if cfg.val_images:
    return "images"
  if cfg.name and cfg.val_split:
    return "tfds"
  return ""
