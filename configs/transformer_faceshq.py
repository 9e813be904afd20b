"""Faces from coordinates (taming's configs/faceshq_transformer.yaml: CoordStage).

The conditioning is a coordinate map in [0, 1], area-pooled by 16 and rounded to
round(1024 * c): 256 tokens before the 256 image codes (block 512). Its tokens are
written by the code extraction as conditioning codes ("c").
"""

from vqgan_jax.training.gpt_config import base_config, recipe


def get_config(arg=None):
  c = base_config()
  c.transformer.update(dict(n_layer=24, n_head=16, n_embd=1024, block_size=512,
                            scan_layers=True))
  c.net2net.update(dict(cond="coord", coord_n_embed=1024, coord_down_factor=16))
  c.batch_size = 16
  return recipe(c, arg, __file__)
