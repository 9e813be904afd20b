"""Numpy example sources and batch iterators that need no TensorFlow.

  source = ArraySource({"codes": codes, "label": labels}, "imagenet codes")
  #        codes: int32[N, h, w], labels: int32[N] (memmaps work: see `codes`)
  it = train_batches(source, global_batch_size=64, seed=0, start_step=step,
                     process_index=jax.process_index(), process_count=jax.process_count())
  batch = next(it)  # {"codes": int32[64 // P, h, w], "label": int32[64 // P]}

`train_batches` and `eval_batches` take any random-access source whose
`read(indices) -> {name: values[k, ...]}` returns stacked numpy arrays: an
`ArraySource`, or a `sources.RandomAccessSource` (then encoded images are object[k]
arrays of bytes). The training order is `sources.train_steps`, the same function of
(seed, position) that the image pipeline uses: an `ArraySource` of N examples and an
image dataset of N examples give the same example indices for the same seed and global
batch, a run resumed at `start_step=k` gets exactly the uninterrupted batches from k on,
and the P processes get disjoint slices that together make each global batch.

Only numpy is imported (directly or through `sources`).
"""

from typing import Any, Dict, Iterator, Mapping, Optional, Sequence, Tuple

import numpy as np

from vqgan_jax.data import sources

Batch = Dict[str, np.ndarray]


class ArraySource:
  """Random access over the leading axis of same-length arrays (in memory or memmaps).

  Args:
    arrays: {name: dtype[N, ...]}; every array has the same N.
    description: names the data in messages.
    meta: anything describing the data (a code dataset's meta.json `meta`).

  Attributes: `num_examples` (N), `spec` ({name: (shape[1:], dtype)}), `description`,
  `meta`, `num_skipped` (always 0).
  """

  def __init__(self, arrays: Mapping[str, np.ndarray], description: str,
               meta: Optional[Dict[str, Any]] = None):
    if not isinstance(arrays, Mapping) or not arrays:
      raise ValueError(f"ArraySource({description}): arrays must be a non-empty mapping "
                       f"{{field name: array}}, got {type(arrays).__name__}.")
    self._arrays: Dict[str, np.ndarray] = {}
    for name, a in arrays.items():
      if not isinstance(a, np.ndarray):
        a = np.asarray(a)
      if a.ndim < 1:
        raise ValueError(f"ArraySource({description}): field {name!r} is a scalar; expected "
                         "an array with a leading example axis.")
      self._arrays[name] = a
    lengths = {name: int(a.shape[0]) for name, a in self._arrays.items()}
    if len(set(lengths.values())) > 1:
      raise ValueError(f"ArraySource({description}): fields have different lengths "
                       f"{lengths}; expected the same number of examples in every field.")
    self.num_examples = next(iter(lengths.values()))
    self.spec = {name: (tuple(a.shape[1:]), a.dtype) for name, a in self._arrays.items()}
    self.description = description
    self.meta = dict(meta or {})
    self.num_skipped = 0

  def __len__(self) -> int:
    return self.num_examples

  def read(self, indices: Sequence[int]) -> Batch:
    """{name: dtype[k, ...]} (in-memory copies) of the k examples at `indices`."""
    idx = np.asarray(indices, dtype=np.int64).reshape(-1)
    bad = idx[(idx < 0) | (idx >= self.num_examples)]
    if bad.size:
      raise IndexError(f"ArraySource({self.description}): indices {bad[:8].tolist()} out "
                       f"of range [0, {self.num_examples}).")
    return {name: np.asarray(a[idx]) for name, a in self._arrays.items()}


def _checked(source: Any, global_batch_size: int, process_index: int,
             process_count: int) -> Tuple[int, int]:
  """(N, local batch size) after checking the source and the batch arguments."""
  if not callable(getattr(source, "read", None)) or not hasattr(source, "num_examples"):
    raise TypeError(f"{type(source).__name__} is not a random-access source: expected "
                    "`num_examples` and `read(indices) -> {name: array}`.")
  local_batch = sources.local_batch_size(global_batch_size, process_index, process_count)
  return int(source.num_examples), local_batch


def _field_names(source: Any) -> Sequence[str]:
  """The source's field names when it declares them (`spec` or `fields`), else ()."""
  return tuple(getattr(source, "spec", None) or getattr(source, "fields", None) or ())


def train_batches(source: Any, *, global_batch_size: int, seed: int, start_step: int = 0,
                  process_index: int = 0, process_count: int = 1) -> Iterator[Batch]:
  """Endless training batches of this process, starting at step `start_step`.

  Yields:
    source.read(indices): {name: dtype[global_batch_size // process_count, ...]}; the
    batch of step k holds global positions k * global_batch_size + [p * B, (p + 1) * B)
    (B the local batch), read in `sources.EpochOrder(seed, N)`.

  Errors (bad arguments, empty source) are raised here, not on the first `next()`.
  `seed` is taken modulo 2**63, as the image pipeline does.
  """
  n, local_batch = _checked(source, global_batch_size, process_index, process_count)
  if start_step < 0:
    raise ValueError(f"start_step={start_step} must be >= 0.")
  if n == 0:
    raise ValueError(f"No training examples in {source.description}.")
  steps = sources.train_steps(n, int(seed) % 2**63, global_batch_size, local_batch,
                              process_index, start_step)

  def batches():
    for _, indices in steps:
      yield source.read(indices)
  return batches()


def _padded(values: np.ndarray, size: int) -> np.ndarray:
  """values[k, ...] padded with zeros (b"" for object arrays) to [size, ...]."""
  out = np.zeros((size,) + values.shape[1:], values.dtype)
  if values.dtype == object:
    out.fill(b"")
  out[:values.shape[0]] = values
  return out


def num_eval_batches(num_examples: int, global_batch_size: int) -> int:
  """ceil(N / global_batch_size): the eval batches every process gets."""
  return -(-num_examples // global_batch_size)


def eval_batches(source: Any, *, global_batch_size: int, process_index: int = 0,
                 process_count: int = 1) -> Iterator[Batch]:
  """One pass over `source` in stored order: this process's share of each global batch.

  Yields ceil(N / global_batch_size) batches (the same number on every process):
    {name: dtype[B, ...] (zeros where padded), "mask": float32[B] (1 = real example,
     0 = padding that fills the last global batch)}, B = global // process_count.
  Real examples come first in every batch; a source field named "mask" is an error.
  """
  n, local_batch = _checked(source, global_batch_size, process_index, process_count)
  if "mask" in _field_names(source):
    raise ValueError(f"{source.description}: has a field named 'mask', which eval_batches "
                     "adds; rename the field.")
  steps = sources.eval_steps(n, global_batch_size, local_batch, process_index)

  def batches():
    template = None
    for positions in steps:
      k = positions.size
      if k:
        values = source.read(positions)
      else:  # nothing real left on this process: shapes and dtypes from example 0
        template = template or {name: v[:0] for name, v in source.read([0]).items()}
        values = template
      batch = {name: _padded(v, local_batch) for name, v in values.items()}
      mask = np.zeros((local_batch,), np.float32)
      mask[:k] = 1.0
      batch["mask"] = mask
      yield batch
  return batches()
