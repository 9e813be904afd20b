"""A transformer on your own images' codes: unconditional, or class-conditional.

    python -m vqgan_jax.extract_codes --vqgan runs/mine/model --out codes/mine \
        --images my_photos/ --split train --size 256 [--labels folders]
    python train_transformer.py --config=configs/transformer_custom.py:small \
        --workdir=runs/gpt --config.data.codes=codes/mine --config.data.val_split=""

With `--labels folders` at extraction (class = top-level folder), set
`--config.net2net.cond=class`; the class count is read from the codes. Or skip the
extraction: `--config.data.codes="" --config.data.on_the_fly=True
--config.first_stage=runs/mine/model --config.data.images.train_images=my_photos/`.
"""

from vqgan_jax.training.gpt_config import base_config, recipe


def get_config(arg=None):
  c = base_config()
  c.transformer.update(dict(n_layer=12, n_head=8, n_embd=512))
  c.net2net.cond = "sos"
  c.batch_size = 16
  return recipe(c, arg, __file__)
