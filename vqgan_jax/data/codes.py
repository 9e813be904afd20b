"""Code datasets: VQGAN code grids (+ labels or cond codes) as a TFDS dataset directory.

What `python -m vqgan_jax.extract_codes` writes and the transformer trainer reads:

  source = open_code_dataset(directory, "train")  # arrays.ArraySource, in source order
  source.read([0, 5])  # {"z": int32[2, h, w]} + "label": int32[2] or "c": int32[2, hc, wc]
  meta = read_meta(directory)   # vqgan_jax_codes.json: model, vocabulary, grids, conditioning
  list_splits(directory)        # the finalised splits

Layout of `directory`:
  vqgan_jax_codes.json          our metadata (`read_meta`), written when a split is finalised
  dataset_info.json, features.json      TFDS metadata of every finalised split
  vqgan_codes-<split>.array_record-<i>-of-<n>   the records: `tfds.builder_from_directory`
  vqgan_codes-<split>.tfrecord-<i>-of-<n>       loads it; `as_data_source` reads the
                                array_record shards, `as_dataset` the tfrecord copy (absent
                                with `--no_tfrecord`). TFDS 4.9 has no `as_dataset` over
                                array_record, and `as_data_source` switches its builder's
                                format for good: call `as_dataset` on a fresh builder.
  _extraction/<split>/extraction.json   the arguments the split was started with
  _extraction/<split>/chunk-<k>.array_record, chunk-<k>.json   finished chunks (and their
                                example / skip counts) until the split is finalised

Records are serialized `tf.train.Example`s of `code_features`: "z" int32[h, w], "index"
int64 (the example's position in the source), and "label" int32 (class conditioning) or
"c" int32[hc, wc] (the codes of the conditioning input).
A split is extracted in chunks of consecutive source positions; each chunk file is written
under a temporary name and renamed when complete, so a rerun after a kill skips the
complete chunks. `finalize_split` renames the chunks (in order; empty ones dropped) to
the TFDS shards, writes the TFDS metadata and then the sidecar: a split is readable once
the sidecar lists it. TensorFlow, TFDS and array_record are imported inside functions only.
"""

import json
import os
import re
import shlex
from typing import Any, Dict, List, Optional, Sequence

import numpy as np

from vqgan_jax.data.arrays import ArraySource

FORMAT = "vqgan_jax/codes"
FORMAT_VERSION = 1
SIDECAR = "vqgan_jax_codes.json"
MANIFEST = "extraction.json"
WORK_DIR = "_extraction"
TFDS_NAME = "vqgan_codes"
MAX_SKIPPED_LISTED = 1000
_PARSE_BATCH = 65536
# Manifest fields that may change between runs (the model may move; the command differs
# per process): everything else must match for a resume.
_IGNORED_FIELDS = ("command", "dataset.vqgan.path", "dataset.conditioning.vqgan.path")


def _json_dump(path: str, value: Any) -> None:
  """Writes JSON atomically (a temporary file renamed over `path`)."""
  tmp = f"{path}.tmp-{os.getpid()}"
  with open(tmp, "w") as f:
    json.dump(value, f, indent=1, sort_keys=True)
  os.replace(tmp, path)


def _json_load(path: str) -> Any:
  with open(path) as f:
    return json.load(f)


def check_split_name(split: str) -> str:
  if not isinstance(split, str) or not re.fullmatch(r"[A-Za-z][A-Za-z0-9_]*", split):
    raise ValueError(f"split={split!r}: expected a name such as 'train' or 'validation' "
                     "(letters, digits, '_').")
  return split


def work_dir(directory: str, split: str) -> str:
  return os.path.join(os.fspath(directory), WORK_DIR, check_split_name(split))


def chunk_path(directory: str, split: str, chunk: int, ext: str = "array_record") -> str:
  return os.path.join(work_dir(directory, split), f"chunk-{chunk:06d}.{ext}")


def shard_path(directory: str, split: str, i: int, n: int, fmt: str = "array_record") -> str:
  return os.path.join(os.fspath(directory), f"{TFDS_NAME}-{split}.{fmt}-{i:05d}-of-{n:05d}")


def tfds_fields(tfrecord: bool) -> Dict[str, Any]:
  """The "tfds" entry of the metadata: the TFDS name and the shard formats written."""
  return {"name": TFDS_NAME, "file_formats": ["tfrecord", "array_record"] if tfrecord
          else ["array_record"]}


def code_features(code_grid: Sequence[int], label: bool, cond_grid: Optional[Sequence[int]]):
  """The TFDS FeaturesDict of one record (see the module docstring)."""
  import tensorflow_datasets as tfds
  f = {"z": tfds.features.Tensor(shape=tuple(code_grid), dtype=np.int32),
       "index": tfds.features.Scalar(dtype=np.int64)}
  if label:
    f["label"] = tfds.features.Scalar(dtype=np.int32)
  if cond_grid is not None:
    f["c"] = tfds.features.Tensor(shape=tuple(cond_grid), dtype=np.int32)
  return tfds.features.FeaturesDict(f)


def field_specs(meta: Dict[str, Any]) -> Dict[str, tuple]:
  """{name: (shape, dtype)} of the record fields that `meta` (the sidecar) describes."""
  out = {"z": (tuple(meta["code_grid"]), np.dtype(np.int32)), "index": ((), np.dtype(np.int64))}
  kind = meta["conditioning"]["kind"]
  if kind == "class":
    out["label"] = ((), np.dtype(np.int32))
  elif kind == "vq":
    out["c"] = (tuple(meta["conditioning"]["cond_grid"]), np.dtype(np.int32))
  return out


def serialize(z: np.ndarray, index: np.ndarray, label: Optional[np.ndarray] = None,
              c: Optional[np.ndarray] = None) -> List[bytes]:
  """k records: z int[k, h, w], index int[k], label int[k], c int[k, hc, wc].

  Byte for byte what `code_features(...).serialize_example` gives, several times faster.
  """
  from tensorflow.core.example import example_pb2
  def rows(a):
    return np.asarray(a).reshape(len(a), int(np.prod(np.shape(a)[1:]))).tolist()
  columns = {"z": rows(z), "index": rows(index)}
  if label is not None:
    columns["label"] = rows(label)
  if c is not None:
    columns["c"] = rows(c)
  records = []
  for i in range(len(columns["z"])):
    ex = example_pb2.Example()
    feature = ex.features.feature
    for name in sorted(columns):
      feature[name].int64_list.value.extend(columns[name][i])
    records.append(ex.SerializeToString())
  return records


def _write_array_record(path: str, records: Sequence[bytes]) -> None:
  """Writes `records` to `path` through a temporary file (renamed when complete)."""
  from array_record.python.array_record_module import ArrayRecordWriter
  tmp = f"{path}.tmp-{os.getpid()}"
  writer = ArrayRecordWriter(tmp, "group_size:1")
  for r in records:
    writer.write(r)
  writer.close()
  os.replace(tmp, path)


def _read_array_record(path: str) -> List[bytes]:
  from array_record.python.array_record_module import ArrayRecordReader
  reader = ArrayRecordReader(path)
  try:
    return reader.read_all()
  finally:
    reader.close()


# ---- extraction bookkeeping -------------------------------------------------------------

def _flat(d: Any, prefix: str = "") -> Dict[str, Any]:
  """{"a.b": leaf} of nested dicts (lists are leaves)."""
  if not isinstance(d, dict):
    return {prefix: d}
  out = {}
  for k, v in d.items():
    out.update(_flat(v, f"{prefix}.{k}" if prefix else str(k)))
  return out


def differing_fields(old: Dict[str, Any], new: Dict[str, Any],
                     ignore: Sequence[str] = _IGNORED_FIELDS) -> List[str]:
  """'field: old -> new' for every dotted field that differs (values shortened)."""
  a, b = _flat(old), _flat(new)

  def short(v):
    s = json.dumps(v)
    return s if len(s) <= 80 else s[:77] + "..."
  return [f"{k}: {short(a.get(k))} -> {short(b.get(k))}" for k in sorted(set(a) | set(b))
          if k not in ignore and a.get(k) != b.get(k)]


def _restart_hint(directory: str, split: str) -> str:
  return (f"write to a new --out directory, or delete {work_dir(directory, split)} to "
          "restart an unfinished split")


def begin_split(directory: str, split: str, manifest: Dict[str, Any]) -> bool:
  """Records (or checks) the arguments of an extraction; True when the split is finalised.

  `manifest` = {"dataset": fields shared by every split (model, vocabulary, grids,
  conditioning, record fields), "source": ..., "chunk_size", "num_chunks", "command"}.

  Raises:
    ValueError: the split was started with other arguments, or another split of the
      directory has other dataset fields; the message names each differing field.
  """
  directory = os.fspath(directory)
  wd = work_dir(directory, split)
  path = os.path.join(wd, MANIFEST)
  others, finalised_source = {}, None
  if os.path.isfile(os.path.join(directory, SIDECAR)):
    meta = read_meta(directory)
    others["the finalised splits"] = {k: meta[k] for k in manifest["dataset"] if k in meta}
    if split in meta["splits"]:
      finalised_source = meta["splits"][split]["source"]
  root = os.path.join(directory, WORK_DIR)
  for other in sorted(os.listdir(root)) if os.path.isdir(root) else ():
    other_path = os.path.join(root, other, MANIFEST)
    if other != split and os.path.isfile(other_path):
      others[f"split {other!r}"] = _json_load(other_path)["dataset"]
  for name, dataset in others.items():
    diff = differing_fields({"dataset": dataset}, {"dataset": manifest["dataset"]})
    if diff:
      raise ValueError(f"{directory}: {name} used other settings than "
                       f"split {split!r} asks for (differing fields: {'; '.join(diff)}); "
                       "every split of a code dataset shares its model, size and "
                       "conditioning: use another --out directory.")
  diff = differing_fields({"source": finalised_source}, {"source": manifest["source"]})
  if finalised_source is not None and diff:
    raise ValueError(f"{directory}: split {split!r} is finalised, from another source "
                     f"(differing fields: {'; '.join(diff)}).")
  if os.path.isfile(path):
    diff = differing_fields(_json_load(path), manifest)
    if diff:
      raise ValueError(f"{path}: split {split!r} was started with other arguments "
                       f"(differing fields: {'; '.join(diff)}); rerun with the original "
                       f"arguments to resume, or {_restart_hint(directory, split)}.")
  else:
    os.makedirs(wd, exist_ok=True)
    _json_dump(path, manifest)
  return split in list_splits(directory)


def chunk_stats(directory: str, split: str, chunk: int) -> Optional[Dict[str, Any]]:
  """The stats of a complete chunk ({"num_examples", "skipped": [...]}), None if missing."""
  path = chunk_path(directory, split, chunk, "json")
  return _json_load(path) if os.path.isfile(path) else None


def write_chunk(directory: str, split: str, chunk: int, records: Sequence[bytes],
                stats: Dict[str, Any]) -> None:
  """Stores one finished chunk: its records (if any), then its stats, which mark it done."""
  if records:
    _write_array_record(chunk_path(directory, split, chunk), records)
  _json_dump(chunk_path(directory, split, chunk, "json"),
             dict(stats, num_examples=len(records)))


def _tfds_info(directory: str, meta: Dict[str, Any]):
  """The TFDS DatasetInfo of every split in `meta` (the sidecar)."""
  from tensorflow_datasets.core import dataset_info, file_adapters, naming, utils
  from tensorflow_datasets.core import splits as split_lib
  formats = meta["tfds"]["file_formats"]
  template = naming.ShardedFileTemplate(
      data_dir=directory, template=naming.DEFAULT_FILENAME_TEMPLATE, dataset_name=TFDS_NAME,
      filetype_suffix=formats[0])
  identity = dataset_info.DatasetIdentity(name=TFDS_NAME, version=utils.Version("1.0.0"),
                                          data_dir=directory, module_name="")
  cond = meta["conditioning"]
  info = dataset_info.DatasetInfo(
      builder=identity,
      features=code_features(meta["code_grid"], cond["kind"] == "class",
                             cond.get("cond_grid") if cond["kind"] == "vq" else None),
      description=f"VQGAN codes written by vqgan_jax.extract_codes; see {SIDECAR}.",
      disable_shuffling=True, alternative_file_formats=formats[1:])
  info.set_file_format(file_adapters.FileFormat.from_value(formats[0]))
  info.set_splits(split_lib.SplitDict([
      split_lib.SplitInfo(name=name, shard_lengths=s["shard_lengths"], num_bytes=s["num_bytes"],
                          filename_template=template)
      for name, s in sorted(meta["splits"].items())]))
  return info


def finalize_split(directory: str, split: str) -> Dict[str, Any]:
  """Turns the complete chunks of `split` into TFDS shards + metadata; returns its entry.

  Idempotent: a finalisation killed half-way is finished by calling it again.

  Raises:
    ValueError: a chunk is missing, or no example of the split could be read.
  """
  directory = os.fspath(directory)
  manifest = _json_load(os.path.join(work_dir(directory, split), MANIFEST))
  dataset, num_chunks = manifest["dataset"], manifest["num_chunks"]
  stats = [chunk_stats(directory, split, k) for k in range(num_chunks)]
  missing = [k for k, s in enumerate(stats) if s is None]
  if missing:
    raise ValueError(f"split {split!r}: chunks {missing[:10]} of {num_chunks} are missing.")
  full = [k for k, s in enumerate(stats) if s["num_examples"]]
  skipped = [item for s in stats for item in s["skipped"]]
  if not full:
    raise ValueError(f"split {split!r}: none of its {manifest['source']['num_examples']} "
                     f"source examples could be read ({len(skipped)} skipped).")
  formats = dataset["tfds"]["file_formats"]
  num_bytes = 0
  for i, k in enumerate(full):
    dst = shard_path(directory, split, i, len(full))
    if os.path.exists(chunk_path(directory, split, k)):
      os.replace(chunk_path(directory, split, k), dst)
    elif not os.path.exists(dst):
      raise ValueError(f"split {split!r}: chunk {k} has neither its chunk file nor its "
                       f"shard {dst}; {_restart_hint(directory, split)}.")
    num_bytes += os.path.getsize(dst)
    if "tfrecord" in formats:
      tf_dst = shard_path(directory, split, i, len(full), "tfrecord")
      if not os.path.exists(tf_dst):
        from vqgan_jax.data.pipeline import _tf
        tf = _tf()
        tmp = f"{tf_dst}.tmp-{os.getpid()}"
        with tf.io.TFRecordWriter(tmp) as w:
          for r in _read_array_record(dst):
            w.write(r)
        os.replace(tmp, tf_dst)
  sidecar_path = os.path.join(directory, SIDECAR)
  meta = _json_load(sidecar_path) if os.path.isfile(sidecar_path) else {
      "format": FORMAT, "format_version": FORMAT_VERSION, **dataset, "splits": {}}
  meta["splits"][split] = {
      "num_examples": sum(stats[k]["num_examples"] for k in full),
      "num_skipped": len(skipped), "skipped": skipped[:MAX_SKIPPED_LISTED],
      "source": manifest["source"], "shard_lengths": [stats[k]["num_examples"] for k in full],
      "num_bytes": num_bytes}
  _tfds_info(directory, meta).write_to_directory(directory)
  _json_dump(sidecar_path, meta)  # from here on the split is readable
  for k in range(num_chunks):
    os.remove(chunk_path(directory, split, k, "json"))
  return meta["splits"][split]


# ---- reading ---------------------------------------------------------------------------

def read_meta(directory: str) -> Dict[str, Any]:
  """The parsed, checked vqgan_jax_codes.json of a code dataset.

  Keys: format, format_version, vqgan {path, which, config (VQGANConfig.to_dict()),
  fingerprint (sha256 of the variables)}, n_embed (the vocabulary of "z"), code_grid
  [h, w], image_size, conditioning {kind: "none" | "class" (n_classes, class_names or
  null) | "vq" (cond_type "image" | "depth" | "segmentation", vqgan {...}, n_embed,
  cond_grid [hc, wc], input_size, in_channels, downsample_cond_size (-1: none),
  shift_segmentation)}, tfds {name, file_formats}, splits {split: {num_examples,
  num_skipped, skipped [{index, source, reason}] (the first 1000), source {kind "images"
  | "tfds", ...}, shard_lengths, num_bytes}}.

  Raises:
    FileNotFoundError: no such directory, or not a code dataset (no sidecar).
    ValueError: the sidecar is malformed or from a newer vqgan_jax.
  """
  directory = os.fspath(directory)
  path = os.path.join(directory, SIDECAR)
  if not os.path.isdir(directory):
    raise FileNotFoundError(f"{directory}: no such code dataset directory.")
  if not os.path.isfile(path):
    started = list_splits(directory, include_incomplete=True)
    why = (f"its splits {started} are not finalised yet" if started else
           "write one with `python -m vqgan_jax.extract_codes`")
    raise FileNotFoundError(f"{directory}: not a code dataset (no {SIDECAR}); {why}.")
  try:
    meta = _json_load(path)
    if meta.get("format") != FORMAT:
      raise ValueError(f"format {meta.get('format')!r}, expected {FORMAT!r}")
    if meta["format_version"] > FORMAT_VERSION:
      raise ValueError(f"format_version {meta['format_version']} is newer than this "
                       f"vqgan_jax reads ({FORMAT_VERSION}); upgrade vqgan_jax")
    missing = [k for k in ("vqgan", "n_embed", "image_size", "tfds", "splits") if k not in meta]
    if missing:
      raise KeyError(f"missing keys {missing}")
    field_specs(meta)
    for name, s in meta["splits"].items():
      if sum(s["shard_lengths"]) != s["num_examples"]:
        raise ValueError(f"split {name!r}: shard_lengths do not add up to num_examples")
  except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
    raise ValueError(f"{path}: malformed code dataset metadata ({type(e).__name__}: "
                     f"{e}).") from e
  return meta


def list_splits(directory: str, include_incomplete: bool = False) -> List[str]:
  """Sorted names of the finalised splits (and with `include_incomplete`, the started ones)."""
  directory = os.fspath(directory)
  if not os.path.isdir(directory):
    raise FileNotFoundError(f"{directory}: no such code dataset directory.")
  splits = set()
  path = os.path.join(directory, SIDECAR)
  if os.path.isfile(path):
    splits.update(_json_load(path).get("splits", {}))
  root = os.path.join(directory, WORK_DIR)
  if include_incomplete and os.path.isdir(root):
    splits.update(s for s in os.listdir(root) if os.path.isfile(os.path.join(root, s, MANIFEST)))
  return sorted(splits)


def _incomplete(directory: str, split: str) -> str:
  """Why `split` cannot be read yet, and how to finish it."""
  manifest = _json_load(os.path.join(work_dir(directory, split), MANIFEST))
  n = manifest["num_chunks"]
  done = sum(chunk_stats(directory, split, k) is not None for k in range(n))
  command = " ".join(["python -m vqgan_jax.extract_codes"] +
                     [shlex.quote(a) for a in manifest["command"]])
  return (f"split {split!r} of code dataset {directory} is incomplete: {done} of {n} "
          "chunks are written and it is not finalised (the extraction was interrupted or "
          f"is still running). Finish it by running `{command}` again (add --process_index "
          "/ --process_count as before; complete chunks are kept, and process 0 finalises "
          "the split once every chunk exists).")


def open_code_dataset(directory: str, split: str) -> ArraySource:
  """A finalised split in memory, in source order, as an `ArraySource`.

  Fields: "z" int32[N, h, w]; "label" int32[N] (class conditioning) or "c"
  int32[N, hc, wc] (VQ conditioning). `.meta` is `read_meta(directory)` plus "split".

  Raises:
    FileNotFoundError: no such directory / split, or a shard file is missing.
    ValueError: the split is incomplete (the message says how to finish it) or its files
      do not match the metadata.
  """
  directory = os.fspath(directory)
  check_split_name(split)
  if not os.path.isfile(os.path.join(directory, SIDECAR)) or split not in list_splits(directory):
    if os.path.isfile(os.path.join(work_dir(directory, split), MANIFEST)):
      raise ValueError(_incomplete(directory, split))
    meta = read_meta(directory)
    raise FileNotFoundError(f"{directory}: no split {split!r} (finalised splits: "
                            f"{sorted(meta['splits'])}).")
  meta = read_meta(directory)
  entry, specs = meta["splits"][split], field_specs(meta)
  from vqgan_jax.data.pipeline import _tf
  tf = _tf()
  parse_spec = {name: tf.io.FixedLenFeature(shape, tf.int64) for name, (shape, _) in specs.items()}
  total = entry["num_examples"]
  out = {name: np.empty((total,) + shape, dtype) for name, (shape, dtype) in specs.items()}
  pos, pending = 0, []

  def parse():
    nonlocal pos, pending
    if pending:
      parsed = tf.io.parse_example(tf.constant(pending), parse_spec)
      for name, v in parsed.items():
        out[name][pos:pos + len(pending)] = tf.cast(v, out[name].dtype).numpy()
      pos, pending = pos + len(pending), []

  n = len(entry["shard_lengths"])
  for i, length in enumerate(entry["shard_lengths"]):
    path = shard_path(directory, split, i, n)
    if not os.path.isfile(path):
      raise FileNotFoundError(f"{path}: missing shard {i} of {n} of split {split!r}.")
    records = _read_array_record(path)
    if len(records) != length or pos + len(pending) + length > total:
      raise ValueError(f"{path}: {len(records)} records, expected {length} ({SIDECAR}).")
    pending.extend(records)
    if len(pending) >= _PARSE_BATCH:
      parse()
  parse()
  index = out.pop("index")
  if total > 1 and not (np.diff(index) > 0).all():
    raise ValueError(f"{directory} [{split}]: records are not in source order (field 'index').")
  return ArraySource(out, f"code dataset {directory} [{split}]", meta=dict(meta, split=split))
