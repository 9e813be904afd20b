"""The trainers' command-line frame in-process: flag errors as one message, the default
config found from any directory, the generic summary."""

import io
import os

import pytest

from vqgan_test_utils import parse_cli_flags
from vqgan_jax.training import cli

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CUSTOM = os.path.join(ROOT, "configs", "vqgan_custom.py")


def _parse(argv, default=CUSTOM):
  return parse_cli_flags(argv, default)


@pytest.mark.parametrize("arg, needle", [
    (f"--config={CUSTOM}:smal", "unknown config variant 'smal'; known variants: small"),
    ("--config.loss.disc_strat=5", 'Did you mean "disc_start" instead of "disc_strat"?'),
    ("--config.loss.disc_start=soon", "--config.loss.disc_start=soon"),
])
def test_flag_errors_are_one_message_without_traceback(capsys, arg, needle):
  with pytest.raises(SystemExit) as e:
    _parse(["train", "--workdir=w", arg])
  err = capsys.readouterr().err
  assert e.value.code == 2 and err.startswith("error: ") and needle in err, err
  assert "Traceback" not in err


def test_default_config_is_found_from_any_directory(tmp_path, monkeypatch):
  path = cli.default_config_path("configs/vqgan_custom.py", os.path.join(ROOT, "train_vqgan.py"))
  assert path == CUSTOM
  monkeypatch.chdir(tmp_path)
  fv = _parse(["train", "--workdir=w", "--config.total_steps=7"], path)
  assert fv.config.total_steps == 7 and fv.config.model.n_embed == 1024


def test_summary_lists_paths_and_every_validation():
  out = io.StringIO()
  cli.print_summary({"workdir": "/w", "model_dir": "/w/model", "image_grid": None,
                     "val": {"300": {"val/l1": 0.2, "val/num_images": 4.0},
                             "0": {"val/l1": 0.5, "val/num_images": 4.0}}}, out)
  assert out.getvalue().splitlines() == ["workdir:      /w", "model_dir:    /w/model",
                                         "val 0:        l1 0.5000", "val 300:      l1 0.2000"]
