"""Landscapes from segmentation maps (taming's S-FLCKR transformer, 304.9M parameters).

    python -m vqgan_jax.extract_codes --vqgan VQGAN_DIR --out codes/sflckr \
        --images photos/ --cond_vqgan SEG_VQGAN_DIR --cond_images segmentations/ \
        --cond_type segmentation --split train --size 256
    python train_transformer.py --config=configs/transformer_sflckr.py --workdir=runs/sflckr \
        --config.data.codes=codes/sflckr

The conditioning stage is a VQGAN over one-hot segmentations (182 labels); its codes
prefix the image codes (256 + 256 tokens, block 512). Sample larger images with the
sliding window of sample.py.
"""

from vqgan_jax.training.gpt_config import base_config, recipe


def get_config(arg=None):
  c = base_config()
  c.transformer.update(dict(n_layer=24, n_head=16, n_embd=1024, block_size=512,
                            scan_layers=True))
  c.net2net.cond = "vq"
  c.batch_size = 16
  return recipe(c, arg, __file__)
