"""Reconstruction and codebook metrics (numpy + jax.numpy only).

  `psnr(x, y)`       per-image PSNR of NHWC batches in [-1, 1] (the trainer's eval number).
  `ssim(x, y)`       per-image SSIM with Wang et al. (2004)'s settings, jit-able; equal
                     to scikit-image's `structural_similarity(..., channel_axis=-1,
                     gaussian_weights=True, sigma=1.5, use_sample_covariance=False)`.
  `code_usage(c)`    share of codebook entries used at least once in a histogram.
  `perplexity(c)`    exp(entropy) of a code histogram: the effective number of codes.
  `FeatureStats`     streaming float64 mean / covariance of feature rows (FID statistics).
  `frechet_distance` FID of two (mu, sigma) pairs; `save_stats` / `load_stats` in
                     pytorch-fid's .npz layout. `frechet_distance_of_rows`: the same
                     from the feature rows of sets smaller than the dimension (fast).
  `kid`, `inception_score`  KID and IS as torch-fidelity computes them (same seeds).
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


# ---- Fréchet distance between feature statistics (FID) -------------------------------------

class FeatureStats:
  """Running mean and covariance of feature rows, accumulated in float64 on the host.

  Only sums are kept (no rows), so 50,000 Inception features cost two [D] / [D, D]
  arrays. Rows are shifted by the first batch's mean before the outer products, which
  keeps the cancellation in cov = E[xx'] - mu mu' small. `mask` drops padded rows.
  """

  def __init__(self, dim: int):
    self.dim = int(dim)
    self.count = 0
    self._shift = None
    self._sum = np.zeros((self.dim,), np.float64)
    self._outer = np.zeros((self.dim, self.dim), np.float64)
    self._rows = []  # kept while count <= dim: see `rows`

  def update(self, features, mask=None) -> "FeatureStats":
    x = np.asarray(features, np.float64)
    if x.ndim != 2 or x.shape[1] != self.dim:
      raise ValueError(f"FeatureStats: expected features [N, {self.dim}], got {x.shape}")
    if mask is not None:
      x = x[np.asarray(mask).astype(bool)]
    if not x.shape[0]:
      return self
    if self._shift is None:
      self._shift = x.mean(axis=0)
    x = x - self._shift
    self.count += x.shape[0]
    self._sum += x.sum(axis=0)
    self._outer += x.T @ x
    if self._rows is not None:
      self._rows = self._rows + [x] if self.count <= self.dim else None
    return self

  @property
  def rows(self):
    """float64[count, dim] of every row, while there are no more rows than dimensions
    (else None): small sets then get an exact, fast FID (`frechet_distance_of_rows`)."""
    if self._rows is None or not self.count:
      return None
    return self._shift + np.concatenate(self._rows)

  @property
  def mean(self) -> np.ndarray:
    if not self.count:
      raise ValueError("FeatureStats: no features yet")
    return self._shift + self._sum / self.count

  @property
  def cov(self) -> np.ndarray:
    """The unbiased covariance (numpy.cov's, as pytorch-fid computes it)."""
    if self.count < 2:
      raise ValueError(f"FeatureStats: a covariance needs >= 2 rows, got {self.count}")
    m = self._sum / self.count
    return (self._outer - self.count * np.outer(m, m)) / (self.count - 1)


def save_stats(path: str, mu, sigma) -> None:
  """Statistics in pytorch-fid's .npz layout (`mu`, `sigma`), reusable with it."""
  np.savez(path, mu=np.asarray(mu, np.float64), sigma=np.asarray(sigma, np.float64))


def load_stats(path: str):
  """(mu, sigma) of a pytorch-fid statistics .npz, checked."""
  with np.load(path) as f:
    missing = [k for k in ("mu", "sigma") if k not in f.files]
    if missing:
      raise ValueError(f"{path}: not a FID statistics file (missing {missing}; has "
                       f"{f.files}); expected pytorch-fid's layout with 'mu' and 'sigma'")
    mu, sigma = np.asarray(f["mu"], np.float64), np.asarray(f["sigma"], np.float64)
  if mu.ndim != 1 or sigma.shape != (mu.shape[0], mu.shape[0]):
    raise ValueError(f"{path}: mu {mu.shape} and sigma {sigma.shape} do not match "
                     "(expected [D] and [D, D])")
  return mu, sigma


def _clip_noise(w: np.ndarray) -> np.ndarray:
  """Eigenvalues of a PSD matrix with rounding noise set to 0: those below n * eps *
  max (numpy.linalg.matrix_rank's tolerance). A singular covariance (fewer samples than
  features) has thousands of them, and their square roots would otherwise add up."""
  return np.where(w > w.size * np.finfo(w.dtype).eps * max(w.max(), 0.0), w, 0.0)


def _psd_sqrt(a: np.ndarray) -> np.ndarray:
  w, v = np.linalg.eigh((a + a.T) / 2)
  return (v * np.sqrt(_clip_noise(w))) @ v.T


def frechet_distance(mu1, sigma1, mu2, sigma2) -> float:
  """||mu1 - mu2||^2 + tr(S1 + S2 - 2 (S1 S2)^(1/2)), in float64.

  tr((S1 S2)^(1/2)) is computed as the sum of the square roots of the eigenvalues of
  the symmetric PSD matrix S1^(1/2) S2 S1^(1/2), which has the same eigenvalues as S1 S2:
  always real, and stable for singular covariances (fewer samples than dimensions), where
  pytorch-fid's scipy.linalg.sqrtm needs its eps retry and a check of the imaginary part.
  """
  mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
  s1, s2 = np.asarray(sigma1, np.float64), np.asarray(sigma2, np.float64)
  if mu1.shape != mu2.shape or s1.shape != s2.shape or s1.shape != mu1.shape * 2:
    raise ValueError(f"frechet_distance: shapes mu {mu1.shape}/{mu2.shape}, sigma "
                     f"{s1.shape}/{s2.shape} do not match")
  r = _psd_sqrt(s1)
  m = r @ s2 @ r
  eig = np.linalg.eigvalsh((m + m.T) / 2)
  tr_covmean = np.sqrt(_clip_noise(eig)).sum()
  diff = mu1 - mu2
  return float(diff @ diff + np.trace(s1) + np.trace(s2) - 2.0 * tr_covmean)


def frechet_distance_of_rows(x1, x2) -> float:
  """`frechet_distance` of the means and (unbiased) covariances of two sets of rows,
  computed without any d x d matrix: with centred rows A1, A2, tr((S1 S2)^(1/2)) is the
  sum of the singular values of A1 A2^T / sqrt((n1 - 1)(n2 - 1)) (the nonzero eigenvalues
  of S1 S2 are those of M M^T, M = A1 A2^T, up to that factor). Exact; O(n1 n2 d), so
  for sets smaller than the feature dimension, where the covariances are singular."""
  x1, x2 = np.asarray(x1, np.float64), np.asarray(x2, np.float64)
  if x1.ndim != 2 or x2.ndim != 2 or x1.shape[1] != x2.shape[1] or min(len(x1), len(x2)) < 2:
    raise ValueError(f"frechet_distance_of_rows: expected [N1, D] and [N2, D] with N >= 2, "
                     f"got {x1.shape}, {x2.shape}")
  n1, n2 = len(x1), len(x2)
  a1, a2 = x1 - x1.mean(axis=0), x2 - x2.mean(axis=0)
  tr_covmean = np.linalg.svd(a1 @ a2.T, compute_uv=False).sum() / math.sqrt((n1 - 1) * (n2 - 1))
  diff = x1.mean(axis=0) - x2.mean(axis=0)
  return float(diff @ diff + (a1 * a1).sum() / (n1 - 1) + (a2 * a2).sum() / (n2 - 1)
               - 2.0 * tr_covmean)


# ---- Kernel Inception Distance and Inception Score (torch-fidelity's definitions) -----------

KID_SUBSETS, KID_SUBSET_SIZE, KID_DEGREE, KID_COEF0 = 100, 1000, 3, 1.0
IS_SPLITS = 10
RNG_SEED = 2020  # torch-fidelity's default seed for KID subsets and the IS shuffle


def _poly_kernel(x, y, degree, gamma, coef0):
  return (x @ y.T * gamma + coef0) ** degree


def _unbiased_mmd2(kxx, kxy, kyy) -> float:
  """The unbiased MMD^2 estimate: off-diagonal means within each set minus twice the
  mean across the sets."""
  m = kxx.shape[0]
  within = (kxx.sum() - np.trace(kxx) + kyy.sum() - np.trace(kyy)) / (m * (m - 1))
  return float(within - 2.0 * kxy.sum() / (m * m))


def kid(features1, features2, subsets: int = KID_SUBSETS, subset_size: int = KID_SUBSET_SIZE,
        degree: int = KID_DEGREE, gamma=None, coef0: float = KID_COEF0, seed: int = RNG_SEED):
  """(mean, std) of the polynomial-kernel MMD^2 over random subsets, as torch-fidelity
  computes KID: `subsets` draws of `subset_size` rows of each set without replacement
  from np.random.RandomState(seed), kernel (x.y * gamma + coef0)^degree with gamma =
  1 / dim, in the features' own precision (float32 features: float32 kernels)."""
  f1, f2 = np.asarray(features1), np.asarray(features2)
  if f1.ndim != 2 or f2.ndim != 2 or f1.shape[1] != f2.shape[1]:
    raise ValueError(f"kid: expected features [N1, D] and [N2, D], got {f1.shape}, {f2.shape}")
  if min(len(f1), len(f2)) < subset_size:
    raise ValueError(f"kid: the subset size {subset_size} exceeds the number of samples "
                     f"({len(f1)}, {len(f2)}); pass a smaller subset_size")
  gamma = 1.0 / f1.shape[1] if gamma is None else gamma
  rng = np.random.RandomState(seed)
  values = np.zeros(subsets)
  for i in range(subsets):
    a = f1[rng.choice(len(f1), subset_size, replace=False)]
    b = f2[rng.choice(len(f2), subset_size, replace=False)]
    values[i] = _unbiased_mmd2(_poly_kernel(a, a, degree, gamma, coef0),
                               _poly_kernel(a, b, degree, gamma, coef0),
                               _poly_kernel(b, b, degree, gamma, coef0))
  return float(values.mean()), float(values.std())


def inception_score(logits, splits: int = IS_SPLITS, shuffle: bool = True,
                    seed: int = RNG_SEED):
  """(mean, std) of exp(E_x KL(p(y|x) || p(y))) over `splits` chunks of the (shuffled by
  np.random.RandomState(seed)) rows of `logits` [N, classes], in float64, as
  torch-fidelity computes the Inception Score."""
  z = np.asarray(logits, np.float64)
  if z.ndim != 2:
    raise ValueError(f"inception_score: expected logits [N, classes], got {z.shape}")
  n = z.shape[0]
  if n < splits:
    raise ValueError(f"inception_score: {n} samples cannot make {splits} splits")
  if shuffle:
    z = z[np.random.RandomState(seed).permutation(n)]
  log_p = z - np.logaddexp.reduce(z, axis=1, keepdims=True)
  p = np.exp(log_p)
  scores = []
  for i in range(splits):
    lo, hi = i * n // splits, (i + 1) * n // splits
    q = p[lo:hi].mean(axis=0, keepdims=True)
    kl = (p[lo:hi] * (log_p[lo:hi] - np.log(q))).sum(axis=1).mean()
    scores.append(math.exp(kl))
  return float(np.mean(scores)), float(np.std(scores))
