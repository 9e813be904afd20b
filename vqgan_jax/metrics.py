"""Reconstruction and codebook metrics (numpy + jax.numpy only).

  `psnr(x, y)`       per-image PSNR of NHWC batches in [-1, 1] (the trainer's eval number).
  `ssim(x, y)`       per-image SSIM with Wang et al. (2004)'s settings, jit-able; equal
                     to scikit-image's `structural_similarity(..., channel_axis=-1,
                     gaussian_weights=True, sigma=1.5, use_sample_covariance=False)`.
  `code_usage(c)`    share of codebook entries used at least once in a histogram.
  `perplexity(c)`    exp(entropy) of a code histogram: the effective number of codes.
"""

import math

import jax.numpy as jnp
import numpy as np

# Wang et al. (2004): Gaussian window sigma 1.5, K1 = 0.01, K2 = 0.03. scikit-image
# truncates the Gaussian at 3.5 sigma: radius int(3.5 * 1.5 + 0.5) = 5, an 11-tap window.
SSIM_SIGMA = 1.5
SSIM_K1, SSIM_K2 = 0.01, 0.03
_SSIM_TRUNCATE = 3.5


def psnr(x, y, data_range: float = 2.0):
  """Peak signal-to-noise ratio per image, in dB.

  Args:
    x, y: float32[B, H, W, C], values in [-1, 1] for the default `data_range`.
    data_range: max - min of the value range (the peak).
  Returns:
    float32[B]: 10 * log10(data_range^2 / mse), mse over H, W, C, clamped below at
    1e-10 * data_range^2 (so identical images give 100 dB rather than inf).
  """
  x, y = jnp.asarray(x, jnp.float32), jnp.asarray(y, jnp.float32)
  mse = jnp.mean(((x - y) / data_range) ** 2, axis=(1, 2, 3))
  return 10.0 * jnp.log10(1.0 / jnp.maximum(mse, 1e-10))


def _gaussian_taps(sigma: float) -> np.ndarray:
  """float64[2r + 1]: scipy.ndimage's normalised Gaussian, r = int(3.5 * sigma + 0.5)."""
  r = int(_SSIM_TRUNCATE * sigma + 0.5)
  t = np.exp(-0.5 * (np.arange(-r, r + 1) / sigma) ** 2)
  return t / t.sum()


def _filter_valid(a, taps):
  """Separable 'valid' Gaussian filter of float32[B, H, W, C] -> [B, H-2r, W-2r, C].

  Written as a sum of shifted slices (plain float32 multiply-adds, no convolution, so
  no reduced-precision matmul units on accelerators).
  """
  n = len(taps)
  h, w = a.shape[1] - n + 1, a.shape[2] - n + 1
  a = sum(float(t) * a[:, k:k + h] for k, t in enumerate(taps))
  return sum(float(t) * a[:, :, k:k + w] for k, t in enumerate(taps))


def ssim(x, y, data_range: float = 2.0, sigma: float = SSIM_SIGMA):
  """Structural similarity per image (mean over pixels and channels), jit-able.

  Matches `skimage.metrics.structural_similarity(a, b, channel_axis=-1,
  data_range=data_range, gaussian_weights=True, sigma=sigma,
  use_sample_covariance=False)`: Gaussian-weighted local means, population
  (co)variances, C1 = (0.01 R)^2, C2 = (0.03 R)^2, and the SSIM map averaged over
  the pixels at least r = int(3.5 sigma + 0.5) from every border. scikit-image
  filters with mode 'reflect' and then drops those r-pixel borders, so the kept
  pixels never see the padding: a 'valid' filter gives the same numbers.

  Args:
    x, y: float32[B, H, W, C] in [-1, 1] for the default `data_range`; C = 1 or 3
      (each channel separately, then averaged); H, W >= 2r + 1 (11 for sigma 1.5).
    data_range: max - min of the value range.
    sigma: Gaussian window's standard deviation (static).
  Returns:
    float32[B].
  """
  x, y = jnp.asarray(x, jnp.float32), jnp.asarray(y, jnp.float32)
  if x.shape != y.shape or x.ndim != 4:
    raise ValueError(f"ssim: expected two float[B, H, W, C] of one shape, got {x.shape} "
                     f"and {y.shape}")
  taps = _gaussian_taps(sigma)
  if min(x.shape[1:3]) < len(taps):
    raise ValueError(f"ssim: images of {x.shape[1]}x{x.shape[2]} are smaller than the "
                     f"{len(taps)}x{len(taps)} window (sigma {sigma})")
  c1 = (SSIM_K1 * data_range) ** 2
  c2 = (SSIM_K2 * data_range) ** 2
  # Variances from data centred on each image's channel mean: the same numbers
  # mathematically, less float32 cancellation in E[x^2] - E[x]^2.
  mx = jnp.mean(x, axis=(1, 2), keepdims=True)
  my = jnp.mean(y, axis=(1, 2), keepdims=True)
  xc, yc = x - mx, y - my
  ux, uy = _filter_valid(xc, taps), _filter_valid(yc, taps)
  vx = _filter_valid(xc * xc, taps) - ux * ux
  vy = _filter_valid(yc * yc, taps) - uy * uy
  vxy = _filter_valid(xc * yc, taps) - ux * uy
  ux, uy = ux + mx, uy + my
  s = ((2 * ux * uy + c1) * (2 * vxy + c2)) / ((ux ** 2 + uy ** 2 + c1) * (vx + vy + c2))
  return jnp.mean(s, axis=(1, 2, 3))


def _histogram(counts) -> np.ndarray:
  """float64[K] of non-negative counts, or ValueError naming what is wrong."""
  c = np.asarray(counts, np.float64).reshape(-1)
  if c.size == 0:
    raise ValueError("code histogram is empty (expected one count per codebook entry)")
  if (c < 0).any() or not np.isfinite(c).all():
    raise ValueError("code histogram has negative or non-finite counts")
  return c


def code_usage(counts) -> float:
  """Share of codebook entries used: counts int/float[K] -> #(count > 0) / K in [0, 1]."""
  c = _histogram(counts)
  return float(np.count_nonzero(c) / c.size)


def perplexity(counts) -> float:
  """exp(entropy) of the normalised histogram counts int/float[K] (0 log 0 = 0).

  1 when a single code is used, k when k codes are used equally often; 0.0 for an
  all-zero histogram (nothing counted yet).
  """
  c = _histogram(counts)
  total = c.sum()
  if total == 0:
    return 0.0
  p = c[c > 0] / total
  return float(math.exp(-np.sum(p * np.log(p))))
