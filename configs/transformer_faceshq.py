"""Faces from coordinates (taming's configs/faceshq_transformer.yaml: CoordStage).

    python -m vqgan_jax.extract_codes --vqgan VQGAN_DIR --out codes/faces \
        --images faces/ --split train --size 256
    python train_transformer.py --config=configs/transformer_faceshq.py --workdir=runs/faces \
        --config.data.codes=codes/faces

The conditioning is taming's FacesHQ coordinate map of the (whole, un-cropped) image,
arange(H*W) / (H*W), area-pooled by 16 and rounded to round(1024 * c): 256 tokens
before the 256 image codes (block 512), the same for every image.
"""

from vqgan_jax.training.gpt_config import base_config, recipe


def get_config(arg=None):
  c = base_config()
  c.transformer.update(dict(n_layer=24, n_head=16, n_embd=1024, block_size=512,
                            scan_layers=True))
  c.net2net.update(dict(cond="coord", coord_n_embed=1024, coord_down_factor=16))
  c.batch_size = 16
  return recipe(c, arg, __file__)
