"""TFDS datasets read by name + data_dir: tfrecord (stream) and array_record (random access).

`VqganTestShapes` is a tiny GeneratorBasedBuilder (ID images, see `data_helpers`) that
defining this module registers; it is prepared in tmp dirs, never downloaded.
"""

import numpy as np
import pytest
import tensorflow_datasets as tfds

from data_helpers import id_image, ids_of, make_data_config, take
from vqgan_jax.data import pipeline, sources

N_TRAIN, N_VAL = 12, 7


class VqganTestShapes(tfds.core.GeneratorBasedBuilder):
  """Train: ID images 0..11; validation: ID images 12..18; various sizes."""

  VERSION = tfds.core.Version("1.0.0")

  @tfds.core.utils.classproperty
  @classmethod
  def code_path(cls):  # no checksums file to look for (see local_builder.LocalImages)
    return None

  def _info(self):
    return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
        "image": tfds.features.Image(shape=(None, None, 3)),
        "label": tfds.features.ClassLabel(num_classes=3)}))

  def _split_generators(self, dl_manager):
    return {"train": self._generate_examples(0, N_TRAIN),
            "validation": self._generate_examples(N_TRAIN, N_VAL)}

  def _generate_examples(self, first, n):
    for i in range(first, first + n):
      yield i, {"image": id_image(i, 36 + (i % 3) * 5, 40 + (i % 2) * 7), "label": i % 3}


def _prepare(data_dir, file_format):
  b = VqganTestShapes(data_dir=str(data_dir), file_format=file_format)
  b.download_and_prepare(download_config=tfds.download.DownloadConfig(try_download_gcs=False))
  return str(data_dir)


@pytest.fixture(scope="module")
def tfrecord_dir(tmp_path_factory):
  return _prepare(tmp_path_factory.mktemp("tfds_tfrecord"), "tfrecord")


@pytest.fixture(scope="module")
def array_record_dir(tmp_path_factory):
  return _prepare(tmp_path_factory.mktemp("tfds_array_record"), "array_record")


def _cfg(data_dir, **kw):
  return make_data_config(**{"name": "vqgan_test_shapes", "data_dir": data_dir, **kw})


def _train(data_dir, *, gb=4, seed=0, start_step=0, p=0, pc=1, **kw):
  return pipeline.create_train_iterator(_cfg(data_dir, **kw), global_batch_size=gb, seed=seed,
                                        start_step=start_step, process_index=p,
                                        process_count=pc)


def test_source_kind_follows_the_file_format(tfrecord_dir, array_record_dir):
  stream = sources.open_tfds("vqgan_test_shapes", "train", tfrecord_dir, "image", 16)
  assert isinstance(stream, sources.StreamSource) and stream.num_examples == N_TRAIN
  ra = sources.open_tfds("vqgan_test_shapes", "train", array_record_dir, "image", 16)
  assert isinstance(ra, sources.RandomAccessSource) and ra.num_examples == N_TRAIN


@pytest.mark.parametrize("fmt", ["tfrecord", "array_record"])
def test_train_batches_and_epochs(fmt, tfrecord_dir, array_record_dir):
  data_dir = tfrecord_dir if fmt == "tfrecord" else array_record_dir
  batches = take(_train(data_dir, gb=4), 6)  # 24 positions = 2 epochs
  for b in batches:
    assert b["image"].shape == (4, 32, 32, 3) and b["image"].dtype == np.float32
    assert -1.0 <= b["image"].min() and b["image"].max() <= 1.0
  ids = np.concatenate([ids_of(b["image"]) for b in batches])
  assert sorted(ids[:N_TRAIN]) == list(range(N_TRAIN))
  assert sorted(ids[N_TRAIN:]) == list(range(N_TRAIN))
  assert list(ids[:N_TRAIN]) != list(ids[N_TRAIN:])  # a new order every epoch
  other = np.concatenate([ids_of(b["image"]) for b in take(_train(data_dir, seed=1), 3)])
  assert list(other) != list(ids[:N_TRAIN])


@pytest.mark.parametrize("fmt", ["tfrecord", "array_record"])
@pytest.mark.parametrize("k", [2, 4])  # step 4 starts 4 positions into epoch 1
def test_resume(fmt, k, tfrecord_dir, array_record_dir):
  data_dir = tfrecord_dir if fmt == "tfrecord" else array_record_dir
  full = take(_train(data_dir, seed=5, flip=True), k + 3)
  resumed = take(_train(data_dir, seed=5, flip=True, start_step=k), 3)
  for x, y in zip(full[k:], resumed):
    np.testing.assert_array_equal(x["image"], y["image"])


@pytest.mark.parametrize("fmt", ["tfrecord", "array_record"])
def test_two_processes(fmt, tfrecord_dir, array_record_dir):
  data_dir = tfrecord_dir if fmt == "tfrecord" else array_record_dir
  single = take(_train(data_dir, gb=4, seed=9), 4)
  p0 = take(_train(data_dir, gb=4, seed=9, p=0, pc=2), 4)
  p1 = take(_train(data_dir, gb=4, seed=9, p=1, pc=2), 4)
  for s, a, b in zip(single, p0, p1):
    assert a["image"].shape == (2, 32, 32, 3)
    np.testing.assert_array_equal(np.concatenate([a["image"], b["image"]]), s["image"])


@pytest.mark.parametrize("fmt", ["tfrecord", "array_record"])
def test_eval_once_with_mask(fmt, tfrecord_dir, array_record_dir):
  data_dir = tfrecord_dir if fmt == "tfrecord" else array_record_dir
  cfg = _cfg(data_dir)
  assert pipeline.count_eval_examples(cfg) == N_VAL
  seen = []
  for p in range(2):
    batches = list(pipeline.create_eval_iterator(cfg, global_batch_size=4, process_index=p,
                                                 process_count=2))
    assert len(batches) == 2  # ceil(7 / 4), on every process
    for b in batches:
      assert b["image"].shape == (2, 32, 32, 3)
      real = b["mask"] == 1.0
      np.testing.assert_array_equal(b["image"][~real], 0.0)
      seen.extend(ids_of(b["image"][real]))
  assert sorted(seen) == list(range(N_TRAIN, N_TRAIN + N_VAL))


def test_missing_dataset_names_dataset_and_data_dir(tmp_path):
  with pytest.raises(FileNotFoundError) as e:
    _train(str(tmp_path), name="no_such_dataset_xyz")
  assert "no_such_dataset_xyz" in str(e.value) and str(tmp_path) in str(e.value)
  # Registered (this module defines it) but not prepared there: no download attempt.
  with pytest.raises(FileNotFoundError, match="not prepared") as e:
    _train(str(tmp_path))
  assert "vqgan_test_shapes" in str(e.value) and str(tmp_path) in str(e.value)


def test_bad_image_key_and_split(tfrecord_dir):
  with pytest.raises(ValueError, match=r"image_key='label'.*\['image'\]"):
    _train(tfrecord_dir, image_key="label")
  with pytest.raises(ValueError, match="no split 'test'"):
    _train(tfrecord_dir, train_split="test")
