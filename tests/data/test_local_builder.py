"""Image folders/lists as TFDS datasets: text lists, corrupt files, modes, reuse.

Folder listing itself (recursion, links, CLI arguments) is tested in tests/test_images.py.
"""

import logging
import os

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from data_helpers import id_image, ids_of, make_data_config, write_id_images
from vqgan_jax import images as image_files
from vqgan_jax.data import local_builder, pipeline


def _eval_images(images_path, workdir, crop_size=8):
  """All eval images of `images_path` in stored order: float32[N, S, S, 3]."""
  cfg = make_data_config(train_images=images_path, val_images=images_path, crop_size=crop_size)
  batches = list(pipeline.create_eval_iterator(cfg, global_batch_size=4, workdir=workdir))
  images = np.concatenate([b["image"] for b in batches])
  mask = np.concatenate([b["mask"] for b in batches])
  return images[mask == 1]


def _uint8(images):
  return np.round((images + 1.0) * 127.5).astype(np.int64)


def test_text_list_with_relative_paths(tmp_path):
  paths = write_id_images(tmp_path / "imgs", 4, subdirs=False)
  (tmp_path / "lists" / "more").mkdir(parents=True)
  Image.fromarray(id_image(5, 40, 40)).save(tmp_path / "lists" / "more" / "five.png")
  listing = tmp_path / "lists" / "train.txt"
  listing.write_text("\n".join([
      "# taming-style list: one path per line",
      "../imgs/img_02.png",  # relative to the list's folder
      "more/five.png",
      "",
      paths[0],  # absolute
      "../imgs/img_03.png",
  ]) + "\n")
  files = image_files.list_images(str(listing))
  assert files == [paths[2], str(tmp_path / "lists" / "more" / "five.png"), paths[0], paths[3]]
  images = _eval_images(str(listing), str(tmp_path / "wd"))
  assert list(ids_of(images)) == [2, 5, 0, 3]  # listed order is kept


def test_corrupt_files_are_skipped_with_one_warning_each(tmp_path, caplog):
  folder = tmp_path / "imgs"
  write_id_images(folder, 3, subdirs=False)
  Image.fromarray(id_image(9, 64, 64)).save(folder / "trunc.jpg", quality=95)
  data = (folder / "trunc.jpg").read_bytes()
  (folder / "trunc.jpg").write_bytes(data[:len(data) // 2])
  (folder / "noise.png").write_bytes(np.random.default_rng(0).bytes(500))
  with caplog.at_level(logging.WARNING):
    prepared = local_builder.prepare_local_images(str(folder), str(tmp_path / "data"))
  assert prepared.num_examples == 3 and prepared.num_skipped == 2
  assert sorted(os.path.basename(f) for f in prepared.skipped) == ["noise.png", "trunc.jpg"]
  for name in ["noise.png", "trunc.jpg"]:
    lines = [r.getMessage() for r in caplog.records
             if r.levelno == logging.WARNING and name in r.getMessage()]
    assert len(lines) == 1 and "Skipping unreadable image" in lines[0], lines
    assert len(lines[0].splitlines()) == 1
  # Reused as is (no new per-file warnings), and the skip count is remembered.
  caplog.clear()
  with caplog.at_level(logging.WARNING):
    again = local_builder.prepare_local_images(str(folder), str(tmp_path / "data"))
  assert again.num_skipped == 2 and again.builder.data_dir == prepared.builder.data_dir
  assert not [r for r in caplog.records if "Skipping" in r.getMessage()]
  b = next(pipeline.create_train_iterator(make_data_config(train_images=str(folder)),
                                          global_batch_size=3, seed=0,
                                          workdir=str(tmp_path)))
  assert sorted(ids_of(b["image"])) == [0, 1, 2]


def _save_modes(folder):
  """One constant 8x8 image per mode; returns {file name: expected RGB}."""
  folder.mkdir()
  size = (8, 8)
  expected = {}

  def save(name, img, rgb, **kw):
    img.save(folder / name, **kw)
    expected[name] = rgb

  save("a_gray.png", Image.new("L", size, 100), (100, 100, 100))
  save("b_la.png", Image.new("LA", size, (0, 128)), (127, 127, 127))  # on white
  save("c_rgba_clear.png", Image.new("RGBA", size, (200, 10, 10, 0)), (255, 255, 255))
  save("d_rgba_opaque.png", Image.new("RGBA", size, (0, 0, 255, 255)), (0, 0, 255))
  pal = Image.new("P", size, 3)
  pal.putpalette([0, 0, 0] * 3 + [10, 200, 30] + [0, 0, 0] * 252)
  save("e_palette.png", pal, (10, 200, 30))
  save("f_palette_transparent.png", pal.copy(), (255, 255, 255), transparency=3)
  save("g_cmyk.tif", Image.new("CMYK", size, (0, 255, 0, 0)), (255, 0, 255))
  save("h_cmyk.jpg", Image.new("CMYK", size, (0, 0, 0, 0)), (255, 255, 255), quality=100)
  save("i_gray16.png", Image.fromarray(np.full((8, 8), 257 * 77, np.uint16)), (77, 77, 77))
  rgb16 = np.broadcast_to(np.array([10, 20, 30], np.uint16) * 257, (8, 8, 3))
  (folder / "j_rgb16.png").write_bytes(tf.io.encode_png(tf.constant(rgb16)).numpy())
  expected["j_rgb16.png"] = (10, 20, 30)
  save("k_rgb.bmp", Image.new("RGB", size, (1, 2, 3)), (1, 2, 3))
  save("l_rgb.webp", Image.new("RGB", size, (40, 50, 60)), (40, 50, 60), lossless=True)
  save("m_pal.gif", pal.copy(), (10, 200, 30))
  save("n_rgb.tif", Image.new("RGB", size, (7, 8, 9)), (7, 8, 9))
  return expected


def test_image_modes_become_rgb_uint8(tmp_path):
  expected = _save_modes(tmp_path / "modes")
  images = _uint8(_eval_images(str(tmp_path / "modes"), str(tmp_path / "wd")))
  assert images.shape == (len(expected), 8, 8, 3)
  for img, (name, rgb) in zip(images, sorted(expected.items())):
    tol = 3 if name.endswith(".jpg") else 1
    assert (np.abs(img - np.array(rgb)) <= tol).all(), (name, img[0, 0], rgb)


def test_load_image_bytes_keeps_8bit_rgb_jpeg_and_png(tmp_path):
  Image.new("RGB", (5, 4), (1, 2, 3)).save(tmp_path / "a.png")
  Image.new("RGB", (5, 4), (1, 2, 3)).save(tmp_path / "a.jpg")
  Image.new("L", (5, 4), 9).save(tmp_path / "g.png")
  for name in ["a.png", "a.jpg"]:
    data, reason = local_builder.load_image_bytes(str(tmp_path / name))
    assert data == (tmp_path / name).read_bytes() and reason == ""
  data, _ = local_builder.load_image_bytes(str(tmp_path / "g.png"))
  assert data != (tmp_path / "g.png").read_bytes()
  assert Image.open(tmp_path / "g.png").mode == "L"
  data, reason = local_builder.load_image_bytes(str(tmp_path / "missing.png"))
  assert data is None and "FileNotFoundError" in reason


def test_changed_folder_is_prepared_again_unchanged_is_reused(tmp_path, monkeypatch):
  folder, data_dir = tmp_path / "imgs", str(tmp_path / "data")
  paths = write_id_images(folder, 3, subdirs=False)
  first = local_builder.prepare_local_images(str(folder), data_dir)
  assert first.num_examples == 3

  # Unchanged: reused without reading a single image.
  def fail(path):
    raise AssertionError(f"re-read {path}")
  with monkeypatch.context() as m:
    m.setattr(local_builder, "load_image_bytes", fail)
    same = local_builder.prepare_local_images(str(folder), data_dir)
  assert same.builder.data_dir == first.builder.data_dir and same.num_examples == 3

  Image.fromarray(id_image(3, 40, 40)).save(folder / "img_03.png")
  added = local_builder.prepare_local_images(str(folder), data_dir)
  assert added.num_examples == 4 and added.builder.data_dir != first.builder.data_dir

  Image.fromarray(id_image(7, 40, 40)).save(paths[0])  # same name, new content
  st = os.stat(paths[0])
  os.utime(paths[0], ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
  changed = local_builder.prepare_local_images(str(folder), data_dir)
  assert changed.builder.data_dir not in (first.builder.data_dir, added.builder.data_dir)
  ids = ids_of(_eval_images(str(folder), str(tmp_path), crop_size=32))
  assert sorted(ids) == [1, 2, 3, 7]


def test_folder_without_images(tmp_path):
  (tmp_path / "empty").mkdir()
  with pytest.raises(ValueError, match="No images in"):
    local_builder.prepare_local_images(str(tmp_path / "empty"), str(tmp_path / "data"))
  (tmp_path / "bad").mkdir()
  (tmp_path / "bad" / "x.png").write_bytes(b"not a png")
  with pytest.raises(ValueError, match="None of the 1 images"):
    local_builder.prepare_local_images(str(tmp_path / "bad"), str(tmp_path / "data"))
