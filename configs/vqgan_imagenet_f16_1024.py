"""VQGAN ImageNet f16, 1024 codes (taming's configs/imagenet_vqgan.yaml).

    python train_vqgan.py --config=configs/vqgan_imagenet_f16_1024.py --workdir=runs/in1024 \
        --config.data.data_dir=gs://my-bucket/tensorflow_datasets
`:small` trains the same objective on 2 CPU cores (set data.train_images or data.name).
"""

from vqgan_jax.training.vqgan_config import base_config, recipe


def get_config(arg=None):
  c = base_config()
  c.model.update(dict(n_embed=1024, embed_dim=256))
  c.loss.update(dict(disc_start=250001, disc_weight=0.8, codebook_weight=1.0))
  c.data.name = "imagenet2012"
  c.data.train_split = "train"
  c.data.val_split = "validation"
  c.data.crop_size = 256
  c.batch_size = 12
  return recipe(c, arg, __file__)
