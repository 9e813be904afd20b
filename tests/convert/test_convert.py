"""Converting taming checkpoints: CLI, load_vqgan, key reports, config inference."""

import subprocess
import sys

import jax
import numpy as np
import pytest

from vqgan_test_utils import assert_trees_equal, nhwc, tiny
from vqgan_jax.api import load_vqgan
from vqgan_jax.convert import checkpoint, taming
from vqgan_jax.convert.torch_reader import read_state_dict
from vqgan_jax.model_dir import load_model_dir
from vqgan_jax.nn.vqgan import VQGANConfig


def test_cli_then_load_vqgan_decode_indices(tmp_path, vqgan_tiny_ref):
  out = tmp_path / "vqgan_tiny"
  proc = subprocess.run([sys.executable, "-m", "vqgan_jax.convert", tiny("vqgan_tiny.ckpt"),
                         str(out), "--config", tiny("vqgan_tiny-project.yaml")],
                        capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr
  assert (out / "config.json").is_file() and (out / "variables").is_dir()
  vq = load_vqgan(str(out))
  ref = vqgan_tiny_ref
  np.testing.assert_allclose(vq.decode_indices(ref["indices"]), nhwc(ref["dec"]), atol=2e-4,
                             rtol=0)
  z_q, idx = vq.encode(nhwc(ref["x"]))
  np.testing.assert_array_equal(idx, ref["indices"])
  assert idx.dtype == np.int32 and z_q.dtype == np.float32 and z_q.shape == (2, 8, 12, 16)
  np.testing.assert_allclose(vq.decode(z_q), nhwc(ref["dec"]), atol=2e-4, rtol=0)
  np.testing.assert_allclose(vq.reconstruct(nhwc(ref["x"])), nhwc(ref["dec"]), atol=2e-4, rtol=0)
  # The discriminator and its BatchNorm statistics travel with the model directory.
  cfg, variables = load_model_dir(str(out))
  assert cfg["kind"] == "vqgan" and cfg["format_version"] == 2
  assert cfg["discriminator"] == {"input_nc": 3, "ndf": 16, "n_layers": 2, "use_actnorm": False}
  assert cfg["loss"]["disc_start"] == 3
  assert set(variables["discriminator"]) == {"params", "batch_stats"}


def test_load_vqgan_straight_from_ckpt_without_yaml(vqgan_tiny_converted, vqgan_tiny_ref):
  vq = load_vqgan(tiny("vqgan_tiny.ckpt"))
  assert_trees_equal(jax.device_get(vq.variables), vqgan_tiny_converted[1]["vqgan"])
  # The inferred config builds the same network (resolution differs, attention does not).
  inferred, given = vq.config, VQGANConfig.from_dict(vqgan_tiny_converted[0]["vqgan"])
  assert (inferred.ch, inferred.ch_mult, inferred.num_res_blocks, inferred.n_embed,
          inferred.embed_dim, inferred.z_channels) == (given.ch, given.ch_mult,
                                                       given.num_res_blocks, given.n_embed,
                                                       given.embed_dim, given.z_channels)
  np.testing.assert_allclose(vq.decode_indices(vqgan_tiny_ref["indices"]),
                             nhwc(vqgan_tiny_ref["dec"]), atol=2e-4, rtol=0)


def test_legacy_format_converts_identically(vqgan_tiny_converted):
  _, legacy = checkpoint.convert_taming_checkpoint(tiny("vqgan_tiny_legacy.ckpt"),
                                                   tiny("vqgan_tiny-project.yaml"))
  assert_trees_equal(legacy, vqgan_tiny_converted[1])


def test_net2net_subtrees(vqgan_tiny_converted):
  cfg, v = checkpoint.convert_taming_checkpoint(tiny("n2n_class_tiny.ckpt"),
                                                tiny("n2n_class_tiny-project.yaml"))
  assert "cond_stage" not in v and "discriminator" not in v  # Labelator has no weights
  assert_trees_equal(v["vqgan"], vqgan_tiny_converted[1]["vqgan"])  # bit-identical first stage
  cfg, v = checkpoint.convert_taming_checkpoint(tiny("n2n_depth_tiny.ckpt"))
  assert cfg["cond_stage"]["in_channels"] == 1 and cfg["cond_stage"]["ch_mult"] == [2, 1, 1]
  assert cfg["cond_stage"]["attn_resolutions"] == []
  vq = load_vqgan(tiny("n2n_depth_tiny.ckpt"), which="cond_stage")
  ref = np.load(tiny("n2n_depth_tiny.npz"))
  np.testing.assert_allclose(vq.decode(nhwc(ref["cond_z_q"])), nhwc(ref["cond_dec"]), atol=2e-4,
                             rtol=0)


def test_mismatches_are_reported_by_key_all_at_once():
  sd = dict(read_state_dict(tiny("vqgan_tiny.ckpt")))
  del sd["encoder.conv_in.bias"]
  del sd["decoder.up.1.block.0.conv2.weight"]
  sd["encoder.down.0.block.0.extra.weight"] = np.zeros((2, 2, 1, 1), np.float32)
  sd["quant_conv.weight"] = np.zeros((16, 32, 3, 3), np.float32)
  cfg = VQGANConfig.from_dict(checkpoint.read_project_yaml(tiny("vqgan_tiny-project.yaml"))
                              ["vqgan"].to_dict())
  with pytest.raises(taming.ConversionError) as err:
    checkpoint.convert_state_dict_tree(sd, {"vqgan": cfg}, source="edited.ckpt")
  msg = str(err.value)
  assert msg.startswith("edited.ckpt")
  for needle in ("2 missing keys", "encoder.conv_in.bias", "decoder.up.1.block.0.conv2.weight",
                 "1 unexpected keys", "encoder.down.0.block.0.extra.weight",
                 "1 shape mismatches", "quant_conv.weight: converted shape (3, 3, 32, 16) but the "
                 "model expects (1, 1, 32, 16)"):
    assert needle in msg, (needle, msg)


def test_yaml_disagreeing_with_weights_is_reported(tmp_path):
  text = open(tiny("vqgan_tiny-project.yaml")).read().replace("n_embed: 64", "n_embed: 128")
  bad = tmp_path / "bad-project.yaml"
  bad.write_text(text)
  with pytest.raises(taming.ConversionError, match="quantize.embedding.weight: converted shape"):
    checkpoint.convert_taming_checkpoint(tiny("vqgan_tiny.ckpt"), str(bad))
  junk = tmp_path / "junk.yaml"
  junk.write_text("model: [1, 2]\n")
  with pytest.raises(ValueError, match="junk.yaml: expected a top-level 'model'"):
    checkpoint.read_project_yaml(str(junk))


def test_cli_reports_errors_without_traceback(tmp_path):
  bad = tmp_path / "not_a_ckpt.ckpt"
  bad.write_bytes(b"hello, this is no checkpoint")
  out = tmp_path / "out"
  proc = subprocess.run([sys.executable, "-m", "vqgan_jax.convert", str(bad), str(out)],
                        capture_output=True, text=True, timeout=300)
  assert proc.returncode == 2
  assert "not_a_ckpt.ckpt" in proc.stderr and "Traceback" not in proc.stderr
  assert not out.exists()


def test_config_inference_of_gumbel_and_released_layout():
  sd = read_state_dict(tiny("gumbel_tiny.ckpt"))
  cfg = taming.infer_vqgan_config(sd)
  assert (cfg.quantizer, cfg.n_embed, cfg.embed_dim, cfg.ch_mult) == ("gumbel", 64, 32, (1, 1, 1))
  # A released f16 layout, built from shapes only: attention at level 4 <-> resolution 16.
  from vqgan_jax.nn.vqgan import abstract_variables
  f16 = VQGANConfig(n_embed=1024)
  flat = {}
  for path, leaf in jax.tree_util.tree_flatten_with_path(abstract_variables(f16)["params"])[0]:
    keys = tuple(k.key for k in path)
    shape = leaf.shape[::-1] if len(leaf.shape) == 4 else leaf.shape  # HWIO -> OIHW
    flat[taming.path_to_torch_key("params", keys)] = np.zeros(shape, np.float32)
  got = taming.infer_vqgan_config(flat)
  assert (got.ch, got.ch_mult, got.num_res_blocks, got.attn_resolutions, got.z_channels,
          got.n_embed, got.embed_dim) == (128, (1, 1, 2, 2, 4), 2, (16,), 256, 1024, 256)


def test_image_checks_name_the_problem(vqgan_tiny_converted):
  vq = load_vqgan(tiny("vqgan_tiny.ckpt"))
  with pytest.raises(ValueError, match="multiples of the downsampling factor 4"):
    vq.encode(np.zeros((1, 30, 32, 3), np.float32))
  with pytest.raises(ValueError, match=r"float32\[B, H, W, 3\]"):
    vq.encode(np.zeros((1, 3, 32, 32), np.float32))
  with pytest.raises(ValueError, match=r"indices must lie in \[0, 64\)"):
    vq.decode_indices(np.full((1, 2, 2), 64))
  with pytest.raises(ValueError, match=r"indices must lie in \[0, 64\)"):
    vq.decode_indices(np.full((1, 2, 2), -1))
  with pytest.raises(FileNotFoundError, match="no such file"):
    load_vqgan("/nonexistent/model")


def test_decode_indices_refuses_out_of_range_jax_arrays():
  """A jitted gather clamps: jax indices are range-checked like numpy ones."""
  import jax.numpy as jnp
  vq = load_vqgan(tiny("vqgan_tiny.ckpt"))
  both = jnp.zeros((1, 2, 2), jnp.int32).at[0, 0, 1].set(64).at[0, 1, 1].set(-1)
  with pytest.raises(ValueError, match=r"indices must lie in \[0, 64\); got values in \[-1, 64\]"):
    vq.decode_indices(both)
  for bad in (64, -1):
    with pytest.raises(ValueError, match=r"indices must lie in \[0, 64\)"):
      vq.decode_indices(jnp.zeros((1, 2, 2), jnp.int32).at[0, 1, 1].set(bad))
  assert vq.decode_indices(jnp.full((1, 2, 2), 63, jnp.int32)).shape == (1, 8, 8, 3)


@pytest.mark.slow
def test_reconstruct_cli(tmp_path):
  from PIL import Image
  rng = np.random.default_rng(0)
  img_dir = tmp_path / "imgs"
  img_dir.mkdir()
  Image.fromarray(rng.integers(0, 255, (40, 56, 3), dtype=np.uint8)).save(img_dir / "a.png")
  Image.fromarray(rng.integers(0, 255, (50, 50), dtype=np.uint8)).save(img_dir / "b.jpg")
  out = tmp_path / "out"
  proc = subprocess.run([sys.executable, "-m", "vqgan_jax.reconstruct", "--checkpoint",
                         tiny("vqgan_tiny.ckpt"), "--images", str(img_dir), "--out", str(out),
                         "--size", "32"], capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr
  for name in ("a_recon.png", "b_recon.png", "grid.png"):
    assert (out / name).is_file()
  pair = np.asarray(Image.open(out / "a_recon.png"))
  assert pair.shape == (32, 64, 3)
  # The left half is the preprocessed input: Lanczos resize of the smaller side, centre crop.
  src = Image.open(img_dir / "a.png").resize((45, 32), Image.LANCZOS).crop((6, 0, 38, 32))
  np.testing.assert_array_equal(pair[:, :32], np.asarray(src))
