"""VQGAN on your own images (taming's configs/custom_vqgan.yaml).

    python train_vqgan.py --config=configs/vqgan_custom.py --workdir=runs/custom \
        --config.data.train_images=some/training.txt --config.data.val_images=some/test.txt
    python train_vqgan.py --config=configs/vqgan_custom.py:small --workdir=runs/small \
        --config.data.train_images=DIR --config.data.val_images=DIR --config.total_steps=600
`train_images` / `val_images`: a folder of images or a text file listing image paths.
"""

from vqgan_jax.training.vqgan_config import base_config, recipe


def get_config(arg=None):
  c = base_config()
  c.model.update(dict(n_embed=1024, embed_dim=256))   # f16, ch 128, attention at 16
  c.loss.update(dict(disc_start=10000, disc_weight=0.8, codebook_weight=1.0))
  c.data.crop_size = 256
  c.batch_size = 5
  return recipe(c, arg, __file__)
