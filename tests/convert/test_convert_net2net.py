"""Converting taming Net2NetTransformer checkpoints: the CLI with and without the project YAML
(what the weights cannot tell comes from a flag the error names), the transformer weights, the
dropped attention masks, permuter buffers, a segmentation cond stage's colorize, and key and
YAML mismatches reported by name."""

import pathlib

import jax
import numpy as np
import pytest

from vqgan_test_utils import assert_trees_equal, tiny
from vqgan_jax import model_dir, permuters
from vqgan_jax.api import load_vqgan
from vqgan_jax.convert import checkpoint
from vqgan_jax.convert.__main__ import main
from vqgan_jax.convert.net2net import net2net_sections
from vqgan_jax.convert.taming import ConversionError
from vqgan_jax.convert.torch_reader import read_state_dict
from vqgan_jax.net2net import Net2Net, load_transformer

CLASS_FLAGS = ["--n_head", "2", "--cond", "class", "--n_classes", "10"]


@pytest.fixture(scope="module")
def class_sd():
  return read_state_dict(tiny("n2n_class_tiny.ckpt"))


@pytest.fixture(scope="module")
def class_project():
  return checkpoint.read_project_yaml(tiny("n2n_class_tiny-project.yaml"))


@pytest.fixture(scope="module")
def class_yaml():
  """(config, variables) of n2n_class_tiny.ckpt converted with its project YAML."""
  return checkpoint.convert_taming_checkpoint(tiny("n2n_class_tiny.ckpt"),
                                              tiny("n2n_class_tiny-project.yaml"),
                                              require_transformer=True)


@pytest.fixture(scope="module")
def depth_yaml():
  return checkpoint.convert_taming_checkpoint(tiny("n2n_depth_tiny.ckpt"),
                                              tiny("n2n_depth_tiny-project.yaml"),
                                              require_transformer=True)


def _convert(sd, project=None, **overrides):
  return checkpoint.convert_state_dict_tree(sd, project, source="edited.ckpt",
                                            overrides=overrides, require_transformer=True)


def _sections(sd, project, **overrides):
  """Only the transformer half of `_convert` (the first stage is the YAML's): what the
  error-message tests need, without converting the VQGAN each time."""
  return net2net_sections(sd, project, overrides, project["vqgan"], None, "edited.ckpt")


def test_with_yaml(class_yaml, depth_yaml):
  cfg, v = class_yaml
  assert cfg["kind"] == "net2net" and set(v) == {"vqgan", "transformer"}
  assert cfg["transformer"]["n_head"] == 2 and cfg["transformer"]["block_size"] == 65
  n2n = cfg["net2net"]
  assert (n2n["cond"], n2n["n_classes"], n2n["cond_stage_key"]) == ("class", 10, "class_label")
  assert (n2n["z_shape"], n2n["permuter"]) == ([8, 8], "identity")
  cfg, v = depth_yaml
  assert set(v) == {"vqgan", "cond_stage", "transformer"}
  n2n = cfg["net2net"]
  assert (n2n["cond"], n2n["cond_stage_key"], n2n["z_shape"], n2n["cond_shape"]) == (
      "vq", "depth", [8, 8], [8, 8])
  assert cfg["cond_stage"]["in_channels"] == 1 and cfg["transformer"]["block_size"] == 128


def test_cli_without_yaml_names_the_missing_flags(tmp_path, capsys, class_yaml):
  out = str(tmp_path / "class")
  assert main([tiny("n2n_class_tiny.ckpt"), out]) == 2
  err = capsys.readouterr().err
  assert "--n_head" in err and "head count" in err and "Traceback" not in err, err
  assert main([tiny("n2n_class_tiny.ckpt"), out, "--n_head", "2"]) == 2
  err = capsys.readouterr().err
  assert "--cond" in err and "--n_head" not in err, err
  assert main([tiny("n2n_class_tiny.ckpt"), out] + CLASS_FLAGS) == 0
  cfg, v = model_dir.load_model_dir(out, kinds=("net2net",))
  want_cfg, want_v = class_yaml
  assert_trees_equal(v, want_v)
  assert cfg["transformer"] == want_cfg["transformer"]
  # Everything but the batch key (a YAML-only field) agrees with the YAML's conversion.
  assert dict(cfg["net2net"], cond_stage_key=None) == dict(want_cfg["net2net"],
                                                           cond_stage_key=None)


def test_without_yaml_a_class_model_needs_its_class_count(class_sd, class_project):
  weights_only = {"vqgan": class_project["vqgan"]}  # the first stage, as if inferred
  with pytest.raises(ConversionError, match="class count .*--n_classes N"):
    _sections(class_sd, weights_only, n_head=2, cond="class")
  config, _ = _sections(class_sd, weights_only, n_head=2, cond="class", n_classes=10)
  assert (config["net2net"]["z_shape"], config["net2net"]["n_classes"]) == ([8, 8], 10)


def test_cli_depth_without_yaml_needs_only_n_head(tmp_path, depth_yaml):
  out = str(tmp_path / "depth")
  assert main([tiny("n2n_depth_tiny.ckpt"), out, "--n_head", "2"]) == 0
  cfg, v = model_dir.load_model_dir(out, kinds=("net2net",))
  n2n = cfg["net2net"]
  assert (n2n["cond"], n2n["z_shape"], n2n["cond_shape"]) == ("vq", [8, 8], [8, 8])
  assert_trees_equal(v["transformer"], depth_yaml[1]["transformer"])
  assert_trees_equal(v["cond_stage"], depth_yaml[1]["cond_stage"])


def test_legacy_format_converts_identically(class_yaml):
  _, legacy = checkpoint.convert_taming_checkpoint(tiny("n2n_class_tiny_legacy.ckpt"),
                                                   tiny("n2n_class_tiny-project.yaml"),
                                                   require_transformer=True)
  assert_trees_equal(legacy, class_yaml[1])


def test_transformer_weights_are_the_ckpt_weights_transposed(class_sd, class_yaml):
  params = class_yaml[1]["transformer"]["params"]
  sd = class_sd
  assert sd["transformer.blocks.0.attn.query.weight"].dtype == np.float16
  pairs = [
      ("tok_emb.weight", params["tok_emb"]["embedding"], False),
      ("pos_emb", params["pos_emb"], False),
      ("blocks.0.attn.query.weight", params["blocks_0"]["attn"]["query"]["kernel"], True),
      ("blocks.1.attn.proj.bias", params["blocks_1"]["attn"]["proj"]["bias"], False),
      ("blocks.1.mlp.0.weight", params["blocks_1"]["mlp_0"]["kernel"], True),
      ("blocks.0.mlp.2.weight", params["blocks_0"]["mlp_2"]["kernel"], True),
      ("blocks.0.ln2.weight", params["blocks_0"]["ln2"]["scale"], False),
      ("ln_f.bias", params["ln_f"]["bias"], False),
      ("head.weight", params["head"]["kernel"], True),
  ]
  for key, got, transposed in pairs:
    want = np.asarray(sd["transformer." + key]).astype(np.float32)
    got = np.asarray(got)
    assert got.dtype == np.float32, key
    np.testing.assert_array_equal(got, want.T if transposed else want, err_msg=key)
  assert "bias" not in params["head"]


def test_causal_mask_buffers_are_dropped(class_sd, class_yaml):
  masks = [k for k in class_sd if k.endswith(".attn.mask")]
  assert masks == ["transformer.blocks.0.attn.mask", "transformer.blocks.1.attn.mask"]
  assert class_sd[masks[0]].shape == (1, 1, 65, 65)
  paths = [jax.tree_util.keystr(p) for p, _ in
           jax.tree_util.tree_flatten_with_path(class_yaml[1])[0]]
  assert paths and not [p for p in paths if "mask" in p]


def _with_permuter(sd, forward, backward):
  sd = dict(sd)
  if forward is not None:
    sd["permuter.forward_shuffle_idx"] = np.asarray(forward, np.int64)
  if backward is not None:
    sd["permuter.backward_shuffle_idx"] = np.asarray(backward, np.int64)
  return sd


def test_permuter_buffers_name_the_permuter(class_sd, class_project):
  spiral = permuters.make_permuter("spiral_out", 8, 8)
  sd = _with_permuter(class_sd, spiral.forward_idx, spiral.backward_idx)
  cfg, v = _convert(sd, class_project)
  assert cfg["net2net"]["permuter"] == "spiral_out" and cfg["net2net"]["z_shape"] == [8, 8]
  assert not any(k.startswith("permuter") for k in v)
  model = Net2Net(cfg, v)
  assert model.permuter == spiral


@pytest.mark.parametrize("forward, backward, needle", [
    (permuters.make_permuter("spiral_out", 8, 8).forward_idx, np.arange(64),
     "backward_shuffle_idx is not the inverse of forward_shuffle_idx"),
    (np.arange(64) % 32, np.arange(64), "forward_shuffle_idx is not a permutation of range(64)"),
    (np.arange(64)[::-1], np.arange(64)[::-1], "match none of taming's permuters"),
    (np.arange(64), None, "forward_shuffle_idx without permuter.backward_shuffle_idx"),
])
def test_bad_permuter_buffers_are_refused(class_sd, class_project, forward, backward, needle):
  sd = _with_permuter(class_sd, forward, backward)
  with pytest.raises((ConversionError, permuters.PermuterError)) as err:
    _sections(sd, class_project)
  assert needle in str(err.value), str(err.value)


def test_invalid_permuter_pair_error_names_the_checkpoint(class_sd, class_project):
  sd = _with_permuter(class_sd, permuters.make_permuter("spiral_out", 8, 8).forward_idx,
                      np.arange(64))
  with pytest.raises(ValueError) as err:
    _sections(sd, class_project)
  assert str(err.value).startswith("edited.ckpt"), str(err.value)


def test_yaml_permuter_must_agree_with_the_buffers(class_sd, class_project):
  zcurve = permuters.make_permuter("zcurve", 8, 8)
  sd = _with_permuter(class_sd, zcurve.forward_idx, zcurve.backward_idx)
  project = dict(class_project, permuter=("taming.modules.transformer.permuter.SpiralOut",
                                          {"H": 8, "W": 8}))
  with pytest.raises(ConversionError, match=r"permuter.forward_shuffle_idx is not the "
                                            r"spiral_out order of a \(8, 8\) grid"):
    _sections(sd, project)


def test_segmentation_colorize_is_kept():
  sd = dict(read_state_dict(tiny("n2n_depth_tiny.ckpt")))
  colorize = np.random.default_rng(0).normal(size=(3, 1, 1, 1)).astype(np.float32)
  sd["cond_stage_model.colorize"] = colorize
  cfg, v = _convert(sd, n_head=2)
  assert cfg["cond_stage"]["in_channels"] == 1
  assert v["colorize"]["colorize"].shape == (3, 1)
  np.testing.assert_array_equal(v["colorize"]["colorize"], colorize[:, :, 0, 0])
  np.testing.assert_array_equal(Net2Net(cfg, v).colorize, colorize[:, :, 0, 0])


def test_yaml_disagreeing_with_the_weights_names_the_field(tmp_path):
  text = pathlib.Path(tiny("n2n_class_tiny-project.yaml")).read_text()
  assert "n_layer: 2" in text
  bad = tmp_path / "bad-project.yaml"
  bad.write_text(text.replace("n_layer: 2", "n_layer: 3"))
  with pytest.raises(ConversionError, match=r"transformer_config.params.n_layer is 3 but the "
                                            r"weights have 2"):
    checkpoint.convert_taming_checkpoint(tiny("n2n_class_tiny.ckpt"), str(bad),
                                         require_transformer=True)


def test_missing_and_unexpected_transformer_keys_are_listed(class_sd, class_project):
  sd = dict(class_sd)
  del sd["transformer.blocks.1.mlp.2.bias"]
  sd["transformer.blocks.0.attn.extra.weight"] = np.zeros((4, 4), np.float16)
  with pytest.raises(ConversionError) as err:
    _sections(sd, class_project)
  msg = str(err.value)
  for needle in ("edited.ckpt", "1 missing keys", "transformer.blocks.1.mlp.2.bias",
                 "1 unexpected keys", "transformer.blocks.0.attn.extra.weight"):
    assert needle in msg, (needle, msg)
  sd = dict(class_sd)
  del sd["transformer.tok_emb.weight"]
  with pytest.raises(ConversionError, match="key transformer.tok_emb.weight is missing"):
    _sections(sd, class_project)


def test_first_stage_loads_without_yaml_but_transformer_needs_the_head_count(class_yaml):
  vq = load_vqgan(tiny("n2n_class_tiny.ckpt"))
  assert_trees_equal(jax.device_get(vq.variables), class_yaml[1]["vqgan"])
  with pytest.raises(ValueError, match="cannot build the transformer: .*--n_head"):
    load_transformer(tiny("n2n_class_tiny.ckpt"))
