"""Helpers for the data tests: generated images and small utilities.

"ID images": image i has channel 0 constant at `id_value(i)` and random texture in
channels 1 and 2, so the example behind any crop is known (`ids_of`) while different
crops still differ.
"""

import os

import numpy as np
from PIL import Image


def id_value(i: int) -> int:
  """Channel-0 value (uint8) of ID image i (i < 24)."""
  return 8 + 10 * i


def ids_of(images: np.ndarray) -> np.ndarray:
  """int[B]: the ID of each float32[B, S, S, 3] image in [-1, 1] (-1 if not constant)."""
  if images.shape[0] == 0:
    return np.zeros((0,), np.int64)
  ch0 = np.round((images[..., 0] + 1.0) * 127.5).astype(np.int64)
  flat = ch0.reshape(ch0.shape[0], -1)
  ids = (flat[:, 0] - 8) // 10
  constant = (flat == flat[:, :1]).all(axis=1) & ((flat[:, 0] - 8) % 10 == 0)
  return np.where(constant, ids, -1)


def id_image(i: int, height: int, width: int, seed: int = 0) -> np.ndarray:
  """uint8[height, width, 3]: ID image i."""
  rng = np.random.default_rng([seed, i])
  img = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
  img[..., 0] = id_value(i)
  return img


def write_id_images(folder, n: int, size=(40, 48), ext: str = "png", subdirs: bool = True):
  """Writes ID images 0..n-1 as <folder>/[d<i%2>/]img_<i>.<ext>; returns their paths.

  Sizes vary a little around `size` (height, width), so resizing and crop offsets vary.
  """
  paths = []
  for i in range(n):
    sub = os.path.join(str(folder), f"d{i % 2}") if subdirs else str(folder)
    os.makedirs(sub, exist_ok=True)
    path = os.path.join(sub, f"img_{i:02d}.{ext}")
    h, w = size[0] + (i % 3) * 4, size[1] + (i % 4) * 5
    Image.fromarray(id_image(i, h, w)).save(path)
    paths.append(path)
  return paths


def make_data_config(**overrides):
  from vqgan_jax.data.pipeline import default_data_config
  cfg = default_data_config()
  cfg.crop_size = 32
  cfg.prefetch = 1
  for k, v in overrides.items():
    setattr(cfg, k, v)
  return cfg


def take(iterator, n: int):
  """The next n batches of `iterator`, as a list."""
  return [next(iterator) for _ in range(n)]
