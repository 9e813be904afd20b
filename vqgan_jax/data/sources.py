"""Example sources and the order in which each process reads them.

Examples are dicts of named fields. A source maps output names to (possibly nested,
"a/b") feature paths; image features come out as their encoded bytes (TFDS
`SkipDecoding`), every other feature as TFDS decodes it. `arrays.ArraySource` is the
numpy-only source (code datasets); it uses the same order as the sources here.

Positions. Training is a stream of global positions q = step * global_batch + i
(i < global_batch). Process p of P owns, at every step, the slice
i in [p * B, (p + 1) * B) with B = global_batch // P: the processes' slices are disjoint
and together make the global batch. Crops and flips are keyed by (seed, q) (see
`preprocess`), so everything a process sees is a function of (seed, q) only.

Random access (`RandomAccessSource`: image folders/lists, TFDS datasets stored as
array_record; `arrays.ArraySource`): epoch e = q // N reads example perm_e[q % N],
where perm_e is numpy's `default_rng([seed, e]).permutation(N)` (`EpochOrder`, the one
place this order is defined; `train_steps` walks it). Resuming at `start_step` costs one
permutation: the batches are exactly the uninterrupted ones.

`StreamSource` (TFDS datasets stored as tfrecord, no random access):
  epoch e is the split read with TFDS file shuffling and a `shuffle(shuffle_buffer)`,
  both seeded with a stateless hash of (seed, e); the k-th element of epoch e has
  position e*N + k. The whole stream is one tf.data pipeline, deterministic since its
  seeds are set, so resumed batches are again exactly the uninterrupted ones; resuming
  starts at epoch e directly but reads and drops the first
  (start_step * global_batch) % N records of that epoch (without decoding them), and
  every process reads every record of the split and keeps its own slice. The order is a
  file-level shuffle plus a bounded buffer, not a uniform permutation; TFDS writes
  examples shuffled, which makes this close to one. For a large dataset on many hosts,
  prepare it as array_record (`tfds build --file_format=array_record`) to get the
  random-access path.

Evaluation reads examples 0..N-1 in stored order with the same process slicing
(`eval_steps`).

"Exactly" holds for the same data and the same numpy / TensorFlow / TFDS versions: the
permutations come from numpy's PCG64, the shuffles from tf.data, the crops from TF's
stateless Philox. TensorFlow and TFDS are imported inside functions only: importing this
module needs numpy alone.
"""

import logging
import threading
from typing import (Any, Callable, Dict, Iterator, List, Mapping, Optional, Sequence,
                    Tuple, Union)

import numpy as np

logger = logging.getLogger(__name__)

Example = Dict[str, np.ndarray]  # field name -> values stacked on a leading axis


def local_batch_size(global_batch_size: int, process_index: int, process_count: int) -> int:
  """global_batch_size // process_count, after checking the three arguments."""
  if process_count < 1 or not 0 <= process_index < process_count:
    raise ValueError(f"process_index={process_index} must be in [0, process_count="
                     f"{process_count}).")
  if global_batch_size < 1 or global_batch_size % process_count:
    raise ValueError(f"global_batch_size={global_batch_size} must be a positive multiple "
                     f"of process_count={process_count}.")
  return global_batch_size // process_count


def local_positions(step: int, global_batch: int, local_batch: int,
                    process_index: int) -> np.ndarray:
  """int64[local_batch]: the global positions that `process_index` reads at `step`."""
  start = step * global_batch + process_index * local_batch
  return np.arange(start, start + local_batch, dtype=np.int64)


def owner_of(position, global_batch: int, local_batch: int):
  """The process index that reads global `position` (numpy or tf integer arrays)."""
  return (position % global_batch) // local_batch


class EpochOrder:
  """Maps global positions to example indices: q -> perm(seed, q // n)[q % n]."""

  def __init__(self, seed: int, n: int, cache_size: int = 4):
    self.seed, self.n = seed, n
    self._cache: Dict[int, np.ndarray] = {}
    self._cache_size = cache_size

  def permutation(self, epoch: int) -> np.ndarray:
    """int64[n]: the order of epoch `epoch` (a permutation of range(n))."""
    perm = self._cache.get(epoch)
    if perm is None:
      perm = np.random.default_rng([self.seed, epoch]).permutation(self.n)
      if len(self._cache) >= self._cache_size:
        self._cache.pop(min(self._cache))
      self._cache[epoch] = perm
    return perm

  def indices(self, positions: np.ndarray) -> np.ndarray:
    """int64[k] example indices for int64[k] global positions."""
    epochs, offsets = np.divmod(positions, self.n)
    out = np.empty_like(positions)
    for e in np.unique(epochs):
      sel = epochs == e
      out[sel] = self.permutation(int(e))[offsets[sel]]
    return out


def train_steps(num_examples: int, seed: int, global_batch: int, local_batch: int,
                process_index: int, start_step: int) -> Iterator[Tuple[np.ndarray, np.ndarray]]:
  """Endless (positions, example indices), both int64[local_batch], one per step.

  The training order of every random-access source, from step `start_step` on.
  """
  order = EpochOrder(seed, num_examples)
  step = start_step
  while True:
    positions = local_positions(step, global_batch, local_batch, process_index)
    yield positions, order.indices(positions)
    step += 1


def eval_steps(num_examples: int, global_batch: int, local_batch: int,
               process_index: int) -> Iterator[np.ndarray]:
  """int64[k] positions (= example indices) per step, ceil(N / global_batch) steps.

  k = local_batch except in the last global batch, where it is clip(N - first, 0,
  local_batch): real examples come first, and a process may have none left (k = 0).
  """
  for step in range(-(-num_examples // global_batch)):
    positions = local_positions(step, global_batch, local_batch, process_index)
    yield positions[positions < num_examples]


def stack_values(values: Sequence[Any]) -> np.ndarray:
  """One field of k examples stacked on a new leading axis.

  Bytes and strings (encoded images, text) give object[k] (numpy's fixed-width bytes
  would drop trailing NULs); anything else `np.stack`s to dtype[k, ...].
  """
  if values and isinstance(values[0], (bytes, str)):
    out = np.empty((len(values),), dtype=object)
    out[:] = list(values)
    return out
  return np.stack([np.asarray(v) for v in values])


def key_path(path: str) -> List[str]:
  """"a/b" -> ["a", "b"]: the path to a (possibly nested) feature."""
  return [k for k in path.split("/") if k]


def get_feature(example: Any, path: str) -> Any:
  """The value of (possibly nested, "a/b") feature `path` in `example`."""
  for k in key_path(path):
    example = example[k]
  return example


def skip_decoding(image_paths: Union[str, Sequence[str]]) -> Optional[Dict[str, Any]]:
  """TFDS `decoders` that leave the features at `image_paths` as encoded bytes.

  None when `image_paths` is empty (every feature decoded as usual).
  """
  import tensorflow_datasets as tfds
  if isinstance(image_paths, str):
    image_paths = [image_paths]
  decoders: Dict[str, Any] = {}
  for path in image_paths:
    *parents, leaf = key_path(path)
    node = decoders
    for k in parents:
      node = node.setdefault(k, {})
    node[leaf] = tfds.decode.SkipDecoding()
  return decoders or None


def _check_fields(fields: Mapping[str, str], where: str) -> Dict[str, str]:
  """`fields` as a dict after checking it maps names to non-empty feature paths."""
  if not isinstance(fields, Mapping) or not fields:
    raise ValueError(f"{where}: fields={fields!r} must be a non-empty mapping "
                     "{output name: feature path}.")
  for name, path in fields.items():
    if not isinstance(name, str) or not isinstance(path, str) or not key_path(path):
      raise ValueError(f"{where}: fields[{name!r}]={path!r}: expected a str name mapped to "
                       "a feature path such as 'image' or 'a/b'.")
  return dict(fields)


def _spec_of(example: Example):
  """{name: tf.TensorSpec [None, ...]} of a read(...) result; object arrays are strings."""
  import tensorflow as tf
  return {k: tf.TensorSpec((None,) + v.shape[1:],
                           tf.string if v.dtype == object else tf.as_dtype(v.dtype))
          for k, v in example.items()}


def _plain(fn: Callable) -> Callable:
  """`fn` for tf.data as plain graph code (no AutoGraph rewrite, no temp files)."""
  import tensorflow as tf
  return tf.autograph.experimental.do_not_convert(fn)


class RandomAccessSource:
  """Examples with random access (a TFDS `ArrayRecordDataSource`) as dicts of fields.

  Args:
    data_source: a sequence of examples (nested dicts), image features undecoded.
    fields: {output name: feature path}, e.g. {"image": "image", "label": "meta/label"}.
    description: names the data in messages.
    num_skipped: unreadable files left out (local images only).
  """

  python_reader = True  # tf.data runs `read` in its threads: see `_dataset` on releasing

  def __init__(self, data_source: Sequence[Any], fields: Mapping[str, str], description: str,
               num_skipped: int = 0):
    self._source = data_source
    self.fields = _check_fields(fields, f"RandomAccessSource({description})")
    self.num_examples = len(data_source)
    self.description = description
    self.num_skipped = num_skipped

  def read(self, indices: Sequence[int]) -> Example:
    """{name: values[k, ...]} of the k examples at `indices` (bytes fields: object[k])."""
    indices = [int(i) for i in indices]
    getitems = getattr(self._source, "__getitems__", None)
    examples = getitems(indices) if getitems else [self._source[i] for i in indices]
    return {name: stack_values([get_feature(ex, path) for ex in examples])
            for name, path in self.fields.items()}

  def _dataset(self, chunks: Callable[[], Iterator[Tuple[np.ndarray, Example]]],
               stop: Optional[threading.Event] = None):
    """tf.data of (int64 position, {name: value}) from per-step chunks of examples.

    tf.data runs `chunks` (Python) in its own threads. Destroying an iterator while one
    of them waits for the GIL deadlocks, so its owner sets `stop` (the reader then ends
    the dataset at the next chunk) and drains the iterator before releasing it; see
    `pipeline._numpy_batches`.
    """
    import tensorflow as tf
    if stop is not None:
      unguarded = chunks

      def chunks():
        for chunk in unguarded():
          if stop.is_set():
            return
          yield chunk
    if self.num_examples:
      spec = _spec_of(self.read([0]))
    else:
      spec = {k: tf.TensorSpec((None,), tf.string) for k in self.fields}
    ds = tf.data.Dataset.from_generator(
        chunks, output_signature=(tf.TensorSpec((None,), tf.int64), spec))
    return ds.unbatch()

  def train_dataset(self, seed: int, global_batch: int, local_batch: int, process_index: int,
                    start_step: int, stop: Optional[threading.Event] = None):
    """Endless tf.data of this process's (int64 position, {name: value}) from `start_step`
    (ending early once `stop` is set)."""
    def chunks():
      for positions, indices in train_steps(self.num_examples, seed, global_batch,
                                            local_batch, process_index, start_step):
        yield positions, self.read(indices)
    return self._dataset(chunks, stop)

  def eval_dataset(self, global_batch: int, local_batch: int, process_index: int,
                   stop: Optional[threading.Event] = None):
    """tf.data of this process's (int64 position, {name: value}), one pass, stored order."""
    def chunks():
      for positions in eval_steps(self.num_examples, global_batch, local_batch,
                                  process_index):
        if positions.size:
          yield positions, self.read(positions)
    return self._dataset(chunks, stop)


def tfds_decoders(builder: Any, fields: Mapping[str, str]) -> Optional[Dict[str, Any]]:
  """TFDS `decoders` that skip decoding exactly the image features among `fields`."""
  import tensorflow_datasets as tfds
  features = builder.info.features
  return skip_decoding([p for p in fields.values()
                        if isinstance(_feature_at(features, p), tfds.features.Image)])


def _feature_at(features: Any, path: str) -> Any:
  """The TFDS feature at `path` (None when there is none)."""
  try:
    for k in key_path(path):
      features = features[k]
  except (KeyError, TypeError):
    return None
  return features


class StreamSource:
  """A TFDS split read sequentially with tf.data (tfrecord datasets), as dicts of fields."""

  python_reader = False  # graph ops only: its iterators can be released at any time

  def __init__(self, builder: Any, split: str, fields: Mapping[str, str], shuffle_buffer: int,
               description: str):
    self._builder, self._split = builder, split
    self.fields = _check_fields(fields, f"StreamSource({description})")
    self._shuffle_buffer = shuffle_buffer
    self.num_examples = int(builder.info.splits[split].num_examples)
    self.description = description
    self.num_skipped = 0

  def _records(self, shuffle_seed=None):
    """tf.data of {name: value}: one pass, shuffled iff `shuffle_seed` (int64 tensor)."""
    import tensorflow_datasets as tfds
    shuffle = shuffle_seed is not None
    read_config = tfds.ReadConfig(shuffle_seed=shuffle_seed, try_autocache=False)
    ds = self._builder.as_dataset(split=self._split, shuffle_files=shuffle,
                                  read_config=read_config,
                                  decoders=tfds_decoders(self._builder, self.fields))
    fields = self.fields
    ds = ds.map(_plain(lambda ex: {name: get_feature(ex, p) for name, p in fields.items()}))
    if shuffle:
      ds = ds.shuffle(self._shuffle_buffer, seed=shuffle_seed, reshuffle_each_iteration=False)
    return ds

  def train_dataset(self, seed: int, global_batch: int, local_batch: int, process_index: int,
                    start_step: int, stop=None):
    """Endless tf.data of this process's (int64 position, {name: value}) from `start_step`
    (graph ops only: `stop` is not needed and ignored).

    Epochs are chained inside tf.data (`flat_map` over epoch numbers); epoch e's
    shuffles are seeded by a stateless hash of (seed, e).
    """
    import tensorflow as tf
    n = self.num_examples
    first_epoch, skip = divmod(start_step * global_batch, n)

    def epoch(e):
      e_seed = tf.random.stateless_uniform(
          [], tf.stack([tf.constant(seed, tf.int64), e]), minval=0, maxval=2**31 - 1,
          dtype=tf.int64, alg="philox")
      return self._records(e_seed).enumerate().map(_plain(lambda i, data: (e * n + i, data)))

    ds = tf.data.Dataset.range(first_epoch, 2**62).flat_map(_plain(epoch))
    if skip:
      ds = ds.skip(skip)
    return ds.filter(_plain(lambda q, _: owner_of(q, global_batch, local_batch) ==
                            process_index))

  def eval_dataset(self, global_batch: int, local_batch: int, process_index: int, stop=None):
    """tf.data of this process's (int64 position, {name: value}), one pass, stored order."""
    ds = self._records().enumerate()
    return ds.filter(_plain(lambda q, _: owner_of(q, global_batch, local_batch) ==
                            process_index))


def open_tfds(name: str, split: str, data_dir: Optional[str],
              fields: Union[str, Mapping[str, str]], shuffle_buffer: int):
  """Opens split `split` of the prepared TFDS dataset `name` (never downloads).

  Args:
    fields: {output name: feature path}; image features are read as encoded bytes. A
      plain string is the image pipeline's `data.image_key`: {"image": fields}, which
      must be an image feature.

  Returns a `RandomAccessSource` when the dataset has an array_record copy, else a
  `StreamSource`.

  Raises:
    FileNotFoundError: the dataset is not prepared in `data_dir`.
    ValueError: `split` or a feature path does not exist, or `image_key` is not an
      image feature.
  """
  import tensorflow_datasets as tfds
  data_dir = data_dir or None
  where = f"data_dir={data_dir!r}" if data_dir else "TFDS's default data_dir"
  how = (f"This pipeline never downloads: prepare it first (e.g. `tfds build {name} "
         "--data_dir=...`) and set data.data_dir.")
  try:
    builder = tfds.builder(name, data_dir=data_dir)
  except Exception as e:  # DatasetNotFoundError, bad name syntax, unreadable dir, ...
    raise FileNotFoundError(f"TFDS dataset {name!r} not found in {where}: "
                            f"{type(e).__name__}: {str(e).splitlines()[0]}. {how}") from e
  if not builder.is_prepared():
    raise FileNotFoundError(f"TFDS dataset {name!r} is not prepared in {where} "
                            f"(no {builder.data_dir}). {how}")
  try:
    builder.info.splits[split].num_examples
  except (KeyError, ValueError, AssertionError) as e:
    raise ValueError(f"TFDS dataset {name!r} has no split {split!r} (splits: "
                     f"{sorted(builder.info.splits.keys())}): {e}") from e
  features = builder.info.features
  if isinstance(fields, str):
    image_key, fields = fields, {"image": fields}
    if not isinstance(_feature_at(features, image_key), tfds.features.Image):
      images = [k for k, f in features.items() if isinstance(f, tfds.features.Image)]
      raise ValueError(f"data.image_key={image_key!r} is not an image feature of TFDS "
                       f"dataset {name!r} (image features: {images}).")
  fields = _check_fields(fields, f"open_tfds({name!r})")
  for out_name, path in fields.items():
    if _feature_at(features, path) is None:
      raise ValueError(f"fields[{out_name!r}]={path!r} is not a feature of TFDS dataset "
                       f"{name!r} (features: {sorted(features.keys())}).")
  description = f"TFDS {name}[{split}] in {where}"
  try:
    data_source = builder.as_data_source(split, decoders=tfds_decoders(builder, fields))
  except (NotImplementedError, ValueError):
    logger.info("%s has no random access (%s): reading it as a stream.", description,
                builder.info.file_format)
    return StreamSource(builder, split, fields, shuffle_buffer, description)
  return RandomAccessSource(data_source, fields, description)


def open_images(path: str, prepared_dir: str) -> RandomAccessSource:
  """An image folder or list as {"image": encoded bytes}, prepared as TFDS when needed."""
  from vqgan_jax.data import local_builder
  prepared = local_builder.prepare_local_images(path, prepared_dir)
  fields = {"image": "image"}
  decoders = tfds_decoders(prepared.builder, fields)
  data_source = prepared.builder.as_data_source("train", decoders=decoders)
  return RandomAccessSource(data_source, fields, f"images from {path}",
                            num_skipped=prepared.num_skipped)
