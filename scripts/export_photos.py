"""Writes real photos bundled with scikit-image (no download) as PNG files.

    python scripts/export_photos.py OUT_DIR                   # a few whole photos
    python scripts/export_photos.py OUT_DIR --patches 400     # train/ and val/ patch folders

With --patches, random 64x64 crops of eight photos go to OUT_DIR/train and crops of two
other photos (held out) to OUT_DIR/val, so validation measures images never trained on.
"""

import argparse
import os

import numpy as np
from PIL import Image

PHOTOS = ("astronaut", "chelsea", "coffee", "rocket")
TRAIN_PHOTOS = ("astronaut", "coffee", "rocket", "hubble_deep_field", "immunohistochemistry",
                "retina", "colorwheel", "motorcycle_left")
VAL_PHOTOS = ("chelsea", "cat_right")


def _photo(name):
  from skimage import data
  if name.startswith("motorcycle"):
    image = data.stereo_motorcycle()[0]
  elif name == "cat_right":
    image = data.chelsea()[:, ::-1]
  else:
    image = getattr(data, name)()
  image = np.asarray(image)
  if image.ndim == 2:
    image = np.stack([image] * 3, -1)
  return image[..., :3].astype(np.uint8)


def export_patches(out_dir, n_train, n_val, size=64, seed=0):
  rng = np.random.default_rng(seed)
  for split, names, n in (("train", TRAIN_PHOTOS, n_train), ("val", VAL_PHOTOS, n_val)):
    folder = os.path.join(out_dir, split)
    os.makedirs(folder, exist_ok=True)
    photos = [_photo(name) for name in names]
    for i in range(n):
      photo = photos[i % len(photos)]
      scale = rng.uniform(1.0, 4.0)  # crops of 64..256 px, resized to 64
      side = int(min(size * scale, *photo.shape[:2]))
      top = rng.integers(0, photo.shape[0] - side + 1)
      left = rng.integers(0, photo.shape[1] - side + 1)
      crop = Image.fromarray(photo[top:top + side, left:left + side]).resize(
          (size, size), Image.BICUBIC)
      crop.save(os.path.join(folder, f"{names[i % len(names)]}_{i:04d}.png"))
  print(f"wrote {n_train} training and {n_val} held-out patches to {out_dir}/{{train,val}}")


def main():
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("out_dir")
  parser.add_argument("--patches", type=int, default=0, help="number of training patches")
  parser.add_argument("--val-patches", type=int, default=64)
  args = parser.parse_args()
  if args.patches:
    export_patches(args.out_dir, args.patches, args.val_patches)
    return
  os.makedirs(args.out_dir, exist_ok=True)
  for name in PHOTOS:
    Image.fromarray(_photo(name)).save(os.path.join(args.out_dir, f"{name}.png"))
  print(f"wrote {len(PHOTOS)} photos to {args.out_dir}")


if __name__ == "__main__":
  main()
