"""Trains a VQGAN (taming's objective) with sharded jit steps. See vqgan_jax/training/cli.py.

    python train_vqgan.py --config=configs/vqgan_custom.py:small --workdir=/tmp/vq \
        --config.data.train_images=PATH --config.data.val_images=PATH --config.total_steps=N
"""

from vqgan_jax.training import cli, vqgan_config, vqgan_trainer

if __name__ == "__main__":
  cli.run("configs/vqgan_custom.py", vqgan_config.validate_config,
          vqgan_trainer.train_and_evaluate)
