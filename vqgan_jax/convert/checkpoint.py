"""Converts a whole taming checkpoint (VQModel, GumbelVQ, EMAVQ or Net2Net) to our trees.

`convert_taming_checkpoint(ckpt, project_yaml=None)` returns `(config, variables)`:
  config["kind"]          "net2net" for a Net2NetTransformer (keys under `first_stage_model.`),
                          else "vqgan": the model-directory kind (`vqgan_jax/model_dir.py`)
  config["vqgan"]         VQGANConfig fields of the first stage
  config["cond_stage"]    the same for a Net2Net VQModel cond stage (depth, segmentation)
  config["loss"]          taming's lossconfig params (when the YAML gives them)
  config["discriminator"] {"input_nc", "ndf", "n_layers", "use_actnorm"} if `loss.discriminator.*`
  config["lpips"]         True if `loss.perceptual_loss.*` was in the file
  config["transformer"]   a Net2Net's GPTConfig fields, and config["net2net"] its
                          Net2NetConfig fields (conditioning, permuter, grids); see
                          `vqgan_jax/convert/net2net.py`
  variables               {"vqgan": ..., "cond_stage": ..., "discriminator": ..., "lpips": ...,
                          "transformer": {"params": ...}, "colorize": {"colorize": ...}}
The architecture comes from the project YAML when given, else from the state dict.
"""

import dataclasses
import os
from typing import Any, Dict, Optional, Tuple

import jax
import jax.numpy as jnp
import numpy as np

from vqgan_jax.convert import taming
from vqgan_jax.convert.torch_reader import read_state_dict
from vqgan_jax.nn.vqgan import VQGANConfig, abstract_variables

FIRST_STAGE_TARGETS = {
    "taming.models.vqgan.VQModel": "vq",
    "taming.models.vqgan.GumbelVQ": "gumbel",
    "taming.models.vqgan.EMAVQ": "ema",
    "taming.models.vqgan.VQSegmentationModel": "vq",
}


def _yaml_vqgan_config(params: Dict[str, Any], target: str, where: str) -> VQGANConfig:
  """VQGANConfig from the `params` of a taming first-stage model in a project YAML."""
  dd = params.get("ddconfig")
  if not isinstance(dd, dict):
    raise ValueError(f"{where}: expected a 'ddconfig' mapping in the model params")
  known = {"ch", "ch_mult", "num_res_blocks", "attn_resolutions", "dropout", "resolution",
           "in_channels", "out_ch", "z_channels", "double_z", "give_pre_end"}
  fields = {k: v for k, v in dd.items() if k in known}
  for k in ("n_embed", "embed_dim"):
    if k not in params:
      raise ValueError(f"{where}: model params lack {k!r}")
    fields[k] = int(params[k])
  fields["quantizer"] = FIRST_STAGE_TARGETS[target]
  if fields["quantizer"] == "gumbel" and "kl_weight" in params:
    fields["kl_weight"] = float(params["kl_weight"])
  if "unknown_index" in params:
    fields["unknown_index"] = params["unknown_index"]
  try:
    return VQGANConfig.from_dict(fields)
  except (TypeError, ValueError) as e:
    raise ValueError(f"{where}: {e}") from None


def read_project_yaml(path: str) -> Dict[str, Any]:
  """Parses taming's `*-project.yaml` into {"vqgan", "cond_stage", "loss", "target"}."""
  import yaml  # deferred: only the converter needs it
  try:
    with open(path) as f:
      doc = yaml.safe_load(f)
  except (OSError, yaml.YAMLError) as e:
    raise ValueError(f"{path}: cannot read the project YAML ({e})") from None
  model = (doc or {}).get("model")
  if not isinstance(model, dict) or "target" not in model:
    raise ValueError(f"{path}: expected a top-level 'model' with 'target' and 'params'")
  target, params = model["target"], model.get("params") or {}
  out = {"target": target}
  if target in FIRST_STAGE_TARGETS:
    out["vqgan"] = _yaml_vqgan_config(params, target, f"{path}: model")
    loss = (params.get("lossconfig") or {})
    if loss.get("params"):
      out["loss"] = dict(loss["params"], target=loss.get("target"))
  elif target == "taming.models.cond_transformer.Net2NetTransformer":
    fs = params.get("first_stage_config") or {}
    if fs.get("target") not in FIRST_STAGE_TARGETS:
      raise ValueError(f"{path}: model.params.first_stage_config.target {fs.get('target')!r} "
                       f"is not one of {sorted(FIRST_STAGE_TARGETS)}")
    out["vqgan"] = _yaml_vqgan_config(fs.get("params") or {}, fs["target"],
                                      f"{path}: first_stage_config")
    cs = params.get("cond_stage_config") or {}
    if isinstance(cs, dict) and cs.get("target") in FIRST_STAGE_TARGETS:
      out["cond_stage"] = _yaml_vqgan_config(cs.get("params") or {}, cs["target"],
                                             f"{path}: cond_stage_config")
    from vqgan_jax.convert.net2net import read_net2net_yaml
    out.update(read_net2net_yaml(params, f"{path}: model.params"), vqgan_from_yaml=True)
  else:
    raise ValueError(f"{path}: model.target {target!r} is not a taming VQGAN or Net2Net model")
  return out


def infer_discriminator_config(sd, prefix="loss.discriminator.") -> Optional[Dict[str, Any]]:
  convs = sorted(int(k[len(prefix):].split(".")[1]) for k in sd
                 if k.startswith(prefix + "main.") and k.endswith(".weight")
                 and np.ndim(sd[k]) == 4)
  if not convs:
    return None
  first = np.asarray(sd[f"{prefix}main.{convs[0]}.weight"])
  return {"input_nc": int(first.shape[1]), "ndf": int(first.shape[0]),
          "n_layers": len(convs) - 2,
          "use_actnorm": any(k.startswith(prefix) and k.endswith(".loc") for k in sd)}


def _convert_vqgan(sd, cfg: VQGANConfig, prefix: str, source: str):
  used = sd.get(f"{prefix}quantize.used")
  if used is not None and cfg.remap_size != np.shape(used)[0]:
    # The YAML names a remap .npy file; its content travels in the state dict.
    cfg = dataclasses.replace(cfg, remap_size=int(np.shape(used)[0]))
  return cfg, taming.convert_state_dict(sd, abstract_variables(cfg), prefix=prefix,
                                        source=source, only=taming.FIRST_STAGE_KEYS)


def convert_state_dict_tree(sd, project: Optional[Dict[str, Any]] = None,
                            source: str = "state dict",
                            overrides: Optional[Dict[str, Any]] = None,
                            require_transformer: bool = False) -> Tuple[Dict, Dict]:
  """Converts an already-read state dict; see the module docstring.

  For a Net2Net checkpoint, `overrides` supplies what neither the YAML nor the weights
  tell (see `vqgan_jax/convert/net2net.py`); when the transformer cannot be converted
  the result holds only the VQGANs unless `require_transformer`, which raises.
  """
  from vqgan_jax.nn import discriminator as disc_lib, lpips as lpips_lib
  project = project or {}
  prefixes = taming.first_stage_prefixes(sd)
  if not prefixes:
    raise taming.ConversionError(
        f"{source}: no first-stage model found: expected 'encoder.conv_in.weight' at the top "
        f"level or under 'first_stage_model.'; the file has {len(sd)} keys, e.g. "
        f"{sorted(sd)[:5]}")
  first = "" if "" in prefixes else "first_stage_model."
  config, variables = {"source": os.path.basename(source)}, {}
  config["kind"] = "vqgan" if first == "" else "net2net"
  cfg = project.get("vqgan") or taming.infer_vqgan_config(sd, first, source)
  cfg, variables["vqgan"] = _convert_vqgan(sd, cfg, first, source)
  config["vqgan"] = cfg.to_dict()
  cond_is_first = project.get("cond_target") == "__is_first_stage__"
  if "cond_stage_model." in prefixes and not cond_is_first:
    ccfg = project.get("cond_stage") or taming.infer_vqgan_config(sd, "cond_stage_model.", source)
    ccfg, variables["cond_stage"] = _convert_vqgan(sd, ccfg, "cond_stage_model.", source)
    config["cond_stage"] = ccfg.to_dict()
  if "loss" in project:
    config["loss"] = project["loss"]
  if first == "first_stage_model.":
    from vqgan_jax.convert.net2net import net2net_sections
    try:
      sections, extra = net2net_sections(
          sd, project, overrides or {}, cfg,
          VQGANConfig.from_dict(config["cond_stage"]) if "cond_stage" in config else None,
          source)
    except (taming.ConversionError, ValueError) as e:
      if require_transformer:
        raise taming.ConversionError(str(e)) from None
      config["transformer_error"] = str(e)
    else:
      config.update(sections)
      variables.update(extra)
  if first == "":
    dcfg = infer_discriminator_config(sd)
    if dcfg is not None:
      model = disc_lib.NLayerDiscriminator(ndf=dcfg["ndf"], n_layers=dcfg["n_layers"],
                                           use_actnorm=dcfg["use_actnorm"])
      x = jnp.zeros((1, 64, 64, dcfg["input_nc"]), jnp.float32)
      full = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), x, train=False))
      expected = {k: v for k, v in full.items() if k in ("params", "batch_stats")}
      config["discriminator"] = dcfg
      variables["discriminator"] = taming.convert_state_dict(
          sd, expected, prefix="loss.discriminator.", source=source)
      if "actnorm_state" in full:  # a saved ActNorm has been initialised from data
        variables["discriminator"]["actnorm_state"] = jax.tree_util.tree_map(
            lambda _: np.array(True), full["actnorm_state"])
    if any(k.startswith("loss.perceptual_loss.") for k in sd):
      model = lpips_lib.LPIPS()
      x = jnp.zeros((1, 32, 32, 3), jnp.float32)
      expected = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), x, x))
      config["lpips"] = True
      variables["lpips"] = taming.convert_state_dict(
          sd, expected, prefix="loss.perceptual_loss.", ignore=("scaling_layer.",),
          source=source)
  return config, variables


def convert_taming_checkpoint(ckpt_path: str, project_yaml: Optional[str] = None,
                              overrides: Optional[Dict[str, Any]] = None,
                              require_transformer: bool = False):
  """Reads a taming `.ckpt` (no torch needed) and converts it; returns (config, variables)."""
  sd = read_state_dict(ckpt_path)
  project = read_project_yaml(project_yaml) if project_yaml else None
  return convert_state_dict_tree(sd, project, source=ckpt_path, overrides=overrides,
                                 require_transformer=require_transformer)
