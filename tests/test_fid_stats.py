"""FID statistics: streaming covariance, the Fréchet distance, pytorch-fid's .npz layout.

The distance is checked against closed forms and against pytorch-fid's own formula
(scipy.linalg.sqrtm of S1 S2, real part, eps retry), written out here as the second path.
"""

import numpy as np
import pytest
from scipy import linalg

from vqgan_jax import metrics


def _pytorch_fid_formula(mu1, s1, mu2, s2, eps=1e-6):
  """pytorch-fid's calculate_frechet_distance, as it computes it (scipy sqrtm)."""
  diff = mu1 - mu2
  covmean, _ = linalg.sqrtm(s1.dot(s2), disp=False)
  if not np.isfinite(covmean).all():
    offset = np.eye(s1.shape[0]) * eps
    covmean = linalg.sqrtm((s1 + offset).dot(s2 + offset))
  covmean = covmean.real
  return float(diff.dot(diff) + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean))


def _features(rng, n, d, scale=1.0, shift=0.0):
  a = rng.normal(size=(d, d)) / np.sqrt(d)
  return (rng.normal(size=(n, d)) @ a) * scale + shift


def test_streaming_statistics_equal_the_one_shot_computation():
  rng = np.random.default_rng(0)
  x = _features(rng, 1000, 16, shift=50.0).astype(np.float32)   # a large mean: cancellation
  stats = metrics.FeatureStats(16)
  for chunk in np.array_split(x, 7):
    stats.update(chunk)
  assert stats.count == 1000
  np.testing.assert_allclose(stats.mean, x.astype(np.float64).mean(0), rtol=1e-12, atol=1e-9)
  np.testing.assert_allclose(stats.cov, np.cov(x.astype(np.float64), rowvar=False),
                             rtol=1e-9, atol=1e-10)


def test_masked_rows_are_not_counted():
  rng = np.random.default_rng(1)
  x = _features(rng, 50, 8)
  padded = np.concatenate([x, np.zeros((14, 8))])
  mask = np.r_[np.ones(50), np.zeros(14)]
  a = metrics.FeatureStats(8).update(padded[:32], mask[:32]).update(padded[32:], mask[32:])
  b = metrics.FeatureStats(8).update(x)
  assert a.count == b.count == 50
  np.testing.assert_allclose(a.mean, b.mean, atol=1e-12)
  np.testing.assert_allclose(a.cov, b.cov, atol=1e-12)


def test_frechet_distance_equals_pytorch_fid_s_formula():
  rng = np.random.default_rng(2)
  for d, n in ((8, 500), (64, 2000)):
    x, y = _features(rng, n, d), _features(rng, n, d, scale=1.3, shift=0.2)
    mu1, s1 = x.mean(0), np.cov(x, rowvar=False)
    mu2, s2 = y.mean(0), np.cov(y, rowvar=False)
    want = _pytorch_fid_formula(mu1, s1, mu2, s2)
    got = metrics.frechet_distance(mu1, s1, mu2, s2)
    assert got == pytest.approx(want, rel=1e-6)


def test_frechet_distance_closed_forms():
  d = 5
  mu = np.arange(d, dtype=np.float64)
  s = np.diag(np.arange(1.0, d + 1))
  assert metrics.frechet_distance(mu, s, mu, s) == pytest.approx(0.0, abs=1e-9)
  # Same covariance, shifted mean: ||delta||^2.
  assert metrics.frechet_distance(mu, s, mu + 2.0, s) == pytest.approx(4.0 * d)
  # Diagonal covariances: sum (sqrt(a) - sqrt(b))^2.
  s2 = np.diag(np.arange(2.0, d + 2))
  want = ((np.sqrt(np.diag(s)) - np.sqrt(np.diag(s2))) ** 2).sum()
  assert metrics.frechet_distance(mu, s, mu, s2) == pytest.approx(want, rel=1e-9)


def test_singular_covariances_fewer_samples_than_dimensions():
  """With n < d the covariances are singular; the distance stays finite and equals
  pytorch-fid's (which needs its eps retry there) to its precision."""
  rng = np.random.default_rng(3)
  x, y = _features(rng, 20, 64), _features(rng, 20, 64, shift=0.1)
  mu1, s1, mu2, s2 = x.mean(0), np.cov(x, rowvar=False), y.mean(0), np.cov(y, rowvar=False)
  got = metrics.frechet_distance(mu1, s1, mu2, s2)
  assert np.isfinite(got) and got > 0
  assert got == pytest.approx(_pytorch_fid_formula(mu1, s1, mu2, s2), rel=1e-3)
  # A set against itself: ~0 even though singular (the square roots of the ~1e-15
  # eigenvalues of the null space leave ~1e-6 against a trace of ~60).
  assert abs(metrics.frechet_distance(mu1, s1, mu1, s1)) < 1e-5 * np.trace(s1)


def test_stats_files_in_pytorch_fid_layout(tmp_path):
  rng = np.random.default_rng(4)
  mu, sigma = rng.normal(size=4), np.eye(4)
  path = str(tmp_path / "ref.npz")
  metrics.save_stats(path, mu, sigma)
  with np.load(path) as f:
    assert sorted(f.files) == ["mu", "sigma"]
  got_mu, got_sigma = metrics.load_stats(path)
  np.testing.assert_array_equal(got_mu, mu)
  np.testing.assert_array_equal(got_sigma, sigma)
  np.savez(str(tmp_path / "bad.npz"), mean=mu)
  with pytest.raises(ValueError, match=r"missing \['mu', 'sigma'\]"):
    metrics.load_stats(str(tmp_path / "bad.npz"))
  np.savez(str(tmp_path / "bad2.npz"), mu=mu, sigma=np.eye(3))
  with pytest.raises(ValueError, match="do not match"):
    metrics.load_stats(str(tmp_path / "bad2.npz"))


def test_errors():
  with pytest.raises(ValueError, match=r"expected features \[N, 4\]"):
    metrics.FeatureStats(4).update(np.zeros((3, 5)))
  with pytest.raises(ValueError, match="needs >= 2 rows"):
    _ = metrics.FeatureStats(4).update(np.zeros((1, 4))).cov
  with pytest.raises(ValueError, match="do not match"):
    metrics.frechet_distance(np.zeros(3), np.eye(3), np.zeros(4), np.eye(4))


def test_kid_and_inception_score_equal_torch_fidelity():
  """Reference values computed by torch-fidelity 0.3.0's own functions
  (tests/fixtures/torch_fidelity/README.md)."""
  import pathlib
  ref = np.load(pathlib.Path(__file__).parent / "fixtures/torch_fidelity/kid_isc.npz")
  mean, std = metrics.kid(ref["f1"], ref["f2"], subsets=20, subset_size=100)
  np.testing.assert_allclose([mean, std], ref["kid"], rtol=1e-4)
  mean, std = metrics.inception_score(ref["logits"])
  np.testing.assert_allclose([mean, std], ref["isc"], rtol=1e-9)


def test_kid_of_a_set_against_itself_is_about_zero_and_grows_with_a_shift():
  rng = np.random.default_rng(5)
  x = rng.normal(size=(400, 16))
  y = rng.normal(size=(400, 16))
  near, _ = metrics.kid(x, y, subsets=10, subset_size=200)
  far, _ = metrics.kid(x, y + 1.0, subsets=10, subset_size=200)
  assert abs(near) < 0.02 < far
  with pytest.raises(ValueError, match="subset size 1000 exceeds"):
    metrics.kid(x, y)


def test_inception_score_closed_forms():
  """Confident, uniformly spread predictions over C classes give IS = C; identical
  predictions give 1."""
  c = 10
  confident = np.tile(np.eye(c) * 50.0, (10, 1))   # each split: every class once
  assert metrics.inception_score(confident, shuffle=False)[0] == pytest.approx(c, rel=1e-6)
  same = np.tile(np.arange(c, dtype=np.float64), (50, 1))
  assert metrics.inception_score(same)[0] == pytest.approx(1.0, abs=1e-12)


@pytest.mark.parametrize("n1, n2, d", [(20, 12, 64), (5, 9, 32), (40, 30, 16)])
def test_distance_of_rows_equals_the_distance_of_statistics(n1, n2, d):
  """The Gram-matrix path (fewer rows than dimensions, and also more) against the
  eigenvalue path on the same sets' mean and covariance."""
  rng = np.random.default_rng(n1)
  x, y = _features(rng, n1, d), _features(rng, n2, d, scale=1.3, shift=0.2)
  want = metrics.frechet_distance(x.mean(0), np.cov(x, rowvar=False), y.mean(0),
                                  np.cov(y, rowvar=False))
  assert metrics.frechet_distance_of_rows(x, y) == pytest.approx(want, rel=1e-9)
  assert abs(metrics.frechet_distance_of_rows(x, x)) < 1e-9 * np.trace(np.cov(x, rowvar=False))


def test_feature_stats_keep_rows_only_up_to_the_dimension():
  rng = np.random.default_rng(0)
  s = metrics.FeatureStats(8)
  x = rng.normal(size=(8, 8))
  s.update(x[:5]).update(x[5:], mask=[1, 0, 1])
  np.testing.assert_allclose(s.rows, x[[0, 1, 2, 3, 4, 5, 7]], atol=1e-12)
  s.update(rng.normal(size=(2, 8)))
  assert s.count == 9 and s.rows is None
