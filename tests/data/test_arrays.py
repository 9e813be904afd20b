"""Field sources and TF-free batches: order shared with the image pipeline.

An `ArraySource` of ids 0..N-1 and a folder of N ID images (stored in id order) must
give the same ids for the same seed and global batch: that is what lets the transformer
stage read code grids in the order the VQGAN stage read images.
"""

import io
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow_datasets as tfds
from PIL import Image

from data_helpers import id_image, ids_of, make_data_config, take, write_id_images
from vqgan_jax.data import arrays, pipeline, sources

N = 10


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
  root = tmp_path_factory.mktemp("id_imgs")
  write_id_images(root, N, subdirs=False)  # sorted file order = id order
  return str(root)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
  return str(tmp_path_factory.mktemp("workdir"))


def _ids_source(n=N):
  """ids int32[n] and a grid int32[n, 2, 3] that encodes the id (grid[i] = 6 i + j)."""
  return arrays.ArraySource({"id": np.arange(n, dtype=np.int32),
                             "grid": np.arange(n * 6, dtype=np.int32).reshape(n, 2, 3)},
                            "ids")


def _ids(batches, key="id"):
  return np.concatenate([b[key] for b in batches])


def _train(source, steps, **kw):
  return take(arrays.train_batches(source, **kw), steps)


def _bytes_ids(encoded):
  """int[k]: the ID of each encoded ID image (object[k] of PNG bytes)."""
  ch0 = [np.asarray(Image.open(io.BytesIO(b)))[0, 0, 0] for b in encoded]
  return (np.asarray(ch0, np.int64) - 8) // 10


def test_order_is_the_epoch_permutation():
  got = _ids(_train(_ids_source(), 7, global_batch_size=4, seed=11))
  q = np.arange(28)
  want = [np.random.default_rng([11, e]).permutation(N)[o] for e, o in zip(q // N, q % N)]
  np.testing.assert_array_equal(got, want)
  b = _train(_ids_source(), 1, global_batch_size=4, seed=11)[0]
  assert b["id"].dtype == np.int32 and b["grid"].shape == (4, 2, 3)
  np.testing.assert_array_equal(b["grid"][:, 0, 0], 6 * b["id"])


@pytest.mark.parametrize("gb,pc", [(4, 1), (4, 2), (6, 3)])
def test_same_order_as_the_image_pipeline(folder, workdir, gb, pc):
  cfg = make_data_config(train_images=folder, flip=True)
  for p in range(pc):
    # 6 steps of 4 or 6 = 24 or 36 positions: more than two epochs of 10.
    images = take(pipeline.create_train_iterator(cfg, global_batch_size=gb, seed=3,
                                                 process_index=p, process_count=pc,
                                                 workdir=workdir), 6)
    codes_ = _train(_ids_source(), 6, global_batch_size=gb, seed=3, process_index=p,
                    process_count=pc)
    np.testing.assert_array_equal(_ids(codes_), np.concatenate([ids_of(b["image"])
                                                                for b in images]))


def test_generic_batches_over_a_random_access_image_source(folder, workdir):
  src = sources.open_images(folder, os.path.join(workdir, "data"))
  assert src.fields == {"image": "image"}
  got = _train(src, 5, global_batch_size=4, seed=8, start_step=2)
  assert got[0]["image"].dtype == object and got[0]["image"].shape == (4,)
  want = _train(_ids_source(), 5, global_batch_size=4, seed=8, start_step=2)
  np.testing.assert_array_equal(np.concatenate([_bytes_ids(b["image"]) for b in got]),
                                _ids(want))
  last = list(arrays.eval_batches(src, global_batch_size=4))[-1]  # 2 real, 2 padding
  np.testing.assert_array_equal(last["mask"], [1, 1, 0, 0])
  assert list(last["image"][2:]) == [b"", b""]
  np.testing.assert_array_equal(_bytes_ids(last["image"][:2]), [8, 9])


@pytest.mark.parametrize("k", [1, 3, 5])  # 5 * 4 = 20: two epochs in
def test_resume_gives_the_uninterrupted_batches(k):
  full = _train(_ids_source(), k + 4, global_batch_size=4, seed=7)
  resumed = _train(_ids_source(), 4, global_batch_size=4, seed=7, start_step=k)
  for x, y in zip(full[k:], resumed):
    assert x.keys() == y.keys()
    for key in x:
      np.testing.assert_array_equal(x[key], y[key])


@pytest.mark.parametrize("pc", [2, 3])
def test_processes_get_disjoint_shares_of_each_global_batch(pc):
  single = _train(_ids_source(), 5, global_batch_size=6, seed=2)
  parts = [_train(_ids_source(), 5, global_batch_size=6, seed=2, process_index=p,
                  process_count=pc) for p in range(pc)]
  for step in range(5):
    local = [parts[p][step] for p in range(pc)]
    assert all(b["id"].shape == (6 // pc,) for b in local)
    for key in ("id", "grid"):
      np.testing.assert_array_equal(np.concatenate([b[key] for b in local]),
                                    single[step][key])


@pytest.mark.parametrize("gb,pc", [(4, 1), (4, 2), (6, 3), (12, 4), (3, 3), (10, 2)])
def test_eval_covers_every_example_once_with_mask(gb, pc):
  per_process = [list(arrays.eval_batches(_ids_source(), global_batch_size=gb,
                                          process_index=p, process_count=pc))
                 for p in range(pc)]
  steps = arrays.num_eval_batches(N, gb)
  assert steps == -(-N // gb) and all(len(b) == steps for b in per_process)
  seen = []
  for step in range(steps):
    for p in range(pc):
      b = per_process[p][step]
      assert set(b) == {"id", "grid", "mask"} and b["mask"].dtype == np.float32
      assert b["id"].shape == (gb // pc,) and b["grid"].shape == (gb // pc, 2, 3)
      assert set(np.unique(b["mask"])) <= {0.0, 1.0}
      real = b["mask"] == 1
      assert real[:real.sum()].all()  # real examples first
      np.testing.assert_array_equal(b["grid"][~real], 0)
      np.testing.assert_array_equal(b["grid"][real][:, 0, 0], 6 * b["id"][real])
      seen.extend(b["id"][real])
  assert seen == list(range(N))


def test_array_source_errors():
  with pytest.raises(ValueError, match=r"different lengths.*'codes': 4.*'label': 3"):
    arrays.ArraySource({"codes": np.zeros((4, 2, 2), np.int32),
                        "label": np.zeros((3,), np.int32)}, "codes")
  with pytest.raises(ValueError, match="'label' is a scalar"):
    arrays.ArraySource({"label": np.int32(3)}, "codes")
  with pytest.raises(ValueError, match="non-empty mapping"):
    arrays.ArraySource({}, "codes")
  with pytest.raises(IndexError, match=r"\[10\] out of range \[0, 10\)"):
    _ids_source().read([1, 10])


def test_batch_argument_errors():
  src = _ids_source()
  with pytest.raises(ValueError, match="process_count=3"):
    arrays.train_batches(src, global_batch_size=4, seed=0, process_count=3)
  with pytest.raises(ValueError, match="process_index=2"):
    arrays.eval_batches(src, global_batch_size=4, process_index=2, process_count=2)
  with pytest.raises(ValueError, match="start_step=-1"):
    arrays.train_batches(src, global_batch_size=4, seed=0, start_step=-1)
  with pytest.raises(ValueError, match="No training examples in empty"):
    arrays.train_batches(arrays.ArraySource({"x": np.zeros((0,))}, "empty"),
                         global_batch_size=2, seed=0)
  with pytest.raises(ValueError, match="field named 'mask'"):
    arrays.eval_batches(arrays.ArraySource({"mask": np.zeros((3,))}, "m"),
                        global_batch_size=2)
  with pytest.raises(TypeError, match="not a random-access source"):
    arrays.train_batches([1, 2, 3], global_batch_size=2, seed=0)


# ---- without TensorFlow ----------------------------------------------------------------

_NO_TF_SCRIPT = """
import importlib.abc, sys
BLOCKED = ("tensorflow", "tensorflow_datasets", "array_record")
class Block(importlib.abc.MetaPathFinder):
  def find_spec(self, name, path, target=None):
    if name.split(".")[0] in BLOCKED:
      raise ImportError("blocked in this test: " + name)
sys.meta_path.insert(0, Block())
import numpy as np
from vqgan_jax.data import arrays, codes
src = arrays.ArraySource({"codes": np.arange(20).reshape(5, 2, 2), "label": np.arange(5)}, "m")
train = arrays.train_batches(src, global_batch_size=2, seed=0)
batches = [next(train) for _ in range(4)]
assert batches[0]["codes"].shape == (2, 2, 2)
ev = list(arrays.eval_batches(src, global_batch_size=2))
assert len(ev) == 3 and ev[-1]["mask"].tolist() == [1.0, 0.0]
mem = arrays.ArraySource({"x": np.arange(3)}, "in memory")
assert next(arrays.train_batches(mem, global_batch_size=3, seed=1))["x"].shape == (3,)
assert not [m for m in sys.modules if m.split(".")[0] in BLOCKED]
print("no tf ok", flush=True)
"""


def test_arrays_and_codes_work_without_tensorflow(tmp_path):
  root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(arrays.__file__))))
  env = dict(os.environ, PYTHONPATH=root)
  proc = subprocess.run([sys.executable, "-c", _NO_TF_SCRIPT, str(tmp_path)], cwd=str(tmp_path),
                        env=env, capture_output=True, text=True, timeout=120)
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert "no tf ok" in proc.stdout


# ---- TFDS datasets read as named (nested) fields ---------------------------------------

class VqganTestFields(tfds.core.GeneratorBasedBuilder):
  """Train: ID images 0..5 with a nested label info/label = i % 3 and a text name."""

  VERSION = tfds.core.Version("1.0.0")

  @tfds.core.utils.classproperty
  @classmethod
  def code_path(cls):  # no checksums file to look for
    return None

  def _info(self):
    return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
        "image": tfds.features.Image(shape=(None, None, 3)),
        "info": {"label": tfds.features.ClassLabel(num_classes=3),
                 "name": tfds.features.Text()}}))

  def _split_generators(self, dl_manager):
    return {"train": self._generate_examples()}

  def _generate_examples(self):
    for i in range(6):
      yield i, {"image": id_image(i, 20, 24), "info": {"label": i % 3, "name": f"n{i}"}}


@pytest.fixture(scope="module", params=["array_record", "tfrecord"])
def fields_dir(request, tmp_path_factory):
  data_dir = str(tmp_path_factory.mktemp(f"tfds_fields_{request.param}"))
  b = VqganTestFields(data_dir=data_dir, file_format=request.param)
  b.download_and_prepare(download_config=tfds.download.DownloadConfig(try_download_gcs=False))
  return data_dir


def test_tfds_fields_nested_paths_and_undecoded_images(fields_dir):
  src = sources.open_tfds("vqgan_test_fields", "train", fields_dir,
                          {"img": "image", "label": "info/label", "name": "info/name"}, 4)
  assert src.fields == {"img": "image", "label": "info/label", "name": "info/name"}
  if isinstance(src, sources.RandomAccessSource):
    got = next(arrays.train_batches(src, global_batch_size=6, seed=1))
    assert got["img"].dtype == object and got["label"].shape == (6,)
  else:
    assert isinstance(src, sources.StreamSource)
    elements = list(src.eval_dataset(6, 6, 0).as_numpy_iterator())
    got = {k: np.array([ex[k] for _, ex in elements], dtype=object if k != "label" else None)
           for k in ("img", "label", "name")}
  ids = _bytes_ids(got["img"])
  assert sorted(ids) == list(range(6))
  np.testing.assert_array_equal(got["label"], ids % 3)
  assert [bytes(n) for n in got["name"]] == [f"n{i}".encode() for i in ids]


def test_tfds_unknown_feature_path_names_the_field(fields_dir):
  with pytest.raises(ValueError, match=r"fields\['label'\]='info/labels' is not a feature"):
    sources.open_tfds("vqgan_test_fields", "train", fields_dir,
                      {"img": "image", "label": "info/labels"}, 4)
  with pytest.raises(ValueError, match=r"image_key='info/label' is not an image feature"):
    sources.open_tfds("vqgan_test_fields", "train", fields_dir, "info/label", 4)
