"""Unconditional CelebA-HQ faces (taming's CelebA-HQ transformer: 801.8M parameters).

    python -m vqgan_jax.extract_codes --vqgan VQGAN_DIR --out codes/celebahq --tfds celeb_a_hq \
        --split train --size 256            # once (and --split validation)
    python train_transformer.py --config=configs/transformer_ffhq.py --workdir=runs/celebahq \
        --config.data.codes=codes/celebahq

The released CelebA-HQ model's head count is not public; 16 heads of 104 channels is our pick.
"""

from vqgan_jax.training.gpt_config import base_config, recipe


def get_config(arg=None):
  c = base_config()
  c.transformer.update(dict(n_layer=24, n_head=16, n_embd=1664, block_size=256,
                            scan_layers=True))
  c.net2net.cond = "sos"
  c.batch_size = 16
  return recipe(c, arg, __file__)
