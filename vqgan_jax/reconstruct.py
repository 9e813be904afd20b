"""`python -m vqgan_jax.reconstruct --checkpoint PATH --images INPUTS --out DIR`.

taming's reconstruction notebook as a command: each image is resized (smaller side to
`--size`, Lanczos) and centre-cropped as the notebook does, encoded to codes, decoded,
and written next to its reconstruction as `<name>_recon.png`; `grid.png` stacks all
pairs. `--images` takes image files, folders (searched recursively) and .txt lists
(one path per line), as `vqgan_jax.images.expand_image_args` reads them. Prints L1,
PSNR and SSIM (`vqgan_jax.metrics`) per image.
"""

import argparse
import os
import sys

import numpy as np

from vqgan_jax.images import expand_image_args, load_image, save_png, to_uint8, unique_name


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(prog="python -m vqgan_jax.reconstruct", description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--checkpoint", required=True,
                      help="model directory from vqgan_jax.convert, or a taming .ckpt")
  parser.add_argument("--config", default=None, help="taming project YAML for a .ckpt")
  parser.add_argument("--images", required=True, nargs="+",
                      help="image files, folders (searched recursively) and/or .txt lists")
  parser.add_argument("--out", required=True, help="output folder")
  parser.add_argument("--size", type=int, default=256, help="crop size (multiple of the factor)")
  parser.add_argument("--no-crop", action="store_true",
                      help="keep each image's own size (cropped to a multiple of the factor)")
  args = parser.parse_args(argv)

  from vqgan_jax import metrics
  from vqgan_jax.api import load_vqgan
  try:
    vq = load_vqgan(args.checkpoint, args.config)
    paths = expand_image_args(args.images)
  except (FileNotFoundError, ValueError, KeyError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  f = vq.downsample_factor
  if not args.no_crop and args.size % f:
    print(f"error: --size {args.size} is not a multiple of the model's factor {f}",
          file=sys.stderr)
    return 2
  os.makedirs(args.out, exist_ok=True)
  pairs, names = [], set()
  for path in paths:
    try:
      x = load_image(path, args.size, f, crop=not args.no_crop)
    except OSError as e:
      print(f"warning: skipping {path}: {e}", file=sys.stderr)
      continue
    rec = np.clip(np.asarray(vq.reconstruct(x[None]))[0], -1.0, 1.0)
    l1 = float(np.mean(np.abs(rec - x)))
    psnr = float(metrics.psnr(x[None], rec[None])[0])
    try:
      ssim = f"{float(metrics.ssim(x[None], rec[None])[0]):.4f}"
    except ValueError:  # smaller than SSIM's 11x11 window (--no-crop)
      ssim = "n/a"
    pair = np.concatenate([to_uint8(x), to_uint8(rec)], axis=1)
    name = unique_name(os.path.splitext(os.path.basename(path))[0], names)
    out_path = save_png(os.path.join(args.out, f"{name}_recon.png"), pair)
    print(f"{out_path}: L1 {l1:.4f}  PSNR {psnr:.2f} dB  SSIM {ssim}")
    pairs.append(pair)
  if not pairs:
    print("error: no image could be read", file=sys.stderr)
    return 2
  width = max(p.shape[1] for p in pairs)
  grid = np.concatenate([np.pad(p, ((0, 0), (0, width - p.shape[1]), (0, 0))) for p in pairs])
  grid_path = save_png(os.path.join(args.out, "grid.png"), grid)
  print(f"wrote {len(pairs)} side-by-side reconstructions (input | reconstruction) and {grid_path}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
