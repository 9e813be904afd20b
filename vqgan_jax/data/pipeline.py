"""VQGAN training and evaluation batches from TFDS datasets or local images.

  it = create_train_iterator(config.data, global_batch_size=64, seed=0, start_step=step,
                             process_index=jax.process_index(),
                             process_count=jax.process_count(), workdir=workdir)
  batch = next(it)   # {"image": float32[64 // process_count, S, S, 3] in [-1, 1]}

Training: an endless stream; the batch of step k is a function of (seed, k) only, so a
run resumed with `start_step=k` gets exactly the batches the uninterrupted run got from
step k on, and each process gets its own disjoint slice of every global batch (see
`sources` for the order and what resuming costs for each kind of source).

Evaluation: one pass over the validation data in stored order, centre crops; every
process gets ceil(N / global_batch) batches
`{"image": float32[B, S, S, 3], "mask": float32[B]}` where `mask` is 1 for real images
and 0 for the zero padding that fills the last global batch.

Local images (`data.train_images` / `data.val_images`) are prepared as TFDS datasets
under `data.prepared_dir` (default `<workdir>/data`) on first use. With several
processes on a shared filesystem, call `prepare_data` on process 0 and wait for it
before the other processes create iterators (concurrent preparation is tolerated, but
wasteful).
"""

import atexit
import functools
import os
import threading
import weakref
from typing import Any, Callable, Dict, Iterator, Optional

import numpy as np

from vqgan_jax.data import sources
from vqgan_jax.data.config import check_data_config, default_data_config  # noqa: F401
from vqgan_jax.data.config import eval_source_kind, validate_data_config  # noqa: F401

Batch = Dict[str, np.ndarray]


@functools.lru_cache(maxsize=None)
def _tf():
  """Imports TensorFlow for tf.data, hiding any GPU from it (JAX owns accelerators)."""
  import tensorflow as tf
  try:
    tf.config.set_visible_devices([], "GPU")
  except (RuntimeError, ValueError):  # TF already initialised its devices
    pass
  return tf


def _checked(data_cfg: Any) -> Any:
  """`data_cfg` after `check_data_config`; a plain dict becomes a ConfigDict."""
  check_data_config(data_cfg)
  if isinstance(data_cfg, dict):
    import ml_collections
    data_cfg = ml_collections.ConfigDict(data_cfg)
  return data_cfg


def _prepared_dir(data_cfg: Any, workdir: Optional[str]) -> str:
  if data_cfg.prepared_dir:
    return data_cfg.prepared_dir
  if workdir:
    return os.path.join(workdir, "data")
  raise ValueError("data.prepared_dir is empty and no workdir was given: local images "
                   "need a directory to be prepared in.")


def _open(data_cfg: Any, which: str, workdir: Optional[str]):
  """The source of the "train" or "eval" examples (None: no eval data configured)."""
  cfg = data_cfg
  if which == "train":
    if cfg.train_images:
      return sources.open_images(cfg.train_images, _prepared_dir(cfg, workdir))
    return sources.open_tfds(cfg.name, cfg.train_split, cfg.data_dir, cfg.image_key,
                             cfg.shuffle_buffer)
  kind = eval_source_kind(cfg)
  if kind == "images":
    return sources.open_images(cfg.val_images, _prepared_dir(cfg, workdir))
  if kind == "tfds":
    return sources.open_tfds(cfg.name, cfg.val_split, cfg.data_dir, cfg.image_key,
                             cfg.shuffle_buffer)
  return None


def prepare_data(data_cfg: Any, workdir: Optional[str] = None) -> Dict[str, int]:
  """Prepares local image datasets and checks TFDS ones: {"train": N, "eval": N or 0}."""
  data_cfg = _checked(data_cfg)
  out = {"train": _open(data_cfg, "train", workdir).num_examples}
  source = _open(data_cfg, "eval", workdir)
  out["eval"] = source.num_examples if source is not None else 0
  return out


# Batch generators not yet finished. Each holds a tf.data iterator that may run Python
# code (the record readers); released at exit, while the interpreter still works.
_LIVE = weakref.WeakSet()


@atexit.register
def _close_live_iterators():
  for gen in list(_LIVE):
    try:
      gen.close()
    except ValueError:  # running in another thread
      pass


def _numpy_batches(ds, to_batch: Callable[[Any], Batch],
                   stop: Optional[threading.Event]) -> Iterator[Batch]:
  """Iterates `ds` as numpy, mapping each element with `to_batch`.

  With `stop` (a source whose Python record reader tf.data runs in its threads),
  closing the generator (or dropping it) sets `stop`, which ends that reader, and
  drains the iterator before releasing it: each `next` releases the GIL, so no tf.data
  thread is left waiting for it while the iterator is destroyed (that deadlocked a
  trainer at the end of its loop). Graph-only sources need neither (and an endless one
  could not be drained).
  """
  def batches():
    it = ds.as_numpy_iterator()
    try:
      for element in it:
        yield to_batch(element)
    finally:
      if stop is not None:
        stop.set()
        for _ in it:
          pass
  gen = batches()
  _LIVE.add(gen)
  return gen


def _tf_batches(ds, preprocess: Callable, local_batch: int, drop_remainder: bool,
                prefetch: int):
  """tf.data: (position, {"image": bytes}) -> preprocessed images -> local batches."""
  tf = _tf()
  preprocess = tf.autograph.experimental.do_not_convert(preprocess)  # plain graph code
  ds = ds.map(preprocess, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
  ds = ds.batch(local_batch, drop_remainder=drop_remainder)
  return ds.prefetch(prefetch) if prefetch else ds


def create_train_iterator(data_cfg: Any, *, global_batch_size: int, seed: int,
                          start_step: int = 0, process_index: int = 0, process_count: int = 1,
                          workdir: Optional[str] = None) -> Iterator[Batch]:
  """Endless training batches of this process, starting at step `start_step`.

  Yields:
    {"image": float32[global_batch_size // process_count, S, S, 3] in [-1, 1]} with
    S = data.crop_size: smallest side resized to S, random crop, optional flip.

  Errors (bad config, missing dataset, bad split/feature, unusable image folder) are
  raised here, not on the first `next()`. `seed` is taken modulo 2**63.
  """
  data_cfg = _checked(data_cfg)
  _tf()
  local_batch = sources.local_batch_size(global_batch_size, process_index, process_count)
  if start_step < 0:
    raise ValueError(f"start_step={start_step} must be >= 0.")
  seed = int(seed) % 2**63
  source = _open(data_cfg, "train", workdir)
  if source.num_examples == 0:
    raise ValueError(f"No training examples in {source.description}.")
  stop = threading.Event() if source.python_reader else None
  records = source.train_dataset(seed, global_batch_size, local_batch, process_index,
                                 start_step, stop=stop)
  from vqgan_jax.data import preprocess as pp
  crop_size, flip = int(data_cfg.crop_size), bool(data_cfg.flip)

  def preprocess(position, example):
    return pp.preprocess_train(example["image"], position, seed=seed, crop_size=crop_size,
                               flip=flip)

  ds = _tf_batches(records, preprocess, local_batch, True, data_cfg.prefetch)
  return _numpy_batches(ds, lambda images: {"image": images}, stop)


def create_eval_iterator(data_cfg: Any, *, global_batch_size: int, process_index: int = 0,
                         process_count: int = 1,
                         workdir: Optional[str] = None) -> Iterator[Batch]:
  """One pass over the validation data: this process's share of each global batch.

  Yields ceil(N / global_batch_size) batches (the same number on every process):
    {"image": float32[B, S, S, 3] in [-1, 1] (centre crops; zeros where padded),
     "mask": float32[B] (1 = real example, 0 = padding)}, B = global // process_count.

  Raises:
    ValueError: no validation data is configured (see `count_eval_examples`).
  """
  data_cfg = _checked(data_cfg)
  _tf()
  local_batch = sources.local_batch_size(global_batch_size, process_index, process_count)
  source = _open(data_cfg, "eval", workdir)
  if source is None:
    raise ValueError("No validation data: set data.val_images, or data.name and "
                     "data.val_split.")
  n = source.num_examples
  stop = threading.Event() if source.python_reader else None
  records = source.eval_dataset(global_batch_size, local_batch, process_index, stop=stop)
  from vqgan_jax.data import preprocess as pp
  crop_size = int(data_cfg.crop_size)

  def preprocess(position, example):
    del position
    return pp.preprocess_eval(example["image"], crop_size=crop_size)

  ds = _tf_batches(records, preprocess, local_batch, False, data_cfg.prefetch)
  # Real examples come first in every local batch (`sources.eval_steps`): steps before
  # the last global batch are full; in the last one a process may have none left, and
  # then gets no element from tf.data, hence the empty dataset.
  real = [positions.size for positions in
          sources.eval_steps(n, global_batch_size, local_batch, process_index)]
  tf = _tf()
  empty = tf.zeros((0, crop_size, crop_size, 3), tf.float32)
  ds = ds.concatenate(tf.data.Dataset.from_tensors(empty).repeat(real.count(0)))

  def pad(images: np.ndarray) -> Batch:
    k = images.shape[0]
    image = np.zeros((local_batch, crop_size, crop_size, 3), np.float32)
    image[:k] = images
    mask = np.zeros((local_batch,), np.float32)
    mask[:k] = 1.0
    return {"image": image, "mask": mask}

  return _numpy_batches(ds, pad, stop)


def count_eval_examples(data_cfg: Any, workdir: Optional[str] = None) -> int:
  """Number of validation examples (0 when no validation data is configured)."""
  data_cfg = _checked(data_cfg)
  source = _open(data_cfg, "eval", workdir)
  return 0 if source is None else source.num_examples
