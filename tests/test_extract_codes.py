"""`python -m vqgan_jax.extract_codes`: codes, labels, cond codes, resume, processes, errors.

Expected codes come from an independent path: images preprocessed with PIL / numpy here
(sizes whose smaller side already is the crop size, so only the centre crop applies) and
encoded with `load_vqgan(...).encode`. `main(argv)` runs in-process, with the loaded
models memoised (the jitted encoders compile once per module); one subprocess smoke test.
"""

import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest
import tensorflow_datasets as tfds
from PIL import Image

from vqgan_test_utils import tiny, xla_flags
from vqgan_jax import images
from vqgan_jax import api, extract_codes
from vqgan_jax.data import codes

S = 32  # crop size; the tiny VQGAN has factor 4: 8x8 code grids
SIZES = [(32, 32), (32, 40), (40, 32), (32, 36), (36, 32), (32, 32), (32, 44)]  # (h, w)
_MODELS = {}


def _load(path, config=None, which="vqgan"):
  key = (os.path.abspath(path), config, which)
  if key not in _MODELS:
    _MODELS[key] = api.load_vqgan(path, config, which=which)
  return _MODELS[key]


@pytest.fixture(autouse=True)
def _memoised_models(monkeypatch):
  monkeypatch.setattr(extract_codes, "load_vqgan", _load)


@pytest.fixture(scope="module")
def vqgan_dir(tmp_path_factory, vqgan_tiny_converted):
  from vqgan_jax.model_dir import save_model_dir
  config, variables = vqgan_tiny_converted
  return save_model_dir(str(tmp_path_factory.mktemp("model") / "vqgan_tiny"), variables,
                        config, kind=config["kind"])


def _encode(vq, x, batch=4):
  """vq.encode(x) indices, in zero-padded batches of the CLI's shape (compiled once)."""
  n = len(x)
  x = np.concatenate([x, np.zeros((-n % batch,) + x.shape[1:], x.dtype)])
  return np.concatenate([np.asarray(vq.encode(x[i:i + batch])[1])
                         for i in range(0, len(x), batch)])[:n]


def _image(i, h, w):
  rng = np.random.default_rng(i)
  return rng.integers(0, 256, (h, w, 3), dtype=np.uint8)


def _crop(a):
  """Independent preprocessing: centre crop (no resize: the smaller side is S), [-1, 1]."""
  top, left = (a.shape[0] - S) // 2, (a.shape[1] - S) // 2
  return a[top:top + S, left:left + S].astype(np.float32) / 127.5 - 1.0


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
  """<root>/{cat,dog}/img_i.png (7 images) + an unreadable file; the expected inputs."""
  root = tmp_path_factory.mktemp("images")
  expected = []
  for i, (h, w) in enumerate(SIZES):
    cls = ("cat", "dog")[i % 2]
    os.makedirs(root / cls, exist_ok=True)
    a = _image(i, h, w)
    Image.fromarray(a).save(root / cls / f"img_{i}.png")
    expected.append((f"{cls}/img_{i}", _crop(a), i % 2))
  (root / "cat" / "broken.png").write_bytes(b"not a png")
  expected.sort(key=lambda e: e[0])  # the sorted file order
  return str(root), np.stack([e[1] for e in expected]), np.array([e[2] for e in expected])


def _run(capsys, *argv):
  rc = extract_codes.main([str(a) for a in argv])
  out, err = capsys.readouterr()
  summary = json.loads(out.strip().splitlines()[-1]) if rc == 0 else None
  return rc, summary, out, err


def _args(model, images, out, *extra):
  return ["--vqgan", model, "--images", images, "--out", out, "--split", "train",
          "--size", S, "--batch_size", 4, "--chunk_size", 3, *extra]


@pytest.fixture(scope="module")
def single(vqgan_dir, folder, tmp_path_factory):
  """The folder extracted by one process, with folder labels."""
  out = str(tmp_path_factory.mktemp("single") / "codes")
  assert extract_codes.main([str(a) for a in _args(vqgan_dir, folder[0], out, "--labels",
                                                   "folders")]) == 0
  return out


def _arrays(directory):
  src = codes.open_code_dataset(directory, "train")
  return src.read(np.arange(src.num_examples))


def test_folder_codes_labels_and_tfds_views(vqgan_dir, folder, single, capsys):
  _, images, labels = folder
  want = _encode(_load(vqgan_dir), images)
  got = _arrays(single)
  assert got["z"].dtype == np.int32 and got["z"].shape == (7, 8, 8)
  np.testing.assert_array_equal(got["z"], want)
  np.testing.assert_array_equal(got["label"], labels)
  meta = codes.read_meta(single)
  assert meta["conditioning"] == {"kind": "class", "n_classes": 2, "class_names": ["cat", "dog"]}
  assert (meta["n_embed"], meta["code_grid"], meta["image_size"]) == (64, [8, 8], S)
  assert meta["vqgan"]["config"]["n_embed"] == 64
  entry = meta["splits"]["train"]
  assert entry["num_examples"] == 7 and entry["num_skipped"] == 1
  assert entry["skipped"][0]["source"].endswith("broken.png")
  assert entry["source"]["kind"] == "images" and entry["shard_lengths"] == [2, 3, 2]
  ds = tfds.builder_from_directory(single).as_data_source("train")
  np.testing.assert_array_equal([ds[i]["z"] for i in range(7)], want)
  assert [int(ds[i]["index"]) for i in range(7)] == [1, 2, 3, 4, 5, 6, 7]  # 0: broken.png
  elements = list(tfds.as_numpy(tfds.builder_from_directory(single).as_dataset("train")))
  np.testing.assert_array_equal([e["label"] for e in elements], labels)
  # A rerun with the same arguments has nothing to do.
  rc, summary, out, _ = _run(capsys, *_args(vqgan_dir, folder[0], single, "--labels", "folders"))
  assert rc == 0 and "already complete" in out and summary["examples"] == 7


def test_two_processes_equal_one(vqgan_dir, folder, single, tmp_path, capsys):
  out = str(tmp_path / "codes")
  args = _args(vqgan_dir, folder[0], out, "--labels", "folders")
  rc, _, _, err = _run(capsys, *args, "--process_index", 0, "--process_count", 2,
                       "--wait_timeout", 0)
  assert rc == 2 and "timed out after 0 s waiting for 2 of 3 chunks" in err
  assert "processes [1] of 2" in err
  rc, summary, _, _ = _run(capsys, *args, "--process_index", 1, "--process_count", 2)
  assert rc == 0 and summary["finalized"] is False and summary["examples"] == 5  # chunks 1, 2
  rc, summary, out_text, _ = _run(capsys, *args, "--process_index", 0, "--process_count", 2)
  assert rc == 0 and summary["finalized"] and summary["examples"] == 7
  assert "1 of this process's 1 chunks are already written" in out_text
  for name, v in _arrays(single).items():
    np.testing.assert_array_equal(_arrays(out)[name], v)
  for f in sorted(os.listdir(single)):
    if f.startswith(codes.TFDS_NAME):
      with open(os.path.join(out, f), "rb") as a, open(os.path.join(single, f), "rb") as b:
        assert a.read() == b.read(), f


def test_resume_after_a_kill_and_changed_arguments(vqgan_dir, folder, single, tmp_path,
                                                   monkeypatch, capsys):
  out = str(tmp_path / "codes")
  args = _args(vqgan_dir, folder[0], out, "--labels", "folders")
  write_chunk, calls = codes.write_chunk, []

  def killed_at_the_second_chunk(*a, **k):
    calls.append(a[2])
    if len(calls) == 2:
      with open(codes.chunk_path(out, "train", a[2]) + ".tmp-1", "wb") as f:
        f.write(b"half")  # a chunk file cut short
      raise KeyboardInterrupt
    write_chunk(*a, **k)
  with monkeypatch.context() as m:
    m.setattr(codes, "write_chunk", killed_at_the_second_chunk)
    with pytest.raises(KeyboardInterrupt):
      extract_codes.main([str(a) for a in args])
  with pytest.raises(ValueError, match=r"incomplete: 1 of 3 chunks.*--labels folders"):
    codes.open_code_dataset(out, "train")
  rc, _, text, _ = _run(capsys, *args)
  assert rc == 0 and "resuming: 1 of this process's 3 chunks" in text
  for name, v in _arrays(single).items():
    np.testing.assert_array_equal(_arrays(out)[name], v)
  rc, _, _, err = _run(capsys, *args, "--chunk_size", 2)  # the last --chunk_size wins
  assert rc == 2 and "differing fields: chunk_size: 3 -> 2" in err
  rc, _, _, err = _run(capsys, *_args(tiny("vqgan_tiny.ckpt"), folder[0], out))
  assert rc == 2 and "dataset.conditioning.kind" in err and "Traceback" not in err
  assert codes.open_code_dataset(out, "train").num_examples == 7  # nothing lost


@pytest.fixture(scope="module")
def paired(tmp_path_factory):
  """4 images in a/ and b/, their cond images (.bmp) and 16-bit depth maps (.png)."""
  root = tmp_path_factory.mktemp("paired")
  images = []
  for i in range(4):
    rel = f"{'ab'[i % 2]}/x{i}"
    for sub in ("img", "cond", "depth"):
      os.makedirs(root / sub / os.path.dirname(rel), exist_ok=True)
    a, c = _image(10 + i, 32, 32 + 4 * i), _image(20 + i, 32 + 4 * i, 32)
    d = np.random.default_rng(i).integers(100, 60000, (32, 32)).astype(np.uint16)
    Image.fromarray(a).save(root / "img" / f"{rel}.png")
    Image.fromarray(c).save(root / "cond" / f"{rel}.bmp")
    Image.fromarray(d).save(root / "depth" / f"{rel}.png")
    images.append((rel, _crop(a), _crop(c), d))
  images.sort(key=lambda e: e[0])
  return str(root), images


def test_cond_images_and_depth_cond_stage(vqgan_dir, paired, tmp_path, capsys):
  root, items = paired
  vq = _load(vqgan_dir)
  want_z = _encode(vq, np.stack([e[1] for e in items]))
  out = str(tmp_path / "cond_image")
  rc, summary, _, _ = _run(capsys, *_args(vqgan_dir, f"{root}/img", out), "--cond_vqgan",
                           vqgan_dir, "--cond_type", "image", "--cond_images", f"{root}/cond")
  assert rc == 0 and summary["examples"] == 4
  got = _arrays(out)
  np.testing.assert_array_equal(got["z"], want_z)
  np.testing.assert_array_equal(got["c"], _encode(vq, np.stack([e[2] for e in items])))
  # Depth: the n2n cond stage (1 channel); per-image min/max to [-1, 1], then 32 -> 16
  # with torch's nearest (every second pixel).
  ckpt = tiny("n2n_depth_tiny.ckpt")
  depth = []
  for *_, d in items:
    d = d.astype(np.float64)
    d = (d - d.min()) / (d.max() - d.min()) * 2 - 1
    depth.append(d[::2, ::2, None].astype(np.float32))
  want_c = _encode(_load(ckpt, which="cond_stage"), np.stack(depth))
  out = str(tmp_path / "cond_depth")
  rc, summary, _, _ = _run(capsys, *_args(vqgan_dir, f"{root}/img", out), "--cond_vqgan", ckpt,
                           "--cond_which", "cond_stage", "--cond_type", "depth",
                           "--cond_images", f"{root}/depth", "--downsample_cond_size", 16)
  assert rc == 0
  got = _arrays(out)
  assert got["c"].shape == (4, 4, 4)
  np.testing.assert_array_equal(got["c"], want_c)
  cond = codes.read_meta(out)["conditioning"]
  assert (cond["kind"], cond["cond_type"], cond["cond_grid"], cond["in_channels"],
          cond["downsample_cond_size"], cond["vqgan"]["which"]) == (
              "vq", "depth", [4, 4], 1, 16, "cond_stage")


def test_torch_nearest_is_floor_indexing():
  x = np.arange(7)[:, None] * 10 + np.arange(5)[None]
  got = images.torch_nearest(x, 3, 4)
  np.testing.assert_array_equal(got[:, 0], x[[0, 2, 4], 0])  # floor(i * 7 / 3)
  np.testing.assert_array_equal(got[0], x[0, [0, 1, 2, 3]])  # floor(i * 5 / 4)


def test_segmentation_and_depth_inputs(tmp_path):
  seg = np.random.default_rng(0).integers(0, 3, (16, 20)).astype(np.uint8)
  Image.fromarray(seg).save(tmp_path / "seg.png")
  prep = extract_codes._Prepare(S, "segmentation", 3, None, False, None)
  # 16x20 -> 32x40 (nearest: every pixel twice), centre crop 32x32, one-hot over 3 ids.
  big = seg.repeat(2, axis=0).repeat(2, axis=1)[:, 4:36]
  np.testing.assert_array_equal(prep._cond(str(tmp_path / "seg.png")), np.eye(3)[big])
  Image.fromarray(np.full((32, 32), 255, np.uint8)).save(tmp_path / "unlabeled.png")
  shifted = extract_codes._Prepare(S, "segmentation", 3, 16, True, None)
  np.testing.assert_array_equal(shifted._cond(str(tmp_path / "unlabeled.png"))[..., 0], 1)
  with pytest.raises(ValueError, match=r"class ids in \[255, 255\], outside the cond model's 3"):
    prep._cond(str(tmp_path / "unlabeled.png"))
  # taming's depth PNGs: float32 packed into RGBA bytes; scaled by min/max to [-1, 1].
  depth = np.linspace(2.0, 7.0, 32 * 32, dtype=np.float32).reshape(32, 32)
  Image.fromarray(depth.view(np.uint8).reshape(32, 32, 4), "RGBA").save(tmp_path / "d.png")
  got = extract_codes._Prepare(S, "depth", 1, None, False, None)._cond(str(tmp_path / "d.png"))
  np.testing.assert_allclose(got[..., 0], (depth - 2.0) / 5.0 * 2 - 1, atol=1e-6)


class ExtractTest(tfds.core.GeneratorBasedBuilder):
  """6 RGB images (some wider than tall) with a 3-class label."""

  VERSION = tfds.core.Version("1.0.0")

  @tfds.core.utils.classproperty
  @classmethod
  def code_path(cls):
    return None

  def _info(self):
    return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
        "image": tfds.features.Image(shape=(None, None, 3)),
        "label": tfds.features.ClassLabel(names=["x", "y", "z"])}))

  def _split_generators(self, dl_manager):
    return {"train": self._generate_examples()}

  def _generate_examples(self):
    for i in range(6):
      yield i, {"image": _image(30 + i, 32, 32 + 4 * (i % 3)), "label": i % 3}


@pytest.mark.parametrize("file_format", ["array_record", "tfrecord"])
def test_tfds_source_with_labels_and_a_slice(vqgan_dir, file_format, tmp_path, capsys):
  data_dir = str(tmp_path / "tfds")
  ExtractTest(data_dir=data_dir, file_format=file_format).download_and_prepare(
      download_config=tfds.download.DownloadConfig(try_download_gcs=False))
  out = str(tmp_path / "codes")
  rc, _, _, err = _run(capsys, "--vqgan", vqgan_dir, "--tfds", "extract_test",
                             "--data_dir", data_dir, "--tfds_split", "train[1:6]", "--split",
                             "train", "--out", out, "--size", S, "--labels", "label",
                             "--batch_size", 4, "--chunk_size", 2)
  assert rc == 0, err
  builder = ExtractTest(data_dir=data_dir)
  if file_format == "array_record":
    stored = list(builder.as_data_source("train[1:6]"))
  else:
    stored = list(tfds.as_numpy(builder.as_dataset(
        "train[1:6]", read_config=tfds.ReadConfig(interleave_cycle_length=1))))
  got = _arrays(out)
  want = _encode(_load(vqgan_dir), np.stack([_crop(e["image"]) for e in stored]))
  np.testing.assert_array_equal(got["z"], want)
  np.testing.assert_array_equal(got["label"], [e["label"] for e in stored])
  meta = codes.read_meta(out)
  assert meta["conditioning"]["class_names"] == ["x", "y", "z"]
  assert meta["splits"]["train"]["source"]["split"] == "train[1:6]"


def test_bad_inputs_give_clear_errors(vqgan_dir, folder, paired, tmp_path, capsys):
  images, out = folder[0], str(tmp_path / "codes")
  cases = [
      (_args(str(tmp_path / "nope"), images, out), "--vqgan .*nope: no such file"),
      (_args(images + "/cat/img_0.png", images, out), "img_0.png: not a PyTorch checkpoint"),
      (_args(vqgan_dir, str(tmp_path / "none"), out), "--images .*none: no such folder"),
      (_args(vqgan_dir, images, out)[:-6] + ["--size", 30],
       "--size 30 is not a multiple of the model's downsampling factor 4"),
      (_args(vqgan_dir, paired[0] + "/img", out, "--cond_vqgan", vqgan_dir, "--cond_type",
             "depth", "--cond_images", paired[0] + "/depth"),
       "encodes 3-channel inputs, but --cond_type depth gives 1 channels"),
      (_args(vqgan_dir, images, out, "--cond_vqgan", vqgan_dir, "--cond_type", "image",
             "--cond_images", paired[0] + "/cond"), "no conditioning file for 8 of 8 images"),
      (_args(vqgan_dir, paired[0] + "/img", out, "--cond_vqgan", vqgan_dir),
       "--cond_vqgan, --cond_type and one of"),
      (["--vqgan", vqgan_dir, "--tfds", "no_such_dataset_xyz", "--data_dir", str(tmp_path),
        "--out", out, "--split", "train"], "--tfds no_such_dataset_xyz: not found"),
      (_args(vqgan_dir, images, out)[:-8] + ["--split", "a-b"], "split='a-b'"),
  ]
  for argv, message in cases:
    rc, _, _, err = _run(capsys, *argv)
    assert rc == 2 and err.startswith("error: "), (argv, err)
    assert "Traceback" not in err
    assert re.search(message, err), (message, err)
  assert not os.path.exists(out) or not os.listdir(os.path.join(out, codes.WORK_DIR))


@pytest.fixture(scope="module", autouse=True)
def smoke_run(vqgan_dir, paired, tmp_path_factory):
  """`python -m vqgan_jax.extract_codes` on 2 fake CPU devices (the data-parallel encoder),
  started with the module: it spends most of its time importing TensorFlow and JAX, in
  parallel with the in-process tests."""
  out = str(tmp_path_factory.mktemp("smoke") / "codes")
  proc = subprocess.Popen(
      [sys.executable, "-m", "vqgan_jax.extract_codes", "--vqgan", vqgan_dir, "--images",
       paired[0] + "/img", "--out", out, "--split", "validation", "--size", str(S),
       "--batch_size", "2", "--labels", "folders", "--log_every", "1"],
      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
      env=dict(os.environ, XLA_FLAGS=xla_flags(2)))
  yield proc, out
  if proc.poll() is None:
    proc.kill()
  proc.communicate()


def test_cli_smoke(smoke_run, vqgan_dir, paired):
  proc, out = smoke_run
  stdout, stderr = proc.communicate(timeout=300)
  assert proc.returncode == 0, stderr[-2000:]
  lines = stdout.strip().splitlines()
  assert any(line.startswith("[extract_codes] validation: 2/4 examples") for line in lines)
  summary = json.loads(lines[-1])
  assert {k: summary[k] for k in ("split", "examples", "skipped", "code_grid", "vocab")} == {
      "split": "validation", "examples": 4, "skipped": 0, "code_grid": [8, 8], "vocab": 64}
  assert summary["seconds"] > 0 and summary["out"] == os.path.abspath(out)
  assert summary["devices"] == 2  # batches of 2 split over 2 fake CPU devices
  assert codes.list_splits(out) == ["validation"]
  got = codes.open_code_dataset(out, "validation").read(np.arange(4))
  np.testing.assert_array_equal(got["z"], _encode(_load(vqgan_dir), np.stack([e[1] for e in
                                                                              paired[1]])))
  np.testing.assert_array_equal(got["label"], [0, 0, 1, 1])  # a/x0, a/x2, b/x1, b/x3
