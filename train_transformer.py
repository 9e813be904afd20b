"""Trains taming's Net2Net transformer over VQGAN codes. See vqgan_jax/training/cli.py.

    python train_transformer.py --config=configs/transformer_custom.py:small \
        --workdir=/tmp/gpt --config.data.codes=CODES_DIR
"""

from vqgan_jax.training import cli, gpt_config, gpt_trainer

if __name__ == "__main__":
  cli.run("configs/transformer_custom.py", gpt_config.validate_config,
          gpt_trainer.train_and_evaluate)
