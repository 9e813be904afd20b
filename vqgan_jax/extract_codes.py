"""`python -m vqgan_jax.extract_codes`: encode a dataset once into a code dataset.

  python -m vqgan_jax.extract_codes --vqgan MODEL --out DIR --split train --size 256 \\
      (--images FOLDER | --tfds NAME [--tfds_split 'train[:10%]'] [--data_dir D]) \\
      [--labels label | --labels folders] \\
      [--cond_vqgan MODEL [--cond_which cond_stage] --cond_type depth|segmentation|image \\
       (--cond_key FEATURE | --cond_images FOLDER) [--downsample_cond_size S]]

MODEL is a model directory or a taming .ckpt (+ `--vqgan_config` YAML); a Net2Net
model gives its first stage (or, with `--cond_which cond_stage`, its VQ cond stage). The
result is a TFDS dataset of int32 code grids (`vqgan_jax.data.codes`).

Preprocessing is the VQGAN pipeline's evaluation path (`data.preprocess.preprocess_eval`):
RGB, smallest side resized to `--size` (antialiased bilinear), centre crop, [-1, 1].
Folder images are read by the folder pipeline's rules (`local_builder.load_image_bytes`);
unreadable images are skipped with a warning and counted. Conditioning inputs get the
same resize and crop: `image` as the image; `depth` (one channel: 8/16-bit grey, float,
or taming's RGBA-packed float32 PNG) scaled per image to [-1, 1] by its min and max
before resizing, as taming's depth datasets do; `segmentation` (a map of class ids)
resized with nearest neighbours, then one-hot to the cond model's in_channels. With
`--downsample_cond_size S` the cond input is then resized to SxS as taming's Net2Net does
(torch nearest: src = floor(dst * in / out)).

Chunks of `--chunk_size` consecutive examples; process i of n encodes a contiguous run
of chunks, so any number of processes writes the same dataset. A rerun with the same
arguments skips finished chunks; process 0 waits (up to `--wait_timeout` s) for every
chunk and finalises the split. Prints progress, then one JSON summary line.
"""

import argparse
import collections
import concurrent.futures
import functools
import json
import os
import sys
import time
from typing import Any, Dict, Iterator, Optional, Tuple

import numpy as np

from vqgan_jax.api import load_vqgan
from vqgan_jax.images import read_single_channel, torch_nearest
from vqgan_jax.data import codes

COND_CHANNELS = {"image": 3, "depth": 1}  # segmentation: the cond model's in_channels


class _Error(Exception):
  """A user error: printed as `error: ...`, exit code 2."""


class _Skip(Exception):
  """An example that cannot be read: skipped with a warning."""


def _parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(prog="python -m vqgan_jax.extract_codes", description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  a = p.add_argument
  a("--vqgan", required=True, help="model directory or taming .ckpt")
  a("--vqgan_config", default=None, help="taming project YAML for a .ckpt")
  a("--out", required=True, help="the code dataset directory")
  a("--split", required=True, help="name of the split to write (e.g. train)")
  src = p.add_mutually_exclusive_group(required=True)
  src.add_argument("--images", help="image folder (searched recursively) or .txt list")
  src.add_argument("--tfds", help="prepared TFDS dataset name (never downloaded)")
  a("--tfds_split", default=None, help="TFDS split, slices allowed (default: --split)")
  a("--data_dir", default=None, help="TFDS data_dir")
  a("--image_key", default="image", help="TFDS image feature")
  a("--size", type=int, default=256, help="crop size, a multiple of the model's factor")
  a("--labels", default=None, help="class labels: a TFDS integer feature, or 'folders' "
    "(index of the image's top-level subfolder in sorted order)")
  a("--n_classes", type=int, default=None, help="number of classes (a TFDS feature that "
    "is not a ClassLabel needs it)")
  a("--cond_vqgan", default=None, help="VQ conditioning model (directory or .ckpt)")
  a("--cond_vqgan_config", default=None, help="taming project YAML for its .ckpt")
  a("--cond_which", default="vqgan", choices=("vqgan", "cond_stage"),
    help="which model of --cond_vqgan (cond_stage: a Net2Net's VQ cond stage)")
  a("--cond_type", default=None, choices=("image", "depth", "segmentation"))
  cond = p.add_mutually_exclusive_group()
  cond.add_argument("--cond_key", help="TFDS feature holding the conditioning input")
  cond.add_argument("--cond_images", help="folder of conditioning files, paired with "
                    "--images by relative path (any image extension)")
  a("--downsample_cond_size", type=int, default=None, help="resize the cond input to SxS")
  a("--shift_segmentation", action="store_true",
    help="segmentation ids + 1 modulo 256 (255 'unlabeled' -> 0), taming's option")
  a("--batch_size", type=int, default=64)
  a("--chunk_size", type=int, default=1024, help="examples per chunk (the resume unit)")
  a("--process_index", type=int, default=None, help="default: jax.process_index()")
  a("--process_count", type=int, default=None, help="default: jax.process_count()")
  a("--wait_timeout", type=float, default=3600.0,
    help="seconds process 0 waits for the other processes' chunks")
  a("--workers", type=int, default=min(16, os.cpu_count() or 1),
    help="threads reading and preprocessing images")
  a("--log_every", type=int, default=20, help="progress line every N batches")
  a("--no_tfrecord", action="store_true",
    help="write array_record shards only (TFDS as_dataset then needs a conversion)")
  return p


# ---- models ----------------------------------------------------------------------------

def _load(flag: str, path: str, yaml: Optional[str], which: str):
  try:
    return load_vqgan(path, yaml, which=which)
  except (OSError, ValueError, KeyError) as e:
    raise _Error(f"{flag} {path}: {e}") from None
  except Exception as e:  # a file that is no checkpoint at all
    raise _Error(f"{flag} {path}: cannot be loaded as a VQGAN ({type(e).__name__}: {e})") from None


def _model_fields(vq, path: str, which: str) -> Dict[str, Any]:
  """{path, which, config, fingerprint}: the fingerprint hashes every variable."""
  from vqgan_jax.model_dir import variables_fingerprint
  return {"path": os.path.abspath(path), "which": which, "config": vq.config.to_dict(),
          "fingerprint": variables_fingerprint(vq.variables)}


class _Encoder:
  """vq.encode on fixed-size batches, data-parallel over the local devices."""

  def __init__(self, vq, batch_size: int):
    import jax
    from jax.sharding import Mesh, NamedSharding, PartitionSpec
    devices = jax.local_devices()
    self.batch_size = -(-batch_size // len(devices)) * len(devices)
    self.num_devices = len(devices)
    self.vq, self._sharding = vq, None
    if len(devices) > 1:
      mesh = Mesh(np.array(devices), ("data",))
      self._sharding = NamedSharding(mesh, PartitionSpec("data"))
      vq.variables = jax.device_put(vq.variables, NamedSharding(mesh, PartitionSpec()))

  def __call__(self, x: np.ndarray) -> np.ndarray:
    """x float32[k, H, W, C], k <= batch_size -> indices int32[k, h, w]."""
    import jax
    k = x.shape[0]
    if k < self.batch_size:
      x = np.concatenate([x, np.zeros((self.batch_size - k,) + x.shape[1:], x.dtype)])
    if self._sharding is not None:
      x = jax.device_put(x, self._sharding)
    return np.asarray(self.vq.encode(x)[1])[:k].astype(np.int32)


# ---- sources ---------------------------------------------------------------------------

class _Folder:
  """Image files (sorted), with labels from top-level subfolders and paired cond files."""

  def __init__(self, path: str, labels: bool, cond_images: Optional[str]):
    from vqgan_jax.data.local_builder import list_hash
    from vqgan_jax.images import list_images
    if not os.path.exists(path):
      raise _Error(f"--images {path}: no such folder or list")
    if not os.path.isdir(path) and not path.lower().endswith(".txt"):
      raise _Error(f"--images {path}: expected a folder or a .txt list of image paths")
    self.root = os.path.abspath(path)
    self.files = list_images(path)
    if not self.files:
      raise _Error(f"--images {path}: no image files")
    self.num_examples = len(self.files)
    is_dir = os.path.isdir(path)
    rel = [os.path.relpath(f, self.root) for f in self.files] if is_dir else None
    self.class_names, self.labels = None, None
    if labels:
      if not is_dir:
        raise _Error("--labels folders needs --images to be a folder, not a list")
      loose = [r for r in rel if os.sep not in r]
      if loose:
        raise _Error(f"--labels folders: {len(loose)} images lie directly in {path} "
                     f"(e.g. {loose[0]}), not in a class subfolder")
      tops = [r.split(os.sep)[0] for r in rel]
      self.class_names = sorted(set(tops))
      class_id = {name: i for i, name in enumerate(self.class_names)}
      self.labels = [class_id[t] for t in tops]
    self.cond_files, cond_hash = None, None
    if cond_images:
      if not is_dir:
        raise _Error("--cond_images needs --images to be a folder, not a list")
      if not os.path.isdir(cond_images):
        raise _Error(f"--cond_images {cond_images}: no such folder")
      by_stem: Dict[str, str] = {}
      for f in list_images(cond_images):
        stem = os.path.splitext(os.path.relpath(f, cond_images))[0]
        if stem in by_stem:
          raise _Error(f"--cond_images: two files for {stem}: {by_stem[stem]} and {f}")
        by_stem[stem] = f
      stems = [os.path.splitext(r)[0] for r in rel]
      missing = [s for s in stems if s not in by_stem]
      if missing:
        raise _Error(f"--cond_images {cond_images}: no conditioning file for {len(missing)} "
                     f"of {len(stems)} images (e.g. {missing[0]}.*)")
      self.cond_files = [by_stem[s] for s in stems]
      cond_hash = list_hash(self.cond_files)
    self.fields = {"kind": "images", "path": self.root, "num_examples": self.num_examples,
                   "files_sha256": list_hash(self.files),
                   "labels": "folders" if labels else None,
                   "cond_images": os.path.abspath(cond_images) if cond_images else None,
                   "cond_files_sha256": cond_hash}

  def examples(self, start: int, stop: int) -> Iterator[Tuple[int, str, Dict[str, Any]]]:
    for i in range(start, stop):
      yield i, self.files[i], {"image": self.files[i],
                               "label": self.labels[i] if self.labels else None,
                               "cond": self.cond_files[i] if self.cond_files else None}


def _image_paths(features, prefix: str = ""):
  """Paths ("a/b") of every Image feature (nested FeaturesDicts searched)."""
  import tensorflow_datasets as tfds
  for k, f in features.items():
    if isinstance(f, tfds.features.Image):
      yield prefix + k
    elif isinstance(f, tfds.features.FeaturesDict):
      yield from _image_paths(f, f"{prefix}{k}/")


class _Tfds:
  """A prepared TFDS split: random access (array_record) or ordered slices (tfrecord)."""

  def __init__(self, name: str, split: str, data_dir: Optional[str], image_key: str,
               label_key: Optional[str], cond_key: Optional[str]):
    import tensorflow_datasets as tfds
    from vqgan_jax.data import sources
    try:
      self.builder = tfds.builder(name, data_dir=data_dir)
    except Exception as e:
      raise _Error(f"--tfds {name}: not found in {data_dir or 'the default data_dir'} "
                   f"({type(e).__name__}: {str(e).splitlines()[0]})") from None
    if not self.builder.is_prepared():
      raise _Error(f"--tfds {name}: not prepared in {self.builder.data_dir} (this tool never "
                   f"downloads: `tfds build {name}` first)")
    try:
      self.num_examples = int(self.builder.info.splits[split].num_examples)
      self._absolute = tfds.core.ReadInstruction.from_spec(split).to_absolute(
          self.builder.info.splits)
    except Exception as e:
      raise _Error(f"--tfds_split {split!r}: not a split of {name} (splits: "
                   f"{sorted(self.builder.info.splits.keys())}): {e}") from None
    features = self.builder.info.features
    self.keys = {"image": image_key, "label": label_key, "cond": cond_key}
    for what, key in self.keys.items():
      if key is not None and sources._feature_at(features, key) is None:
        raise _Error(f"--{what}_key {key!r}: not a feature of {name} (features: "
                     f"{sorted(features.keys())})")
    if not isinstance(sources._feature_at(features, image_key), tfds.features.Image):
      raise _Error(f"--image_key {image_key!r}: not an image feature of {name}")
    self.label_feature = sources._feature_at(features, label_key) if label_key else None
    self._decoders = sources.skip_decoding(list(_image_paths(features)))
    self._get = sources.get_feature
    self.name, self.split = name, split
    try:
      self._random = self.builder.as_data_source(split, decoders=self._decoders)
    except (NotImplementedError, ValueError):
      self._random = None
    self.fields = {"kind": "tfds", "name": name, "split": split,
                   "data_dir": os.path.abspath(data_dir) if data_dir else None,
                   "num_examples": self.num_examples, "image_key": image_key,
                   "label_key": label_key, "cond_key": cond_key}

  def _raw(self, ex) -> Dict[str, Any]:
    return {what: (self._get(ex, key) if key else None) for what, key in self.keys.items()}

  def _slices(self, start: int, stop: int):
    """ReadInstruction of source positions [start, stop) (the split may be a sum of slices)."""
    import tensorflow_datasets as tfds
    parts, offset = [], 0
    for ins in self._absolute:
      lo = ins.from_ or 0
      hi = ins.to if ins.to is not None else self.builder.info.splits[ins.splitname].num_examples
      a, b = max(start, offset), min(stop, offset + hi - lo)
      if a < b:
        parts.append(tfds.core.ReadInstruction(ins.splitname, from_=lo + a - offset,
                                               to=lo + b - offset, unit="abs"))
      offset += hi - lo
    return functools.reduce(lambda x, y: x + y, parts)

  def examples(self, start: int, stop: int) -> Iterator[Tuple[int, str, Dict[str, Any]]]:
    import tensorflow_datasets as tfds
    where = f"{self.name}[{self.split}] example"
    if self._random is not None:
      for s in range(start, stop, 64):
        positions = list(range(s, min(stop, s + 64)))
        for i, ex in zip(positions, self._random.__getitems__(positions)):
          yield i, f"{where} {i}", self._raw(ex)
      return
    ds = self.builder.as_dataset(
        split=self._slices(start, stop), shuffle_files=False, decoders=self._decoders,
        read_config=tfds.ReadConfig(interleave_cycle_length=1, try_autocache=False))
    for i, ex in enumerate(tfds.as_numpy(ds), start):
      yield i, f"{where} {i}", self._raw(ex)


# ---- preprocessing ---------------------------------------------------------------------

@functools.lru_cache(maxsize=None)
def _eval_fn(size: int):
  """Encoded image bytes -> float32[size, size, 3] in [-1, 1] (the VQGAN eval pipeline)."""
  from vqgan_jax.data import preprocess
  from vqgan_jax.data.pipeline import _tf
  tf = _tf()
  return tf.function(lambda b: preprocess.preprocess_eval(b, crop_size=size),
                     input_signature=[tf.TensorSpec([], tf.string)])


def _smallest_side(h: int, w: int, size: int) -> Tuple[int, int]:
  """(new_h, new_w) with min = size: round(side * size / short), ties to even (preprocess)."""
  def scaled(n):
    q, r = divmod(n * size, min(h, w))
    return q + (2 * r > min(h, w) or (2 * r == min(h, w) and q % 2 == 1))
  return scaled(h), scaled(w)


def _center_crop(x: np.ndarray, size: int) -> np.ndarray:
  top, left = (x.shape[0] - size) // 2, (x.shape[1] - size) // 2
  return x[top:top + size, left:left + size]


class _Prepare:
  """One source example -> (image float32[S, S, 3], label, cond input float32[Sc, Sc, C])."""

  def __init__(self, size: int, cond_type: Optional[str], cond_channels: int,
               cond_size: Optional[int], shift_segmentation: bool, n_classes: Optional[int]):
    self.size, self.cond_type, self.cond_channels = size, cond_type, cond_channels
    self.cond_size, self.shift, self.n_classes = cond_size, shift_segmentation, n_classes

  def _rgb(self, value) -> np.ndarray:
    from vqgan_jax.data.local_builder import load_image_bytes
    if isinstance(value, str):
      value, reason = load_image_bytes(value)
      if value is None:
        raise _Skip(reason)
    return _eval_fn(self.size)(value).numpy()

  def _cond(self, value) -> np.ndarray:
    if self.cond_type == "image":
      c = self._rgb(value)
    else:
      a = read_single_channel(value)
      new_h, new_w = _smallest_side(*a.shape, self.size)
      if self.cond_type == "depth":
        d = a.astype(np.float32)
        lo, hi = float(d.min()), float(d.max())
        d = ((d - lo) / max(1e-8, hi - lo) * 2.0 - 1.0)[..., None]
        if min(a.shape) != self.size:
          import tensorflow as tf
          d = tf.image.resize(d, (new_h, new_w), "bilinear", antialias=True).numpy()
        c = _center_crop(d, self.size)
      else:
        seg = a.astype(np.int64)
        if self.shift:
          seg = (seg + 1) % 256
        if min(a.shape) != self.size:
          seg = torch_nearest(seg, new_h, new_w)
        seg = _center_crop(seg, self.size)
        if seg.min() < 0 or seg.max() >= self.cond_channels:
          raise ValueError(f"class ids in [{seg.min()}, {seg.max()}], outside the cond "
                           f"model's {self.cond_channels} input channels")
        c = np.eye(self.cond_channels, dtype=np.float32)[seg]
    if self.cond_size:
      c = torch_nearest(c, self.cond_size, self.cond_size)
    return c.astype(np.float32)

  def __call__(self, raw: Dict[str, Any]):
    from vqgan_jax.data.pipeline import _tf
    tf = _tf()
    from PIL import Image
    errors = (tf.errors.OpError, OSError, ValueError, SyntaxError, EOFError,
              Image.DecompressionBombError)
    try:
      x = self._rgb(raw["image"])
    except errors as e:
      raise _Skip(str(e).splitlines()[0] if str(e) else type(e).__name__) from None
    label = None
    if raw["label"] is not None:
      label = int(raw["label"])
      if self.n_classes is not None and not 0 <= label < self.n_classes:
        raise _Skip(f"label {label} outside [0, {self.n_classes})")
    c = None
    if raw["cond"] is not None:
      try:
        c = self._cond(raw["cond"])
      except errors as e:
        raise _Skip(f"conditioning input: {str(e).splitlines()[0]}") from None
    return x, label, c


# ---- extraction ------------------------------------------------------------------------

def _in_order(pool, items, fn, lookahead: int):
  """(item, fn(item) or the _Skip it raised) for each item, in order, `lookahead` in flight."""
  def run(raw):
    try:
      return fn(raw)
    except _Skip as e:
      return e
  pending = collections.deque()
  for item in items:
    pending.append((item, pool.submit(run, item[2])))
    if len(pending) >= lookahead:
      item, future = pending.popleft()
      yield item, future.result()
  while pending:
    item, future = pending.popleft()
    yield item, future.result()


class _Progress:
  """A progress line every `every` batches: examples, rate, ETA."""

  def __init__(self, split: str, total: int, every: int):
    self.split, self.total, self.every = split, total, max(1, every)
    self.start, self.done, self.skipped, self.batches = time.time(), 0, 0, 0

  def batch(self, n: int, chunk: int, num_chunks: int, force: bool = False):
    self.done, self.batches = self.done + n, self.batches + 1
    if force or self.batches % self.every == 0:
      rate = self.done / max(time.time() - self.start, 1e-9)
      eta = (self.total - self.done) / rate if rate > 0 else float("inf")
      print(f"[extract_codes] {self.split}: {self.done}/{self.total} examples "
            f"({self.skipped} skipped), chunk {chunk + 1}/{num_chunks}, {rate:.1f} ex/s, "
            f"ETA {eta:.0f} s", flush=True)


def _extract_chunk(args, source, prepare, encoders, pool, chunk: int, start: int, stop: int,
                   progress: _Progress, num_chunks: int) -> Tuple[int, int]:
  """Encodes source positions [start, stop) and writes chunk `chunk`: (kept, skipped)."""
  encode, encode_cond = encoders
  kept = collections.defaultdict(list)
  skipped, batch = [], []

  def flush(force=False):
    if batch:
      kept["z"].append(encode(np.stack([b[1][0] for b in batch])))
      if encode_cond is not None:
        kept["c"].append(encode_cond(np.stack([b[1][2] for b in batch])))
      kept["index"].extend(b[0] for b in batch)
      kept["label"].extend(b[1][1] for b in batch)
      progress.batch(len(batch), chunk, num_chunks, force)
      batch.clear()

  for (pos, name, _), result in _in_order(pool, source.examples(start, stop), prepare,
                                          2 * encode.batch_size):
    if isinstance(result, _Skip):
      print(f"warning: skipping {name}: {result}", file=sys.stderr, flush=True)
      skipped.append({"index": pos, "source": name, "reason": str(result)})
      progress.skipped += 1
      continue
    batch.append((pos, result))
    if len(batch) == encode.batch_size:
      flush()
  flush()
  records = []
  if kept["index"]:
    records = codes.serialize(
        np.concatenate(kept["z"]), np.asarray(kept["index"], np.int64),
        np.asarray(kept["label"], np.int32) if args.labels else None,
        np.concatenate(kept["c"]) if encode_cond is not None else None)
  codes.write_chunk(args.out, args.split, chunk, records,
                    {"range": [start, stop], "skipped": skipped})
  return len(records), len(skipped)


def _conditioning(args, source, cond_vq, cond_path) -> Tuple[Dict[str, Any], Optional[int]]:
  """The metadata's "conditioning" entry, and n_classes for class labels."""
  if args.labels:
    names = getattr(source, "class_names", None)
    feature = getattr(source, "label_feature", None)
    if names is None and feature is not None and hasattr(feature, "num_classes"):
      names = list(feature.names)
    n = len(names) if names is not None else args.n_classes
    if n is None:
      raise _Error(f"--labels {args.labels}: not a ClassLabel feature; give --n_classes")
    if args.n_classes is not None and args.n_classes != n:
      raise _Error(f"--n_classes {args.n_classes} differs from the {n} classes of "
                   f"--labels {args.labels}")
    return {"kind": "class", "n_classes": n, "class_names": names}, n
  if cond_vq is None:
    return {"kind": "none"}, None
  cond_size = args.downsample_cond_size or args.size
  f = cond_vq.downsample_factor
  if cond_size % f:
    raise _Error(f"cond input size {cond_size} is not a multiple of the cond model's "
                 f"downsampling factor {f}")
  return {"kind": "vq", "cond_type": args.cond_type,
          "vqgan": _model_fields(cond_vq, cond_path, args.cond_which),
          "n_embed": cond_vq.config.num_codes, "cond_grid": [cond_size // f] * 2,
          "input_size": args.size, "in_channels": cond_vq.config.in_channels,
          "downsample_cond_size": args.downsample_cond_size or -1,  # taming's -1: none
          "shift_segmentation": bool(args.shift_segmentation)}, None


def _check_args(args) -> None:
  codes.check_split_name(args.split)
  for flag in ("size", "batch_size", "chunk_size", "workers"):
    if getattr(args, flag) < 1:
      raise _Error(f"--{flag} must be >= 1, got {getattr(args, flag)}")
  if args.downsample_cond_size is not None and args.downsample_cond_size < 1:
    raise _Error(f"--downsample_cond_size must be >= 1, got {args.downsample_cond_size}")
  if args.labels and args.cond_vqgan:
    raise _Error("--labels and --cond_vqgan: give one kind of conditioning")
  if args.labels == "folders" and args.tfds:
    raise _Error("--labels folders reads class subfolders of --images; with --tfds name "
                 "the label feature")
  if args.labels and args.labels != "folders" and args.images:
    raise _Error(f"--labels {args.labels}: with --images, labels come from class "
                 "subfolders (--labels folders)")
  if args.n_classes is not None and not args.labels:
    raise _Error("--n_classes goes with --labels")
  cond_inputs = [f for f in ("cond_key", "cond_images") if getattr(args, f)]
  if bool(args.cond_vqgan) != bool(cond_inputs) or bool(args.cond_vqgan) != bool(args.cond_type):
    raise _Error("--cond_vqgan, --cond_type and one of --cond_key / --cond_images go together")
  if args.cond_key and not args.tfds:
    raise _Error("--cond_key names a TFDS feature: use --cond_images with --images")
  if args.cond_images and not args.images:
    raise _Error("--cond_images pairs files with --images: use --cond_key with --tfds")


def _process(args) -> Tuple[int, int]:
  if args.process_index is None or args.process_count is None:
    import jax
    index = jax.process_index() if args.process_index is None else args.process_index
    count = jax.process_count() if args.process_count is None else args.process_count
  else:
    index, count = args.process_index, args.process_count
  if count < 1 or not 0 <= index < count:
    raise _Error(f"--process_index {index} must be in [0, --process_count {count})")
  return index, count


def _wait_for_chunks(args, num_chunks: int, process_count: int) -> None:
  """Process 0: waits until every chunk of the split exists (or --wait_timeout passes)."""
  deadline, last_note = time.time() + args.wait_timeout, 0.0
  while True:
    missing = [k for k in range(num_chunks) if codes.chunk_stats(args.out, args.split, k) is None]
    if not missing:
      return
    if time.time() >= deadline:
      owners = sorted({next(p for p in range(process_count)
                            if k < (p + 1) * num_chunks // process_count) for k in missing})
      raise _Error(
          f"timed out after {args.wait_timeout:g} s waiting for {len(missing)} of "
          f"{num_chunks} chunks of split {args.split!r} (first missing: chunk {missing[0]}; "
          f"processes {owners} of {process_count} write them). Finished chunks are kept: "
          "run the missing processes with the same arguments, then rerun process 0 to "
          "finalise the split.")
    if time.time() - last_note > 60:
      print(f"[extract_codes] process 0: waiting for {len(missing)} chunks of the other "
            "processes", flush=True)
      last_note = time.time()
    time.sleep(min(2.0, max(0.0, deadline - time.time())))


def _run(args, argv) -> Dict[str, Any]:
  from vqgan_jax.data.pipeline import _tf
  start_time = time.time()
  _check_args(args)
  _tf()  # imported first, with the GPUs hidden from it: JAX owns the accelerators
  process_index, process_count = _process(args)
  vq = _load("--vqgan", args.vqgan, args.vqgan_config, "vqgan")
  f = vq.downsample_factor
  if args.size % f:
    raise _Error(f"--size {args.size} is not a multiple of the model's downsampling "
                 f"factor {f}")
  if vq.config.in_channels != 3:
    raise _Error(f"--vqgan {args.vqgan}: encodes {vq.config.in_channels}-channel inputs, "
                 "not RGB images")
  cond_vq = None
  if args.cond_vqgan:
    cond_vq = _load("--cond_vqgan", args.cond_vqgan, args.cond_vqgan_config, args.cond_which)
    want, have = COND_CHANNELS.get(args.cond_type), cond_vq.config.in_channels
    if (want is not None and have != want) or (args.cond_type == "segmentation" and have < 2):
      raise _Error(f"--cond_vqgan {args.cond_vqgan}: encodes {have}-channel inputs, but "
                   f"--cond_type {args.cond_type} gives "
                   f"{want if want else 'one-hot (>= 2)'} channels")
  if args.images:
    source = _Folder(args.images, args.labels == "folders", args.cond_images)
  else:
    source = _Tfds(args.tfds, args.tfds_split or args.split, args.data_dir, args.image_key,
                   args.labels, args.cond_key)
  conditioning, n_classes = _conditioning(args, source, cond_vq, args.cond_vqgan)
  num_chunks = -(-source.num_examples // args.chunk_size)
  hidden = {"--process_index", "--process_count"}
  command = [a for i, a in enumerate(argv) if a.split("=")[0] not in hidden and
             (i == 0 or argv[i - 1] not in hidden)]
  manifest = {
      "format_version": codes.FORMAT_VERSION,
      "dataset": {"vqgan": _model_fields(vq, args.vqgan, "vqgan"), "n_embed": vq.config.num_codes,
                  "code_grid": [args.size // f] * 2, "image_size": args.size,
                  "conditioning": conditioning, "tfds": codes.tfds_fields(not args.no_tfrecord)},
      "source": source.fields, "chunk_size": args.chunk_size, "num_chunks": num_chunks,
      "command": command}
  summary = {"split": args.split, "code_grid": [args.size // f] * 2,
             "vocab": vq.config.num_codes, "out": os.path.abspath(args.out)}
  os.makedirs(args.out, exist_ok=True)
  if codes.begin_split(args.out, args.split, manifest):
    entry = codes.read_meta(args.out)["splits"][args.split]
    print(f"[extract_codes] split {args.split!r} of {args.out} is already complete", flush=True)
    return dict(summary, examples=entry["num_examples"], skipped=entry["num_skipped"],
                finalized=True, seconds=round(time.time() - start_time, 3))

  mine = range(process_index * num_chunks // process_count,
               (process_index + 1) * num_chunks // process_count)
  todo = [k for k in mine if codes.chunk_stats(args.out, args.split, k) is None]
  if len(todo) < len(mine):
    print(f"[extract_codes] resuming: {len(mine) - len(todo)} of this process's {len(mine)} "
          "chunks are already written", flush=True)

  def size_of(k):
    return min(source.num_examples, (k + 1) * args.chunk_size) - k * args.chunk_size
  progress = _Progress(args.split, sum(size_of(k) for k in todo), args.log_every)
  prepare = _Prepare(args.size, args.cond_type, cond_vq.config.in_channels if cond_vq else 0,
                     args.downsample_cond_size, args.shift_segmentation, n_classes)
  encoders = (_Encoder(vq, args.batch_size),
              _Encoder(cond_vq, args.batch_size) if cond_vq is not None else None)
  examples = skipped = 0
  with concurrent.futures.ThreadPoolExecutor(args.workers) as pool:
    for k in todo:
      n, s = _extract_chunk(args, source, prepare, encoders, pool, k, k * args.chunk_size,
                            k * args.chunk_size + size_of(k), progress, num_chunks)
      examples, skipped = examples + n, skipped + s
  if progress.batches:
    progress.batch(0, todo[-1], num_chunks, force=True)
  summary.update(process_index=process_index, process_count=process_count,
                 devices=encoders[0].num_devices)
  if process_index != 0:
    return dict(summary, examples=examples, skipped=skipped, finalized=False,
                seconds=round(time.time() - start_time, 3))
  _wait_for_chunks(args, num_chunks, process_count)
  entry = codes.finalize_split(args.out, args.split)
  return dict(summary, examples=entry["num_examples"], skipped=entry["num_skipped"],
              finalized=True, seconds=round(time.time() - start_time, 3))


def main(argv=None) -> int:
  argv = list(sys.argv[1:] if argv is None else argv)
  args = _parser().parse_args(argv)
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
  try:
    summary = _run(args, argv)
  except (_Error, OSError, ValueError, KeyError) as e:
    msg = str(e) if isinstance(e, (_Error, ValueError)) else f"{type(e).__name__}: {e}"
    print(f"error: {msg}", file=sys.stderr, flush=True)
    return 2
  print(json.dumps(summary), flush=True)
  return 0


if __name__ == "__main__":
  sys.exit(main())
