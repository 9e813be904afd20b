"""`python -m vqgan_jax.reconstruct --checkpoint PATH --images DIR_OR_FILES --out DIR`.

taming's reconstruction notebook as a command: each image is resized (smaller side to
`--size`, Lanczos) and centre-cropped as the notebook does, encoded to codes, decoded,
and written next to its reconstruction as `<name>_recon.png`; `grid.png` stacks all
pairs. Prints L1 and PSNR per image.
"""

import argparse
import os
import sys
from typing import List, Sequence

import numpy as np

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".gif", ".tif", ".tiff")


def list_images(inputs: Sequence[str]) -> List[str]:
  """Expands folders (sorted, non-recursive) and keeps files as given."""
  paths = []
  for p in inputs:
    if os.path.isdir(p):
      paths.extend(os.path.join(p, f) for f in sorted(os.listdir(p))
                   if f.lower().endswith(IMAGE_EXTENSIONS))
    elif os.path.isfile(p):
      paths.append(p)
    else:
      raise FileNotFoundError(f"--images: {p} is neither a file nor a folder")
  if not paths:
    raise FileNotFoundError(f"--images: no images found in {list(inputs)}")
  return paths


def load_image(path: str, size: int, factor: int, crop: bool = True) -> np.ndarray:
  """Reads an image as float32[H, W, 3] in [-1, 1], preprocessed like taming's notebook."""
  from PIL import Image
  with Image.open(path) as im:
    im = im.convert("RGB")
    w, h = im.size
    if crop:
      r = size / min(w, h)
      im = im.resize((max(size, round(r * w)), max(size, round(r * h))), Image.LANCZOS)
      w, h = im.size
      left, top = (w - size) // 2, (h - size) // 2
      im = im.crop((left, top, left + size, top + size))
    else:
      im = im.crop((0, 0, w - w % factor, h - h % factor))
    return np.asarray(im, np.float32) / 127.5 - 1.0


def to_uint8(x: np.ndarray) -> np.ndarray:
  return np.round((np.clip(x, -1.0, 1.0) + 1.0) * 127.5).astype(np.uint8)


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(prog="python -m vqgan_jax.reconstruct", description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--checkpoint", required=True,
                      help="model directory from vqgan_jax.convert, or a taming .ckpt")
  parser.add_argument("--config", default=None, help="taming project YAML for a .ckpt")
  parser.add_argument("--images", required=True, nargs="+", help="image files and/or folders")
  parser.add_argument("--out", required=True, help="output folder")
  parser.add_argument("--size", type=int, default=256, help="crop size (multiple of the factor)")
  parser.add_argument("--no-crop", action="store_true",
                      help="keep each image's own size (cropped to a multiple of the factor)")
  args = parser.parse_args(argv)

  from PIL import Image
  from vqgan_jax.api import load_vqgan
  try:
    vq = load_vqgan(args.checkpoint, args.config)
    paths = list_images(args.images)
  except (FileNotFoundError, ValueError, KeyError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  f = vq.downsample_factor
  if not args.no_crop and args.size % f:
    print(f"error: --size {args.size} is not a multiple of the model's factor {f}",
          file=sys.stderr)
    return 2
  os.makedirs(args.out, exist_ok=True)
  pairs = []
  for path in paths:
    try:
      x = load_image(path, args.size, f, crop=not args.no_crop)
    except OSError as e:
      print(f"warning: skipping {path}: {e}", file=sys.stderr)
      continue
    rec = np.asarray(vq.reconstruct(x[None]))[0]
    l1 = float(np.mean(np.abs(np.clip(rec, -1, 1) - x)))
    mse = float(np.mean(((np.clip(rec, -1, 1) - x) / 2.0) ** 2))
    psnr = 10 * np.log10(1.0 / max(mse, 1e-12))
    pair = np.concatenate([to_uint8(x), to_uint8(rec)], axis=1)
    name = os.path.splitext(os.path.basename(path))[0]
    out_path = os.path.join(args.out, f"{name}_recon.png")
    Image.fromarray(pair).save(out_path)
    print(f"{out_path}: L1 {l1:.4f}  PSNR {psnr:.2f} dB")
    pairs.append(pair)
  if not pairs:
    print("error: no image could be read", file=sys.stderr)
    return 2
  width = max(p.shape[1] for p in pairs)
  grid = np.concatenate([np.pad(p, ((0, 0), (0, width - p.shape[1]), (0, 0))) for p in pairs])
  grid_path = os.path.join(args.out, "grid.png")
  Image.fromarray(grid).save(grid_path)
  print(f"wrote {len(pairs)} side-by-side reconstructions (input | reconstruction) and {grid_path}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
