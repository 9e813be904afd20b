"""FIDInception against pytorch-fid 0.3.0 on deterministic random weights.

The weights are drawn here from numpy (`random_fid_state_dict`, identical to the one in
tests/fixtures/inception_random/README.md's script) and converted by name as a real
pt_inception-2015-12-05 file would be; reference.npz holds the inputs and torch's
outputs (pool3, logits, logits_unbiased, resized pixels).
"""

import pathlib

import jax
import numpy as np
import pytest

from vqgan_jax.convert.taming import ConversionError
from vqgan_jax.nn import inception as inc
from vqgan_test_utils import random_fid_state_dict, torch_inception_shapes

FIXTURE = pathlib.Path(__file__).parent.parent / "fixtures" / "inception_random" / "reference.npz"


@pytest.fixture(scope="module")
def state_dict():
  return random_fid_state_dict(torch_inception_shapes())


@pytest.fixture(scope="module")
def reference():
  return dict(np.load(FIXTURE))


def test_state_dict_layout(state_dict):
  # fid_inception_v3().state_dict(): 566 tensors, 94 of them num_batches_tracked.
  assert len(state_dict) == 566 - 94
  assert sum(v.size for v in state_dict.values()) == 23885486 - 94
  assert state_dict["Conv2d_1a_3x3.conv.weight"].shape == (32, 3, 3, 3)
  assert state_dict["Mixed_6b.branch7x7_2.conv.weight"].shape == (128, 128, 1, 7)
  assert state_dict["fc.weight"].shape == (1008, 2048)


@pytest.mark.parametrize("name", ["up", "down"])
def test_resize_matches_torch_interpolate(reference, name):
  x = reference[f"resize_{name}_in"].astype(np.float32) / 255.0
  got = np.asarray(inc.resize_bilinear_torch(x))
  assert got.shape == (x.shape[0], 299, 299, 3)
  np.testing.assert_allclose(got[:, ::7, ::7], reference[f"resize_{name}_out"], atol=1e-6)


@pytest.mark.parametrize("name", ["up", "down"])
def test_host_resize_matches_torch_interpolate(reference, name):
  """The host-side resize (image files) against torch: a second path to the same values."""
  for image, want in zip(reference[f"resize_{name}_in"], reference[f"resize_{name}_out"]):
    got = inc.resize_bilinear_numpy(image)
    assert got.shape == (299, 299, 3) and got.dtype == np.float32
    np.testing.assert_allclose(got[::7, ::7], want, atol=1e-6)


def test_resize_is_identity_at_299():
  np.testing.assert_array_equal(inc.bilinear_matrix(299, 299), np.eye(299, dtype=np.float32))


@pytest.mark.parametrize("size", ["64", "299"])
def test_outputs_match_pytorch_fid(state_dict, reference, size):
  variables = inc.inception_variables_from_state_dict(state_dict)
  images = reference[f"images_{size}"].astype(np.float32) / 255.0
  out = jax.jit(inc.FIDInception().apply)(variables, images)
  assert out["pool3"].shape == (2, 2048) and out["logits"].shape == (2, 1008)
  np.testing.assert_allclose(np.asarray(out["pool3"]), reference[f"pool3_{size}"], atol=1e-4)
  for key in ("logits", "logits_unbiased"):
    np.testing.assert_allclose(np.asarray(out[key]), reference[f"{key}_{size}"], atol=1e-3)


def test_wrong_state_dict_names_every_key(state_dict):
  bad = dict(state_dict)
  del bad["Mixed_7c.branch_pool.bn.running_var"]
  del bad["Mixed_6b.branch7x7_2.conv.weight"]
  bad["Mixed_6a.branch3x3.conv.weight"] = np.zeros((384, 288, 1, 1), np.float32)
  bad["AuxLogits.fc.weight"] = np.zeros((1000, 768), np.float32)
  with pytest.raises(ConversionError) as err:
    inc.inception_variables_from_state_dict(bad, source="bad.pth")
  msg = str(err.value)
  assert "bad.pth" in msg
  assert "missing keys" in msg and "Mixed_7c.branch_pool.bn.running_var" in msg
  assert "unexpected keys" in msg and "AuxLogits.fc.weight" in msg
  assert "Mixed_6b.branch7x7_2.conv.weight" in msg  # a name, not the list item branch7x7.2
  assert "shape mismatches" in msg and "Mixed_6a.branch3x3.conv.weight" in msg


def test_load_inception_missing_file(tmp_path):
  with pytest.raises(FileNotFoundError, match="pt_inception-2015-12-05"):
    inc.load_inception(tmp_path / "nope.pth")
