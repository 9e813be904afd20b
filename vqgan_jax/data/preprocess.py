"""Taming's image preprocessing as TensorFlow ops (run inside tf.data).

taming's `ImagePaths` does: `SmallestMaxSize(size)` (albumentations; bilinear), then
`RandomCrop` (training) or `CenterCrop` (validation), then `x / 127.5 - 1`.
Here:
  - smallest side resized to `crop_size` with `tf.image.resize(method="bilinear",
    antialias=True)` (an area-aware bilinear: a triangle filter widened by the scale when
    shrinking, plain bilinear when growing), the long side to round(long * crop / short)
    (round half to even, as Python's `round`), then rounded back to uint8 like
    albumentations' uint8 output. Images whose smallest side already is `crop_size` are
    not resampled; smaller images are scaled up.
  - random crop offsets and the optional horizontal flip are stateless functions of
    (seed, position): the same example position always gets the same crop, on any host.
  - centre crop at ((h - s) // 2, (w - s) // 2), as albumentations.CenterCrop.
"""

import tensorflow as tf


def decode_rgb(encoded: tf.Tensor) -> tf.Tensor:
  """Encoded JPEG/PNG/BMP/GIF/WebP bytes (scalar tf.string) -> uint8[H, W, 3].

  Grey images are repeated to 3 channels, alpha is dropped, GIFs give their first frame.
  """
  image = tf.io.decode_image(encoded, channels=3, dtype=tf.uint8, expand_animations=False)
  image.set_shape([None, None, 3])
  return image


def _round_half_even_div(num: tf.Tensor, den: tf.Tensor) -> tf.Tensor:
  """round(num / den) with ties to even, for int64 num >= 0, den > 0."""
  q = num // den
  r2 = 2 * (num - q * den)
  up = tf.logical_or(r2 > den, tf.logical_and(r2 == den, q % 2 == 1))
  return q + tf.cast(up, q.dtype)


def resize_smallest_side(image: tf.Tensor, size: int) -> tf.Tensor:
  """uint8[H, W, 3] -> uint8[h, w, 3] with min(h, w) == size (aspect ratio kept)."""
  shape = tf.cast(tf.shape(image), tf.int64)
  h, w = shape[0], shape[1]
  short = tf.minimum(h, w)
  new_h = _round_half_even_div(h * size, short)
  new_w = _round_half_even_div(w * size, short)

  def resize():
    new_size = tf.cast(tf.stack([new_h, new_w]), tf.int32)
    out = tf.image.resize(image, new_size, method="bilinear", antialias=True)
    return tf.cast(tf.clip_by_value(tf.round(out), 0.0, 255.0), tf.uint8)

  return tf.cond(short == size, lambda: image, resize)


def to_unit_range(image: tf.Tensor) -> tf.Tensor:
  """uint8[..., 3] -> float32[..., 3] in [-1, 1] (x / 127.5 - 1)."""
  return tf.cast(image, tf.float32) / 127.5 - 1.0


def center_crop(image: tf.Tensor, size: int) -> tf.Tensor:
  """uint8[h, w, 3] with h, w >= size -> the central uint8[size, size, 3]."""
  shape = tf.shape(image)
  top = (shape[0] - size) // 2
  left = (shape[1] - size) // 2
  return tf.image.crop_to_bounding_box(image, top, left, size, size)


def position_seeds(seed: int, position: tf.Tensor):
  """(top_seed, left_seed, flip_seed), each int64[2], for the example at `position`."""
  base = tf.stack([tf.constant(seed, tf.int64), tf.cast(position, tf.int64)])
  return tuple(tf.random.experimental.stateless_fold_in(base, i, alg="philox")
               for i in range(3))


def random_crop_flip(image: tf.Tensor, size: int, seed: int, position: tf.Tensor,
                     flip: bool) -> tf.Tensor:
  """uint8[h, w, 3] (h, w >= size) -> uint8[size, size, 3], keyed by (seed, position).

  The crop's top/left offsets are uniform over all valid offsets; with `flip`, the crop
  is mirrored left-right with probability 1/2.
  """
  top_seed, left_seed, flip_seed = position_seeds(seed, position)
  shape = tf.shape(image)
  top = tf.random.stateless_uniform([], top_seed, minval=0, maxval=shape[0] - size + 1,
                                    dtype=tf.int32, alg="philox")
  left = tf.random.stateless_uniform([], left_seed, minval=0, maxval=shape[1] - size + 1,
                                     dtype=tf.int32, alg="philox")
  out = tf.image.crop_to_bounding_box(image, top, left, size, size)
  if flip:
    coin = tf.random.stateless_uniform([], flip_seed, alg="philox")
    out = tf.cond(coin < 0.5, lambda: tf.reverse(out, axis=[1]), lambda: out)
  return out


def preprocess_train(encoded: tf.Tensor, position: tf.Tensor, *, seed: int, crop_size: int,
                     flip: bool) -> tf.Tensor:
  """Encoded image bytes at global `position` -> float32[crop, crop, 3] in [-1, 1]."""
  image = resize_smallest_side(decode_rgb(encoded), crop_size)
  return to_unit_range(random_crop_flip(image, crop_size, seed, position, flip))


def preprocess_eval(encoded: tf.Tensor, *, crop_size: int) -> tf.Tensor:
  """Encoded image bytes -> float32[crop, crop, 3] in [-1, 1] (centre crop, no flip)."""
  image = resize_smallest_side(decode_rgb(encoded), crop_size)
  return to_unit_range(center_crop(image, crop_size))
