"""train_vqgan.py as a user runs it: one subprocess smoke test (the rest is in-process in
test_vqgan_trainer.py and test_cli.py): bad config fields are named without a traceback
before anything is written, and a short run with the full objective (LPIPS included)
trains, reports progress, logs and exports."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from test_vqgan_trainer import write_images

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SCRIPT = os.path.join(REPO, "train_vqgan.py")
SMALL = "--config=configs/vqgan_custom.py:small"

# A model small enough to compile in seconds: f2, 16x16 crops, no attention levels.
TINY = ["--config.model.ch_mult=(1,2)", "--config.model.attn_resolutions=()",
        "--config.model.n_embed=32", "--config.model.z_channels=8",
        "--config.model.embed_dim=8", "--config.data.crop_size=16", "--config.batch_size=4",
        "--config.loss.disc_start=2", "--config.log_every=2", "--config.image_every=4",
        "--config.num_images=4"]


def _run(args, tmp_path):
  env = dict(os.environ, TMPDIR=str(tmp_path), JAX_PLATFORMS="cpu")
  return subprocess.run([sys.executable, SCRIPT, *args], capture_output=True, text=True,
                        timeout=600, cwd=REPO, env=env)


@pytest.mark.slow
def test_cli_smoke(tmp_path):
  train = write_images(str(tmp_path / "train"), 8, 0)
  val = write_images(str(tmp_path / "val"), 3, 1)
  wd = str(tmp_path / "w")
  # Bad fields, all named at once, before anything compiles or is written.
  proc = _run([f"--workdir={wd}", SMALL, f"--config.data.train_images={train}",
               "--config.loss.disc_loss=wasserstein", "--config.batch_size=7",
               "--config.optim.accum_steps=2", "--config.data.crop_size=30",
               "--config.sharding_rules=(('[', 'fsdp'),)"], tmp_path)
  assert proc.returncode == 2
  for needle in ("loss.disc_loss: expected one of ['hinge', 'vanilla']",
                 "optim.accum_steps: expected a positive divisor of batch_size 7",
                 "data.crop_size: 30 must be a multiple of the model's downsampling factor 4",
                 "sharding_rules[0]: '[' is not a regular expression"):
    assert needle in proc.stderr, proc.stderr[-2000:]
  assert "Traceback" not in proc.stderr and not os.path.exists(os.path.join(wd, "checkpoints"))
  # A real run: taming's whole objective (LPIPS, D from step 2, adaptive weight).
  proc = _run([f"--workdir={wd}", SMALL, *TINY, f"--config.data.train_images={train}",
               f"--config.data.val_images={val}", "--config.total_steps=4",
               "--config.eval_every=4", "--config.ckpt_every=2"], tmp_path)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "step 4/4 (100.0%)" in proc.stdout and "steps/s  ETA" in proc.stdout, proc.stdout
  assert "model_dir:" in proc.stdout and "val 4:" in proc.stdout
  summary = json.load(open(os.path.join(wd, "summary.json")))
  assert summary["end_step"] == 4 and summary["train"]["disc_factor"] == 1.0
  assert summary["train"]["p_loss"] > 0 and summary["val_after"]["val/lpips"] > 0
  import vqgan_jax
  vq = vqgan_jax.load_vqgan(os.path.join(wd, "model"))
  assert vq.reconstruct(np.zeros((1, 16, 16, 3), np.float32)).shape == (1, 16, 16, 3)
