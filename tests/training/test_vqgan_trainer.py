"""The VQGAN trainer in-process on the shared loop: outputs, preemption + bitwise resume,
fixed grids, resume and init_from checks, the NaN stop.

One run of the tiny config (a session fixture) serves the output, re-run and resume
assertions; the CLI itself is covered by one subprocess smoke test
(test_train_vqgan_cli.py). No LPIPS term here: its parity is tested in tests/nn.
"""

import json
import os
import shutil
import signal

import jax
import numpy as np
import pytest
from PIL import Image

from vqgan_test_utils import assert_trees_equal, tiny
from vqgan_jax.training import checkpointing, loop, vqgan_config, vqgan_trainer

TOTAL = 8


def write_images(folder, n, seed, size=(24, 20)):
  """n smooth-plus-noise RGB PNGs of `size` in `folder`; returns the folder."""
  rng = np.random.default_rng(seed)
  os.makedirs(folder, exist_ok=True)
  for i in range(n):
    yy, xx = np.mgrid[:size[0], :size[1]]
    base = np.sin(xx / (2 + i % 5))[..., None] * np.array([90, 40, 120]) + 128
    img = np.clip(base + rng.normal(0, 20, base.shape), 0, 255).astype(np.uint8)
    Image.fromarray(img).save(os.path.join(folder, f"img_{i:03d}.png"))
  return str(folder)


@pytest.fixture(scope="session")
def image_folders(tmp_path_factory):
  root = tmp_path_factory.mktemp("trainer_images")
  return write_images(root / "train", 12, 0), write_images(root / "val", 5, 1)


def tiny_config(image_folders, **overrides):
  """The `:small` recipe shrunk to compile in seconds: f2, 16x16 crops, no attention."""
  c = vqgan_config.recipe(vqgan_config.base_config(), "small", "test")
  c.model.update(dict(ch_mult=(1, 2), attn_resolutions=(), n_embed=32, z_channels=8,
                      embed_dim=8))
  c.loss.update(dict(disc_start=2, perceptual_weight=0.0))
  c.data.crop_size = 16
  c.data.train_images, c.data.val_images = image_folders
  c.update(dict(batch_size=4, log_every=2, image_every=4, num_images=4, total_steps=TOTAL,
                eval_every=TOTAL, ckpt_every=4, dead_code_restart_every=3))
  c.update(overrides)
  assert vqgan_config.validate_config(c) == []
  return c


@pytest.fixture(scope="session")
def straight_run(image_folders, tmp_path_factory):
  wd = str(tmp_path_factory.mktemp("straight"))
  return wd, vqgan_trainer.train_and_evaluate(tiny_config(image_folders), wd)


def _model(workdir):
  from vqgan_jax.model_dir import load_model_dir
  return load_model_dir(os.path.join(workdir, "model"))


def _input_column(path, size=16):
  return np.asarray(Image.open(path))[:, :size]


def test_outputs(straight_run):
  wd, summary = straight_run
  assert summary["start_step"] == 0 and summary["end_step"] == TOTAL
  assert json.load(open(os.path.join(wd, "summary.json")))["end_step"] == TOTAL
  assert sorted(summary["val"], key=int) == ["0", str(TOTAL)]
  assert summary["val_before"]["val/num_images"] == 5 == summary["val_after"]["val/num_images"]
  assert set(summary["val_after"]) >= {"val/l1", "val/psnr", "val/ssim", "val/code_usage",
                                       "val/perplexity"}
  assert "val/lpips" not in summary["val_after"]  # no LPIPS term, no LPIPS network
  assert sorted(os.listdir(os.path.join(wd, "checkpoints")))[-2:] == ["4", "8"]
  assert any(f.startswith("events.out.tfevents") for f in os.listdir(summary["tensorboard"]))
  grid = np.asarray(Image.open(summary["image_grid"]))
  assert grid.shape == (4 * 16, 2 * 16, 3)  # 4 validation images: input | reconstruction
  cfg, variables = _model(wd)
  assert cfg["kind"] == "vqgan" and set(variables) == {"vqgan", "discriminator"}
  import vqgan_jax
  vq = vqgan_jax.load_vqgan(os.path.join(wd, "model"))
  assert vq.reconstruct(np.zeros((1, 16, 16, 3), np.float32)).shape == (1, 16, 16, 3)


def test_finished_run_resumes_at_the_end(straight_run, image_folders, tmp_path):
  wd = str(tmp_path / "copy")
  shutil.copytree(straight_run[0], wd)
  again = vqgan_trainer.train_and_evaluate(tiny_config(image_folders), wd)
  assert again["start_step"] == again["end_step"] == TOTAL


class _PreemptedAt3(vqgan_trainer.VQGANTask):
  """Sends itself SIGTERM after step 3, as a preempted TPU VM would be."""

  def train_step(self, state, batch):
    state, metrics = super().train_step(state, batch)
    if int(jax.device_get(state.step)) == 3:
      os.kill(os.getpid(), signal.SIGTERM)
    return state, metrics


def test_preemption_then_resume_is_bitwise_identical(straight_run, image_folders, tmp_path):
  wd = str(tmp_path / "preempted")
  config = tiny_config(image_folders)
  first = loop.train(config, wd, _PreemptedAt3(config, wd))
  assert first["end_step"] == 3 and "model_dir" not in first
  assert list(first["val"]) == ["0"]                            # no evaluation before saving
  assert os.listdir(os.path.join(wd, "checkpoints")) == ["3"]   # saved on SIGTERM
  resumed = vqgan_trainer.train_and_evaluate(config, wd)
  assert resumed["start_step"] == 3 and resumed["end_step"] == TOTAL
  assert_trees_equal(_model(straight_run[0])[1], _model(wd)[1])
  # Grids show the same images across the resume (the first validation images).
  straight_grid = os.path.join(straight_run[0], "images", "step_0000004.png")
  np.testing.assert_array_equal(_input_column(resumed["image_grid"]),
                                _input_column(straight_grid))


def test_resume_with_a_changed_config_is_refused(straight_run, image_folders, tmp_path):
  wd = str(tmp_path / "copy")
  shutil.copytree(straight_run[0], wd)
  config = tiny_config(image_folders, seed=24, batch_size=8)
  with pytest.raises(loop.TrainingError) as e:
    vqgan_trainer.train_and_evaluate(config, wd)
  msg = str(e.value)
  assert "seed: checkpoint 23, config 24" in msg and "batch_size: checkpoint 4, config 8" in msg
  assert "allow_resume_changes" in msg
  assert sorted(os.listdir(os.path.join(wd, "checkpoints"))) == ["4", "8"]  # nothing lost
  config = tiny_config(image_folders, seed=24, batch_size=8, allow_resume_changes=True)
  assert vqgan_trainer.train_and_evaluate(config, wd)["start_step"] == TOTAL


def test_init_from_another_architecture_names_the_keys(straight_run, image_folders, tmp_path):
  model = os.path.join(straight_run[0], "model")
  config = tiny_config(image_folders, init_from=model)
  config.model.attn_resolutions = (16,)    # adds attention blocks the checkpoint lacks
  config.model.n_embed = 64                # and another codebook size
  with pytest.raises(loop.TrainingError) as e:
    vqgan_trainer.train_and_evaluate(config, str(tmp_path / "ft"))
  msg = str(e.value)
  assert "missing params/encoder/down_1/attn_0/q/kernel" in msg, msg
  assert "params/quantize/embedding/embedding has shape (32, 8), the config's model expects (64, 8)" in msg
  assert not os.listdir(os.path.join(tmp_path, "ft", "checkpoints"))


def test_init_from_taming_checkpoint_starts_from_its_weights(image_folders, tmp_path):
  """Fine-tuning starts from exactly the converter's weights (tests/convert checks those
  against the reference's outputs), with a fresh optimizer at step 0."""
  config = tiny_config(image_folders, init_from=tiny("vqgan_tiny.ckpt"))
  config.model.update(dict(ch=32, ch_mult=(1, 1, 1), num_res_blocks=1, attn_resolutions=(8,),
                           resolution=32, z_channels=32, embed_dim=16, n_embed=64))
  config.data.crop_size = 32
  config.loss.update(disc_ndf=16, disc_num_layers=2)   # the checkpoint's discriminator
  task = vqgan_trainer.VQGANTask(config, str(tmp_path / "ft"))
  ckpt = checkpointing.TrainCheckpointer(str(tmp_path / "ft" / "checkpoints"))
  state, start, origin = loop.restore_or_init(task, ckpt, config)
  ckpt.close()
  assert start == 0 and "vqgan_tiny.ckpt" in origin
  from vqgan_jax.convert.checkpoint import convert_taming_checkpoint
  _, ref = convert_taming_checkpoint(tiny("vqgan_tiny.ckpt"))
  assert_trees_equal(jax.device_get(state.ae_params), ref["vqgan"]["params"])
  assert_trees_equal(jax.device_get(state.d_params), ref["discriminator"]["params"])
  assert int(state.step) == 0
  assert all(float(np.abs(m).max()) == 0 for m in jax.tree_util.tree_leaves(
      jax.device_get(state.ae_opt_state[0].mu)))


class _NaNAt2(vqgan_trainer.VQGANTask):
  def train_step(self, state, batch):
    state, metrics = super().train_step(state, batch)
    if int(jax.device_get(state.step)) == 2:
      metrics = dict(metrics, total_loss=np.float32("nan"))
    return state, metrics


def test_non_finite_loss_stops_with_a_message(image_folders, tmp_path):
  wd = str(tmp_path / "nan")
  config = tiny_config(image_folders, ckpt_every=1, total_steps=4)
  with pytest.raises(loop.TrainingError, match=r"non-finite metrics at step 2: \{'total_loss'"
                                               r".*the last checkpoint is step 1"):
    loop.train(config, wd, _NaNAt2(config, wd))
  assert os.listdir(os.path.join(wd, "checkpoints")) == ["1"]  # the bad state is not saved


def test_rfid_in_validation_equals_inception_features_of_the_crops(image_folders, tmp_path,
                                                                    inception_pth):
  """With eval.inception, validation adds val/rfid: the FID between the reconstructions and
  the validation crops as PNGs hold them. Checked against InceptionFeatures run on
  to_uint8 of the crops and of the state's reconstructions (a second path), and again on a
  second evaluation (the crops' statistics are then reused)."""
  from vqgan_jax import fid
  from vqgan_jax.data import pipeline
  from vqgan_jax.images import to_uint8
  from vqgan_jax.training import sharding
  c = tiny_config(image_folders, batch_size=2)  # Inception is slow on CPU: 2 images
  c.data.val_images = write_images(tmp_path / "val2", 2, 1)
  c.eval.inception = inception_pth
  task = vqgan_trainer.VQGANTask(c, str(tmp_path))
  state = task.init_state(jax.random.PRNGKey(0))
  first = task.evaluate(state)
  batch = next(pipeline.create_eval_iterator(c.data, global_batch_size=2,
                                             workdir=str(tmp_path)))
  n = int(batch["mask"].sum())
  assert n == 2 == first["val/num_images"]
  x, rec = jax.device_get(task.steps.reconstruct(
      state, sharding.global_batch({"image": batch["image"]}, task.mesh)["image"]))
  net = fid.InceptionFeatures(fid._cached_variables(inception_pth))
  real = fid.FeatureSet().update(net(to_uint8(x[:n]).astype(np.float32) / 255.0))
  fake = fid.FeatureSet().update(net(to_uint8(rec[:n]).astype(np.float32) / 255.0))
  want = fid.scores(real, fake)["fid"]
  assert first["val/rfid"] == pytest.approx(want, rel=1e-4)
  assert task.evaluate(state)["val/rfid"] == pytest.approx(first["val/rfid"], rel=1e-9)


def test_missing_inception_file_is_a_config_error(image_folders, tmp_path):
  c = tiny_config(image_folders)
  c.eval.inception = str(tmp_path / "nope.pth")
  errors = vqgan_config.validate_config(c)
  assert len(errors) == 1 and "eval.inception" in errors[0] and "nope.pth" in errors[0]


def test_factorized_l2_codes_train_export_and_load(image_folders, tmp_path):
  """codebook_dim + l2_normalize_codes (+ the dead-code restart of tiny_config): trains,
  exports a model directory that load_vqgan reads, whose indices are the nearest
  normalised codes of the projected latents (numpy) and whose decode_indices equals
  decoding the quantized latents; the code vocabulary stays n_embed."""
  from vqgan_jax.api import load_vqgan
  c = tiny_config(image_folders, total_steps=4, eval_every=4, image_every=4, ckpt_every=4)
  c.model.update(dict(codebook_dim=4, l2_normalize_codes=True, legacy=False))
  summary = vqgan_trainer.train_and_evaluate(c, str(tmp_path))
  assert summary["end_step"] == 4 and "val/code_usage" in summary["val_after"]
  vq = load_vqgan(os.path.join(str(tmp_path), "model"))
  assert (vq.config.codebook_dim, vq.config.l2_normalize_codes, vq.config.num_codes) == (4, True, 32)
  x = np.random.default_rng(0).uniform(-1, 1, (2, 16, 16, 3)).astype(np.float32)
  z_q, idx = vq.encode(x)
  q = jax.tree_util.tree_map(np.asarray, vq.variables["params"]["quantize"])
  u = np.asarray(vq.encode_to_prequant(x), np.float64) @ q["proj_in"]["kernel"] + q["proj_in"]["bias"]
  u /= np.linalg.norm(u, axis=-1, keepdims=True)
  e = q["embedding"]["embedding"] / np.linalg.norm(q["embedding"]["embedding"], axis=-1,
                                                   keepdims=True)
  want = np.argmax(u @ e.T, axis=-1)  # nearest unit vector = largest cosine
  np.testing.assert_array_equal(np.asarray(idx), want)
  np.testing.assert_allclose(np.asarray(vq.decode_indices(idx)), np.asarray(vq.decode(z_q)),
                             atol=1e-5)
