"""Training/eval iterators over a local image folder: shapes, order, resume, processes."""

import numpy as np
import pytest
from PIL import Image

from data_helpers import ids_of, make_data_config, take, write_id_images
from vqgan_jax.data import pipeline

N = 10  # images in the shared folder


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
  root = tmp_path_factory.mktemp("imgs")
  write_id_images(root, N)
  return str(root)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
  return str(tmp_path_factory.mktemp("workdir"))


def _train(folder, workdir, *, gb=4, seed=0, start_step=0, p=0, pc=1, **cfg):
  cfg = make_data_config(train_images=folder, **cfg)
  return pipeline.create_train_iterator(cfg, global_batch_size=gb, seed=seed,
                                        start_step=start_step, process_index=p,
                                        process_count=pc, workdir=workdir)


def test_batches_shape_dtype_range(folder, workdir):
  batches = take(_train(folder, workdir, gb=4), 3)
  for b in batches:
    assert set(b) == {"image"}
    assert b["image"].shape == (4, 32, 32, 3) and b["image"].dtype == np.float32
    assert b["image"].min() >= -1.0 and b["image"].max() <= 1.0
    assert (ids_of(b["image"]) >= 0).all()
  # x / 127.5 - 1 of uint8 values: every value is on the 1/127.5 grid.
  x = (batches[0]["image"] + 1.0) * 127.5
  np.testing.assert_allclose(x, np.round(x), atol=1e-4)


def test_each_epoch_is_a_permutation_and_seed_changes_order(folder, workdir):
  # gb=5 and N=10: steps (0, 1) are epoch 0 and steps (2, 3) epoch 1.
  ids = np.concatenate([ids_of(b["image"]) for b in take(_train(folder, workdir, gb=5), 4)])
  assert sorted(ids[:10]) == list(range(10)) and sorted(ids[10:]) == list(range(10))
  assert list(ids[:10]) != list(ids[10:])
  other = np.concatenate([ids_of(b["image"])
                          for b in take(_train(folder, workdir, gb=5, seed=1), 2)])
  assert sorted(other) == list(range(10)) and list(other) != list(ids[:10])


def test_same_seed_same_stream(folder, workdir):
  a = take(_train(folder, workdir, seed=3), 3)
  b = take(_train(folder, workdir, seed=3), 3)
  for x, y in zip(a, b):
    np.testing.assert_array_equal(x["image"], y["image"])


@pytest.mark.parametrize("k", [1, 2, 5])  # 5 * 4 = 20 = two epochs in
def test_resume_gives_the_uninterrupted_batches(folder, workdir, k):
  full = take(_train(folder, workdir, gb=4, seed=7, flip=True), k + 3)
  resumed = take(_train(folder, workdir, gb=4, seed=7, flip=True, start_step=k), 3)
  for x, y in zip(full[k:], resumed):
    np.testing.assert_array_equal(x["image"], y["image"])


def test_processes_get_disjoint_shares_of_each_global_batch(folder, workdir):
  single = take(_train(folder, workdir, gb=6, seed=2), 4)
  parts = [take(_train(folder, workdir, gb=6, seed=2, p=p, pc=3), 4) for p in range(3)]
  for step in range(4):
    local = [parts[p][step]["image"] for p in range(3)]
    assert all(x.shape == (2, 32, 32, 3) for x in local)
    np.testing.assert_array_equal(np.concatenate(local), single[step]["image"])
  # Epoch 0 (positions 0..9) is spread over the processes, each example once.
  ids = np.concatenate([ids_of(parts[p][s]["image"]) for s in range(2) for p in range(3)])
  assert sorted(ids[:N]) == list(range(N))


def test_flip_mirrors_the_same_crops(folder, workdir):
  plain = take(_train(folder, workdir, seed=4), 3)
  flipped = take(_train(folder, workdir, seed=4, flip=True), 3)
  n_flipped = 0
  for a, b in zip(plain, flipped):
    for x, y in zip(a["image"], b["image"]):
      if np.array_equal(x, y[:, ::-1]) and not np.array_equal(x, y):
        n_flipped += 1
      else:
        np.testing.assert_array_equal(x, y)
  assert 0 < n_flipped < 12


def test_images_smaller_than_the_crop_are_scaled_up(tmp_path):
  write_id_images(tmp_path / "small", 3, size=(9, 11))
  b = next(_train(str(tmp_path / "small"), str(tmp_path / "wd"), gb=3))
  assert b["image"].shape == (3, 32, 32, 3)
  assert sorted(ids_of(b["image"])) == [0, 1, 2]


@pytest.mark.parametrize("gb,pc", [(4, 1), (4, 2), (6, 3)])
def test_eval_covers_every_example_once_with_mask(folder, workdir, gb, pc):
  cfg = make_data_config(train_images=folder, val_images=folder)
  assert pipeline.count_eval_examples(cfg, workdir=workdir) == N
  per_process = [list(pipeline.create_eval_iterator(cfg, global_batch_size=gb,
                                                    process_index=p, process_count=pc,
                                                    workdir=workdir))
                 for p in range(pc)]
  steps = -(-N // gb)
  assert all(len(batches) == steps for batches in per_process)
  seen = []
  for step in range(steps):
    for p in range(pc):
      b = per_process[p][step]
      assert b["image"].shape == (gb // pc, 32, 32, 3) and b["mask"].dtype == np.float32
      real = b["mask"] == 1
      assert set(np.unique(b["mask"])) <= {0.0, 1.0}
      np.testing.assert_array_equal(b["image"][~real], 0.0)
      seen.extend(ids_of(b["image"][real]))
  # Stored order is the sorted file order: d0/img_00, d0/img_02, ..., d1/img_01, ...
  assert seen == list(range(0, N, 2)) + list(range(1, N, 2))


def test_eval_is_centre_crop_of_the_stored_image(tmp_path):
  """Short side == crop: no resampling, so the crop is exactly the centre of the file."""
  rng = np.random.default_rng(0)
  img = rng.integers(0, 256, (32, 50, 3), dtype=np.uint8)
  (tmp_path / "v").mkdir()
  Image.fromarray(img).save(tmp_path / "v" / "a.png")
  cfg = make_data_config(train_images=str(tmp_path / "v"), val_images=str(tmp_path / "v"))
  b = next(pipeline.create_eval_iterator(cfg, global_batch_size=2, workdir=str(tmp_path)))
  np.testing.assert_array_equal(b["mask"], [1.0, 0.0])
  np.testing.assert_allclose(b["image"][0], img[:, 9:41] / 127.5 - 1.0, atol=1e-6)


def test_eval_resized_centre_crop_matches_pil(tmp_path):
  """64x100 -> 32x50 (antialiased bilinear) -> centre 32x32, against PIL's BILINEAR."""
  rng = np.random.default_rng(1)
  img = rng.integers(0, 256, (64, 100, 3), dtype=np.uint8)
  img = np.asarray(Image.fromarray(img).resize((25, 16), Image.NEAREST).resize(
      (100, 64), Image.BILINEAR))  # smooth content, so both filters agree closely
  (tmp_path / "v").mkdir()
  Image.fromarray(img).save(tmp_path / "v" / "a.png")
  cfg = make_data_config(train_images=str(tmp_path / "v"), val_images=str(tmp_path / "v"))
  got = next(pipeline.create_eval_iterator(cfg, global_batch_size=1,
                                           workdir=str(tmp_path)))["image"][0]
  ref = np.asarray(Image.fromarray(img).resize((50, 32), Image.BILINEAR), np.float32)
  ref = ref[:, 9:41] / 127.5 - 1.0
  assert np.abs(got - ref).max() <= 2.01 / 127.5
  assert np.abs(got - ref).mean() < 0.5 / 127.5


def test_global_batch_must_split_evenly(folder, workdir):
  with pytest.raises(ValueError, match="process_count=3"):
    _train(folder, workdir, gb=4, pc=3)
  with pytest.raises(ValueError, match="process_index"):
    _train(folder, workdir, gb=4, p=2, pc=2)


def test_no_eval_source(folder, workdir):
  cfg = make_data_config(train_images=folder)
  assert pipeline.count_eval_examples(cfg, workdir=workdir) == 0
  with pytest.raises(ValueError, match="No validation data"):
    pipeline.create_eval_iterator(cfg, global_batch_size=2, workdir=workdir)


def test_local_images_need_a_prepared_dir(folder):
  with pytest.raises(ValueError, match="data.prepared_dir"):
    _train(folder, None)


_EXIT_SCRIPT = """
import sys
from vqgan_jax.data import pipeline
cfg = pipeline.default_data_config()
cfg.train_images = sys.argv[1]
cfg.crop_size = 16
cfg.prefetch = 64  # keeps tf.data busy in the record reader when the script ends
train = pipeline.create_train_iterator(cfg, global_batch_size=2, seed=0, workdir=sys.argv[2])
next(train)
print("batch ok", flush=True)
"""


def _run_script(script: str, folder: str, tmp_path, timeout: int):
  """Runs `script` (argv: the image folder and a workdir) in a fresh interpreter."""
  import os
  import pathlib
  import subprocess
  import sys
  root = pathlib.Path(pipeline.__file__).resolve().parents[2]
  env = dict(os.environ, PYTHONPATH=str(root), TF_CPP_MIN_LOG_LEVEL="2")
  proc = subprocess.run([sys.executable, "-c", script, folder, str(tmp_path)],
                        cwd=str(tmp_path), env=env, capture_output=True, text=True,
                        timeout=timeout)
  assert proc.returncode == 0, proc.stderr[-2000:]
  return proc.stdout


def test_process_exits_with_live_iterators(folder, tmp_path):
  """tf.data threads running Python must not hang the interpreter's exit.

  Without `pipeline._close_live_iterators` this hangs in about half of the runs.
  """
  assert "batch ok" in _run_script(_EXIT_SCRIPT, folder, tmp_path, timeout=60)


_CLOSE_SCRIPT = """
import sys
from vqgan_jax.data import pipeline
cfg = pipeline.default_data_config()
cfg.train_images = sys.argv[1]
cfg.crop_size = 16
cfg.prefetch = 64  # keeps tf.data busy in the record reader when the iterator is closed
for i in range(8):
  train = pipeline.create_train_iterator(cfg, global_batch_size=32, seed=i, workdir=sys.argv[2])
  next(train)
  train.close()   # what a trainer does when its loop ends (or drops the iterator)
  print("closed", i, flush=True)
"""


def test_closing_a_busy_iterator_returns(folder, tmp_path):
  """Closing an iterator whose tf.data threads are running the Python record reader
  must not deadlock (a trainer hung at the end of its loop before the reader was stopped
  and the iterator drained)."""
  assert "closed 7" in _run_script(_CLOSE_SCRIPT, folder, tmp_path, timeout=120)
