"""The transformer half of a taming Net2NetTransformer checkpoint: GPT, conditioning, permuter.

`net2net_sections(sd, project, overrides, first_cfg, cond_cfg, source)` returns the model
directory's "transformer" (GPTConfig), "net2net" (Net2NetConfig) sections and the
"transformer" / "colorize" variables. Where the project YAML says something we take it;
else we read it off the weights:
  vocab_size, n_embd, block_size, n_layer  tok_emb / pos_emb / blocks.N shapes
  cond                                     "vq" when cond_stage_model.* is present
  permuter                                 the permuter.* buffers (Identity has none)
  z_shape / cond_shape                     the first (cond) stage's training resolution
                                           / its downsampling factor, else the largest
                                           square grid the block size holds
What neither tells (the head count; class-conditional or unconditional without a YAML)
must come from `overrides` (the converter's --n_head, --cond, --n_classes flags); the
error says which.
"""

import math
from typing import Any, Dict, Mapping, Optional, Tuple

import numpy as np

from vqgan_jax import permuters as permuters_lib
from vqgan_jax.convert import taming
from vqgan_jax.net2net import Net2NetConfig
from vqgan_jax.nn import gpt as gpt_lib
from vqgan_jax.nn.vqgan import VQGANConfig

PREFIX = "transformer."
OVERRIDES = ("n_head", "cond", "n_classes", "sos_token", "z_shape", "cond_shape", "permuter",
             "coord_n_embed", "coord_down_factor")

COND_TARGETS = {
    "taming.modules.util.SOSProvider": "sos",
    "taming.modules.util.Labelator": "class",
    "taming.modules.misc.coord.CoordStage": "coord",
    "__is_unconditional__": "sos",
    "__is_first_stage__": "first_stage",
}


def read_net2net_yaml(params: Mapping[str, Any], where: str) -> Dict[str, Any]:
  """The Net2Net-specific parts of a project YAML's `model.params`."""
  out: Dict[str, Any] = {}
  tc = params.get("transformer_config") or {}
  if tc:
    if "mingpt.GPT" not in str(tc.get("target", "")):
      raise ValueError(f"{where}: transformer_config.target {tc.get('target')!r} is not "
                       "taming's minGPT (taming.modules.transformer.mingpt.GPT)")
    out["transformer"] = dict(tc.get("params") or {})
  cs = params.get("cond_stage_config")
  if isinstance(cs, str):
    out["cond_target"], out["cond_params"] = cs, {}
  elif isinstance(cs, dict):
    out["cond_target"], out["cond_params"] = cs.get("target"), dict(cs.get("params") or {})
  if params.get("unconditional"):
    out["cond_target"], out["cond_params"] = "__is_unconditional__", {}
  pc = params.get("permuter_config")
  if isinstance(pc, dict):
    out["permuter"] = (pc.get("target"), dict(pc.get("params") or {}))
  for key in ("cond_stage_key", "first_stage_key", "downsample_cond_size", "pkeep", "sos_token"):
    if key in params:
      out[key] = params[key]
  return out


def _count(sd, pattern: str) -> int:
  return taming._count(sd, pattern)  # pylint: disable=protected-access


def _square_grid(n_tokens: int, what: str, source: str) -> Tuple[int, int]:
  side = int(math.isqrt(max(n_tokens, 0)))
  if side <= 0:
    raise taming.ConversionError(f"{source}: cannot infer the {what} grid from the block size; "
                                 f"pass it (--{what})")
  return side, side


def gpt_config_from(sd, transformer: Mapping[str, Any], overrides: Mapping[str, Any],
                    source: str) -> gpt_lib.GPTConfig:
  """The GPT's sizes: the YAML's transformer_config.params, checked against the weights."""
  def get(key):
    if PREFIX + key not in sd:
      raise taming.ConversionError(f"{source}: key {PREFIX}{key} is missing (is this a taming "
                                   "Net2NetTransformer checkpoint?)")
    return np.shape(sd[PREFIX + key])
  vocab, n_embd = get("tok_emb.weight")
  block = get("pos_emb")[1]
  n_layer = _count(sd, r"transformer\.blocks\.(\d+)\.")
  n_head = overrides.get("n_head") or transformer.get("n_head")
  if not n_head:
    raise taming.ConversionError(
        f"{source}: the weights do not tell the transformer's head count; give the project "
        "YAML (logs/<run>/configs/*-project.yaml, which sets transformer_config.params.n_head: "
        "`python -m vqgan_jax.convert CKPT OUT --config YAML` or load_transformer(CKPT, YAML)) "
        "or convert with `--n_head N`")
  fields = dict(vocab_size=int(vocab), block_size=int(block), n_layer=n_layer,
                n_head=int(n_head), n_embd=int(n_embd))
  for k in ("embd_pdrop", "resid_pdrop", "attn_pdrop", "n_unmasked"):
    if k in transformer:
      fields[k] = transformer[k]
  for k, v in transformer.items():
    if k in fields and k in ("vocab_size", "block_size", "n_layer", "n_embd") and int(v) != \
        fields[k]:
      raise taming.ConversionError(f"{source}: the YAML's transformer_config.params.{k} is {v} "
                                   f"but the weights have {fields[k]}")
  cfg = gpt_lib.GPTConfig(**fields)
  errors = cfg.validate()
  if errors:
    raise taming.ConversionError(f"{source}: transformer: " + "; ".join(errors))
  return cfg


def _stage_grid(cfg: VQGANConfig, size: int = -1) -> Tuple[int, int]:
  s = (size if size and size > 0 else cfg.resolution) // cfg.downsample_factor
  return s, s


def net2net_config_from(sd, project: Mapping[str, Any], overrides: Mapping[str, Any],
                        gpt: gpt_lib.GPTConfig, first: VQGANConfig,
                        cond_stage: Optional[VQGANConfig], source: str) -> Net2NetConfig:
  """Conditioning, permuter and grids of the model (see the module docstring)."""
  fields: Dict[str, Any] = {}
  for key in ("cond_stage_key", "first_stage_key", "downsample_cond_size", "pkeep", "sos_token"):
    if key in project:
      fields[key] = project[key]
  target = project.get("cond_target")
  params = project.get("cond_params") or {}
  if overrides.get("cond"):
    cond = overrides["cond"]
  elif target in COND_TARGETS:
    cond = COND_TARGETS[target]
  elif target is not None and cond_stage is not None:
    cond = "vq"
  elif target is not None:
    raise taming.ConversionError(f"{source}: cond_stage_config.target {target!r} is not a "
                                 f"conditioning stage we know ({sorted(COND_TARGETS)} or a "
                                 "taming VQModel)")
  elif cond_stage is not None:
    cond = "vq"
  else:
    raise taming.ConversionError(
        f"{source}: the checkpoint has no cond_stage_model weights, so it is unconditional, "
        "class-conditional or coordinate-conditioned, and the weights do not say which; give "
        "the project YAML (--config ...-project.yaml) or --cond sos / --cond class "
        "--n_classes N / --cond coord")
  fields["cond"] = cond
  if cond == "sos" and "sos_token" in params:
    fields["sos_token"] = int(params["sos_token"])
  if "sos_token" in overrides and overrides["sos_token"] is not None:
    fields["sos_token"] = int(overrides["sos_token"])
  if cond == "class":
    n = overrides.get("n_classes") or params.get("n_classes")
    if not n:
      raise taming.ConversionError(f"{source}: a class-conditional model needs its class count "
                                   "(the YAML's cond_stage_config.params.n_classes, or "
                                   "--n_classes N)")
    fields["n_classes"] = int(n)
  if cond == "coord":
    fields["coord_n_embed"] = int(overrides.get("coord_n_embed") or params.get("n_embed", 1024))
    fields["coord_down_factor"] = int(overrides.get("coord_down_factor")
                                      or params.get("down_factor", 16))
  # The permuter: the YAML, else the buffers, else identity.
  perm_target = project.get("permuter")
  fwd, bwd = sd.get("permuter.forward_shuffle_idx"), sd.get("permuter.backward_shuffle_idx")
  z_shape = overrides.get("z_shape")
  if perm_target and not z_shape and {"H", "W"} <= set(perm_target[1]):
    z_shape = (int(perm_target[1]["H"]), int(perm_target[1]["W"]))
  n_c = 1 if cond in ("sos", "class") else None
  cond_shape = overrides.get("cond_shape")
  if cond in ("vq", "first_stage", "coord") and not cond_shape:
    if cond == "coord":
      cond_shape = None  # same grid as the image tokens (CoordStage's down_factor = f)
    else:
      stage = cond_stage if cond == "vq" else first
      if project.get("vqgan_from_yaml"):
        cond_shape = _stage_grid(stage, int(fields.get("downsample_cond_size", -1)))
  if not z_shape:
    if project.get("vqgan_from_yaml"):
      z_shape = _stage_grid(first)
    elif fwd is not None:
      z_shape = _square_grid(int(np.shape(fwd)[0]), "z_shape", source)
    elif n_c is not None:
      z_shape = _square_grid(gpt.block_size - n_c + 1, "z_shape", source)
    else:  # conditioning on a grid like the image's: n_c + n_z - 1 <= block
      z_shape = _square_grid((gpt.block_size + 1) // 2, "z_shape", source)
  if cond in ("vq", "first_stage", "coord") and not cond_shape:
    cond_shape = tuple(z_shape)
  fields["z_shape"] = tuple(int(v) for v in z_shape)
  fields["cond_shape"] = tuple(int(v) for v in cond_shape) if cond_shape else ()
  if overrides.get("permuter"):
    fields["permuter"] = overrides["permuter"]
  elif perm_target:
    fields["permuter"] = permuters_lib.from_taming(perm_target[0], perm_target[1],
                                                   *fields["z_shape"]).name
  elif fwd is not None:
    if bwd is None:
      raise taming.ConversionError(f"{source}: permuter.forward_shuffle_idx without "
                                   "permuter.backward_shuffle_idx")
    try:
      perm = permuters_lib.from_buffers(np.asarray(fwd), np.asarray(bwd), *fields["z_shape"])
    except permuters_lib.PermuterError as e:
      raise taming.ConversionError(f"{source}: permuter.*_shuffle_idx: {e}") from None
    if perm.name == "custom":
      raise taming.ConversionError(f"{source}: the permuter buffers match none of taming's "
                                   f"permuters {list(permuters_lib.NAMES)} on a "
                                   f"{fields['z_shape'][0]}x{fields['z_shape'][1]} grid")
    fields["permuter"] = perm.name
  cfg = Net2NetConfig.from_dict(fields)
  if fwd is not None:  # buffers must agree with whatever named the permuter
    expected = cfg.make_permuter()
    if not np.array_equal(np.asarray(fwd), expected.forward_idx):
      raise taming.ConversionError(f"{source}: permuter.forward_shuffle_idx is not the "
                                   f"{cfg.permuter} order of a {cfg.z_shape} grid")
  errors = cfg.validate(gpt, first.num_codes, cond_stage.num_codes if cond_stage else None)
  if errors:
    raise taming.ConversionError(f"{source}: net2net: " + "; ".join(errors))
  return cfg


def convert_transformer(sd, gpt: gpt_lib.GPTConfig, source: str) -> Dict[str, Any]:
  """`transformer.*` -> {"params": GPT params (unstacked)}; every key checked by name."""
  expected = {"params": gpt_lib.abstract_params(gpt)}
  return taming.convert_state_dict(sd, expected, prefix=PREFIX, source=source)


def colorize_of(sd, prefix: str = "cond_stage_model.") -> Optional[np.ndarray]:
  """A VQSegmentationModel's colorize buffer (3, n_labels, 1, 1) as float32[3, n_labels]."""
  c = sd.get(prefix + "colorize")
  if c is None:
    return None
  c = np.asarray(c, np.float32)
  return c.reshape(c.shape[0], c.shape[1])


def net2net_sections(sd, project: Mapping[str, Any], overrides: Mapping[str, Any],
                     first: VQGANConfig, cond_stage: Optional[VQGANConfig], source: str):
  """(config sections {"transformer", "net2net"}, variables {"transformer", ["colorize"]})."""
  gpt = gpt_config_from(sd, project.get("transformer") or {}, overrides, source)
  n2n = net2net_config_from(sd, project, overrides, gpt, first, cond_stage, source)
  config = {"transformer": gpt.to_dict(), "net2net": n2n.to_dict()}
  variables = {"transformer": convert_transformer(sd, gpt, source)}
  colorize = colorize_of(sd)
  if colorize is not None:
    variables["colorize"] = {"colorize": colorize}
  return config, variables
