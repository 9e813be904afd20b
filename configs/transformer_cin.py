"""Class-conditional ImageNet (taming's cIN transformer, 1.4B parameters) on f16-16384 codes.

    python -m vqgan_jax.extract_codes --vqgan vqgan_imagenet_f16_16384 --out codes/in \
        --tfds imagenet2012 --labels label --split train --size 256   # and validation
    python train_transformer.py --config=configs/transformer_cin.py --workdir=runs/cin \
        --config.data.codes=codes/in --config.mesh.fsdp=8 --config.dtype=bfloat16

48 layers, 24 heads, width 1536, vocabulary 16384, block 256 (1 class token + 256 codes
- 1). Layers are scanned (one compiled block) and re-computed in the backward pass
except their matmuls; shard parameters and AdamW moments over `mesh.fsdp` devices.
`--config.net2net.label_dropout=0.1` trains for classifier-free guidance (not in taming).
"""

from vqgan_jax.training.gpt_config import base_config, recipe


def get_config(arg=None):
  c = base_config()
  c.transformer.update(dict(n_layer=48, n_head=24, n_embd=1536, vocab_size=16384,
                            block_size=256, scan_layers=True, remat="dots_no_batch"))
  c.net2net.update(dict(cond="class", n_classes=1000))
  c.batch_size = 64
  return recipe(c, arg, __file__)
