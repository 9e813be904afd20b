"""Maps taming-transformers state dicts onto our Flax variable trees.

Our module names mirror taming's with `name.<i>` written `name_<i>` (the mid block's
`block_1` / `attn_1` / `block_2` are real names in taming too), so every torch key maps
to exactly one Flax path:

  encoder.down.0.block.1.conv1.weight   -> params/encoder/down_0/block_1/conv1/kernel
  quantize.embedding.weight             -> params/quantize/embedding/embedding
  loss.discriminator.main.3.running_var -> batch_stats/main_3/var

Leaves are transformed by kind: conv weights OIHW -> HWIO, linear weights transposed,
norm weights become `scale`, BatchNorm running stats go to `batch_stats`. The result
is checked against the shapes of the model we build, and every missing, unexpected or
mis-shaped key is reported by name in one error.
"""

import re
from typing import Dict, Iterable, Mapping, Optional, Tuple

import numpy as np

from vqgan_jax.nn.vqgan import VQGANConfig

# Buffers with no counterpart in our models: recomputed or meaningless in JAX.
DROPPED_SUFFIXES = ("num_batches_tracked", "attn.mask", "initialized")


class ConversionError(ValueError):
  """A state dict does not fit the model; the message lists every offending key."""


def torch_key_to_path(key: str) -> Tuple[str, ...]:
  """'a.down.0.block.1.w' -> ('a', 'down_0', 'block_1', 'w')."""
  return tuple(re.sub(r"\.(\d+)(?=\.|$)", r"_\1", key).split("."))


def _leaf(path: Tuple[str, ...], value: np.ndarray, embedding_modules=("embedding", "embed",
                                                                        "tok_emb")):
  """(collection, flax path, transformed array) for one torch tensor."""
  *mod, name = path
  owner = mod[-1] if mod else ""
  if name == "running_mean":
    return "batch_stats", tuple(mod) + ("mean",), value
  if name == "running_var":
    return "batch_stats", tuple(mod) + ("var",), value
  if name == "weight":
    if value.ndim == 4:
      return "params", tuple(mod) + ("kernel",), np.transpose(value, (2, 3, 1, 0))
    if value.ndim == 2 and owner in embedding_modules:
      return "params", tuple(mod) + ("embedding",), value
    if value.ndim == 2:
      return "params", tuple(mod) + ("kernel",), value.T
    if value.ndim == 1:
      return "params", tuple(mod) + ("scale",), value
  if name in ("loc", "scale") and value.ndim == 4:  # ActNorm (1, C, 1, 1)
    return "params", tuple(mod) + (name,), value.reshape(-1)
  if name in ("used",):
    return "remap", tuple(mod) + (name,), value.astype(np.int32)
  if name in ("cluster_size", "embed_avg"):  # taming's EmbeddingEMA buffers
    return "ema_codebook", tuple(mod[:-1]) + (name,), value
  return "params", tuple(mod) + (name,), value


def _flatten(tree, prefix=()):
  out = {}
  for k, v in tree.items():
    if isinstance(v, Mapping):
      out.update(_flatten(v, prefix + (k,)))
    else:
      out[prefix + (k,)] = v
  return out


def _unflatten(flat):
  tree = {}
  for path, v in flat.items():
    node = tree
    for k in path[:-1]:
      node = node.setdefault(k, {})
    node[path[-1]] = v
  return tree


def path_to_torch_key(collection: str, path: Tuple[str, ...]) -> str:
  """Best inverse of the mapping, for messages about keys we expected but did not get."""
  parts = []
  for i, seg in enumerate(path[:-1]):
    # 'down_0' is the list item down.0; 'branch7x7_2' (digits before the '_') is a name.
    m = re.fullmatch(r"(\D*)_(\d+)", seg)
    if m and not (i > 0 and path[i - 1] == "mid"):
      parts.append(f"{m.group(1)}.{m.group(2)}")
    else:
      parts.append(seg)
  leaf = {"kernel": "weight", "scale": "weight", "embedding": "weight", "mean": "running_mean",
          "var": "running_var"}.get(path[-1], path[-1])
  return ".".join(parts + [leaf])


def convert_state_dict(state_dict: Mapping[str, np.ndarray], expected: Mapping,
                       prefix: str = "", ignore: Iterable[str] = (),
                       source: str = "state dict",
                       only: Optional[Iterable[str]] = None) -> Dict:
  """Turns the `prefix`-ed part of a torch state dict into a Flax variables dict.

  Args:
    state_dict: torch key -> numpy array (any float dtype; converted to float32).
    expected: the variables tree of the target model (arrays or ShapeDtypeStructs),
      e.g. `jax.eval_shape(model.init, ...)`; used for names, shapes and dtypes.
    prefix: only keys starting with it are used (e.g. 'first_stage_model.'), stripped.
    ignore: key prefixes (after stripping) that are dropped, like taming's ignore_keys.
    only: if given, key prefixes (after stripping) that belong to this model; other keys
      (another model's, e.g. `loss.` next to a VQModel) are left alone.
    source: name of the file, for messages.
  Returns:
    {collection: nested dict of np.ndarray} with exactly the structure of `expected`.
  Raises:
    ConversionError listing all missing keys, unexpected keys and shape mismatches.
  """
  converted = {}
  origin = {}
  for key, value in state_dict.items():
    if not key.startswith(prefix):
      continue
    short = key[len(prefix):]
    if only is not None and not short.startswith(tuple(only)):
      continue
    if any(short.startswith(p) for p in ignore) or short.endswith(DROPPED_SUFFIXES):
      continue
    value = np.asarray(value)
    if value.dtype.kind == "f" or value.dtype.name == "bfloat16":
      value = value.astype(np.float32)
    coll, path, value = _leaf(torch_key_to_path(short), value)
    converted[(coll,) + path] = value
    origin[(coll,) + path] = key
  want = {}
  for coll, tree in expected.items():
    for path, leaf in _flatten(tree).items():
      want[(coll,) + path] = leaf
  for p in [p for p in converted if p not in want and p[-1] == "embedding"]:
    # An EMA codebook is a buffer of ours, not a parameter: same torch key, other home.
    ema = ("ema_codebook",) + p[1:-1]
    if ema in want:
      converted[ema], origin[ema] = converted.pop(p), origin.pop(p)
  missing = [f"{prefix}{path_to_torch_key(p[0], p[1:])} (for {'/'.join(p)}, shape "
             f"{tuple(want[p].shape)})" for p in want if p not in converted]
  unexpected = [origin[p] for p in converted if p not in want]
  mismatched = [f"{origin[p]}: converted shape {tuple(converted[p].shape)} but the model "
                f"expects {tuple(want[p].shape)} at {'/'.join(p)}"
                for p in converted if p in want and converted[p].shape != tuple(want[p].shape)]
  if missing or unexpected or mismatched:
    lines = [f"{source}: the checkpoint does not fit the model"]
    for title, items in (("missing keys", missing), ("unexpected keys", unexpected),
                         ("shape mismatches", mismatched)):
      if items:
        lines.append(f"  {len(items)} {title}:")
        lines.extend(f"    {s}" for s in items)
    raise ConversionError("\n".join(lines))
  out = {}
  for p, leaf in want.items():
    out[p] = converted[p].astype(leaf.dtype)
  flat_by_coll = {}
  for p, v in out.items():
    flat_by_coll.setdefault(p[0], {})[p[1:]] = v
  return {coll: _unflatten(flat) for coll, flat in flat_by_coll.items()}


def _count(state_dict, pattern: str) -> int:
  found = set()
  for k in state_dict:
    m = re.match(pattern, k)
    if m:
      found.add(int(m.group(1)))
  return (max(found) + 1) if found else 0


def infer_vqgan_config(state_dict: Mapping[str, np.ndarray], prefix: str = "",
                       source: str = "state dict") -> VQGANConfig:
  """Reads a first-stage model's architecture off its keys and shapes.

  `resolution` is not recorded in a state dict; attention placement is, so we pick
  resolution 256 and list the attention levels' resolutions relative to it.
  """
  sd = {k[len(prefix):]: v for k, v in state_dict.items() if k.startswith(prefix)}
  def get(key):
    if key not in sd:
      raise ConversionError(f"{source}: cannot infer the model: key {prefix}{key} is missing "
                            f"(is this a taming VQModel / GumbelVQ checkpoint? found "
                            f"{len(sd)} keys under prefix {prefix!r})")
    return np.asarray(sd[key])
  conv_in = get("encoder.conv_in.weight")
  ch, in_channels = int(conv_in.shape[0]), int(conv_in.shape[1])
  n_levels = _count(sd, r"encoder\.down\.(\d+)\.")
  num_res_blocks = _count(sd, r"encoder\.down\.0\.block\.(\d+)\.")
  ch_mult = []
  for i in range(n_levels):
    out = int(get(f"encoder.down.{i}.block.0.conv2.weight").shape[0])
    ch_mult.append(out // ch)
  enc_attn = [i for i in range(n_levels) if f"encoder.down.{i}.attn.0.q.weight" in sd]
  dec_attn = [i for i in range(n_levels) if f"decoder.up.{i}.attn.0.q.weight" in sd]
  if enc_attn != dec_attn:
    raise ConversionError(f"{source}: encoder attention levels {enc_attn} differ from decoder "
                          f"levels {dec_attn}; taming builds both from one attn_resolutions")
  resolution = 256 if 256 // 2 ** (n_levels - 1) >= 1 else 2 ** (n_levels - 1)
  enc_out = int(get("encoder.conv_out.weight").shape[0])
  z_channels = int(get("decoder.conv_in.weight").shape[1])
  out_ch = int(get("decoder.conv_out.weight").shape[0])
  fields = dict(ch=ch, ch_mult=tuple(ch_mult), num_res_blocks=num_res_blocks,
                attn_resolutions=tuple(resolution // 2 ** i for i in enc_attn),
                resolution=resolution, in_channels=in_channels, out_ch=out_ch,
                z_channels=z_channels, double_z=enc_out == 2 * z_channels)
  if "quantize.embed.weight" in sd:
    n_embed, embed_dim = get("quantize.embed.weight").shape
    fields.update(quantizer="gumbel")
  elif "quantize.embedding.cluster_size" in sd:
    n_embed, embed_dim = get("quantize.embedding.weight").shape
    fields.update(quantizer="ema")
  else:
    n_embed, embed_dim = get("quantize.embedding.weight").shape
  fields.update(n_embed=int(n_embed), embed_dim=int(embed_dim))
  if "quantize.used" in sd:
    fields.update(remap_size=int(np.asarray(sd["quantize.used"]).shape[0]))
  return VQGANConfig(**fields)


FIRST_STAGE_KEYS = ("encoder.", "decoder.", "quantize.", "quant_conv.", "post_quant_conv.")


def first_stage_prefixes(state_dict: Mapping[str, np.ndarray]):
  """Prefixes under which a state dict holds first-stage models ('' for a VQModel)."""
  found = []
  for prefix in ("", "first_stage_model.", "cond_stage_model."):
    if f"{prefix}encoder.conv_in.weight" in state_dict:
      found.append(prefix)
  return found
