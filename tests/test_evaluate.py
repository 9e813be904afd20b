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
import os
import shutil

import numpy as np
import pytest

from torch_writer import save_state_dict
from vqgan_jax import evaluate, fid, metrics
from vqgan_test_utils import FIXTURES, random_fid_state_dict, torch_inception_shapes

FOLDERS = FIXTURES / "fid_folders"


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
  images = rng.uniform(0, 1, (2, 299, 299, 3)).astype(np.float32)
  net = fid.load_features(inception_pth)
  out = net(images, np.array([1, 0]))
  swapped = net(images[::-1])
  np.testing.assert_allclose(out["pool3"][0], swapped["pool3"][1], atol=2e-5)
  s = fid.FeatureSet(keep_features=True).update(out)
  assert s.count == 1 and s.features.shape == (1, 2048)
  np.testing.assert_allclose(s.stats.mean, out["pool3"][0], atol=1e-6)


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


def test_reconstruction_of_a_taming_vqgan_equals_a_second_path(inception_pth, tmp_path, capsys):
  """`reconstruction` on the converted taming tiny VQGAN against the same numbers computed
  image by image from the public API (load_vqgan), numpy, scikit-image's SSIM, the LPIPS
  module and InceptionFeatures on the uint8 images."""
  from skimage.metrics import structural_similarity

  from vqgan_jax.api import load_vqgan
  from vqgan_jax.data import pipeline
  from vqgan_jax.images import to_uint8
  from vqgan_jax.nn.lpips import LPIPS, load_pretrained_lpips
  from vqgan_test_utils import tiny
  folder = tmp_path / "two"
  folder.mkdir()
  for name in ("00.png", "01.png"):
    shutil.copy(FOLDERS / "b" / name, folder / name)
  ckpt, yaml = tiny("vqgan_tiny.ckpt"), tiny("vqgan_tiny-project.yaml")
  rc, got, err = _run(["reconstruction", "--checkpoint", ckpt, "--config", yaml, "--data",
                       str(folder), "--size", "32", "--batch_size", "2", "--inception",
                       inception_pth, "--quiet"], capsys)
  assert rc == 0, err
  # The second path: the same centre crops, reconstructed by the API.
  cfg = evaluate._data_config(str(folder), evaluate.build_parser().parse_args(
      ["reconstruction", "--checkpoint", "x", "--data", str(folder), "--size", "32"]),
      str(tmp_path / "prep"))
  x = next(pipeline.create_eval_iterator(cfg, global_batch_size=2))["image"]
  vq = load_vqgan(ckpt, yaml)
  rec = np.clip(np.asarray(vq.reconstruct(x)), -1, 1)
  _, idx = vq.encode(x)
  counts = np.bincount(np.asarray(idx).ravel(), minlength=vq.config.num_codes)
  mse = np.mean((x - rec) ** 2, axis=(1, 2, 3))
  ssim = [structural_similarity(a.astype(np.float64), b.astype(np.float64), channel_axis=-1,
                                data_range=2.0, gaussian_weights=True, sigma=1.5,
                                use_sample_covariance=False) for a, b in zip(x, rec)]
  lpips = LPIPS().apply(load_pretrained_lpips(None), x, rec)
  p = counts[counts > 0] / counts.sum()
  net = fid.load_features(inception_pth)
  real = fid.FeatureSet().update(net(to_uint8(x)))
  fake = fid.FeatureSet().update(net(to_uint8(rec)))
  want = {"l1": np.mean(np.abs(x - rec)), "psnr": np.mean(10 * np.log10(4.0 / mse)),
          "ssim": np.mean(ssim), "lpips": float(np.mean(lpips)),
          "code_usage": np.mean(counts > 0), "perplexity": np.exp(-np.sum(p * np.log(p))),
          "rfid": fid.scores(real, fake)["fid"]}
  assert got["num_images"] == 2 and got["n_codes"] == 64 and got["size"] == 32
  for key, value in want.items():
    assert got[key] == pytest.approx(float(value), rel=2e-4, abs=1e-5), key


def test_cli_subprocess_smoke(inception_pth, tmp_path):
  """`python -m vqgan_jax.evaluate fid` as users run it: statistics of two images."""
  import subprocess
  import sys
  folder = tmp_path / "two"
  folder.mkdir()
  for name in ("00.png", "01.png"):
    shutil.copy(FOLDERS / "a" / name, folder / name)
  out = tmp_path / "stats.npz"
  res = subprocess.run([sys.executable, "-m", "vqgan_jax.evaluate", "fid", "--inception",
                        inception_pth, "--real", str(folder), "--save_stats", str(out),
                        "--batch_size", "2"], capture_output=True, text=True, timeout=600)
  assert res.returncode == 0, res.stderr
  result = json.loads(res.stdout.strip().splitlines()[-1])
  assert result["num_real"] == 2 and result["saved_stats"] == str(out)
  mu, sigma = metrics.load_stats(str(out))
  assert mu.shape == (2048,) and sigma.shape == (2048, 2048)
  np.testing.assert_allclose(mu, _pool3_a()[:2].mean(0), atol=1e-4)  # pytorch-fid's rows
  assert "real: 2/2 images" in res.stderr


def _pool3_a():
  return np.load(FOLDERS / "reference.npz")["pool3_a"]


def test_two_processes_give_the_statistics_of_one(first_run, inception_pth, tmp_path):
  """`fid --real a/ --save_stats` in two local processes (jax.distributed on 127.0.0.1,
  one CPU device each, batches of 4 per process: the 12 images in 2 global batches, the
  second padded) writes the statistics one process computed."""
  import socket
  import subprocess
  import sys
  from vqgan_test_utils import xla_flags
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
  out = tmp_path / "two.npz"
  env = dict(os.environ, XLA_FLAGS=xla_flags(1))
  procs = [subprocess.Popen(
      [sys.executable, "-m", "vqgan_jax.evaluate", "fid", "--inception", inception_pth,
       "--real", str(FOLDERS / "a"), "--save_stats", str(out), "--batch_size", "4",
       "--quiet", "--coordinator_address", f"127.0.0.1:{port}", "--num_processes", "2",
       "--process_id", str(i)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
      env=env) for i in range(2)]
  try:
    results = [p.communicate(timeout=600) for p in procs]
  finally:
    for p in procs:
      p.kill()
  for p, (_, err) in zip(procs, results):
    assert p.returncode == 0, err[-3000:]
  result = json.loads(results[0][0].strip().splitlines()[-1])
  assert result["num_real"] == 12
  assert not [line for line in results[1][0].splitlines() if line.startswith("{")]  # only 0
  mu, sigma = metrics.load_stats(str(out))
  mu1, sigma1 = metrics.load_stats(str(first_run[1]))
  np.testing.assert_allclose(mu, mu1, atol=1e-6)
  np.testing.assert_allclose(sigma, sigma1, atol=1e-6)
