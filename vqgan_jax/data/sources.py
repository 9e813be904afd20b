"""Example sources and the order in which each process reads them.

Positions. Training is a stream of global positions q = step * global_batch + i
(i < global_batch). Process p of P owns, at every step, the slice
i in [p * B, (p + 1) * B) with B = global_batch // P: the processes' slices are disjoint
and together make the global batch. Crops and flips are keyed by (seed, q) (see
`preprocess`), so everything a process sees is a function of (seed, q) only.

Two kinds of source turn positions into encoded images:

`RandomAccessSource` (image folders/lists, TFDS datasets stored as array_record):
  epoch e = q // N reads example perm_e[q % N], where perm_e is numpy's
  `default_rng([seed, e]).permutation(N)` (one permutation per epoch, cached). Resuming
  at `start_step` costs one permutation: the batches are exactly the uninterrupted ones.

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

Evaluation reads examples 0..N-1 in stored order with the same process slicing.

"Exactly" holds for the same data and the same numpy / TensorFlow / TFDS versions: the
permutations come from numpy's PCG64, the shuffles from tf.data, the crops from TF's
stateless Philox.
"""

import functools
import logging
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np

logger = logging.getLogger(__name__)

Record = Tuple[int, bytes]  # (global position, encoded image)


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


def key_path(image_key: str) -> List[str]:
  """"a/b" -> ["a", "b"]: the path to a (possibly nested) feature."""
  return [k for k in image_key.split("/") if k]


def skip_decoding(image_key: str) -> Dict[str, Any]:
  """TFDS `decoders` that leave the image feature as its encoded bytes."""
  import tensorflow_datasets as tfds
  decoders: Any = tfds.decode.SkipDecoding()
  for k in reversed(key_path(image_key)):
    decoders = {k: decoders}
  return decoders


def get_feature(example: Any, image_key: str) -> Any:
  for k in key_path(image_key):
    example = example[k]
  return example


class RandomAccessSource:
  """Examples with random access (a TFDS `ArrayRecordDataSource`)."""

  def __init__(self, data_source: Sequence[Any], image_key: str, description: str,
               num_skipped: int = 0):
    self._source = data_source
    self._image_key = image_key
    self.num_examples = len(data_source)
    self.description = description
    self.num_skipped = num_skipped  # unreadable files left out (local images only)

  def read(self, indices: Sequence[int]) -> List[bytes]:
    """The encoded images at example `indices`."""
    indices = [int(i) for i in indices]
    getitems = getattr(self._source, "__getitems__", None)
    examples = getitems(indices) if getitems else [self._source[i] for i in indices]
    return [get_feature(ex, self._image_key) for ex in examples]

  def train_records(self, seed: int, global_batch: int, local_batch: int, process_index: int,
                    start_step: int) -> Iterator[Record]:
    """Endless (position, encoded image) of this process, from `start_step` on."""
    order = EpochOrder(seed, self.num_examples)
    step = start_step
    while True:
      positions = local_positions(step, global_batch, local_batch, process_index)
      yield from zip(positions.tolist(), self.read(order.indices(positions)))
      step += 1

  def eval_records(self, global_batch: int, local_batch: int,
                   process_index: int) -> Iterator[Record]:
    """(position, encoded image) of this process over one pass, in stored order."""
    n = self.num_examples
    for step in range(-(-n // global_batch)):
      positions = local_positions(step, global_batch, local_batch, process_index)
      positions = positions[positions < n]
      yield from zip(positions.tolist(), self.read(positions))

  def train_dataset(self, seed: int, global_batch: int, local_batch: int, process_index: int,
                    start_step: int):
    """`train_records` as a tf.data of (int64 position, string image)."""
    return _from_records(functools.partial(self.train_records, seed, global_batch,
                                           local_batch, process_index, start_step))

  def eval_dataset(self, global_batch: int, local_batch: int, process_index: int):
    """`eval_records` as a tf.data of (int64 position, string image)."""
    return _from_records(functools.partial(self.eval_records, global_batch, local_batch,
                                           process_index))


def _from_records(records: Callable[[], Iterator[Record]]):
  """tf.data over a Python generator of records.

  Its iterators must be released before the interpreter shuts down (tf.data threads
  blocked on the GIL otherwise hang the exit): `pipeline` closes its live iterators
  at exit.
  """
  import tensorflow as tf
  return tf.data.Dataset.from_generator(
      records, output_signature=(tf.TensorSpec((), tf.int64), tf.TensorSpec((), tf.string)))


def _plain(fn: Callable) -> Callable:
  """`fn` for tf.data as plain graph code (no AutoGraph rewrite, no temp files)."""
  import tensorflow as tf
  return tf.autograph.experimental.do_not_convert(fn)


class StreamSource:
  """A TFDS split read sequentially with tf.data (tfrecord datasets)."""

  def __init__(self, builder: Any, split: str, image_key: str, shuffle_buffer: int,
               description: str):
    self._builder, self._split = builder, split
    self._image_key = image_key
    self._shuffle_buffer = shuffle_buffer
    self.num_examples = int(builder.info.splits[split].num_examples)
    self.description = description
    self.num_skipped = 0

  def _records(self, shuffle_seed=None):
    """tf.data of encoded images: one pass, shuffled iff `shuffle_seed` (int64 tensor)."""
    import tensorflow_datasets as tfds
    shuffle = shuffle_seed is not None
    read_config = tfds.ReadConfig(shuffle_seed=shuffle_seed, try_autocache=False)
    ds = self._builder.as_dataset(split=self._split, shuffle_files=shuffle,
                                  read_config=read_config,
                                  decoders=skip_decoding(self._image_key))
    key = self._image_key
    ds = ds.map(_plain(lambda ex: get_feature(ex, key)))
    if shuffle:
      ds = ds.shuffle(self._shuffle_buffer, seed=shuffle_seed, reshuffle_each_iteration=False)
    return ds

  def train_dataset(self, seed: int, global_batch: int, local_batch: int, process_index: int,
                    start_step: int):
    """Endless tf.data of this process's (int64 position, string image) from `start_step`.

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

  def eval_dataset(self, global_batch: int, local_batch: int, process_index: int):
    """tf.data of this process's (int64 position, string image), one pass, stored order."""
    ds = self._records().enumerate()
    return ds.filter(_plain(lambda q, _: owner_of(q, global_batch, local_batch) ==
                            process_index))


def open_tfds(name: str, split: str, data_dir: Optional[str], image_key: str,
              shuffle_buffer: int):
  """Opens split `split` of the prepared TFDS dataset `name` (never downloads).

  Returns a `RandomAccessSource` when the dataset has an array_record copy, else a
  `StreamSource`.

  Raises:
    FileNotFoundError: the dataset is not prepared in `data_dir`.
    ValueError: `split` or `image_key` does not exist, or is not an image feature.
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
  feature = builder.info.features
  try:
    for k in key_path(image_key):
      feature = feature[k]
  except (KeyError, TypeError):
    feature = None
  if not isinstance(feature, tfds.features.Image):
    images = [k for k, f in builder.info.features.items() if isinstance(f, tfds.features.Image)]
    raise ValueError(f"data.image_key={image_key!r} is not an image feature of TFDS dataset "
                     f"{name!r} (image features: {images}).")
  description = f"TFDS {name}[{split}] in {where}"
  try:
    data_source = builder.as_data_source(split, decoders=skip_decoding(image_key))
  except (NotImplementedError, ValueError):
    logger.info("%s has no random access (%s): reading it as a stream.", description,
                builder.info.file_format)
    return StreamSource(builder, split, image_key, shuffle_buffer, description)
  return RandomAccessSource(data_source, image_key, description)


def open_images(path: str, prepared_dir: str) -> RandomAccessSource:
  """Opens an image folder or list, preparing it as a TFDS dataset when needed."""
  from vqgan_jax.data import local_builder
  prepared = local_builder.prepare_local_images(path, prepared_dir)
  data_source = prepared.builder.as_data_source("train", decoders=skip_decoding("image"))
  return RandomAccessSource(data_source, "image", f"images from {path}",
                            num_skipped=prepared.num_skipped)
