"""Samples images from a Net2Net transformer: taming's sample_fast.py, plus spatial
conditioning, image completion and the sliding window. See vqgan_jax/sample_cli.py.

    python sample.py --checkpoint runs/gpt/model --outdir out/gpt --classes 9,232,901 -n 8
    python sample.py --checkpoint depth_model --outdir out/depth --cond depth_maps/ \
        --height 384 --width 512
"""

import sys

from vqgan_jax import sample_cli

if __name__ == "__main__":
  sys.exit(sample_cli.main())
