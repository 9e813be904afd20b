"""Writes a few real photos bundled with scikit-image (no download) as PNG files."""

import os
import sys

import numpy as np
from PIL import Image

PHOTOS = ("astronaut", "chelsea", "coffee", "rocket")


def main(out_dir: str) -> None:
  from skimage import data
  os.makedirs(out_dir, exist_ok=True)
  for name in PHOTOS:
    image = np.asarray(getattr(data, name)())
    Image.fromarray(image).convert("RGB").save(os.path.join(out_dir, f"{name}.png"))
  print(f"wrote {len(PHOTOS)} photos to {out_dir}")


if __name__ == "__main__":
  main(sys.argv[1] if len(sys.argv) > 1 else "out/photos")
