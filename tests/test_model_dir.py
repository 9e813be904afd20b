"""Model directories: kinds, format versions, clear errors, and loading without TensorFlow."""

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from vqgan_test_utils import (NOTHING_BLOCKED_LOADED, WITHOUT_TENSORFLOW, assert_trees_equal,
                              tiny)
from vqgan_jax import model_dir
from vqgan_jax.api import load_vqgan

VARIABLES = {"vqgan": {"params": {"w": np.arange(6, dtype=np.float32).reshape(2, 3),
                                  "b": np.zeros((3,), np.float32)}}}


def _write_config(path, config):
  with open(os.path.join(path, "config.json"), "w") as f:
    json.dump(config, f)


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
  """A version-2 model directory of kind "vqgan" holding VARIABLES."""
  out = tmp_path_factory.mktemp("saved") / "model"
  model_dir.save_model_dir(str(out), VARIABLES, {"vqgan": {"n_embed": 4}}, kind="vqgan")
  return str(out)


def test_round_trip_with_kind(saved, tmp_path):
  with open(os.path.join(saved, "config.json")) as f:
    raw = json.load(f)
  assert raw == {"format": "vqgan_jax/model", "format_version": 2, "kind": "vqgan",
                 "vqgan": {"n_embed": 4}}
  config, variables = model_dir.load_model_dir(saved, kinds=("vqgan",))
  assert config["kind"] == "vqgan"
  assert_trees_equal(variables, VARIABLES)
  # Rewriting replaces the directory atomically and leaves no .tmp/.old behind.
  out = model_dir.save_model_dir(str(tmp_path / "m"), VARIABLES, {}, kind="net2net")
  out = model_dir.save_model_dir(out, VARIABLES, {"x": 1}, kind="net2net")
  assert sorted(os.listdir(tmp_path)) == ["m"]
  config, _ = model_dir.load_model_dir(out)
  assert (config["kind"], config["x"]) == ("net2net", 1)


def test_save_refuses_unknown_or_conflicting_kind(tmp_path):
  with pytest.raises(ValueError, match=r"model kind 'gpt' is not one of \('vqgan', 'net2net'\)"):
    model_dir.save_model_dir(str(tmp_path / "a"), VARIABLES, {}, kind="gpt")
  with pytest.raises(ValueError, match="config field 'kind' is 'net2net'"):
    model_dir.save_model_dir(str(tmp_path / "b"), VARIABLES, {"kind": "net2net"}, kind="vqgan")
  assert not os.listdir(tmp_path)


def test_version_1_directory_loads_as_vqgan(tmp_path):
  import orbax.checkpoint as ocp
  ckptr = ocp.StandardCheckpointer()
  ckptr.save(str(tmp_path / "variables"), VARIABLES)
  ckptr.wait_until_finished()
  _write_config(str(tmp_path), {"format": "vqgan_jax/1", "vqgan": {"n_embed": 4}})
  config, variables = model_dir.load_model_dir(str(tmp_path), kinds=("vqgan",))
  assert config["kind"] == "vqgan" and config["vqgan"] == {"n_embed": 4}
  assert_trees_equal(variables, VARIABLES)
  with pytest.raises(ValueError, match=r"field 'kind' is 'vqgan', expected one of \['net2net'\]"):
    model_dir.load_model_dir(str(tmp_path), kinds=("net2net",))


@pytest.mark.parametrize("change, needle", [
    ({"format": "taming/ckpt"}, "field 'format' is 'taming/ckpt', expected 'vqgan_jax/model'"),
    ({"format_version": 3}, "field 'format_version' is 3, newer than this vqgan_jax reads "
                            "(at most 2)"),
    ({"format_version": "2"}, "field 'format_version' is '2', expected an integer from 2 to 2"),
    ({"kind": "gpt"}, "field 'kind' is 'gpt', expected one of ['vqgan', 'net2net']"),
    ({"kind": None}, "field 'kind' is None, expected one of ['vqgan', 'net2net']"),
])
def test_bad_fields_are_named(saved, tmp_path, change, needle):
  os.symlink(os.path.join(saved, "variables"), tmp_path / "variables")
  with open(os.path.join(saved, "config.json")) as f:
    config = json.load(f)
  _write_config(str(tmp_path), dict(config, **change))
  with pytest.raises(ValueError) as err:
    model_dir.load_model_dir(str(tmp_path))
  msg = str(err.value)
  assert msg.startswith(str(tmp_path / "config.json") + ": "), msg
  assert needle in msg, (needle, msg)


def test_kind_not_asked_for_is_refused_naming_both(saved):
  with pytest.raises(ValueError) as err:
    model_dir.load_model_dir(saved, kinds=("net2net",))
  msg = str(err.value)
  assert msg.startswith(os.path.join(saved, "config.json"))
  assert "'vqgan'" in msg and "'net2net'" in msg and "field 'kind'" in msg


def test_missing_pieces_keep_their_messages(saved, tmp_path):
  with pytest.raises(FileNotFoundError, match="no config.json.*python -m vqgan_jax.convert"):
    model_dir.load_model_dir(str(tmp_path))
  (tmp_path / "config.json").write_text("{not json")
  with pytest.raises(ValueError, match=r"config.json: not valid JSON"):
    model_dir.load_model_dir(str(tmp_path))
  (tmp_path / "config.json").write_text("[1, 2]")
  with pytest.raises(ValueError, match=r"config.json: expected a JSON object, got list"):
    model_dir.load_model_dir(str(tmp_path))
  with open(os.path.join(saved, "config.json")) as f:
    _write_config(str(tmp_path), json.load(f))
  with pytest.raises(FileNotFoundError, match="missing the 'variables' checkpoint folder"):
    model_dir.load_model_dir(str(tmp_path))


def test_converted_net2net_has_kind_net2net(tmp_path, vqgan_tiny_converted):
  from vqgan_jax.convert.__main__ import main
  out = str(tmp_path / "n2n")
  # Without the YAML the head count and the conditioning kind are not in the weights.
  assert main([tiny("n2n_class_tiny.ckpt"), out]) == 2
  assert not os.path.exists(out)
  assert main([tiny("n2n_class_tiny.ckpt"), out, "--n_head", "2", "--cond", "class",
               "--n_classes", "10"]) == 0
  config, variables = model_dir.load_model_dir(out, kinds=("net2net",))
  assert config["kind"] == "net2net"
  assert config["transformer"]["n_head"] == 2 and config["net2net"]["cond"] == "class"
  assert config["net2net"]["z_shape"] == [8, 8]
  assert_trees_equal(variables["vqgan"], vqgan_tiny_converted[1]["vqgan"])
  vq = load_vqgan(out)
  assert vq.decode_indices(np.zeros((1, 2, 3), np.int32)).shape == (1, 8, 12, 3)
  with pytest.raises(KeyError, match="holds no 'cond_stage' model"):
    load_vqgan(out, which="cond_stage")


_WITHOUT_TENSORFLOW = WITHOUT_TENSORFLOW + textwrap.dedent("""
    import numpy as np
    import vqgan_jax
    from vqgan_jax.convert.__main__ import main
    ckpt, out = sys.argv[1], sys.argv[2]
    assert main([ckpt, out]) == 0
    vq = vqgan_jax.load_vqgan(out)
    images = vq.decode_indices(np.zeros((1, 2, 3), np.int32))
    assert images.shape == (1, 8, 12, 3), images.shape
""") + NOTHING_BLOCKED_LOADED


def test_api_convert_and_model_dir_work_without_tensorflow(tmp_path):
  proc = subprocess.run([sys.executable, "-c", _WITHOUT_TENSORFLOW, tiny("vqgan_tiny.ckpt"),
                         str(tmp_path / "model")], capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stdout + proc.stderr
  assert proc.stdout.strip().endswith("ok")
