"""`python -m vqgan_jax.convert CKPT OUT_DIR [--config PROJECT.yaml] [Net2Net flags]`.

Converts a taming-transformers checkpoint (VQModel, GumbelVQ or Net2NetTransformer
`.ckpt`, zip or legacy torch format) into a vqgan_jax model directory, without torch:
of kind "net2net" for a Net2NetTransformer (first stage under "vqgan", a VQ cond stage
under "cond_stage", the GPT under "transformer"), else of kind "vqgan".

A Net2Net's head count, and whether a model without cond-stage weights is unconditional
or class-conditional, are not in its weights: the project YAML tells them, or the flags
--n_head, --cond and --n_classes.
"""

import argparse
import sys


def _grid(text: str):
  try:
    h, w = (int(v) for v in text.lower().split("x"))
  except ValueError:
    raise argparse.ArgumentTypeError(f"expected HxW (e.g. 16x16), got {text!r}") from None
  return (h, w)


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(prog="python -m vqgan_jax.convert", description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("ckpt", help="taming .ckpt file (Lightning or {'state_dict': ...})")
  parser.add_argument("out_dir", help="output model directory (config.json + variables/)")
  parser.add_argument("--config", default=None,
                      help="taming project YAML (logs/<run>/configs/*-project.yaml); "
                           "without it the architecture is inferred from the weights")
  n2n = parser.add_argument_group("Net2Net transformers (what the YAML would say)")
  n2n.add_argument("--n_head", type=int, default=None, help="attention heads of the GPT")
  n2n.add_argument("--cond", choices=("sos", "class", "vq", "coord", "first_stage"),
                   default=None, help="conditioning stage")
  n2n.add_argument("--n_classes", type=int, default=None, help="classes (--cond class)")
  n2n.add_argument("--sos_token", type=int, default=None, help="start token (--cond sos)")
  n2n.add_argument("--z_shape", type=_grid, default=None,
                   help="latent grid the transformer was trained on, HxW")
  n2n.add_argument("--cond_shape", type=_grid, default=None,
                   help="conditioning code grid, HxW")
  n2n.add_argument("--coord_n_embed", type=int, default=None,
                   help="CoordStage n_embed (--cond coord; default 1024)")
  n2n.add_argument("--coord_down_factor", type=int, default=None,
                   help="CoordStage down_factor (--cond coord; default 16)")
  n2n.add_argument("--permuter", default=None, help="token order (default: from the YAML or "
                                                    "the checkpoint's permuter buffers)")
  args = parser.parse_args(argv)
  from vqgan_jax.convert.checkpoint import convert_taming_checkpoint
  from vqgan_jax.convert.taming import ConversionError
  from vqgan_jax.convert.torch_reader import CheckpointFormatError
  from vqgan_jax.model_dir import save_model_dir
  from vqgan_jax.nn.vqgan import param_count
  from vqgan_jax.permuters import PermuterError
  from vqgan_jax.convert.net2net import OVERRIDES
  overrides = {k: getattr(args, k) for k in OVERRIDES if getattr(args, k) is not None}
  try:
    config, variables = convert_taming_checkpoint(args.ckpt, args.config, overrides=overrides,
                                                  require_transformer=True)
  except (CheckpointFormatError, ConversionError, PermuterError, ValueError,
          FileNotFoundError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  out = save_model_dir(args.out_dir, variables, config, kind=config["kind"])
  for name, tree in variables.items():
    print(f"{name}: {param_count(tree.get('params', tree)):,} parameters")
  print(f"wrote {out} (kind {config['kind']!r})")
  return 0


if __name__ == "__main__":
  sys.exit(main())
