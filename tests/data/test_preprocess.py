"""Preprocessing ops: resize arithmetic, crops keyed by (seed, position), value range."""

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from vqgan_jax.data import preprocess as pp


@pytest.mark.parametrize("hw,size", [((10, 25), 4), ((25, 10), 4), ((3, 5), 4), ((4, 5), 2),
                                     ((4, 7), 2), ((4, 6), 2), ((8, 8), 8), ((9, 300), 32)])
def test_smallest_side_resize_shape(hw, size):
  out = pp.resize_smallest_side(tf.zeros(hw + (3,), tf.uint8), size)
  short = min(hw)
  expected = tuple(round(d * size / short) for d in hw)  # Python rounds ties to even
  assert tuple(out.shape[:2]) == expected and min(out.shape[:2]) == size
  assert out.dtype == tf.uint8


def test_resize_is_identity_when_short_side_fits():
  img = np.random.default_rng(0).integers(0, 256, (16, 23, 3), dtype=np.uint8)
  np.testing.assert_array_equal(pp.resize_smallest_side(tf.constant(img), 16).numpy(), img)


def test_downscale_by_two_is_a_box_like_triangle_filter():
  """Halving with antialias: output = [1, 3, 3, 1] / 8 over each input pair's neighbours."""
  row = np.array([0, 0, 80, 80, 160, 160, 240, 240], np.float64)
  img = np.broadcast_to(row[None, :, None], (8, 8, 3)).astype(np.uint8)
  out = pp.resize_smallest_side(tf.constant(img), 4).numpy()[0, :, 0]
  padded = np.concatenate([[row[0]], row, [row[-1]]])  # edges renormalise like clamping here
  ref = [np.dot([1, 3, 3, 1], padded[2 * i:2 * i + 4]) / 8 for i in range(4)]
  np.testing.assert_allclose(out, np.round(ref), atol=1)


def test_resize_matches_pil_bilinear_when_shrinking():
  rng = np.random.default_rng(3)
  img = np.asarray(Image.fromarray(rng.integers(0, 256, (12, 18, 3), dtype=np.uint8)).resize(
      (54, 36), Image.BILINEAR))
  ours = pp.resize_smallest_side(tf.constant(img), 12).numpy().astype(int)
  ref = np.asarray(Image.fromarray(img).resize((18, 12), Image.BILINEAR)).astype(int)
  assert np.abs(ours - ref).max() <= 2 and np.abs(ours - ref).mean() < 0.5


def test_centre_crop_offsets():
  img = np.arange(7 * 10 * 3).reshape(7, 10, 3).astype(np.uint8)
  np.testing.assert_array_equal(pp.center_crop(tf.constant(img), 4).numpy(), img[1:5, 3:7])


def test_random_crop_is_a_function_of_seed_and_position():
  img = tf.constant(np.random.default_rng(1).integers(0, 256, (20, 30, 3), dtype=np.uint8))

  def crop(seed, position, flip=False):
    return pp.random_crop_flip(img, 8, seed, tf.constant(position, tf.int64), flip).numpy()

  np.testing.assert_array_equal(crop(0, 5), crop(0, 5))
  assert not np.array_equal(crop(0, 5), crop(1, 5))
  crops = {crop(0, q).tobytes() for q in range(10)}
  assert len(crops) > 5
  # Offsets are uniform over the whole valid range: with pixels holding their own
  # coordinates, each crop's corner tells its (top, left).
  rows, cols = np.meshgrid(np.arange(20), np.arange(30), indexing="ij")
  coords = tf.constant(np.stack([rows, cols, rows], -1).astype(np.uint8))
  corners = next(tf.data.Dataset.range(400).map(
      lambda q: pp.random_crop_flip(coords, 8, 2, q, False)[0, 0, :2]).batch(400)
      .as_numpy_iterator())
  assert set(corners[:, 0]) == set(range(13)) and set(corners[:, 1]) == set(range(23))
  # The flip decision does not move the crop.
  for q in range(10):
    a, b = crop(3, q), crop(3, q, flip=True)
    assert np.array_equal(a, b) or np.array_equal(a, b[:, ::-1])


def test_unit_range_and_preprocess_of_encoded_bytes():
  np.testing.assert_allclose(pp.to_unit_range(tf.constant([0, 255], tf.uint8)).numpy(),
                             [-1.0, 1.0])
  img = np.full((10, 14, 3), 51, np.uint8)
  encoded = tf.io.encode_png(tf.constant(img))
  train = pp.preprocess_train(encoded, tf.constant(0, tf.int64), seed=0, crop_size=6, flip=True)
  evaluation = pp.preprocess_eval(encoded, crop_size=6)
  for out in (train, evaluation):
    assert out.shape == (6, 6, 3) and out.dtype == tf.float32
    np.testing.assert_allclose(out.numpy(), 51 / 127.5 - 1.0, atol=1e-6)
  gray = tf.io.encode_png(tf.constant(np.full((6, 6, 1), 200, np.uint8)))
  assert pp.decode_rgb(gray).shape == (6, 6, 3)
