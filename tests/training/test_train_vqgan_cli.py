"""train_vqgan.py end to end: outputs, SIGKILL + resume (bitwise), init_from, bad configs."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from PIL import Image

from vqgan_test_utils import assert_trees_equal, tiny

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# A model small enough to compile in seconds: f2, 16x16 crops, no attention levels.
TINY = ["--config.model.ch_mult=(1,2)", "--config.model.attn_resolutions=()",
        "--config.model.n_embed=32", "--config.model.z_channels=8",
        "--config.model.embed_dim=8", "--config.data.crop_size=16", "--config.batch_size=4",
        "--config.loss.disc_start=2", "--config.log_every=2", "--config.image_every=4",
        "--config.num_images=4"]


def _images(folder, n, seed, size=(24, 20)):
  rng = np.random.default_rng(seed)
  os.makedirs(folder, exist_ok=True)
  for i in range(n):
    yy, xx = np.mgrid[:size[0], :size[1]]
    base = np.sin(xx / (2 + i % 5))[..., None] * np.array([90, 40, 120]) + 128
    img = np.clip(base + rng.normal(0, 20, base.shape), 0, 255).astype(np.uint8)
    Image.fromarray(img).save(os.path.join(folder, f"img_{i:03d}.png"))
  return folder


def _cmd(workdir, *extra, config="configs/vqgan_custom.py:small"):
  return [sys.executable, os.path.join(REPO, "train_vqgan.py"), f"--config={config}",
          f"--workdir={workdir}", *extra]


def _env(tmp_path):
  return dict(os.environ, TMPDIR=str(tmp_path), JAX_PLATFORMS="cpu")


def _run(cmd, tmp_path, timeout=600):
  return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=REPO,
                        env=_env(tmp_path))


def _model_params(workdir):
  from vqgan_jax.model_dir import load_model_dir
  return load_model_dir(os.path.join(workdir, "model"))[1]


@pytest.mark.slow
def test_cli_trains_logs_and_exports(tmp_path):
  train = _images(str(tmp_path / "train"), 12, 0)
  val = _images(str(tmp_path / "val"), 5, 1)
  wd = str(tmp_path / "run")
  proc = _run(_cmd(wd, *TINY, f"--config.data.train_images={train}",
                   f"--config.data.val_images={val}", "--config.total_steps=8",
                   "--config.eval_every=8", "--config.ckpt_every=4"), tmp_path)
  assert proc.returncode == 0, proc.stderr[-3000:]
  summary = json.load(open(os.path.join(wd, "summary.json")))
  assert summary["end_step"] == 8
  assert summary["val_before"]["val/num_images"] == 5 == summary["val_after"]["val/num_images"]
  assert sorted(os.listdir(os.path.join(wd, "checkpoints")))[-2:] == ["4", "8"]
  assert any(f.startswith("events.out.tfevents") for f in os.listdir(summary["tensorboard"]))
  grid = np.asarray(Image.open(summary["image_grid"]))
  assert grid.shape == (4 * 16, 2 * 16, 3)  # 4 rows of input | reconstruction
  assert "model_dir:" in proc.stdout and "val_after:" in proc.stdout
  import vqgan_jax
  vq = vqgan_jax.load_vqgan(os.path.join(wd, "model"))
  assert vq.reconstruct(np.zeros((1, 16, 16, 3), np.float32)).shape == (1, 16, 16, 3)
  # Re-running the finished command resumes at the end and does nothing more.
  again = _run(_cmd(wd, *TINY, f"--config.data.train_images={train}",
                    f"--config.data.val_images={val}", "--config.total_steps=8"), tmp_path)
  assert again.returncode == 0, again.stderr[-3000:]
  assert json.load(open(os.path.join(wd, "summary.json")))["start_step"] == 8


@pytest.mark.slow
def test_sigkill_then_resume_is_bitwise_identical(tmp_path):
  train = _images(str(tmp_path / "train"), 10, 2)
  common = [*TINY, f"--config.data.train_images={train}", "--config.total_steps=14",
            "--config.ckpt_every=2", "--config.dead_code_restart_every=3"]
  straight = str(tmp_path / "straight")
  proc = _run(_cmd(straight, *common), tmp_path)
  assert proc.returncode == 0, proc.stderr[-3000:]

  killed = str(tmp_path / "killed")
  p = subprocess.Popen(_cmd(killed, *common), cwd=REPO, env=_env(tmp_path),
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  ckpts = os.path.join(killed, "checkpoints")
  deadline = time.time() + 600
  try:
    while time.time() < deadline and p.poll() is None:
      done = [d for d in os.listdir(ckpts) if d.isdigit()] if os.path.isdir(ckpts) else []
      if done:
        p.send_signal(signal.SIGKILL)
        break
      time.sleep(0.05)
  finally:
    p.wait(timeout=60)
  assert p.returncode == -signal.SIGKILL, "the run finished before it could be killed"
  steps_left = sorted(int(d) for d in os.listdir(ckpts) if d.isdigit())
  assert steps_left and max(steps_left) < 14
  resumed = _run(_cmd(killed, *common), tmp_path)
  assert resumed.returncode == 0, resumed.stderr[-3000:]
  assert json.load(open(os.path.join(killed, "summary.json")))["start_step"] == max(steps_left)
  assert_trees_equal(_model_params(straight), _model_params(killed))


@pytest.mark.slow
def test_init_from_taming_checkpoint(tmp_path):
  """Fine-tuning starts from the converted weights: step-0 validation L1 equals load_vqgan's."""
  val = _images(str(tmp_path / "val"), 4, 3, size=(32, 40))
  train = _images(str(tmp_path / "train"), 4, 4, size=(32, 40))
  wd = str(tmp_path / "ft")
  arch = ["--config.model.ch=32", "--config.model.ch_mult=(1,1,1)",
          "--config.model.num_res_blocks=1", "--config.model.attn_resolutions=(8,)",
          "--config.model.resolution=32", "--config.model.z_channels=32",
          "--config.model.embed_dim=16", "--config.model.n_embed=64",
          "--config.loss.disc_ndf=16", "--config.loss.disc_num_layers=2",
          "--config.data.crop_size=32", "--config.batch_size=4"]
  proc = _run(_cmd(wd, *arch, f"--config.init_from={tiny('vqgan_tiny.ckpt')}",
                   f"--config.data.train_images={train}", f"--config.data.val_images={val}",
                   "--config.total_steps=1"), tmp_path)
  assert proc.returncode == 0, proc.stderr[-3000:]
  before = json.load(open(os.path.join(wd, "summary.json")))["val_before"]["val/l1"]
  import vqgan_jax
  from vqgan_jax.data import pipeline
  from vqgan_jax.training.vqgan_config import base_config
  cfg = base_config().data
  cfg.val_images, cfg.train_images, cfg.crop_size = val, train, 32
  x = np.concatenate([b["image"] for b in pipeline.create_eval_iterator(
      cfg, global_batch_size=4, workdir=str(tmp_path / "prep"))])
  rec = np.clip(vqgan_jax.load_vqgan(tiny("vqgan_tiny.ckpt")).reconstruct(x), -1, 1)
  np.testing.assert_allclose(before, np.mean(np.abs(rec - x)), rtol=1e-4)


def test_bad_config_fields_are_named(tmp_path):
  train = _images(str(tmp_path / "train"), 2, 5)
  proc = _run(_cmd(str(tmp_path / "w"), f"--config.data.train_images={train}",
                   "--config.loss.disc_loss=wasserstein", "--config.batch_size=7",
                   "--config.optim.accum_steps=2", "--config.data.crop_size=30"), tmp_path)
  assert proc.returncode == 2
  for needle in ("loss.disc_loss: expected one of ['hinge', 'vanilla']",
                 "optim.accum_steps: expected a positive divisor of batch_size 7",
                 "data.crop_size: 30 must be a multiple of the model's downsampling factor 4"):
    assert needle in proc.stderr, proc.stderr[-2000:]
  assert "Traceback" not in proc.stderr
  assert not os.path.exists(tmp_path / "w" / "checkpoints")
  proc = _run(_cmd(str(tmp_path / "w"), f"--config.data.train_images={train}",
                   "--config.loss.disc_strat=5"), tmp_path)
  assert proc.returncode != 0 and "disc_strat" in proc.stderr
  proc = _run(_cmd(str(tmp_path / "w"), "--config.data.train_images=/no/such/folder"), tmp_path)
  assert proc.returncode == 2 and "data.train_images" in proc.stderr
