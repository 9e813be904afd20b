"""The transformer trainer in-process on the shared loop: outputs, the exported model,
bitwise resume, resume / init_from / first-stage / conditioning checks.

The data is a class-conditional code dataset written by `python -m vqgan_jax.extract_codes`
(in-process, once per session: gpt_worker.code_dataset): 16x16 images of two class
folders through the tiny taming VQGAN, 4x4 code grids. One run of the tiny config (a
session fixture) serves the output, export and resume assertions; the CLI itself is
covered by one subprocess smoke test (test_train_transformer_cli.py).
"""

import json
import os
import shutil

import jax
import numpy as np
import pytest
from PIL import Image

import gpt_worker as W
from vqgan_test_utils import assert_trees_equal, tiny
from vqgan_jax.training import checkpointing, gpt_config, gpt_trainer, loop

TOTAL = 8
ROWS = 2    # num_images: grid rows (the first validation examples)


@pytest.fixture(scope="session")
def codes(tmp_path_factory, vqgan_tiny_converted):
  """(code dataset dir, the VQGAN model dir that extracted it)."""
  return W.code_dataset(tmp_path_factory, vqgan_tiny_converted)


def tiny_config(codes_dir, **overrides):
  """The `:small` recipe shrunk to compile in seconds: 2 layers, width 32, batch 4,
  cosine schedule with warmup (so a resume must restore the optimizer's count)."""
  c = gpt_config.make_small(gpt_config.base_config())
  c.transformer.update(dict(n_layer=2, n_head=2, n_embd=32))
  c.net2net.cond = "class"
  c.data.codes = codes_dir
  c.optim.update(dict(learning_rate=3e-3, warmup_steps=2, min_lr_ratio=0.1))
  c.update(dict(batch_size=4, total_steps=TOTAL, log_every=4, image_every=TOTAL,
                eval_every=TOTAL, ckpt_every=4, num_images=ROWS))
  c.update(overrides)
  assert gpt_config.validate_config(c) == []
  return c


def _json(path):
  with open(path) as f:
    return json.load(f)


class _Task(gpt_trainer.GPTTask):
  """GPTTask keeping the final state it exports (host copy)."""

  def export(self, state, directory):
    self.final_state = jax.device_get(state)
    return super().export(state, directory)


def _train(config, workdir):
  """loop.train with a task we keep: (summary, task); task.final_state after a full run."""
  task = _Task(config, workdir)
  return loop.train(config, workdir, task), task


@pytest.fixture(scope="session")
def straight_run(codes, tmp_path_factory):
  wd = str(tmp_path_factory.mktemp("gpt_straight"))
  summary, task = _train(tiny_config(codes[0]), wd)
  return wd, summary, task


def test_outputs_and_validation_nll_falls(straight_run):
  wd, summary, task = straight_run
  assert summary["start_step"] == 0 and summary["end_step"] == TOTAL
  assert _json(os.path.join(wd, "summary.json"))["end_step"] == TOTAL
  assert _json(os.path.join(wd, "config.json"))["transformer"]["n_embd"] == 32
  assert sorted(summary["val"], key=int) == ["0", str(TOTAL)]
  before, after = summary["val_before"], summary["val_after"]
  assert before["val/num_examples"] == 6 == after["val/num_examples"]
  assert after["val/nll"] < before["val/nll"] - 0.1, (before, after)
  assert after["val/bits_per_token"] == pytest.approx(after["val/nll"] / np.log(2))
  assert after["val/perplexity"] == pytest.approx(np.exp(after["val/nll"]), rel=1e-6)
  assert sorted(os.listdir(os.path.join(wd, "checkpoints"))) == ["4", "8"]
  # The sizes came from the codes: 4x4 grids, 2 classes, vocabulary 64, 1 + 16 - 1 tokens.
  r = task.r
  assert (r.n2n.z_shape, r.n2n.n_classes, r.gpt_config.vocab_size,
          r.gpt_config.block_size) == ((4, 4), 2, 64, 16)
  assert np.isfinite(summary["train"]["loss"]) and summary["train"]["learning_rate"] > 0


def test_exported_model_loads_and_matches_the_trained_params(straight_run, codes):
  import vqgan_jax
  from vqgan_jax.nn import gpt as gpt_nn
  wd, summary, task = straight_run
  assert summary["model_dir"] == os.path.join(wd, "model")
  n2n = vqgan_jax.load_transformer(summary["model_dir"])
  assert (n2n.config.cond, n2n.config.n_classes, n2n.config.z_shape) == ("class", 2, (4, 4))
  state = task.final_state
  assert int(state.step) == TOTAL
  assert_trees_equal(jax.device_get(n2n.variables["params"]), state.params)
  tokens = np.random.default_rng(0).integers(0, 64, (3, 16)).astype(np.int32)
  direct = gpt_nn.GPT(task.r.gpt_config).apply({"params": state.params}, tokens)
  np.testing.assert_allclose(np.asarray(n2n.transformer_logits(tokens)), np.asarray(direct),
                             atol=1e-6, rtol=1e-6)
  # Its first stage is the codes' VQGAN.
  vq = vqgan_jax.load_vqgan(codes[1])
  assert_trees_equal(jax.device_get(n2n.first_stage.variables), jax.device_get(vq.variables))
  # The run's last validation NLL is the exported model's over the 6 validation codes
  # (two batches of 4, the second padded and masked).
  from vqgan_jax.data import codes as codes_lib
  val = codes_lib.open_code_dataset(codes[0], "validation")
  data = val.read(np.arange(val.num_examples))
  z = n2n.permuter.apply(data["z"].reshape(len(data["z"]), -1))
  logits = np.asarray(n2n.forward_tokens(data["label"][:, None], z), np.float64)
  m = logits.max(-1, keepdims=True)
  logz = m[..., 0] + np.log(np.exp(logits - m).sum(-1))
  nll = (logz - np.take_along_axis(logits, z[..., None], -1)[..., 0]).mean()
  assert summary["val_after"]["val/nll"] == pytest.approx(nll, rel=1e-5)


def test_image_grid_rows_are_the_validation_codes(straight_run, codes):
  """One row per grid example: decoded codes | top half kept | top-k sample | greedy."""
  import vqgan_jax
  from vqgan_jax.data import codes as codes_lib
  from vqgan_jax.images import to_uint8
  wd, summary, _ = straight_run
  assert summary["image_grid"] == os.path.join(wd, "images", f"step_{TOTAL:07d}.png")
  grid = np.asarray(Image.open(summary["image_grid"]))
  s = W.IMAGE_SIZE
  assert grid.shape == (ROWS * s, 4 * s, 3)
  z = codes_lib.open_code_dataset(codes[0], "validation").read(np.arange(ROWS))["z"]
  want = to_uint8(np.asarray(vqgan_jax.load_vqgan(codes[1]).decode_indices(z)))
  got = grid[:, :s].reshape(ROWS, s, s, 3)
  assert np.abs(got.astype(int) - want.astype(int)).max() <= 1


def test_resume_from_step_4_is_bitwise_identical(straight_run, codes, tmp_path):
  """The straight run's workdir as a run killed after its step-4 checkpoint: resumed,
  it ends with the same state, validation NLL and sample grid (the data order, the step
  rngs and the sampling keys are functions of the step; the AdamW count and the
  schedule come back with the state). SIGTERM handling is the shared loop's, tested
  with the VQGAN trainer."""
  straight_wd, straight, straight_task = straight_run
  wd = str(tmp_path / "killed")
  shutil.copytree(os.path.join(straight_wd, "checkpoints"), os.path.join(wd, "checkpoints"))
  shutil.rmtree(os.path.join(wd, "checkpoints", str(TOTAL)))
  resumed, task = _train(tiny_config(codes[0]), wd)
  assert resumed["start_step"] == 4 and resumed["end_step"] == TOTAL
  assert list(resumed["val"]) == [str(TOTAL)]                     # no evaluation at 0
  assert_trees_equal(task.final_state, straight_task.final_state)
  assert resumed["val_after"] == straight["val_after"]
  np.testing.assert_array_equal(np.asarray(Image.open(resumed["image_grid"])),
                                np.asarray(Image.open(straight["image_grid"])))
  assert_trees_equal(_model_variables(wd), _model_variables(straight_wd))


def _model_variables(workdir):
  from vqgan_jax.model_dir import load_model_dir
  return load_model_dir(os.path.join(workdir, "model"))[1]


def test_resume_with_a_changed_transformer_is_refused(straight_run, codes, tmp_path):
  wd = str(tmp_path / "copy")
  shutil.copytree(straight_run[0], wd)
  config = tiny_config(codes[0])
  config.transformer.n_embd = 64
  with pytest.raises(loop.TrainingError) as e:
    gpt_trainer.train_and_evaluate(config, wd)
  msg = str(e.value)
  assert "transformer.n_embd: checkpoint 32, config 64" in msg, msg
  assert "allow_resume_changes" in msg
  assert sorted(os.listdir(os.path.join(wd, "checkpoints"))) == ["4", "8"]  # nothing lost


@pytest.fixture(scope="module")
def n2n_class_dir(tmp_path_factory):
  """n2n_class_tiny.ckpt (+ its project YAML) converted by `python -m vqgan_jax.convert`."""
  from vqgan_jax.convert.__main__ import main as convert_main
  out = str(tmp_path_factory.mktemp("n2n") / "n2n_class_tiny")
  assert convert_main([tiny("n2n_class_tiny.ckpt"), out, "--config",
                       tiny("n2n_class_tiny-project.yaml")]) == 0
  return out


def test_init_from_a_converted_net2net_starts_from_its_weights(codes, n2n_class_dir, tmp_path):
  """Its first stage is the tiny VQGAN of the codes; its GPT (vocabulary 64, block 65,
  2 layers, width 32) fits the config once the block size is set to 65."""
  from vqgan_jax.model_dir import load_model_dir
  config = tiny_config(codes[0], init_from=n2n_class_dir)
  config.transformer.update(dict(vocab_size=64, block_size=65))
  wd = str(tmp_path / "ft")
  task = gpt_trainer.GPTTask(config, wd)
  ckpt = checkpointing.TrainCheckpointer(os.path.join(wd, "checkpoints"))
  try:
    state, start, origin = loop.restore_or_init(task, ckpt, config)
  finally:
    ckpt.close()
  assert start == 0 and n2n_class_dir in origin and int(state.step) == 0
  _, variables = load_model_dir(n2n_class_dir)
  assert_trees_equal(jax.device_get(state.params), variables["transformer"]["params"])
  assert all(float(np.abs(m).max()) == 0 for m in jax.tree_util.tree_leaves(
      jax.device_get(state.opt_state[1][0].mu)))
  # Without the block size the derived one (16 positions) does not fit: shapes named.
  config = tiny_config(codes[0], init_from=n2n_class_dir)
  with pytest.raises(loop.TrainingError) as e:
    gpt_trainer.train_and_evaluate(config, str(tmp_path / "ft2"))
  assert "pos_emb has shape (1, 65, 32), the config's model expects (1, 16, 32)" in str(e.value)


def test_codes_of_another_first_stage_are_refused(codes, tmp_path):
  config = tiny_config(codes[0], first_stage=tiny("gumbel_tiny.ckpt"),
                       first_stage_yaml=tiny("gumbel_tiny-project.yaml"))
  with pytest.raises(loop.TrainingError) as e:
    gpt_trainer.train_and_evaluate(config, str(tmp_path / "w"))
  msg = str(e.value)
  assert msg.startswith("first_stage: the VQGAN differs from the one that extracted "
                        f"{codes[0]}"), msg
  assert "embed_dim" in msg and "quantizer" in msg and "extract the codes again" in msg


def test_codes_of_a_first_stage_with_other_weights_are_refused(codes, vqgan_tiny_converted,
                                                               tmp_path):
  from vqgan_jax.model_dir import save_model_dir
  cfg, variables = vqgan_tiny_converted
  other = jax.tree_util.tree_map(lambda a: np.asarray(a) * 1.01, variables)
  path = save_model_dir(str(tmp_path / "other_vqgan"), other, cfg, kind=cfg["kind"])
  with pytest.raises(loop.TrainingError, match="first_stage"):
    gpt_trainer.GPTTask(tiny_config(codes[0], first_stage=path), str(tmp_path / "w"))


def test_conditioning_that_does_not_fit_the_codes_is_refused(codes, tmp_path):
  config = tiny_config(codes[0])
  config.net2net.cond = "sos"
  with pytest.raises(loop.TrainingError) as e:
    gpt_trainer.train_and_evaluate(config, str(tmp_path / "w"))
  msg = str(e.value)
  assert msg.startswith("net2net.cond: 'sos' does not fit the codes"), msg
  assert "conditioning is 'class' (use net2net.cond='class')" in msg
