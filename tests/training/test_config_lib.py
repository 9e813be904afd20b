"""Generic config fields: strict variants, validation messages, fingerprints, recipes."""

import importlib.util
import os

import pytest

from vqgan_jax.training import config_lib, vqgan_config

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
RECIPES = ("vqgan_imagenet_f16_1024", "vqgan_imagenet_f16_16384", "vqgan_faceshq",
           "vqgan_gumbel_f8", "vqgan_custom", "vqgan_modern")


def _recipe(name):
  spec = importlib.util.spec_from_file_location(name, os.path.join(ROOT, "configs", name + ".py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


@pytest.mark.parametrize("name", RECIPES)
def test_every_recipe_and_small_variant_validates(name):
  for arg in (None, "", "small"):
    c = _recipe(name).get_config(arg)
    c.data.name, c.data.train_images, c.data.val_images = "", ROOT, ""  # data sources aside
    assert vqgan_config.validate_config(c) == [], (name, arg)


@pytest.mark.parametrize("name", RECIPES)
def test_unknown_variant_is_an_error_naming_the_known_ones(name):
  with pytest.raises(ValueError, match=r"unknown config variant 'smal'; known variants: small"):
    _recipe(name).get_config("smal")


def test_small_recipe_trains_the_whole_objective():
  """The main job's recipe: the discriminator and its adaptive weight switch on well
  before the last step, with LPIPS."""
  c = _recipe("vqgan_custom").get_config("small")
  assert 0 < c.loss.disc_start <= c.total_steps // 2
  assert c.loss.adaptive_weight and c.loss.disc_factor > 0 and c.loss.perceptual_weight > 0
  assert c.eval_every <= c.loss.disc_start  # a validation just before the GAN phase


def test_modern_recipe_keeps_its_codebook_choices_in_both_variants():
  for arg in (None, "small"):
    m = vqgan_config.model_config(_recipe("vqgan_modern").get_config(arg))
    assert (m.codebook_dim, m.l2_normalize_codes, m.legacy, m.beta) == (8, True, False, 0.25)
  full = _recipe("vqgan_modern").get_config(None)
  assert full.model.n_embed == 16384 and not full.loss.adaptive_weight
  assert vqgan_config.learning_rate(full) == 1e-4  # absolute, not scaled by the batch


def test_generic_fields_are_checked_by_name():
  c = vqgan_config.base_config()
  c.update(dict(dtype="float16", batch_size=6, log_every=0, num_images=-1))
  c.optim.update(dict(accum_steps=4, accum_loop="while", b1=1.0, eps=0.0))
  c.mesh.update(dict(data=3, fsdp=2))
  c.sharding_rules = ((".*", "shard_everything"), ("(", "fsdp"), ("x",))
  errors = config_lib.validate_base(c, num_devices=4)
  expected = ["dtype: expected 'float32' or 'bfloat16', got 'float16'",
              "optim.accum_steps: expected a positive divisor of batch_size 6, got 4",
              "optim.accum_loop: expected one of ['unrolled', 'scan'], got 'while'",
              "optim.b1: expected a value in [0, 1), got 1.0",
              "optim.eps: expected > 0, got 0.0",
              "log_every: expected a positive integer, got 0",
              "num_images: expected >= 0, got -1",
              "mesh: data (3) x fsdp (2) does not fit the 4 devices",
              "sharding_rules[0]: rule 'shard_everything' is not one of ['fsdp', 'replicate']",
              "sharding_rules[1]: '(' is not a regular expression",
              "sharding_rules[2]: expected (regex, rule), got ('x',)"]
  for e in expected:
    assert any(line.startswith(e) for line in errors), (e, errors)
  assert len(errors) == len(expected), errors


def test_micro_batches_must_split_over_devices_and_processes():
  c = vqgan_config.base_config()
  c.batch_size, c.optim.accum_steps = 12, 2
  assert config_lib.validate_base(c, num_devices=4) == [
      "batch_size: each micro-batch (batch_size / accum_steps = 6) must split evenly over "
      "the 4 devices"]
  c.batch_size = 8
  assert config_lib.validate_base(c, num_devices=2, process_count=3)[0].startswith(
      "batch_size: 8 must be a multiple of the 3 processes")


def test_fingerprint_names_what_differs():
  a = vqgan_config.base_config()
  b = vqgan_config.base_config()
  b.seed, b.model.n_embed, b.total_steps = 7, 2048, 5   # total_steps is not part of it
  fa = config_lib.fingerprint(a, vqgan_config.RESUME_FIELDS)
  fb = config_lib.fingerprint(b, vqgan_config.RESUME_FIELDS)
  assert fa["model.attn_resolutions"] == [16]              # tuples stored as JSON lists
  assert config_lib.fingerprint_diff(fa, fb) == ["model.n_embed: checkpoint 1024, config 2048",
                                                 "seed: checkpoint 23, config 7"]
  # A checkpoint that recorded fewer fields is compared on those only.
  assert config_lib.fingerprint_diff({"seed": 23}, fb) == ["seed: checkpoint 23, config 7"]


def test_learning_rate_scales_with_global_batch():
  c = vqgan_config.base_config()
  c.batch_size = 12
  assert vqgan_config.learning_rate(c) == pytest.approx(4.5e-6 * 12)
  c.optim.learning_rate = 1e-4
  assert vqgan_config.learning_rate(c) == 1e-4


def test_sharding_rules_are_a_config_field():
  c = vqgan_config.base_config()
  assert config_lib.sharding_rules(c) == config_lib.DEFAULT_SHARDING_RULES
  c.sharding_rules = ((r".*embedding$", "replicate"), (r".*", "fsdp"))
  assert config_lib.validate_base(c) == []
  assert config_lib.sharding_rules(c)[0] == (r".*embedding$", "replicate")
