"""`python -m vqgan_jax.evaluate fid` against pytorch-fid and torch-fidelity.

tests/fixtures/fid_folders holds two folders of real photo crops (a/: 12 images of mixed
sizes, b/: 10 images) and what pytorch-fid 0.3.0 computed from them with the random
Inception weights `random_fid_state_dict` (written here as a torch .pth by our own
writer, so the CLI reads a real torch file), plus torch-fidelity 0.3.0's KID and IS of
those features (see the fixture's README).
"""

import contextlib
import io
import json
import shutil

import numpy as np
import pytest

from torch_writer import save_state_dict
from vqgan_jax import evaluate, fid, metrics
from vqgan_test_utils import FIXTURES, random_fid_state_dict, torch_inception_shapes

FOLDERS = FIXTURES / "fid_folders"


@pytest.fixture(scope="module")
def inception_pth(tmp_path_factory):
  path = tmp_path_factory.mktemp("inception") / "pt_inception-random.pth"
  return str(save_state_dict(path, random_fid_state_dict(torch_inception_shapes())))


@pytest.fixture(scope="module")
def reference():
  return dict(np.load(FOLDERS / "reference.npz"))


def _run(argv, capsys):
  rc = evaluate.main(argv)
  captured = capsys.readouterr()
  lines = captured.out.strip().splitlines()
  return rc, (json.loads(lines[-1]) if rc == 0 else None), captured.err


@pytest.fixture(scope="module")
def first_run(inception_pth, tmp_path_factory):
  """a/ against b/ with FID, KID and IS, saving a/'s statistics."""
  stats = tmp_path_factory.mktemp("stats") / "a_stats.npz"
  out, err = io.StringIO(), io.StringIO()
  with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
    rc = evaluate.main(["fid", "--inception", inception_pth, "--real", str(FOLDERS / "a"),
                        "--fake", str(FOLDERS / "b"), "--metrics", "fid,kid,is",
                        "--kid_subsets", "4", "--kid_subset_size", "8", "--is_splits", "2",
                        "--save_stats", str(stats), "--batch_size", "8"])
  assert rc == 0, err.getvalue()
  return json.loads(out.getvalue().strip().splitlines()[-1]), stats, err.getvalue()


def test_fid_of_two_photo_folders_equals_pytorch_fid(first_run, reference):
  result, _, err = first_run
  assert (result["num_real"], result["num_fake"]) == (12, 10)
  assert result["fid"] == pytest.approx(float(reference["fid"]), rel=1e-4)
  assert "real: 12/12 images" in err and "fake: 10/10 images" in err  # the progress line


def test_saved_statistics_equal_pytorch_fid_s(first_run, reference):
  _, stats, _ = first_run
  with np.load(stats) as f:
    assert sorted(f.files) == ["mu", "sigma"]
  mu, sigma = metrics.load_stats(str(stats))
  np.testing.assert_allclose(mu, reference["mu_a"], atol=1e-4)
  np.testing.assert_allclose(sigma[:48, :48], reference["sigma_a_block"], atol=1e-4)
  assert np.trace(sigma) == pytest.approx(float(reference["trace_sigma_a"]), rel=1e-5)
  # A set against its own statistics: ~0 (pytorch-fid's sqrtm leaves -1e-3 here).
  assert abs(metrics.frechet_distance(mu, sigma, mu, sigma)) < 1e-6 * np.trace(sigma)


def test_kid_and_is_equal_torch_fidelity_on_the_same_images(first_run, reference):
  result, _, _ = first_run
  # The CLI's features are pytorch-fid's (checked above); KID over 4 subsets of 8 and IS
  # in 2 splits of the fake images' logits as torch-fidelity computes them.
  assert result["kid_mean"] == pytest.approx(reference["kid_4x8"][0], rel=1e-3)
  assert result["kid_std"] == pytest.approx(reference["kid_4x8"][1], rel=1e-3)
  assert result["is_mean"] == pytest.approx(reference["is_2"][0], rel=1e-4)
  assert result["is_std"] == pytest.approx(reference["is_2"][1], rel=1e-3, abs=1e-6)


def test_stats_file_masked_batches_and_unreadable_files(first_run, inception_pth, tmp_path,
                                                        capsys, reference):
  """--real from the saved .npz; --fake b/ plus a broken and a truncated PNG (batches of 8:
  the second holds 2 images, 2 unreadable rows and 4 of padding): the same FID, the two
  files skipped with a warning each."""
  result, stats, _ = first_run
  fake = tmp_path / "fake"
  shutil.copytree(FOLDERS / "b", fake)
  (fake / "zz_broken.png").write_bytes(b"not an image at all")
  whole = (FOLDERS / "b" / "00.png").read_bytes()
  (fake / "zz_truncated.png").write_bytes(whole[:len(whole) // 2])
  rc, out, err = _run(["fid", "--inception", inception_pth, "--real", str(stats),
                       "--fake", str(fake), "--batch_size", "8", "--quiet"], capsys)
  assert rc == 0, err
  assert out["num_fake"] == 10 and "num_real" not in out
  assert out["fid"] == pytest.approx(result["fid"], rel=1e-6)
  assert out["fid"] == pytest.approx(float(reference["fid"]), rel=1e-4)
  warnings = [line for line in err.splitlines() if line.startswith("warning: skipping")]
  assert len(warnings) == 2
  assert "zz_broken.png" in warnings[0] and "zz_truncated.png" in warnings[1]


def test_masked_rows_do_not_count(inception_pth):
  """InceptionFeatures on a padded batch: the padding (mask 0) is not in the statistics,
  and a row's features do not depend on its batch mates."""
  rng = np.random.default_rng(0)
  images = rng.uniform(0, 1, (8, 299, 299, 3)).astype(np.float32)
  net = fid.load_features(inception_pth)
  out = net(images, np.array([1, 1, 1, 0, 0, 0, 0, 0]))
  other = net(np.concatenate([images[2:3], images[:2], images[3:]][::-1]))
  np.testing.assert_allclose(out["pool3"][2], other["pool3"][-1], atol=2e-5)
  s = fid.FeatureSet().update(out)
  assert s.count == 3
  np.testing.assert_allclose(s.stats.mean, out["pool3"][:3].astype(np.float64).mean(0), atol=1e-9)


def test_wrong_weights_file_names_every_key(tmp_path, capsys):
  sd = random_fid_state_dict(torch_inception_shapes())
  del sd["Mixed_6b.branch7x7_2.conv.weight"]
  sd["Mixed_5b.branch1x1.conv.weight"] = np.zeros((64, 192, 3, 3), np.float32)
  sd["AuxLogits.fc.weight"] = np.zeros((1000, 768), np.float32)
  bad = save_state_dict(tmp_path / "bad.pth", sd)
  rc, _, err = _run(["fid", "--inception", str(bad), "--real", str(FOLDERS / "a"),
                     "--fake", str(FOLDERS / "b")], capsys)
  assert rc == 2
  for key in ("bad.pth", "Mixed_6b.branch7x7_2.conv.weight", "AuxLogits.fc.weight",
              "Mixed_5b.branch1x1.conv.weight"):
    assert key in err
  assert "Traceback" not in err


@pytest.mark.parametrize("argv, message", [
    (["--real", "A", "--fake", "STATS"], "must be images"),
    (["--real", "STATS", "--fake", "A", "--metrics", "kid"], "KID needs the real images"),
    (["--real", "A", "--fake", "B", "--metrics", "fid,lpips"], "unknown ['lpips']"),
    (["--real", "A"], "give --fake"),
    (["--real", "A", "--fake", "NOPE"], "expected an image folder"),
    (["--real", "tfds:mnist", "--fake", "A"], "expected tfds:NAME/SPLIT"),
    (["--real", "A", "--fake", "B", "--metrics", "kid"], "--kid_subset_size 1000 exceeds"),
])
def test_argument_errors(first_run, inception_pth, capsys, argv, message):
  stats = str(first_run[1])
  subst = {"A": str(FOLDERS / "a"), "B": str(FOLDERS / "b"), "STATS": stats,
           "NOPE": "/nonexistent/x"}
  argv = [subst.get(a, a) for a in argv]
  rc, _, err = _run(["fid", "--inception", inception_pth] + argv, capsys)
  assert rc == 2 and message in err, err


def test_missing_weights_file_says_where_to_get_it(tmp_path, capsys):
  rc, _, err = _run(["fid", "--inception", str(tmp_path / "none.pth"), "--real",
                     str(FOLDERS / "a"), "--fake", str(FOLDERS / "b")], capsys)
  assert rc == 2 and "pt_inception-2015-12-05-6726825d.pth" in err and "never downloaded" in err
