"""Code datasets: per-example arrays (code grids, labels, conditioning codes) as .npy files.

Layout of a code dataset directory:

  <directory>/<split>/<field>.npy   dtype[N, *shape], one file per field
  <directory>/<split>/meta.json     {"format_version", "num_examples",
                                     "fields": {name: {"shape", "dtype"}}, "meta": {...}}

  with CodeDatasetWriter(d, "train", n, {"codes": ((16, 16), "int32"),
                                         "label": ((), "int32")},
                         meta={"vqgan": path, "code_grid": [16, 16]}) as w:
    w.write(0, {"codes": int32[k, 16, 16], "label": int32[k]})   # any chunks, any order
  source = open_code_dataset(d, "train")   # an arrays.ArraySource over read-only memmaps

`meta.json` is written last, by `close()`, and only once every example was written: a
split without it is incomplete (an interrupted extraction) and `open_code_dataset`
refuses it. Reading needs numpy only.
"""

import json
import os
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from vqgan_jax.data.arrays import ArraySource

FORMAT_VERSION = 1
META_FILE = "meta.json"

FieldSpec = Tuple[Sequence[int], Any]  # (per-example shape, dtype)


def _split_dir(directory: str, split: str) -> str:
  if not split or "/" in split or split in (".", ".."):
    raise ValueError(f"split={split!r}: expected a plain directory name such as 'train'.")
  return os.path.join(os.fspath(directory), split)


def _field_file(split_dir: str, name: str) -> str:
  return os.path.join(split_dir, f"{name}.npy")


def _check_spec(name: str, spec: FieldSpec) -> Tuple[Tuple[int, ...], np.dtype]:
  """(shape, dtype) of field `name`, checked: non-negative ints, a numeric dtype."""
  if not name or not isinstance(name, str) or "/" in name or name.startswith("."):
    raise ValueError(f"fields: name {name!r} is not a usable file name (expected e.g. "
                     "'codes' or 'label').")
  try:
    shape, dtype = spec
    shape, dtype = tuple(int(d) for d in shape), np.dtype(dtype).newbyteorder("=")
  except (TypeError, ValueError) as e:
    raise ValueError(f"fields[{name!r}]={spec!r}: expected (shape, dtype), e.g. "
                     f"((16, 16), 'int32'): {e}") from e
  if any(d < 0 for d in shape) or dtype.hasobject or dtype.fields is not None:
    raise ValueError(f"fields[{name!r}]: shape {shape} / dtype {dtype}: expected "
                     "non-negative sizes and a plain numeric dtype.")
  return shape, dtype


class CodeDatasetWriter:
  """Writes split `split` of a code dataset in chunks (see the module docstring).

  Args:
    directory: the dataset directory (created if needed).
    split: the split name, a subdirectory of `directory`.
    num_examples: N, the number of examples the split will hold.
    fields: {name: (per-example shape, dtype)}, e.g. {"codes": ((16, 16), "int32")}.
    meta: JSON-serialisable facts about the data (VQGAN path, code grid size, ...).
    overwrite: replace a complete split of the same name (else FileExistsError).
  """

  def __init__(self, directory: str, split: str, num_examples: int,
               fields: Mapping[str, FieldSpec], meta: Optional[Dict[str, Any]] = None,
               overwrite: bool = False):
    self.split_dir = _split_dir(directory, split)
    if int(num_examples) < 0:
      raise ValueError(f"num_examples={num_examples} must be >= 0.")
    if not fields:
      raise ValueError("fields: expected at least one {name: (shape, dtype)}.")
    self.num_examples = int(num_examples)
    self.fields = {name: _check_spec(name, spec) for name, spec in fields.items()}
    self.meta = dict(meta or {})
    try:
      json.dumps(self.meta)
    except (TypeError, ValueError) as e:
      raise ValueError(f"meta: not JSON-serialisable ({e}); expected plain "
                       "str / number / list / dict values.") from e
    meta_path = os.path.join(self.split_dir, META_FILE)
    if os.path.exists(meta_path):
      if not overwrite:
        raise FileExistsError(f"{self.split_dir} already holds a complete split; pass "
                              "overwrite=True to replace it.")
      os.remove(meta_path)  # from here on the split is incomplete until close()
    os.makedirs(self.split_dir, exist_ok=True)
    self._arrays = {
        name: np.lib.format.open_memmap(_field_file(self.split_dir, name), mode="w+",
                                        dtype=dtype, shape=(self.num_examples,) + shape)
        for name, (shape, dtype) in self.fields.items()}
    self._written = np.zeros((self.num_examples,), bool)

  @property
  def num_written(self) -> int:
    """How many distinct examples have been written so far."""
    return int(self._written.sum())

  def write(self, start: int, batch: Mapping[str, np.ndarray]) -> None:
    """Stores examples [start, start + k) from {name: dtype[k, *shape]} (every field).

    Values are cast to the field's dtype when the cast is exact (int64 codes into an
    int32 field); a lossy cast is an error.
    """
    if self._arrays is None:
      raise ValueError(f"CodeDatasetWriter({self.split_dir}) is closed.")
    if set(batch) != set(self.fields):
      raise ValueError(f"write: fields {sorted(batch)}, expected exactly "
                       f"{sorted(self.fields)}.")
    batch = {name: np.asarray(v) for name, v in batch.items()}
    k = {name: (v.shape[0] if v.ndim else -1) for name, v in batch.items()}
    if len(set(k.values())) != 1 or -1 in k.values():
      raise ValueError(f"write: leading sizes {k}; expected one batch size for every field.")
    k = next(iter(k.values()))
    if start < 0 or start + k > self.num_examples:
      raise ValueError(f"write: examples [{start}, {start + k}) outside "
                       f"[0, {self.num_examples}).")
    for name, v in batch.items():
      shape, dtype = self.fields[name]
      if v.shape[1:] != shape:
        raise ValueError(f"write: field {name!r} has shape {v.shape}, expected "
                         f"[{k}, {', '.join(map(str, shape))}] ({dtype}).")
      cast = v.astype(dtype, copy=False)
      if cast.dtype != v.dtype and not np.array_equal(cast, v):
        raise ValueError(f"write: field {name!r} ({v.dtype}) does not fit dtype {dtype}.")
      self._arrays[name][start:start + k] = cast
    self._written[start:start + k] = True

  def close(self) -> None:
    """Flushes the files and writes meta.json, which marks the split complete.

    Raises:
      ValueError: some examples were never written (meta.json is not written; the
        split stays incomplete).
    """
    if self._arrays is None:
      return
    self._release()
    missing = np.flatnonzero(~self._written)
    if missing.size:
      raise ValueError(f"{self.split_dir}: {missing.size} of {self.num_examples} examples "
                       f"were never written (first: {int(missing[0])}); meta.json not "
                       "written, the split stays incomplete.")
    info = {"format_version": FORMAT_VERSION, "num_examples": self.num_examples,
            "fields": {name: {"shape": list(shape), "dtype": dtype.name}
                       for name, (shape, dtype) in self.fields.items()},
            "meta": self.meta}
    tmp = os.path.join(self.split_dir, META_FILE + ".tmp")
    with open(tmp, "w") as f:
      json.dump(info, f, indent=2)
    os.replace(tmp, os.path.join(self.split_dir, META_FILE))

  def _release(self) -> None:
    for a in self._arrays.values():
      a.flush()
    self._arrays = None

  def __enter__(self) -> "CodeDatasetWriter":
    return self

  def __exit__(self, exc_type, exc, tb) -> None:
    if exc_type is None:
      self.close()
    elif self._arrays is not None:  # an error: keep what was written, leave it incomplete
      self._release()


def list_splits(directory: str, include_incomplete: bool = False) -> List[str]:
  """Sorted split names in `directory` (complete ones only, unless asked); [] if none."""
  directory = os.fspath(directory)
  if not os.path.isdir(directory):
    return []
  return sorted(s for s in os.listdir(directory)
                if os.path.isdir(os.path.join(directory, s)) and
                (include_incomplete or os.path.isfile(os.path.join(directory, s, META_FILE))))


def read_meta(directory: str, split: str) -> Dict[str, Any]:
  """The parsed meta.json of a complete split.

  Raises:
    FileNotFoundError: no such split.
    ValueError: the split is incomplete (no meta.json) or meta.json is malformed.
  """
  split_dir = _split_dir(directory, split)
  if not os.path.isdir(split_dir):
    raise FileNotFoundError(f"No split {split!r} in code dataset {directory} (complete "
                            f"splits: {list_splits(directory)}).")
  path = os.path.join(split_dir, META_FILE)
  if not os.path.isfile(path):
    raise ValueError(f"Code dataset split {split_dir} is incomplete: no {META_FILE} "
                     "(CodeDatasetWriter.close() writes it once every example is written; "
                     "the extraction was interrupted or is still running). Run it again.")
  try:
    with open(path) as f:
      info = json.load(f)
    int(info["num_examples"])
    for name, spec in info["fields"].items():
      _check_spec(name, (spec["shape"], spec["dtype"]))
  except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
    raise ValueError(f"{path}: malformed ({type(e).__name__}: {e}); expected "
                     "num_examples and fields {name: {shape, dtype}}.") from e
  if info.get("format_version", FORMAT_VERSION) > FORMAT_VERSION:
    raise ValueError(f"{path}: format_version {info['format_version']}, expected <= "
                     f"{FORMAT_VERSION} (written by a newer vqgan_jax).")
  return info


def open_code_dataset(directory: str, split: str) -> ArraySource:
  """Split `split` as an `ArraySource` over read-only memmaps; `.meta` is the user meta.

  Raises:
    FileNotFoundError: no such split, or a field's .npy file is missing.
    ValueError: the split is incomplete, or a file's shape / dtype differs from meta.json.
  """
  info = read_meta(directory, split)
  split_dir = _split_dir(directory, split)
  n = int(info["num_examples"])
  arrays = {}
  for name, spec in info["fields"].items():
    shape, dtype = _check_spec(name, (spec["shape"], spec["dtype"]))
    path, want = _field_file(split_dir, name), (n,) + shape
    expected = f"expected {dtype}[{', '.join(map(str, want))}] (from {META_FILE})"
    if not os.path.isfile(path):
      raise FileNotFoundError(f"{path}: missing; {expected}.")
    try:
      a = np.load(path, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError) as e:
      raise ValueError(f"{path}: unreadable as .npy ({e}); {expected}.") from e
    if a.shape != want or a.dtype != dtype:
      raise ValueError(f"{path}: {a.dtype}{list(a.shape)}, {expected}.")
    arrays[name] = a
  return ArraySource(arrays, f"code dataset {split_dir}", meta=info["meta"])
