"""VQGAN on faces (taming's configs/faceshq_vqgan.yaml: CelebA-HQ + FFHQ, 256 crops).

    python train_vqgan.py --config=configs/vqgan_faceshq.py --workdir=runs/faces \
        --config.data.train_images=faces_train.txt --config.data.val_images=faces_val.txt
(or --config.data.name=celeb_a_hq/256 with a prepared TFDS copy).
"""

from vqgan_jax.training.vqgan_config import base_config, recipe


def get_config(arg=None):
  c = base_config()
  c.model.update(dict(n_embed=1024, embed_dim=256))
  c.loss.update(dict(disc_start=30001, disc_weight=0.8, codebook_weight=1.0))
  c.data.name = "celeb_a_hq/256"
  c.data.train_split = "train"
  c.data.val_split = ""
  c.data.crop_size = 256
  c.batch_size = 3
  return recipe(c, arg, __file__)
