"""`python -m vqgan_jax.convert CKPT OUT_DIR [--config PROJECT.yaml]`.

Converts a taming-transformers checkpoint (VQModel, GumbelVQ or Net2NetTransformer
`.ckpt`, zip or legacy torch format) into a vqgan_jax model directory, without torch:
of kind "net2net" for a Net2NetTransformer (first stage under "vqgan", a VQ cond stage
under "cond_stage"), else of kind "vqgan".
"""

import argparse
import sys


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(prog="python -m vqgan_jax.convert", description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("ckpt", help="taming .ckpt file (Lightning or {'state_dict': ...})")
  parser.add_argument("out_dir", help="output model directory (config.json + variables/)")
  parser.add_argument("--config", default=None,
                      help="taming project YAML (logs/<run>/configs/*-project.yaml); "
                           "without it the architecture is inferred from the weights")
  args = parser.parse_args(argv)
  from vqgan_jax.convert.checkpoint import convert_taming_checkpoint
  from vqgan_jax.convert.taming import ConversionError
  from vqgan_jax.convert.torch_reader import CheckpointFormatError
  from vqgan_jax.model_dir import save_model_dir
  from vqgan_jax.nn.vqgan import param_count
  try:
    config, variables = convert_taming_checkpoint(args.ckpt, args.config)
  except (CheckpointFormatError, ConversionError, ValueError, FileNotFoundError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  out = save_model_dir(args.out_dir, variables, config, kind=config["kind"])
  for name, tree in variables.items():
    print(f"{name}: {param_count(tree.get('params', tree)):,} parameters")
  print(f"wrote {out} (kind {config['kind']!r})")
  return 0


if __name__ == "__main__":
  sys.exit(main())
