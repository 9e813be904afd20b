"""`python sample.py` (vqgan_jax/sample_cli.py): layout, codes against taming's samplers,
seeds, resume, depth conditioning, completion, the sliding window, and the user errors.

Expected codes come from the reference code (the fixtures' sample_fast call for class 3
with top_k 1, `fast_class3_topk1`, which is greedy, and the depth model's greedy samples),
from `Net2Net.sample` / `sample_window` (whole batches under one key, where the CLI
samples rows under their own keys) and from the first stage's own encoding. `main(argv)`
runs in-process with the loaded models memoised (their jitted decoders compile once per
module); one subprocess smoke run with TensorFlow, TFDS, clu and ml_collections blocked.
"""

import json
import os
import pathlib
import shutil
import subprocess
import sys
import textwrap
import types

import numpy as np
import pytest
from PIL import Image

from vqgan_test_utils import NOTHING_BLOCKED_LOADED, WITHOUT_TENSORFLOW, nhwc, tiny
from vqgan_jax import net2net, sample_cli
from vqgan_jax.images import read_image, to_uint8

REPO = pathlib.Path(__file__).resolve().parents[1]
RUN = "samples/top_k_250_temp_1.00_top_p_1.0/0"   # the default settings' run folder
_MODELS = {}


def _load(path, yaml):
  key = (os.path.abspath(path), yaml)
  if key not in _MODELS:
    _MODELS[key] = _real_load(path, yaml)
  return _MODELS[key]


_real_load = sample_cli.load_model


@pytest.fixture(autouse=True)
def _memoised_models(monkeypatch):
  monkeypatch.setattr(sample_cli, "load_model", _load)


@pytest.fixture(scope="module")
def dirs(tmp_path_factory):
  """kind -> model directory: the converted class and depth fixtures, and "sos", the class
  model's weights relabelled as an unconditional model (start token 3: its samples are
  class 3's)."""
  from vqgan_jax.convert.__main__ import main
  base = tmp_path_factory.mktemp("models")
  out = {}
  for kind in ("class", "depth"):
    out[kind] = str(base / kind)
    name = f"n2n_{kind}_tiny"
    assert main([tiny(f"{name}.ckpt"), out[kind], "--config", tiny(f"{name}-project.yaml")]) == 0
  out["sos"] = str(base / "sos")
  shutil.copytree(out["class"], out["sos"])
  cfg_path = os.path.join(out["sos"], "config.json")
  with open(cfg_path) as f:
    cfg = json.load(f)
  cfg["net2net"].update(cond="sos", n_classes=0, sos_token=3)
  with open(cfg_path, "w") as f:
    json.dump(cfg, f)
  return out


@pytest.fixture(scope="module")
def files(tmp_path_factory):
  """depths/: the depth fixture's two maps as a 16-bit (a.png) and an 8-bit (b.png) PNG;
  an RGB image (the fixture's first image)."""
  base = tmp_path_factory.mktemp("inputs")
  ref = np.load(tiny("n2n_depth_tiny.npz"))
  scaled = [(d - d.min()) / (d.max() - d.min()) for d in ref["depth"][:, 0]]
  d16 = np.round(scaled[0] * 65535).astype(np.uint16)
  os.makedirs(base / "depths")
  Image.fromarray(d16).save(base / "depths" / "a.png")
  Image.fromarray(np.round(scaled[1] * 255).astype(np.uint8)).save(base / "depths" / "b.png")
  x = to_uint8(nhwc(ref["x_sq"])[0])
  Image.fromarray(x).save(base / "photo.png")
  return {"depths": str(base / "depths"), "depth": str(base / "depths" / "a.png"),
          "depth16": d16, "photo": str(base / "photo.png"), "x": x}


def _run(capsys, *argv):
  rc = sample_cli.main([str(a) for a in argv])
  out, err = capsys.readouterr()
  return rc, out, err


def _codes(run_dir):
  with np.load(os.path.join(run_dir, "codes.npz")) as f:
    return dict(f)


def _class3_greedy():
  """int32[2, 8, 8]: taming's sample_fast for class 3 with top_k 1, from the reference code;
  top_k 1 draws the argmax, so these are also the greedy codes (row 0 = `greedy_kv[0]`)."""
  return np.load(tiny("n2n_class_tiny.npz"))["fast_class3_topk1"].reshape(2, 8, 8)


def _error(capsys, *argv):
  rc, _, err = _run(capsys, *argv)
  assert rc == 2, err
  assert err.startswith("error: "), err
  return err


def test_greedy_class_samples_layout_and_codes(dirs, tmp_path, capsys):
  rc, out, _ = _run(capsys, "--checkpoint", dirs["class"], "--outdir", tmp_path, "--greedy",
                    "--classes", 3, "-n", 2)
  assert rc == 0
  run = tmp_path / RUN
  assert sorted(os.listdir(run)) == ["3", "codes.npz", "grid.png", "settings.json"]
  assert sorted(os.listdir(run / "3")) == ["000000.png", "000001.png"]
  n2n, _ = _load(dirs["class"], None)
  c = _codes(run)
  assert c["codes"].dtype == np.int32 and c["codes"].shape == (2, 8, 8)
  np.testing.assert_array_equal(c["codes"], _class3_greedy())
  expected = np.asarray(n2n.sample(np.full((2, 1), 3), 64, greedy=True)).reshape(2, 8, 8)
  np.testing.assert_array_equal(c["codes"], expected)
  np.testing.assert_array_equal(c["class"], [3, 3])
  np.testing.assert_array_equal(c["c_indices"], [[3], [3]])
  images = to_uint8(np.asarray(n2n.decode_to_img(expected.reshape(2, 64), (8, 8))))
  for i in range(2):
    np.testing.assert_array_equal(read_image(str(run / "3" / f"{i:06}.png")), images[i])
  assert read_image(str(run / "grid.png")).shape == (32, 2 * 32, 3)
  settings = json.loads((run / "settings.json").read_text())
  assert settings["greedy"] and settings["sampler"] == "kv_cache" and settings["step"] == 0
  assert "batch 1/1" in out


def test_top_k_1_is_taming_sample_fast_for_any_seed(dirs, tmp_path, capsys):
  ref = _class3_greedy()
  for seed in (0, 77):
    out = tmp_path / str(seed)
    assert _run(capsys, "--checkpoint", dirs["class"], "--outdir", out, "--top_k", 1,
                "--classes", 3, "-n", 2, "--seed", seed)[0] == 0
    np.testing.assert_array_equal(_codes(out / "samples/top_k_1_temp_1.00_top_p_1.0/0")["codes"],
                                  ref)


def test_taming_ckpt_with_yaml_uses_its_global_step(dirs, tmp_path, capsys):
  assert _run(capsys, "--checkpoint", tiny("n2n_class_tiny.ckpt"), "--config",
              tiny("n2n_class_tiny-project.yaml"), "--outdir", tmp_path, "--greedy",
              "--classes", 3, "-n", 2)[0] == 0
  run = tmp_path / "samples/top_k_250_temp_1.00_top_p_1.0/3"   # global_step 3
  np.testing.assert_array_equal(_codes(run)["codes"], _class3_greedy())


def test_unconditional_layout_has_no_class_level(dirs, tmp_path, capsys):
  assert _run(capsys, "--checkpoint", dirs["sos"], "--outdir", tmp_path, "--greedy",
              "-n", 2)[0] == 0
  run = tmp_path / RUN
  assert sorted(os.listdir(run)) == ["000000.png", "000001.png", "codes.npz", "grid.png",
                                     "settings.json"]
  np.testing.assert_array_equal(_codes(run)["codes"], _class3_greedy())   # start token 3


def test_fid_of_the_samples_against_reference_statistics(dirs, tmp_path, capsys, inception_pth):
  """--fid_stats scores every sample PNG of the run (host-resized, as
  pytorch-fid reads files); checked against the PNGs read back and run through
  InceptionFeatures' on-device resize, a second path."""
  from vqgan_jax import fid, metrics
  rng = np.random.default_rng(0)
  a = rng.normal(size=(2048, 3)) * 0.1
  stats = str(tmp_path / "ref.npz")
  metrics.save_stats(stats, rng.normal(size=2048) * 0.1, a @ a.T)
  rc, out, err = _run(capsys, "--checkpoint", dirs["sos"], "--outdir", tmp_path / "o", "-n", 4,
                      "--batch_size", 4, "--grid_samples", 0, "--inception", inception_pth,
                      "--fid_stats", stats)
  assert rc == 0, err
  run = tmp_path / "o" / RUN
  got = json.loads((run / "metrics.json").read_text())
  assert got["num_samples"] == 4 and f'"fid": {got["fid"]}' in out
  images = np.stack([read_image(str(run / f"{i:06}.png")) for i in range(4)])
  samples = fid.FeatureSet().update(
      fid.InceptionFeatures(fid._cached_variables(inception_pth))(images))
  want = fid.scores(metrics.load_stats(stats), samples, ("fid",))
  assert got["fid"] == pytest.approx(want["fid"], rel=1e-5)
  # Nothing is drawn when the scoring arguments are wrong.
  for argv, message in ((["--fid_stats", stats], "need --inception"),
                        (["--inception", inception_pth, "--inception_score"], "at least 10")):
    rc, _, err = _run(capsys, "--checkpoint", dirs["sos"], "--outdir", tmp_path / "p", *argv)
    assert rc == 2 and message in err and not (tmp_path / "p").exists()


def test_seeds_batch_independence_and_resume(dirs, tmp_path, capsys):
  args = ["--checkpoint", dirs["class"], "-n", 3, "--batch_size", 2]
  runs = {}
  # Batches of a: [3/0 3/1] [3/2 5/0] [5/1 5/2]; of b: [5/0 5/1] [5/2 3/0] [3/1 3/2].
  for name, extra in (("a", ["--classes", "3,5"]), ("b", ["--classes", "5,3"]),
                      ("c", ["--classes", "3,5", "--seed", 1])):
    assert _run(capsys, *args, "--outdir", tmp_path / name, *extra)[0] == 0
    runs[name] = _codes(tmp_path / name / RUN)["codes"]
  # Same seed: same samples, whatever batch they were drawn in; another seed: others.
  np.testing.assert_array_equal(runs["a"], np.concatenate([runs["b"][3:], runs["b"][:3]]))
  assert (runs["a"] != runs["c"]).any()
  assert (runs["a"][0] != runs["a"][1]).any() and (runs["a"][0] != runs["a"][3]).any()
  run = tmp_path / "a" / RUN
  pngs = sorted(run.glob("*/*.png"))
  before = {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in pngs}
  victim = run / "5" / "000001.png"
  victim.unlink()
  rc, out, _ = _run(capsys, *args, "--outdir", tmp_path / "a", "--classes", "3,5")
  assert rc == 0 and "5 already there, 1 to draw" in out, out
  for p in pngs:
    assert p.read_bytes() == before[p][0]
    if p != victim:
      assert p.stat().st_mtime_ns == before[p][1], p
  np.testing.assert_array_equal(_codes(run)["codes"], runs["a"])
  # A re-run with another seed into the same folder is refused.
  err = _error(capsys, *args, "--outdir", tmp_path / "a", "--classes", "3,5", "--seed", 9)
  assert "seed 0 -> 9" in err


def test_depth_pngs_conditioning_matches_taming_greedy(dirs, files, tmp_path, capsys):
  assert _run(capsys, "--checkpoint", dirs["depth"], "--outdir", tmp_path, "--cond",
              files["depths"], "--greedy", "-n", 1)[0] == 0
  run = tmp_path / RUN
  ref = np.load(tiny("n2n_depth_tiny.npz"))
  c = _codes(run)
  np.testing.assert_array_equal(c["set_names"], ["a", "b"])
  np.testing.assert_array_equal(c["c_indices"], ref["n2n_c_indices"])
  np.testing.assert_array_equal(c["codes"].reshape(2, -1), ref["greedy_kv"])
  expected_cond = files["depth16"].astype(np.float32) / 65535 * 2 - 1
  np.testing.assert_allclose(c["cond"][0, ..., 0], expected_cond, atol=1e-6)
  assert os.path.isfile(run / "a" / "000000.png") and os.path.isfile(run / "b" / "000000.png")
  grid = read_image(str(run / "grid.png"))
  assert grid.shape == (2 * 32, 2 * 32, 3)
  depth_column = grid[:, :32].astype(int)
  assert (depth_column[..., 0] == depth_column[..., 1]).all()   # grey
  assert depth_column.std() > 20


def test_completion_keeps_the_prefix(dirs, files, tmp_path, capsys):
  assert _run(capsys, "--checkpoint", dirs["class"], "--outdir", tmp_path, "--classes", 3,
              "--complete", files["photo"], "--keep", 0.5, "-n", 2, "--seed", 4)[0] == 0
  run = tmp_path / RUN
  n2n, _ = _load(dirs["class"], None)
  z = np.asarray(n2n.first_stage.encode(files["x"][None] / 127.5 - 1.0)[1])[0]
  c = _codes(run)
  np.testing.assert_array_equal(c["codes"][:, :4], np.stack([z[:4]] * 2))
  assert (c["codes"][:, 4:] != z[4:]).any()
  np.testing.assert_array_equal(c["completion_codes"][0], z)
  assert sorted(os.listdir(run / "3" / "photo")) == ["000000.png", "000001.png"]


def test_sliding_window_with_depth_and_completion(dirs, files, tmp_path, capsys):
  rc, out, _ = _run(capsys, "--checkpoint", dirs["depth"], "--outdir", tmp_path, "--cond",
                    files["depth"], "--complete", files["photo"], "--keep", 0.25,
                    "--height", 48, "--width", 64, "-n", 2, "--greedy")
  assert rc == 0 and "sliding 8x8 window over a 12x16 latent" in out
  run = tmp_path / RUN
  c = _codes(run)
  assert c["codes"].shape == (2, 12, 16) and c["c_indices"].shape == (2, 192)
  assert c["cond"].shape == (1, 48, 64, 1)
  z = c["completion_codes"][0]
  np.testing.assert_array_equal(c["codes"][:, :3], np.stack([z[:3]] * 2))   # 48 codes kept
  n2n, _ = _load(dirs["depth"], None)
  np.testing.assert_array_equal(c["c_indices"][0],
                                np.asarray(n2n.encode_to_c(c["cond"])[1])[0])
  expected = n2n.sample_window(c["c_indices"][:1], (12, 16), z_init=z[None], start=48,
                               greedy=True)
  np.testing.assert_array_equal(c["codes"][:1], np.asarray(expected))
  assert read_image(str(run / "a_photo" / "000001.png")).shape == (48, 64, 3)
  assert read_image(str(run / "grid.png")).shape == (48, 4 * 64, 3)


def test_errors(dirs, files, tmp_path, capsys):
  cls, depth, sos = (["--checkpoint", dirs[k], "--outdir", tmp_path] for k in
                     ("class", "depth", "sos"))
  err = _error(capsys, *cls, "--classes", "3,10")
  assert "class 10" in err and "[0, 10)" in err
  assert "comma-separated" in _error(capsys, *cls, "--classes", "3,x")
  assert "--classes" in _error(capsys, *cls)
  assert "not class-conditional" in _error(capsys, *sos, "--classes", 1)
  assert "--cond" in _error(capsys, *depth)
  assert "mode RGB" in _error(capsys, *depth, "--cond", files["photo"])
  err = _error(capsys, *depth, "--cond", files["depth"], "--height", 30)
  assert "multiples" in err and "factor 4" in err
  err = _error(capsys, *depth, "--cond", files["depth"], "--height", 16, "--width", 64)
  assert "8x8 window is larger than the 4x16 latent" in err and "H >= 32" in err
  assert "label dropout" in _error(capsys, *cls, "--classes", 1, "--guidance", 2)
  assert "--keep" in _error(capsys, *cls, "--classes", 1, "--complete", files["photo"],
                            "--keep", 1.5)
  assert "no such file" in _error(capsys, "--checkpoint", tmp_path / "nope", "--outdir",
                                  tmp_path)
  assert sample_cli.parse_classes("all", 4) == [0, 1, 2, 3]
  assert sample_cli.parse_classes("9, 2,9", 10) == [9, 2]


def test_read_conditioning_segmentation_and_depth(tmp_path):
  read = sample_cli.read_conditioning
  labels = np.array([[0, 1], [2, 3]], np.uint8)
  Image.fromarray(labels).save(tmp_path / "seg.png")
  seg = read(str(tmp_path / "seg.png"), "segmentation", 5, (4, 4))   # nearest: 2x2 blocks
  np.testing.assert_array_equal(seg, np.eye(5, dtype=np.float32)[labels.repeat(2, 0).repeat(2, 1)])
  np.save(tmp_path / "onehot.npy", np.eye(5, dtype=np.float32)[labels])
  np.testing.assert_array_equal(read(str(tmp_path / "onehot.npy"), "segmentation", 5, (4, 4)),
                                seg)
  with pytest.raises(sample_cli._Error, match=r"needs 6 channels.*shape \[2, 2, 5\]"):
    read(str(tmp_path / "onehot.npy"), "segmentation", 6, (2, 2))
  with pytest.raises(sample_cli._Error, match=r"class ids in \[0, 3\], outside the model's 3"):
    read(str(tmp_path / "seg.png"), "segmentation", 3, (2, 2))
  Image.fromarray(np.zeros((2, 2, 3), np.uint8)).save(tmp_path / "rgb.png")
  with pytest.raises(sample_cli._Error, match="mode RGB"):
    read(str(tmp_path / "rgb.png"), "segmentation", 5, (2, 2))
  Image.fromarray(np.array([[10, 20], [30, 50]], np.uint8)).save(tmp_path / "d8.png")
  np.testing.assert_allclose(read(str(tmp_path / "d8.png"), "depth", 1, (2, 2))[..., 0],
                             [[-1, -0.5], [0, 1]])
  packed = np.array([[1.5, 2.0], [3.0, 5.5]], np.float32)   # taming's RGBA float PNGs
  Image.fromarray(packed[..., None].view(np.uint8), "RGBA").save(tmp_path / "d.png")
  np.testing.assert_allclose(read(str(tmp_path / "d.png"), "depth", 1, (2, 2))[..., 0],
                             [[-1, -0.75], [-0.25, 1]])
  fake = types.SimpleNamespace(colorize=np.eye(3, 5, dtype=np.float32), name="fake")
  fake.to_rgb = lambda x: net2net.Net2Net.to_rgb(fake, x)
  shown = sample_cli._display(fake, seg, "segmentation")
  assert shown.shape == (4, 4, 3) and shown.min() == -1 and shown.max() == 1


_WITHOUT_TENSORFLOW = WITHOUT_TENSORFLOW + textwrap.dedent("""
    import runpy
    sys.argv = ["sample.py"] + sys.argv[1:]
    try:
      runpy.run_path("sample.py", run_name="__main__")
    except SystemExit as e:
      assert not e.code, e.code
""") + NOTHING_BLOCKED_LOADED


@pytest.mark.slow
def test_sample_py_runs_without_tensorflow(dirs, files, tmp_path):
  proc = subprocess.run(
      [sys.executable, "-c", _WITHOUT_TENSORFLOW, "--checkpoint", dirs["depth"], "--outdir",
       str(tmp_path), "--cond", files["depth"], "--greedy", "-n", "2"],
      cwd=REPO, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stdout + proc.stderr
  assert proc.stdout.strip().endswith("ok")
  ref = np.load(tiny("n2n_depth_tiny.npz"))["greedy_kv"]
  np.testing.assert_array_equal(_codes(tmp_path / RUN)["codes"].reshape(2, -1), ref[[0, 0]])
