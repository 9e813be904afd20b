"""Gumbel-softmax VQGAN f8, 8192 codes (taming's vqgan_gumbel_f8 on OpenImages).

    python train_vqgan.py --config=configs/vqgan_gumbel_f8.py --workdir=runs/gumbel \
        --config.data.train_images=openimages_train.txt
taming released this model with DummyLoss; we train it with the VQGAN objective,
kl_weight 1e-8 and the temperature schedule of its config (0.9 -> 1e-6, cosine).
"""

from vqgan_jax.training.vqgan_config import base_config, recipe


def get_config(arg=None):
  c = base_config()
  c.model.update(dict(quantizer="gumbel", ch_mult=(1, 1, 2, 4), attn_resolutions=(32,),
                      n_embed=8192, embed_dim=256, z_channels=256, kl_weight=1e-8))
  c.loss.update(dict(disc_start=0, disc_weight=0.8, codebook_weight=1.0))
  c.gumbel_temperature.update(dict(warm_up_steps=0, max_decay_steps=1000001, start=0.9,
                                   max=0.9, min=1e-6))
  c.data.crop_size = 256
  c.batch_size = 12
  return recipe(c, arg, __file__)
