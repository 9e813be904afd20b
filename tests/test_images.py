"""vqgan_jax.images: listing (folders, lists, CLI arguments), modes, conversions, grids."""

import os

import numpy as np
import pytest
from PIL import Image

from vqgan_jax import images
from vqgan_jax.data import local_builder


def _touch(root, rels):
  for rel in rels:
    (root / rel).parent.mkdir(parents=True, exist_ok=True)
    (root / rel).write_bytes(b"")


def test_folder_listing_is_recursive_sorted_and_filtered(tmp_path):
  _touch(tmp_path, ["b/x.PNG", "a/y.jpg", "a/deeper/z.webp", "c.gif", "d.tif", "e.bmp"])
  (tmp_path / "notes.txt").write_text("not an image")
  (tmp_path / "a" / "thumbs.db").write_bytes(b"")
  got = [os.path.relpath(p, tmp_path) for p in images.list_images(str(tmp_path))]
  assert got == ["a/deeper/z.webp", "a/y.jpg", "b/x.PNG", "c.gif", "d.tif", "e.bmp"]


def test_folder_listing_follows_links_once(tmp_path):
  _touch(tmp_path, ["real/a.png", "real/sub/b.png"])
  os.symlink(tmp_path / "real", tmp_path / "real" / "sub" / "loop")  # a cycle
  os.symlink(tmp_path / "real" / "sub", tmp_path / "alias")
  got = images.list_images(str(tmp_path))
  # Each real folder is searched once (under the first path reaching it): no cycle,
  # no duplicates.
  assert sorted(os.path.realpath(p) for p in got) == [
      str(tmp_path / "real" / "a.png"), str(tmp_path / "real" / "sub" / "b.png")]
  assert got == sorted(got)


def test_cli_and_dataset_listing_both_see_nested_images(tmp_path):
  _touch(tmp_path, ["top.png", "sub/nested.jpg", "sub/deeper/deep.tiff"])
  expected = sorted(str(tmp_path / r) for r in
                    ["top.png", "sub/nested.jpg", "sub/deeper/deep.tiff"])
  assert images.expand_image_args([str(tmp_path)]) == expected
  assert local_builder.list_images(str(tmp_path)) == expected
  assert local_builder.list_images is images.list_images  # one recursion rule


def test_text_list_relative_to_its_folder(tmp_path):
  _touch(tmp_path, ["imgs/a.png", "lists/more/b.png"])
  listing = tmp_path / "lists" / "train.txt"
  listing.write_text("# comment\n../imgs/a.png\n\nmore/b.png\n"
                     f"{tmp_path / 'imgs' / 'a.png'}\n")
  want = [str(tmp_path / "imgs/a.png"), str(tmp_path / "lists/more/b.png"),
          str(tmp_path / "imgs/a.png")]
  assert images.list_images(str(listing)) == want
  assert images.expand_image_args([str(listing)]) == want


def test_expand_image_args_keeps_files_and_argument_order(tmp_path):
  _touch(tmp_path, ["z.png", "dir/b.png", "dir/a.png", "odd.name"])
  got = images.expand_image_args([str(tmp_path / "z.png"), str(tmp_path / "dir"),
                                  str(tmp_path / "odd.name")])
  assert got == [str(tmp_path / "z.png"), str(tmp_path / "dir/a.png"),
                 str(tmp_path / "dir/b.png"), str(tmp_path / "odd.name")]


def test_expand_image_args_errors_name_the_input(tmp_path):
  missing = str(tmp_path / "nope")
  with pytest.raises(FileNotFoundError, match="nope"):
    images.expand_image_args([missing])
  (tmp_path / "empty" / "sub").mkdir(parents=True)
  (tmp_path / "empty" / "sub" / "readme.md").write_text("x")
  with pytest.raises(FileNotFoundError, match="empty"):
    images.expand_image_args([str(tmp_path / "empty")])
  (tmp_path / "blank.txt").write_text("# nothing\n\n")
  with pytest.raises(FileNotFoundError, match="blank.txt"):
    images.expand_image_args([str(tmp_path / "blank.txt")])
  with pytest.raises(FileNotFoundError):
    images.expand_image_args([])


def test_to_uint8_to_float_round_trip():
  u = np.arange(256, dtype=np.uint8)
  x = images.to_float(u)
  assert x.dtype == np.float32 and x[0] == -1.0 and x[-1] == 1.0
  np.testing.assert_array_equal(images.to_uint8(x), u)
  np.testing.assert_array_equal(images.to_uint8(np.array([-3.0, 0.0, 7.0])), [0, 128, 255])


def test_image_grid_shape_and_grey_to_rgb():
  rng = np.random.default_rng(0)
  a = rng.uniform(-1, 1, (3, 4, 5, 3)).astype(np.float32)
  b = rng.uniform(-1, 1, (3, 4, 5, 3)).astype(np.float32)
  grid = images.image_grid([a, b])
  assert grid.shape == (3 * 4, 2 * 5, 3) and grid.dtype == np.uint8
  np.testing.assert_array_equal(grid[4:8, 5:], images.to_uint8(b[1]))  # row 1, column 1
  grey = images.image_grid([a[..., :1], b[..., :1], a[..., :1]])
  assert grey.shape == (12, 15, 3)
  np.testing.assert_array_equal(grey[..., 0], grey[..., 2])
  np.testing.assert_array_equal(grey[:4, :5, 1], images.to_uint8(a[0, ..., 0]))


def test_save_png_creates_folders(tmp_path):
  img = np.random.default_rng(0).integers(0, 256, (6, 7, 3), dtype=np.uint8)
  path = images.save_png(str(tmp_path / "a" / "b" / "x.png"), img)
  np.testing.assert_array_equal(np.asarray(Image.open(path)), img)
  with pytest.raises(ValueError, match="uint8"):
    images.save_png(str(tmp_path / "f.png"), img.astype(np.float32))


def _mode_files(folder):
  """Files in modes that need converting; returns {name: expected RGB (the dataset rules)}."""
  folder.mkdir()
  size = (16, 12)
  pal = Image.new("P", size, 3)
  pal.putpalette([0, 0, 0] * 3 + [10, 200, 30] + [0, 0, 0] * 252)
  pal.save(folder / "palette.png")
  pal.save(folder / "palette_transparent.png", transparency=3)
  Image.new("RGBA", size, (200, 10, 10, 0)).save(folder / "rgba_clear.png")
  Image.new("RGBA", size, (0, 0, 255, 255)).save(folder / "rgba_opaque.png")
  Image.new("LA", size, (0, 128)).save(folder / "la.png")
  Image.fromarray(np.full((12, 16), 257 * 77 + 100, np.uint16)).save(folder / "gray16.png")
  Image.new("L", size, 100).save(folder / "gray.png")
  return {"palette.png": (10, 200, 30), "palette_transparent.png": (255, 255, 255),
          "rgba_clear.png": (255, 255, 255), "rgba_opaque.png": (0, 0, 255),
          "la.png": (127, 127, 127), "gray16.png": (77, 77, 77), "gray.png": (100, 100, 100)}


def test_read_and_load_image_follow_the_dataset_rules(tmp_path):
  expected = _mode_files(tmp_path / "modes")
  for name, rgb in expected.items():
    path = str(tmp_path / "modes" / name)
    got = images.read_image(path)
    assert got.shape == (12, 16, 3) and got.dtype == np.uint8
    assert (got == np.array(rgb, np.uint8)).all(), (name, got[0, 0], rgb)
    # The bytes the dataset stores decode to the same pixels.
    data, reason = local_builder.load_image_bytes(path)
    assert reason == ""
    np.testing.assert_array_equal(images.read_image(_write(tmp_path, name, data)), got)
    # load_image: constant images stay constant through Lanczos resize and crop.
    x = images.load_image(path, 8, 4)
    assert x.shape == (8, 8, 3) and x.dtype == np.float32
    np.testing.assert_array_equal(images.to_uint8(x), np.broadcast_to(got[:8, :8], (8, 8, 3)))
    x = images.load_image(path, 8, 5, crop=False)
    assert x.shape == (10, 15, 3)
    np.testing.assert_array_equal(images.to_uint8(x), got[:10, :15])


def _write(tmp_path, name, data):
  path = tmp_path / f"stored_{name}"
  path.write_bytes(data)
  return str(path)


def test_load_image_is_the_notebook_preprocessing(tmp_path):
  rng = np.random.default_rng(0)
  img = rng.integers(0, 256, (40, 56, 3), dtype=np.uint8)
  Image.fromarray(img).save(tmp_path / "a.png")
  x = images.load_image(str(tmp_path / "a.png"), 32, 8)
  src = Image.fromarray(img).resize((45, 32), Image.LANCZOS).crop((6, 0, 38, 32))
  np.testing.assert_array_equal(images.to_uint8(x), np.asarray(src))
  with pytest.raises(OSError):
    images.read_image(str(tmp_path / "missing.png"))
