"""The data config: defaults, one clear message per bad field, errors before any work."""

import ml_collections
import pytest

from vqgan_jax.data import pipeline
from vqgan_jax.data.config import default_data_config, validate_data_config


def _fields(tmp_path, **overrides):
  d = default_data_config().to_dict()
  d["train_images"] = str(tmp_path)
  d.update(overrides)
  return d


def test_defaults_document_every_field_and_validate(tmp_path):
  cfg = default_data_config()
  assert set(cfg.keys()) >= {"name", "data_dir", "train_split", "val_split", "image_key",
                             "train_images", "val_images", "crop_size", "flip"}
  assert (cfg.train_split, cfg.val_split, cfg.image_key) == ("train", "validation", "image")
  # Only "where is the data" is missing from the defaults.
  assert [e.split(":")[0] for e in validate_data_config(cfg)] == [
      "data.name / data.train_images"]
  cfg.name = "mnist"
  assert validate_data_config(cfg) == []
  assert validate_data_config(_fields(tmp_path)) == []


@pytest.mark.parametrize("field,value,expected", [
    ("crop_size", "256", "data.crop_size: expected an int >= 1, got '256'"),
    ("crop_size", 0, "data.crop_size: expected an int >= 1, got 0"),
    ("flip", 1, "data.flip: expected a bool, got 1"),
    ("name", 3, "data.name: expected a string, got int 3"),
    ("shuffle_buffer", True, "data.shuffle_buffer: expected an int >= 1, got True"),
    ("val_images", "/no/such/dir", "data.val_images: '/no/such/dir' does not exist"),
    ("croop_size", 3, "data.croop_size: unknown field"),
])
def test_one_clear_message_per_bad_field(tmp_path, field, value, expected):
  errors = validate_data_config(_fields(tmp_path, **{field: value}))
  assert len(errors) == 1 and errors[0].startswith(expected), errors


def test_missing_field_and_several_errors_at_once(tmp_path):
  d = _fields(tmp_path, crop_size=-1, flip="yes")
  del d["image_key"]
  errors = validate_data_config(d)
  assert len(errors) == 3
  assert any(e.startswith("data.image_key: missing") for e in errors)


def test_attribute_objects_are_accepted(tmp_path):
  class Cfg:
    pass
  obj = Cfg()
  for k, v in _fields(tmp_path).items():
    setattr(obj, k, v)
  obj.extra_thing = 1  # plain objects may carry more attributes
  assert validate_data_config(obj) == []


def test_iterators_reject_a_bad_config_before_any_work(tmp_path):
  bad = ml_collections.ConfigDict(_fields(tmp_path, crop_size="big", train_split=""))
  bad.train_images = ""
  bad.name = "anything"
  with pytest.raises(ValueError) as e:
    pipeline.create_train_iterator(bad, global_batch_size=2, seed=0)
  assert "data.crop_size" in str(e.value) and "data.train_split" in str(e.value)
  with pytest.raises(ValueError, match="data.crop_size"):
    pipeline.create_eval_iterator(bad, global_batch_size=2)
  with pytest.raises(ValueError, match="data.crop_size"):
    pipeline.count_eval_examples(bad)
