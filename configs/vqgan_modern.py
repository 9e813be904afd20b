"""VQGAN with LlamaGen's VQ-16 tokenizer choices (Sun et al. 2024, "Autoregressive Model
Beats Diffusion"; FoundationVision/LlamaGen, tokenizer/tokenizer_image) on this
architecture: a codebook that stays in use (LlamaGen reports 97% of 16,384 codes).

    python train_vqgan.py --config=configs/vqgan_modern.py --workdir=runs/modern \
        --config.data.data_dir=~/tensorflow_datasets
    python train_vqgan.py --config=configs/vqgan_modern.py:small --workdir=runs/modern_small \
        --config.data.train_images=DIR --config.data.val_images=DIR
Field by field (LlamaGen's vq_model.py ModelArgs / vq_train.py defaults for VQ-16):
  model:  ch 128, ch_mult (1,1,2,2,4), 2 res blocks, attention at the 16x16 level and in
          the middle, z_channels 256 (VQ-16's encoder is taming's; the same here);
          n_embed 16384 (codebook_size); codebook_dim 8 (codebook_embed_dim: LlamaGen's
          quant_conv maps 256 -> 8 and post_quant_conv 8 -> 256; here quant_conv keeps
          embed_dim 256 and the quantizer's proj_in / proj_out map 256 <-> 8, the same
          linear maps composed with a 1x1 conv); l2_normalize_codes (codebook_l2_norm:
          latents and codes unit vectors, codes initialised U(-1/n, 1/n) then
          normalised); beta 0.25 (commit_loss_beta) on the commitment term with the
          codebook term at weight 1, i.e. VQ-VAE's placement: legacy False.
  loss:   perceptual_weight 1.0, codebook_weight 1.0, hinge discriminator (PatchGAN,
          ndf 64, 3 layers) from step 20000 (disc_start) with a fixed GAN weight 0.5
          (disc_weight, disc_adaptive_weight False: adaptive_weight False).
  optim:  Adam, lr 1e-4 (absolute, not scaled by the batch), betas (0.9, 0.95).
  data:   ImageNet (TFDS imagenet2012), 256x256 crops, global batch 128.
Not carried over (not options of this trainer): LlamaGen's L2 pixel loss (here taming's
L1), weight decay 0.05, gradient clipping at 1.0, its EMA of the weights, and bf16
autocast (`--config.dtype=bfloat16` is this trainer's own mixed precision).
`:small` is the shared CPU variant (f4, 128 codes of width 32, 32x32 crops) with the
codebook choices kept: codebook_dim 8 and l2-normalised codes, as in
bench/codebook_study.py's setting (c).
"""

from vqgan_jax.training.vqgan_config import base_config, recipe


def get_config(arg=None):
  c = base_config()
  c.model.update(dict(ch=128, ch_mult=(1, 1, 2, 2, 4), num_res_blocks=2, attn_resolutions=(16,),
                      z_channels=256, embed_dim=256, n_embed=16384, codebook_dim=8,
                      l2_normalize_codes=True, beta=0.25, legacy=False))
  c.loss.update(dict(disc_start=20000, disc_weight=0.5, adaptive_weight=False,
                     perceptual_weight=1.0, codebook_weight=1.0, disc_loss="hinge",
                     disc_ndf=64, disc_num_layers=3))
  c.optim.update(dict(learning_rate=1e-4, b1=0.9, b2=0.95))
  c.data.name = "imagenet2012"
  c.data.train_split, c.data.val_split = "train", "validation"
  c.data.crop_size = 256
  c.batch_size = 128
  return recipe(c, arg, __file__)
