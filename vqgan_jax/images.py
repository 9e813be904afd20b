"""Image files and image arrays: listing, reading, conversions, grids, PNG writing.

The one place (numpy + PIL only, PIL imported on first use) for what the dataset
builder, the CLIs and the trainers share:
  `IMAGE_EXTENSIONS`   file endings picked up when a folder is searched.
  `list_images`        a folder (recursive) or a text list -> sorted/listed paths.
  `expand_image_args`  CLI arguments (files, folders, .txt lists) -> paths.
  `to_rgb_uint8`       any PIL mode -> uint8[H, W, 3] (the dataset's rules).
  `read_image`         a file -> uint8[H, W, 3] through `to_rgb_uint8`.
  `load_image`         a file -> float32[H, W, 3] in [-1, 1], taming's notebook
                       preprocessing (Lanczos resize of the smaller side, centre crop).
  `to_uint8` / `to_float`  [-1, 1] floats <-> uint8.
  `image_grid`         columns of image batches -> one uint8 grid, one example per row.
  `save_png`           writes a uint8 array, creating parent folders.
"""

import os
from typing import List, Sequence

import numpy as np

# Image-file extensions picked up when a folder is searched (lower case, with the dot).
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".gif", ".tif", ".tiff")

# Extension of a text file listing images, one path per line (CLI arguments).
IMAGE_LIST_EXTENSION = ".txt"


def is_image_file(path: str) -> bool:
  """Whether `path` ends with one of `IMAGE_EXTENSIONS` (case-insensitive)."""
  return os.path.splitext(path)[1].lower() in IMAGE_EXTENSIONS


def list_images(path: str) -> List[str]:
  """Returns the absolute image paths named by `path`, sorted.

  `path` is a folder (searched recursively, following links once, for the extensions
  in `IMAGE_EXTENSIONS`, case-insensitive) or a text file with one path per line
  (blank lines and lines starting with '#' ignored; relative paths are relative to the
  text file's folder; listed order is kept, duplicates are kept).

  Raises:
    FileNotFoundError: `path` does not exist.
  """
  path = os.path.abspath(os.path.expanduser(path))
  if os.path.isdir(path):
    found, seen = [], set()
    for root, dirs, files in os.walk(path, followlinks=True):
      real = os.path.realpath(root)
      if real in seen:  # a link cycle
        dirs[:] = []
        continue
      seen.add(real)
      dirs.sort()
      found.extend(os.path.join(root, f) for f in files if is_image_file(f))
    return sorted(found)
  base = os.path.dirname(path)
  with open(path, "r", encoding="utf-8") as f:
    lines = [line.strip() for line in f]
  return [os.path.normpath(os.path.join(base, os.path.expanduser(line)))
          for line in lines if line and not line.startswith("#")]


def expand_image_args(inputs: Sequence[str]) -> List[str]:
  """CLI image arguments -> image paths, in argument order.

  Each input is a folder (-> `list_images`: recursive, sorted, absolute paths), a text
  file ending in '.txt' (-> `list_images`: one path per line) or any other file (an
  image, kept as given).

  Raises:
    FileNotFoundError: naming the input, when it does not exist or when a folder or
      list holds no image; also when `inputs` is empty.
  """
  paths = []
  for p in inputs:
    if os.path.isdir(p):
      found = list_images(p)
      if not found:
        raise FileNotFoundError(f"no images in folder {p!r} (looked recursively for "
                                f"{', '.join(IMAGE_EXTENSIONS)} files)")
    elif os.path.isfile(p):
      if not p.lower().endswith(IMAGE_LIST_EXTENSION):
        paths.append(p)
        continue
      found = list_images(p)
      if not found:
        raise FileNotFoundError(f"no image paths listed in {p!r}")
    else:
      raise FileNotFoundError(f"image input {p!r} is neither a file nor a folder")
    paths.extend(found)
  if not paths:
    raise FileNotFoundError("no image inputs given")
  return paths


def to_rgb_uint8(img) -> np.ndarray:
  """A PIL image in any mode -> uint8[H, W, 3].

  Rules (the dataset builder stores exactly this, see `vqgan_jax.data.local_builder`):
   - RGB: as is. L, P, CMYK, YCbCr, ...: PIL's `convert("RGB")` (CMYK: plain formula).
   - RGBA, LA, PA, P with transparency: composited on white (transparent pixels have
     no defined colour, so white is used rather than whatever RGB they store).
   - 16-bit (I;16*) and 32-bit int (I) grey: clipped to [0, 65535], round(x / 257).
   - float (F) grey: clipped to [0, 1], round(x * 255).
  Animated images give the frame `img` is at (the first one after `Image.open`).
  """
  from PIL import Image
  mode = img.mode
  if mode == "RGB":
    return np.asarray(img, dtype=np.uint8)
  if mode.startswith("I;16") or mode == "I":
    a = np.asarray(img).astype(np.float64)
    a = np.round(np.clip(a, 0, 65535) / 257.0).astype(np.uint8)
    return np.repeat(a[..., None], 3, axis=-1)
  if mode == "F":
    a = np.round(np.clip(np.asarray(img, dtype=np.float64), 0, 1) * 255).astype(np.uint8)
    return np.repeat(a[..., None], 3, axis=-1)
  has_alpha = mode in ("RGBA", "LA", "PA", "RGBa", "La") or (
      mode == "P" and "transparency" in img.info)
  if has_alpha:
    rgba = img.convert("RGBA")
    white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    return np.asarray(Image.alpha_composite(white, rgba).convert("RGB"), dtype=np.uint8)
  return np.asarray(img.convert("RGB"), dtype=np.uint8)


def read_image(path) -> np.ndarray:
  """Reads an image file (a path, or a binary file object such as io.BytesIO of encoded
  bytes) as uint8[H, W, 3] (modes converted by `to_rgb_uint8`).

  Raises:
    OSError: the file is missing, truncated or not an image PIL can read
      (`PIL.UnidentifiedImageError` is an OSError).
  """
  from PIL import Image
  with Image.open(path) as img:
    img.load()
    return to_rgb_uint8(img)


def load_image(path: str, size: int, factor: int, crop: bool = True) -> np.ndarray:
  """Reads an image as float32[H, W, 3] in [-1, 1], preprocessed like taming's notebook.

  Args:
    path: image file, read through `read_image` (so every mode becomes RGB as in the
      dataset).
    size: with `crop`, the smaller side is resized to `size` (Lanczos) and the centre
      `size` x `size` square is cut out; H = W = size.
    factor: without `crop`, the image keeps its size, cut down (bottom/right) to a
      multiple of `factor` on each side.
    crop: see above.
  """
  from PIL import Image
  im = Image.fromarray(read_image(path), "RGB")
  w, h = im.size
  if crop:
    r = size / min(w, h)
    im = im.resize((max(size, round(r * w)), max(size, round(r * h))), Image.LANCZOS)
    w, h = im.size
    left, top = (w - size) // 2, (h - size) // 2
    im = im.crop((left, top, left + size, top + size))
  else:
    im = im.crop((0, 0, w - w % factor, h - h % factor))
  return to_float(np.asarray(im))


def to_uint8(x) -> np.ndarray:
  """float[...] in [-1, 1] (clipped) -> uint8[...]: round((x + 1) * 127.5)."""
  x = np.asarray(x, np.float32)
  return np.round((np.clip(x, -1.0, 1.0) + 1.0) * 127.5).astype(np.uint8)


def to_float(x) -> np.ndarray:
  """uint8[...] -> float32[...] in [-1, 1]: x / 127.5 - 1 (inverse of `to_uint8`)."""
  return np.asarray(x, np.float32) / 127.5 - 1.0


def image_grid(columns: Sequence) -> np.ndarray:
  """Image batches shown side by side, one example per row.

  Args:
    columns: k arrays float32[N, H, W, C] in [-1, 1] (C = 1 or 3), e.g.
      (inputs, reconstructions).
  Returns:
    uint8[N * H, k * W, 3]: row i holds example i of each column, left to right;
    1-channel images are repeated to RGB.
  """
  pairs = np.concatenate([np.asarray(c, np.float32) for c in columns], axis=2)  # N,H,kW,C
  grid = pairs.reshape(-1, *pairs.shape[2:])                                     # NH,kW,C
  img = to_uint8(grid)
  return np.repeat(img, 3, axis=-1) if img.shape[-1] == 1 else img


def save_png(path: str, image: np.ndarray) -> str:
  """Writes uint8[H, W, 3] (or [H, W, 1] / [H, W]) as a PNG, creating parent folders.

  Returns `path`.
  """
  from PIL import Image
  image = np.asarray(image)
  if image.dtype != np.uint8:
    raise ValueError(f"save_png({path!r}): expected uint8 pixels, got {image.dtype} "
                     "(convert [-1, 1] floats with to_uint8)")
  if image.ndim == 3 and image.shape[-1] == 1:
    image = image[..., 0]
  parent = os.path.dirname(path)
  if parent:
    os.makedirs(parent, exist_ok=True)
  Image.fromarray(image).save(path, format="PNG")
  return path


def torch_nearest_index(size_in: int, size_out: int) -> np.ndarray:
  """Source index of each output pixel of torch's F.interpolate(mode="nearest") on one
  axis: floorf(d * (float)in / out), in float32 as ATen computes it."""
  d = np.arange(size_out)
  if size_out == size_in:
    return d
  scale = np.float32(size_in) / np.float32(size_out)
  return np.minimum(np.floor(d.astype(np.float32) * scale), size_in - 1).astype(np.int64)


def torch_nearest(x, out_h: int, out_w: int):
  """x[H, W, ...] resized as torch's F.interpolate(mode="nearest")."""
  return x[torch_nearest_index(x.shape[0], out_h)][:, torch_nearest_index(x.shape[1], out_w)]


def read_single_channel(value) -> np.ndarray:
  """A depth / label map (file path, encoded bytes, or array) as an array[H, W]; taming's
  depth PNGs (float32 packed into RGBA bytes) are unpacked."""
  if isinstance(value, np.ndarray) and value.dtype != object:
    a = value
  else:
    import io
    from PIL import Image
    src = io.BytesIO(value) if isinstance(value, (bytes, np.bytes_)) else value
    with Image.open(src) as img:
      img.load()
      if img.mode == "RGBA":  # taming's depth PNGs: float32 packed into 4 x uint8
        a = np.ascontiguousarray(np.asarray(img, np.uint8)).view(np.float32)[..., 0]
      elif img.mode in ("L", "P", "F", "I") or img.mode.startswith("I;16"):
        a = np.asarray(img)
      else:
        raise ValueError(f"PIL mode {img.mode}, expected a single-channel image")
  if a.ndim == 3 and a.shape[-1] == 1:
    a = a[..., 0]
  if a.ndim != 2 or not a.size:
    raise ValueError(f"shape {a.shape}, expected [H, W] or [H, W, 1]")
  return a


def unique_name(name: str, used: set) -> str:
  """`name`, or `name_2`, `name_3`, ... if taken (same file name in two subfolders)."""
  unique, k = name, 1
  while unique in used:
    k += 1
    unique = f"{name}_{k}"
  used.add(unique)
  return unique
