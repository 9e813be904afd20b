"""`python sample.py`: images from a Net2Net transformer (taming's sample_fast.py and more).

    python sample.py --checkpoint MODEL [--config YAML] --outdir OUT [-n 8] [--batch_size 25]
        [--classes 9,232,901 | --classes all]          class-conditional models
        [--cond FILE_OR_FOLDER [--cond_type T]]        spatially conditioned models
        [--complete IMAGE_OR_FOLDER --keep 0.5]        image completion
        [--height H --width W]                         pixels; sliding window if larger
        [--top_k 250 --temperature 1.0 --top_p 1.0 | --greedy] [--guidance G] [--seed 0]

MODEL: a model directory of kind "net2net" (train_transformer.py, vqgan_jax.convert) or
a taming Net2Net .ckpt. Needs no TensorFlow, TFDS, clu or ml_collections.

Sample sets, `-n` samples each: one for an unconditional model; one per class; one per
`--cond` file (segmentation: a label PNG of class ids or a .npy label map / one-hot
[H, W, L]; depth: a 1-channel PNG, 8/16-bit, float or taming's RGBA-packed float, or a
.npy, min-max scaled per image to [-1, 1]; edges / low-resolution images: any image, as
RGB); one per `--complete` image (times the classes). Conditioning and completion
images are resized to H x W (default: the trained size; nearest for segmentation,
bilinear for depth, Lanczos for RGB) and encoded. Completion keeps the first
round(keep * h * w) codes in the transformer's order (raster for the identity permuter:
`--keep 0.5` keeps the top half). The latent (H/f x W/f) is sampled by the KV-cached
sampler when it fits the trained grid `z_shape`, else by taming's sliding window.

Output, in taming's sample_fast layout (`--top_k 0`: no top-k filter):
  OUT/samples/top_k_{k}_temp_{t:.2f}_top_p_{p}/{step}/[{set}/]{i:06}.png
  .../{step}/grid.png       a row per set: the conditioning (segmentation coloured by
                            `n2n.to_rgb`, depth grey) and/or the input image, then samples
  .../{step}/settings.json  the arguments and what they resolved to
  .../{step}/codes.npz      codes int32[M, h, w] (raster) of the M samples, set-major, with
                            set_index, index, c_indices, completion_codes (+ class, cond)
{step}: the model's training step if it records one (a .ckpt's global_step; a model
directory's "global_step" or "step"), else 0. {set}: the class and/or the stem of the
conditioning / completion file; no level for an unconditional model.

Resumable: sample i of a set is drawn with its own key fold_in(fold_in(PRNGKey(seed),
set), i) (set: the class id, then crc32 of the file stem) by a sampler vmapped over
rows of batch one, so it depends neither on the batch size nor on its batch mates. A
re-run skips each sample whose PNG exists and whose codes codes.npz holds (for the same
conditioning); the others are drawn as an uninterrupted run would have drawn them. A
re-run with another seed, greedy, guidance, size, keep, conditioning type or checkpoint
into the same folder is refused, naming the fields.
"""

import argparse
import dataclasses
import functools
import json
import os
import sys
import time
import zlib
from collections.abc import Mapping
from typing import Any, Dict, List, Optional, Tuple

import numpy as np

from vqgan_jax.images import (IMAGE_EXTENSIONS, expand_image_args, image_grid, read_image,
                              read_single_channel, save_png, to_float, to_uint8, torch_nearest,
                              unique_name)

COND_TYPES = ("segmentation", "depth", "image")
# Settings that change what a sample is; a re-run into the same folder must repeat them.
_FIXED = ("checkpoint", "seed", "greedy", "guidance", "height", "width", "keep", "cond_type")


class _Error(Exception):
  """A user error: printed as `error: ...`, exit code 2."""


def _parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(prog="python sample.py", description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  a = p.add_argument
  a("--checkpoint", "-r", required=True, help="net2net model directory or taming .ckpt")
  a("--config", default=None, help="taming project YAML for a .ckpt")
  a("--outdir", "-o", required=True, help="output folder")
  a("--num_samples", "-n", type=int, default=8, help="samples per set (class / file)")
  a("--batch_size", type=int, default=25)
  a("--top_k", "-k", type=int, default=250, help="0: no top-k filter")
  a("--temperature", "-t", type=float, default=1.0)
  a("--top_p", "-p", type=float, default=1.0,
    help="nucleus threshold (1.0 still runs taming's nucleus step, as it does; < 0: off)")
  a("--greedy", action="store_true", help="argmax instead of sampling")
  a("--guidance", type=float, default=1.0,
    help="classifier-free guidance scale (models trained with label dropout)")
  a("--seed", type=int, default=0)
  a("--classes", default=None, help="comma-separated class ids, or 'all'")
  a("--cond", default=None, help="conditioning file, or a folder of them")
  a("--cond_type", default=None, choices=COND_TYPES,
    help="how to read --cond (default: from the model's conditioning stage)")
  a("--complete", default=None, help="image (or folder) whose code prefix is kept")
  a("--keep", type=float, default=0.5, help="fraction of the codes --complete keeps")
  a("--height", type=int, default=None, help="pixels (default: the trained size)")
  a("--width", type=int, default=None, help="pixels (default: the trained size)")
  a("--grid_samples", type=int, default=8, help="samples per set shown in grid.png")
  a("--inception", default=None,
    help="pytorch-fid's pt_inception-2015-12-05-6726825d.pth: score the samples")
  a("--fid_stats", default=None,
    help="reference statistics .npz (pytorch-fid layout; `python -m vqgan_jax.evaluate fid "
         "--real ... --save_stats`): FID of all samples of the run against them")
  a("--inception_score", action="store_true", help="also the Inception Score (10 splits)")
  return p


# ---- model -----------------------------------------------------------------------------

def load_model(path: str, yaml: Optional[str]):
  """(Net2Net, training step or 0) of a model directory or a taming .ckpt (read once)."""
  from vqgan_jax import net2net
  if not os.path.exists(path):
    raise _Error(f"--checkpoint {path}: no such file or directory")
  if os.path.isdir(path):
    n2n = net2net.load_transformer(path)
    with open(os.path.join(path, "config.json")) as f:
      cfg = json.load(f)
    return n2n, int(cfg.get("global_step", cfg.get("step")) or 0)
  from vqgan_jax.convert.checkpoint import convert_state_dict_tree, read_project_yaml
  from vqgan_jax.convert.torch_reader import load_torch_file
  obj = load_torch_file(path)   # what read_state_dict reads, but keeping global_step
  top = obj if isinstance(obj, Mapping) else {}
  sd = top.get("state_dict", top)
  cfg, variables = convert_state_dict_tree(
      dict(sd), read_project_yaml(yaml) if yaml else None, source=path,
      require_transformer=True)
  if cfg["kind"] != "net2net":
    raise _Error(f"--checkpoint {path}: holds a {cfg['kind']!r} model, not a Net2Net "
                 "transformer")
  name = os.path.basename(os.path.normpath(path))
  return net2net.Net2Net(cfg, variables, name=name), int(top.get("global_step") or 0)


def default_cond_type(n2n) -> Optional[str]:
  """How a conditioning file is read for this model (None: no spatial conditioning)."""
  c = n2n.config
  if c.cond == "first_stage":
    return "image"
  if c.cond != "vq":
    return None
  channels = n2n.cond_stage.config.in_channels
  if n2n.colorize is not None or "segmentation" in c.cond_stage_key or channels not in (1, 3):
    return "segmentation"
  return "depth" if channels == 1 else "image"


def parse_classes(text: str, n_classes: int) -> List[int]:
  """'all' or '9,232,901' -> class ids, each checked against [0, n_classes)."""
  if text.strip().lower() == "all":
    return list(range(n_classes))
  ids = []
  for part in text.split(","):
    try:
      k = int(part)
    except ValueError:
      raise _Error(f"--classes: {part.strip()!r} is not a class id (expected comma-separated "
                   "integers or 'all')") from None
    if not 0 <= k < n_classes:
      raise _Error(f"--classes: class {k} is outside the model's classes [0, {n_classes})")
    if k not in ids:
      ids.append(k)
  return ids


# ---- conditioning inputs ---------------------------------------------------------------

def _files(path: str, flag: str) -> List[str]:
  """A file, or the image / .npy files of a folder (recursive, sorted)."""
  if os.path.isfile(path):
    return [path]
  if not os.path.isdir(path):
    raise _Error(f"{flag} {path}: no such file or folder")
  found = sorted(os.path.join(root, f) for root, _, files in os.walk(path) for f in files
                 if os.path.splitext(f)[1].lower() in IMAGE_EXTENSIONS + (".npy",))
  if not found:
    raise _Error(f"{flag} {path}: the folder holds no image or .npy file")
  return found


def _resize(a: np.ndarray, hw: Tuple[int, int], resample: str) -> np.ndarray:
  """float32[H, W] (or uint8[H, W, 3]) resized to hw with PIL's filter `resample`."""
  from PIL import Image
  if a.shape[:2] == tuple(hw):
    return a
  im = Image.fromarray(a, "F" if a.ndim == 2 else "RGB")
  return np.asarray(im.resize((hw[1], hw[0]), getattr(Image, resample)))


def read_conditioning(path: str, cond_type: str, channels: int,
                      hw: Tuple[int, int]) -> np.ndarray:
  """A conditioning file -> the conditioning stage's input float32[H, W, channels].

  segmentation: one-hot (label PNG of class ids, .npy label map [H, W] or one-hot
  [H, W, channels]; nearest resize); depth: [-1, 1] by the image's min and max, bilinear
  resize; image: RGB in [-1, 1] (any image mode), Lanczos resize.
  """
  where = f"--cond {path}"
  try:
    if cond_type == "image":
      return to_float(_resize(read_image(path), hw, "LANCZOS"))
    a = np.load(path) if path.lower().endswith(".npy") else read_single_channel(path)
  except (OSError, ValueError) as e:
    raise _Error(f"{where}: {e}") from None
  if a.ndim == 3 and a.shape[-1] == 1:
    a = a[..., 0]
  if cond_type == "depth":
    if a.ndim != 2:
      raise _Error(f"{where}: a depth map has 1 channel; this one has shape {list(a.shape)}")
    d = a.astype(np.float32)
    lo, hi = float(d.min()), float(d.max())
    d = (d - lo) / max(1e-8, hi - lo) * 2.0 - 1.0
    return _resize(d, hw, "BILINEAR")[..., None].astype(np.float32)
  if a.ndim == 3:
    if a.shape[-1] != channels:
      raise _Error(f"{where}: a one-hot segmentation needs {channels} channels (the model's "
                   f"labels); this one has shape {list(a.shape)}")
    return torch_nearest(a.astype(np.float32), *hw)
  if a.ndim != 2 or not np.issubdtype(a.dtype, np.integer):
    raise _Error(f"{where}: expected a label map int[H, W] or a one-hot [H, W, {channels}]; "
                 f"got {a.dtype}{list(a.shape)}")
  labels = torch_nearest(a.astype(np.int64), *hw)
  if labels.min() < 0 or labels.max() >= channels:
    raise _Error(f"{where}: class ids in [{labels.min()}, {labels.max()}], outside the "
                 f"model's {channels} labels")
  return np.eye(channels, dtype=np.float32)[labels]


def _display(n2n, cond: np.ndarray, cond_type: str) -> np.ndarray:
  """The conditioning as taming shows it: float32[H, W, 3] in [-1, 1]."""
  if cond_type == "segmentation":
    if n2n.colorize is not None:
      return n2n.to_rgb(cond[None])[0]
    palette = np.random.RandomState(0).uniform(-1, 1, (cond.shape[-1], 3))
    return palette[cond.argmax(-1)].astype(np.float32)
  return np.repeat(cond, 3, axis=-1) if cond.shape[-1] == 1 else cond


# ---- sample sets -----------------------------------------------------------------------

@dataclasses.dataclass
class SampleSet:
  """Samples sharing one conditioning: `-n` of them, under `name` (None: top level)."""
  name: Optional[str]
  label: Optional[int]          # class id (class-conditional)
  c_tokens: np.ndarray          # int32[n_c] conditioning tokens (raster for spatial)
  z_init: Optional[np.ndarray]  # int32[h, w] raster codes of the completion image
  columns: List[np.ndarray]     # float32[H, W, 3] shown before the samples in the grid
  cond: Optional[np.ndarray] = None  # float32[H, W, C] the conditioning input
  files: Tuple[str, str] = ("", "")  # (conditioning file, completion image)
  stem: str = ""                 # the file part of `name` ("" without files)

  def key(self, seed: int):
    """The set's PRNG key: PRNGKey(seed), folded with the class id and the stem's crc32."""
    import jax
    key = jax.random.PRNGKey(seed)
    if self.label is not None:
      key = jax.random.fold_in(key, self.label)
    if self.stem:
      key = jax.random.fold_in(key, zlib.crc32(self.stem.encode()) & 0x7FFFFFFF)
    return key


def build_sets(args, n2n, hw: Tuple[int, int]) -> Tuple[List[SampleSet], Optional[str]]:
  """The sample sets of the arguments, with their conditioning tokens encoded."""
  c = n2n.config
  cond_type = args.cond_type or default_cond_type(n2n)
  if c.cond == "coord":
    raise _Error("coordinate-conditioned models (cond 'coord') are not supported by sample.py")
  if args.classes is not None and c.cond != "class":
    raise _Error(f"--classes: the model is not class-conditional (cond {c.cond!r})")
  if c.cond == "class" and args.classes is None:
    raise _Error(f"the model is class-conditional ({c.n_classes} classes): pass --classes "
                 "(comma-separated ids, or 'all')")
  spatial = c.cond in ("vq", "first_stage")
  if spatial and args.cond is None:
    raise _Error(f"the model is conditioned on {c.cond_stage_key!r} maps (cond {c.cond!r}): "
                 "pass --cond FILE_OR_FOLDER")
  if args.cond is not None and not spatial:
    raise _Error(f"--cond: the model has no spatial conditioning (cond {c.cond!r})")
  conds = _files(args.cond, "--cond") if spatial else [None]
  images = expand_image_args([args.complete]) if args.complete else [None]
  if len(conds) > 1 and len(images) > 1 and len(conds) != len(images):
    raise _Error(f"--cond gives {len(conds)} files and --complete {len(images)} images: give "
                 "as many of each (paired in sorted order) or one of either")
  n = max(len(conds), len(images))
  pairs = [(conds[min(i, len(conds) - 1)], images[min(i, len(images) - 1)]) for i in range(n)]
  labels = parse_classes(args.classes, c.n_classes) if c.cond == "class" else [None]
  stage = n2n.first_stage if c.cond == "first_stage" else n2n.cond_stage
  sets, used = [], set()
  stem = lambda p: os.path.splitext(os.path.basename(p))[0]
  for cond_path, image_path in pairs:
    columns, cond, c_tokens, z_init = [], None, None, None
    if cond_path is not None:
      cond = read_conditioning(cond_path, cond_type, stage.config.in_channels, hw)
      columns.append(_display(n2n, cond, cond_type))
      c_tokens = np.asarray(n2n.encode_to_c(cond[None])[1])[0]
    if image_path is not None:
      try:
        image = to_float(_resize(read_image(image_path), hw, "LANCZOS"))
      except OSError as e:
        raise _Error(f"--complete {image_path}: {e}") from None
      columns.append(image)
      z_init = np.asarray(n2n.first_stage.encode(image[None])[1])[0]
    names = [stem(p) for p in (cond_path, image_path) if p is not None]
    name = "_".join(dict.fromkeys(names)) if names else None
    name = unique_name(name, used) if name else None
    for label in labels:
      if label is not None:
        c_tokens = np.asarray(n2n.encode_to_c(np.array([label]))[1])[0]
        full = f"{label}/{name}" if name else str(label)
      else:
        full = name
        if c_tokens is None:
          c_tokens = np.asarray(n2n.encode_to_c(1)[1])[0]
      sets.append(SampleSet(full, label, np.asarray(c_tokens, np.int32), z_init, columns,
                            cond, (cond_path or "", image_path or ""), name or ""))
  return sets, cond_type


# ---- samplers: one PRNG key per row ----------------------------------------------------

@functools.lru_cache(maxsize=None)
def _token_sampler(cfg, steps, temperature, top_k, top_p, greedy, guidance, uncond):
  """jit(vmap) over rows (params, c int32[B, n_c], keys [B], prefix int32[B, k]) ->
  int32[B, steps]; each row is sampled as a batch of one with its own key."""
  import jax
  import jax.numpy as jnp
  from vqgan_jax import sampling

  def one(params, c, key, prefix):
    extra = {}
    if guidance != 1.0:
      extra = dict(guidance=guidance, uncond_tokens=jnp.full((1, c.shape[0]), uncond, jnp.int32))
    return sampling.sample_tokens(cfg, params, c[None], steps, rng=key, z_prefix=prefix[None],
                                  temperature=temperature, top_k=top_k, top_p=top_p,
                                  greedy=greedy, **extra)[0]
  return jax.jit(jax.vmap(one, in_axes=(None, 0, 0, 0)))


@functools.lru_cache(maxsize=None)
def _window_sampler(cfg, latent, window, start, spatial, temperature, top_k, top_p, greedy):
  """jit(vmap) over rows (params, c, keys [B], z_init int32[B, h, w]) -> int32[B, h, w]."""
  import jax
  from vqgan_jax import sampling

  def one(params, c, key, z):
    c = c.reshape(1, *latent) if spatial else c[None]
    return sampling.sample_window(cfg, params, c, latent, window, rng=key, z_init=z[None],
                                  start=start, temperature=temperature, top_k=top_k,
                                  top_p=top_p, greedy=greedy)[0]
  return jax.jit(jax.vmap(one, in_axes=(None, 0, 0, 0)))


class Sampler:
  """Raster codes int32[B, h, w] of rows (set, key), by the plain or the window sampler."""

  def __init__(self, n2n, args, latent: Tuple[int, int], kept: int):
    c = n2n.config
    self.n2n, self.latent, self.kept = n2n, latent, kept
    self.window = latent[0] > c.z_shape[0] or latent[1] > c.z_shape[1]
    top_k = args.top_k if args.top_k > 0 else None
    top_p = float(args.top_p) if float(args.top_p) >= 0 else None  # < 0: no nucleus step
    common = (float(args.temperature), top_k, top_p, bool(args.greedy))
    cfg = n2n.transformer_config
    if args.guidance != 1.0 and n2n.uncond_token is None:
      raise _Error(f"--guidance needs a class-conditional model trained with label dropout "
                   f"(net2net.label_dropout > 0); this one has cond {c.cond!r}, label_dropout "
                   f"{c.label_dropout}")
    if self.window:
      if args.guidance != 1.0:
        raise _Error("--guidance is not supported with the sliding window")
      if not n2n.permuter.is_identity:
        raise _Error(f"the {latent[0]}x{latent[1]} latent needs the sliding window, which needs "
                     f"raster order; this model uses the {n2n.permuter.name!r} permuter")
      if c.z_shape[0] > latent[0] or c.z_shape[1] > latent[1]:   # sample_window refuses it
        raise _Error(f"the model's {c.z_shape[0]}x{c.z_shape[1]} window is larger than the "
                     f"{latent[0]}x{latent[1]} latent in one direction: the sliding window "
                     f"needs H >= {c.z_shape[0] * n2n.first_stage.downsample_factor} and W >= "
                     f"{c.z_shape[1] * n2n.first_stage.downsample_factor} pixels")
      spatial = c.cond in ("vq", "first_stage")
      self.fn = _window_sampler(cfg, latent, tuple(c.z_shape), self.kept, spatial, *common)
    else:
      if tuple(latent) != tuple(c.z_shape) and not n2n.permuter.is_identity:
        raise _Error(f"the {n2n.permuter.name!r} permuter orders the trained "
                     f"{c.z_shape[0]}x{c.z_shape[1]} latent; these sizes give "
                     f"{latent[0]}x{latent[1]}")
      steps = latent[0] * latent[1] - self.kept
      self.fn = _token_sampler(cfg, steps, *common, float(args.guidance), n2n.uncond_token)

  def __call__(self, sets: List[SampleSet], keys) -> np.ndarray:
    import jax.numpy as jnp
    params = self.n2n.variables["params"]
    c = jnp.asarray(np.stack([s.c_tokens for s in sets]))
    h, w = self.latent
    z = np.stack([s.z_init if s.z_init is not None else np.zeros((h, w), np.int32)
                  for s in sets]).astype(np.int32)
    if self.window:
      if self.n2n.config.cond in ("vq", "first_stage") and c.shape[1] != h * w:
        raise _Error(f"the conditioning gives {c.shape[1]} codes; the sliding window needs "
                     f"one per latent position ({h}x{w})")
      return np.asarray(self.fn(params, c, keys, jnp.asarray(z)))
    perm = self.n2n.permuter
    seq = z.reshape(len(sets), -1)
    seq = perm.apply(seq) if seq.shape[1] == perm.length else seq
    prefix = seq[:, :self.kept]
    out = np.concatenate([prefix, np.asarray(self.fn(params, c, keys, jnp.asarray(prefix)))], 1)
    out = perm.reverse(out) if out.shape[1] == perm.length else out
    return out.reshape(len(sets), h, w)


# ---- the run ---------------------------------------------------------------------------

class _Codes:
  """codes.npz of a run folder: every sample's raster codes and conditioning, set-major.

  Rows of an earlier run are taken over when their set name, index, conditioning tokens
  and completion codes match; `done` says which rows hold codes.
  """

  def __init__(self, path: str, sets: List[SampleSet], n: int, latent: Tuple[int, int]):
    self.path, self.sets = path, sets
    self.set_index = np.repeat(np.arange(len(sets), dtype=np.int32), n)
    self.index = np.tile(np.arange(n, dtype=np.int32), len(sets))
    self.c_indices = np.stack([sets[s].c_tokens for s in self.set_index])
    self.codes = np.zeros((len(self.index),) + tuple(latent), np.int32)
    self.done = np.zeros(len(self.index), bool)
    if os.path.isfile(path):
      self._take_over(latent)

  def _completion(self, s: SampleSet, latent) -> np.ndarray:
    return s.z_init if s.z_init is not None else np.full(latent, -1, np.int32)

  def _take_over(self, latent):
    try:
      with np.load(self.path) as npz:
        old = dict(npz)
      if old["codes"].shape[1:] != tuple(latent):
        return
    except (OSError, ValueError, KeyError) as e:
      print(f"warning: {self.path} is unreadable ({e}); its samples are drawn again",
            file=sys.stderr)
      return
    names = [str(v) for v in old["set_names"]]
    rows = {(names[s], int(i)): r for r, (s, i) in
            enumerate(zip(old["set_index"], old["index"])) if old["done"][r]}
    for r, (s, i) in enumerate(zip(self.set_index, self.index)):
      o = rows.get((self.sets[s].name or "", int(i)))
      if o is None:
        continue
      same = (np.array_equal(old["c_indices"][o], self.c_indices[r]) and np.array_equal(
          old["completion_codes"][old["set_index"][o]], self._completion(self.sets[s], latent)))
      if same:
        self.codes[r], self.done[r] = old["codes"][o], True

  def save(self):
    sets = self.sets
    arrays = dict(codes=self.codes, done=self.done, set_index=self.set_index,
                  index=self.index, c_indices=self.c_indices,
                  set_names=np.array([s.name or "" for s in sets]),
                  cond_files=np.array([s.files[0] for s in sets]),
                  complete_files=np.array([s.files[1] for s in sets]),
                  completion_codes=np.stack([self._completion(s, self.codes.shape[1:])
                                             for s in sets]))
    if sets[0].label is not None:
      arrays["class"] = np.array([sets[s].label for s in self.set_index], np.int32)
    if sets[0].cond is not None:
      arrays["cond"] = np.stack([s.cond for s in sets])
    tmp = self.path[:-len(".npz")] + ".tmp.npz"
    np.savez(tmp, **arrays)
    os.replace(tmp, self.path)


def _png(run_dir: str, s: SampleSet, i: int) -> str:
  return os.path.join(run_dir, *(s.name.split("/") if s.name else []), f"{i:06}.png")


def _check_settings(path: str, settings: Dict[str, Any]):
  """Refuses a re-run into a folder whose samples were drawn with other settings."""
  if not os.path.isfile(path):
    return
  with open(path) as f:
    old = json.load(f)
  diffs = [f"{k} {old.get(k)!r} -> {settings[k]!r}" for k in _FIXED if old.get(k) != settings[k]]
  if diffs:
    raise _Error(f"{os.path.dirname(path)} holds samples drawn with other settings ("
                 f"{'; '.join(diffs)}): use another --outdir, or the same settings to resume")


def _write_grid(path: str, run_dir: str, sets: List[SampleSet], n: int, count: int):
  shown = sets[:64]
  g = min(count, n)
  columns = [np.stack([s.columns[j] for s in shown]) for j in range(len(shown[0].columns))]
  columns += [np.stack([to_float(read_image(_png(run_dir, s, i))) for s in shown])
              for i in range(g)]
  if columns:
    save_png(path, image_grid(columns))


def _run(args) -> int:
  import jax
  import jax.numpy as jnp
  for flag, value, low in (("--num_samples", args.num_samples, 1),
                           ("--batch_size", args.batch_size, 1),
                           ("--grid_samples", args.grid_samples, 0)):
    if value < low:
      raise _Error(f"{flag} must be >= {low}, got {value}")
  if not 0.0 <= args.keep < 1.0:
    raise _Error(f"--keep must lie in [0, 1), got {args.keep}")
  if not args.greedy and not args.temperature > 0:
    raise _Error(f"--temperature must be > 0, got {args.temperature}")
  if args.top_p > 1:
    raise _Error(f"--top_p must be <= 1 (< 0: no nucleus step), got {args.top_p}")
  scoring = _check_scoring(args)
  try:
    n2n, step = load_model(args.checkpoint, args.config)
  except (OSError, ValueError, KeyError) as e:   # their messages name the file
    raise _Error(str(e)) from None
  f, (zh, zw) = n2n.first_stage.downsample_factor, n2n.config.z_shape
  H = args.height if args.height is not None else zh * f
  W = args.width if args.width is not None else zw * f
  if H <= 0 or W <= 0 or H % f or W % f:
    raise _Error(f"--height {H} / --width {W} must be positive multiples of the model's "
                 f"downsampling factor {f}")
  latent = (H // f, W // f)
  kept = int(round(args.keep * latent[0] * latent[1])) if args.complete else 0
  if kept >= latent[0] * latent[1]:
    raise _Error(f"--keep {args.keep} keeps all {kept} codes of the {latent[0]}x{latent[1]} "
                 "latent: leave at least one to sample")
  sampler = Sampler(n2n, args, latent, kept)
  sets, cond_type = build_sets(args, n2n, (H, W))
  n = args.num_samples
  run_dir = os.path.join(args.outdir, "samples", f"top_k_{args.top_k}_temp_"
                         f"{args.temperature:.2f}_top_p_{args.top_p}", str(step))
  settings = dict(vars(args), checkpoint=os.path.abspath(args.checkpoint), height=H,
                  width=W, keep=args.keep if args.complete else None, cond_type=cond_type,
                  step=step, latent=list(latent), z_shape=list(n2n.config.z_shape),
                  sampler="sliding_window" if sampler.window else "kv_cache",
                  kept_codes=sampler.kept, cond=n2n.config.cond,
                  sets=[s.name for s in sets], run_dir=os.path.abspath(run_dir))
  _check_settings(os.path.join(run_dir, "settings.json"), settings)
  os.makedirs(run_dir, exist_ok=True)
  with open(os.path.join(run_dir, "settings.json"), "w") as fh:
    json.dump(settings, fh, indent=2, sort_keys=True)

  codes = _Codes(os.path.join(run_dir, "codes.npz"), sets, n, latent)
  pngs = [_png(run_dir, sets[s], int(i)) for s, i in zip(codes.set_index, codes.index)]
  pending = [r for r in range(len(pngs)) if not (codes.done[r] and os.path.isfile(pngs[r]))]
  how = (f"sliding {zh}x{zw} window over a {latent[0]}x{latent[1]} latent" if sampler.window
         else f"KV-cached sampler, {latent[0]}x{latent[1]} latent")
  print(f"[sample] {len(sets)} set(s) x {n} = {len(pngs)} samples of {H}x{W} "
        f"({len(pngs) - len(pending)} already there, {len(pending)} to draw; {how}) -> "
        f"{run_dir}", flush=True)
  set_keys = jnp.stack([s.key(args.seed) for s in sets])
  row_key = jax.jit(jax.vmap(jax.random.fold_in))
  # Every batch is padded to one shape, the same in a re-run: one compilation.
  bs = min(args.batch_size, len(pngs))
  n_batches, t0, last_save = -(-len(pending) // bs), time.time(), time.time()
  try:
    for b in range(n_batches):
      rows = pending[b * bs:(b + 1) * bs]
      padded = rows + [rows[-1]] * (bs - len(rows))
      keys = row_key(set_keys[codes.set_index[padded]],
                     jnp.asarray(codes.index[padded], jnp.uint32))
      z = sampler([sets[codes.set_index[r]] for r in padded], keys)
      images = to_uint8(np.asarray(n2n.first_stage.decode_indices(z)))
      for k, r in enumerate(rows):
        save_png(pngs[r], images[k])
        codes.codes[r], codes.done[r] = z[k], True
      done = b * bs + len(rows)
      rate = done / max(time.time() - t0, 1e-9)
      print(f"[sample] batch {b + 1}/{n_batches}: {done}/{len(pending)} drawn, "
            f"{rate:.2f} samples/s, ETA {(len(pending) - done) / rate:.0f} s", flush=True)
      if time.time() - last_save > 30:
        codes.save()
        last_save = time.time()
  finally:
    codes.save()
  if args.grid_samples:
    _write_grid(os.path.join(run_dir, "grid.png"), run_dir, sets, n, args.grid_samples)
  print(f"[sample] wrote {len(pending)} new samples ({len(pngs)} in all) to {run_dir}: "
        f"grid.png, settings.json, codes.npz", flush=True)
  if scoring is not None:
    _score(args, scoring, pngs, run_dir)
  return 0


def _check_scoring(args):
  """The reference statistics (or None) when samples are to be scored; checked before any
  sample is drawn."""
  if not (args.fid_stats or args.inception_score):
    return None
  if not args.inception:
    raise _Error("--fid_stats / --inception_score need --inception (pytorch-fid's "
                 "pt_inception-2015-12-05-6726825d.pth)")
  if not os.path.isfile(args.inception):
    raise _Error(f"--inception {args.inception}: no such file")
  if args.inception_score and args.num_samples < 10:
    raise _Error("--inception_score splits the samples in 10: draw at least 10 per set")
  if not args.fid_stats:
    return ()
  from vqgan_jax.metrics import load_stats
  try:
    return load_stats(args.fid_stats)
  except OSError as e:
    raise _Error(f"--fid_stats {args.fid_stats}: {e}") from None


def _score(args, reference, pngs: List[str], run_dir: str) -> None:
  """FID (against --fid_stats) and IS of every sample PNG of the run, as `python -m
  vqgan_jax.evaluate fid` computes them; written to metrics.json and printed."""
  from vqgan_jax import evaluate, fid
  from vqgan_jax.nn.inception import load_inception
  net = fid.InceptionFeatures(load_inception(args.inception))
  source = evaluate.FolderSource(pngs, f"samples in {run_dir}")
  batch = evaluate.round_to_devices(args.batch_size, net.mesh.devices.size)
  fake = evaluate.feature_set(net, source, batch, "scoring", keep_features=False,
                              keep_logits=args.inception_score, workers=os.cpu_count() or 1)
  which = (("fid",) if args.fid_stats else ()) + (("is",) if args.inception_score else ())
  result = dict(fid.scores(reference or None, fake, which), num_samples=fake.count,
                fid_stats=args.fid_stats)
  with open(os.path.join(run_dir, "metrics.json"), "w") as fh:
    json.dump(result, fh, indent=2, sort_keys=True)
  print(f"[sample] {json.dumps(result)}", flush=True)


def main(argv=None) -> int:
  args = _parser().parse_args(argv)
  try:
    return _run(args)
  except (_Error, ValueError, FileNotFoundError, KeyError) as e:
    print(f"error: {e}", file=sys.stderr)   # the samplers' ValueErrors included
    return 2
