"""vqgan_jax.metrics: SSIM against scikit-image, PSNR and codebook statistics in closed form."""

import math

import jax
import numpy as np
import pytest
from skimage.metrics import structural_similarity

from vqgan_jax import metrics


def _skimage_ssim(x, y, data_range=2.0):
  """float64[B]: scikit-image's SSIM with Wang et al.'s settings, image by image."""
  return np.array([structural_similarity(
      a.astype(np.float64), b.astype(np.float64), channel_axis=-1, data_range=data_range,
      gaussian_weights=True, sigma=1.5, use_sample_covariance=False) for a, b in zip(x, y)])


def _structured(shape):
  """float32[B, H, W, C] in [-1, 1]: smooth waves, a step edge and a ramp per image."""
  b, h, w, c = shape
  yy, xx = np.mgrid[:h, :w].astype(np.float64)
  out = np.empty(shape, np.float64)
  for i in range(b):
    for ch in range(c):
      wave = np.sin(xx / (3.0 + i + ch)) * np.cos(yy / (5.0 + ch))
      edge = np.where(xx > w / 2 + i, 0.5, -0.5)
      out[i, ..., ch] = 0.5 * wave + 0.3 * edge + 0.2 * (yy / h - 0.5)
  return np.clip(out, -1, 1).astype(np.float32)


@pytest.mark.parametrize("shape", [(2, 11, 11, 3), (2, 32, 32, 3), (3, 24, 40, 1),
                                   (1, 67, 29, 3), (2, 48, 16, 1)])
def test_ssim_equals_skimage(shape):
  rng = np.random.default_rng(sum(shape))
  x = rng.uniform(-1, 1, shape).astype(np.float32)
  noisy = np.clip(x + rng.normal(0, 0.3, shape), -1, 1).astype(np.float32)
  s = _structured(shape)
  blurred = (0.5 * s + 0.25 * np.roll(s, 1, axis=1) + 0.25 * np.roll(s, 1, axis=2))
  darker = np.clip(0.7 * s - 0.2, -1, 1).astype(np.float32)
  ssim = jax.jit(metrics.ssim)
  for a, b in [(x, noisy), (s, blurred.astype(np.float32)), (s, darker), (x, s)]:
    got = np.asarray(ssim(a, b))
    assert got.shape == (shape[0],) and got.dtype == np.float32
    np.testing.assert_allclose(got, _skimage_ssim(a, b), atol=1e-5, rtol=0)
  np.testing.assert_allclose(np.asarray(ssim(s, s)), 1.0, atol=1e-6)
  np.testing.assert_allclose(np.asarray(ssim(x, x)), 1.0, atol=1e-6)


def test_ssim_other_data_range():
  rng = np.random.default_rng(1)
  x = rng.uniform(0, 1, (2, 20, 20, 3)).astype(np.float32)
  y = np.clip(x + rng.normal(0, 0.1, x.shape), 0, 1).astype(np.float32)
  np.testing.assert_allclose(np.asarray(metrics.ssim(x, y, data_range=1.0)),
                             _skimage_ssim(x, y, data_range=1.0), atol=1e-5, rtol=0)


def test_ssim_rejects_images_smaller_than_the_window():
  x = np.zeros((1, 10, 20, 3), np.float32)
  with pytest.raises(ValueError, match="11x11 window"):
    metrics.ssim(x, x)
  with pytest.raises(ValueError, match="one shape"):
    metrics.ssim(x, x[..., :1])


@pytest.mark.parametrize("d", [0.5, 0.1, 2e-3])
def test_psnr_of_a_constant_offset(d):
  x = np.random.default_rng(0).uniform(-0.9, 0.9, (2, 8, 6, 3)).astype(np.float32)
  y = x.copy()
  y[1] += np.float32(d)
  got = np.asarray(jax.jit(metrics.psnr)(x, y))
  # mse over range [-1, 1] = (d / 2)^2  ->  PSNR = -20 log10(d / 2) dB; equal images: 100 dB.
  want = -20.0 * math.log10(d / 2.0)
  assert got.shape == (2,) and got.dtype == np.float32
  np.testing.assert_allclose(got, [100.0, want], rtol=0, atol=2e-3 if d < 0.01 else 1e-4)


def test_psnr_is_the_trainers_eval_number():
  rng = np.random.default_rng(2)
  x = rng.uniform(-1, 1, (3, 8, 8, 3)).astype(np.float32)
  y = rng.uniform(-1, 1, (3, 8, 8, 3)).astype(np.float32)
  mse = np.mean(((x - y) / 2.0) ** 2, axis=(1, 2, 3))
  np.testing.assert_allclose(np.asarray(metrics.psnr(x, y)), 10 * np.log10(1.0 / mse),
                             rtol=1e-6)
  # Same formula with data_range: range 1 on the [0, 1] view of the same images.
  np.testing.assert_allclose(np.asarray(metrics.psnr((x + 1) / 2, (y + 1) / 2, 1.0)),
                             np.asarray(metrics.psnr(x, y)), rtol=1e-5)


def test_code_usage_and_perplexity_closed_forms():
  k = 7
  uniform = np.zeros(64, np.int64)
  uniform[:k] = 13
  assert metrics.perplexity(uniform) == pytest.approx(k, rel=1e-12)
  assert metrics.code_usage(uniform) == pytest.approx(k / 64)
  one = np.zeros(10)
  one[4] = 100
  assert metrics.perplexity(one) == pytest.approx(1.0) and metrics.code_usage(one) == 0.1
  p = np.array([1, 3, 0, 4], np.float64)
  q = p[p > 0] / p.sum()
  assert metrics.perplexity(p) == pytest.approx(math.exp(-np.sum(q * np.log(q))))
  assert metrics.code_usage(p) == 0.75
  assert metrics.perplexity(np.zeros(5)) == 0.0 and metrics.code_usage(np.zeros(5)) == 0.0
  with pytest.raises(ValueError, match="negative"):
    metrics.perplexity([1, -1])
  with pytest.raises(ValueError, match="empty"):
    metrics.code_usage([])
