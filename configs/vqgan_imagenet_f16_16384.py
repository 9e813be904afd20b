"""VQGAN ImageNet f16, 16384 codes (the first stage of taming's cIN transformer).

    python train_vqgan.py --config=configs/vqgan_imagenet_f16_16384.py --workdir=runs/in16k
Loss as the released model's config: disc_start 0, disc_weight 0.75, 2-layer discriminator.
"""

from vqgan_jax.training.vqgan_config import base_config, recipe


def get_config(arg=None):
  c = base_config()
  c.model.update(dict(n_embed=16384, embed_dim=256))
  c.loss.update(dict(disc_start=0, disc_weight=0.75, disc_num_layers=2, codebook_weight=1.0))
  c.data.name = "imagenet2012"
  c.data.crop_size = 256
  c.batch_size = 12
  c = recipe(c, arg, __file__)
  c.loss.update(dict(disc_start=0, disc_num_layers=2))  # the released D, in both variants
  return c
