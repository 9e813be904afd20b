"""train_transformer.py as a user runs it: one subprocess smoke test on extracted codes
(started with the module, it runs while the in-process checks below do), and in-process
checks of its command line: flag errors as one `error:` line with exit code 2, the
config's own checks naming the field, the default config found from any directory.
Training itself is tested in-process in test_gpt_trainer.py."""

import json
import os
import subprocess
import sys

import pytest

import gpt_worker as W
from vqgan_test_utils import parse_cli_flags
from vqgan_jax.training import cli, gpt_config

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SCRIPT = os.path.join(REPO, "train_transformer.py")
CUSTOM = os.path.join(REPO, "configs", "transformer_custom.py")
STEPS = 3


@pytest.fixture(scope="session")
def codes(tmp_path_factory, vqgan_tiny_converted):
  return W.code_dataset(tmp_path_factory, vqgan_tiny_converted)


@pytest.fixture(scope="module", autouse=True)
def smoke_run(codes, tmp_path_factory):
  """The `:small` recipe shrunk to one layer of width 32, class-conditional on the codes,
  3 steps; no sample grid (its sampling is tested in-process)."""
  wd = str(tmp_path_factory.mktemp("gpt_cli") / "w")
  args = [f"--workdir={wd}", "--config=configs/transformer_custom.py:small",
          f"--config.data.codes={codes[0]}",
          "--config.net2net.cond=class", "--config.transformer.n_layer=1",
          "--config.transformer.n_head=2", "--config.transformer.n_embd=32",
          "--config.batch_size=4", f"--config.total_steps={STEPS}", "--config.log_every=1",
          f"--config.eval_every={STEPS}", f"--config.ckpt_every={STEPS}",
          "--config.optim.warmup_steps=1", "--config.num_images=0"]
  proc = subprocess.Popen([sys.executable, SCRIPT, *args], stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True, cwd=REPO,
                          env=dict(os.environ, JAX_PLATFORMS="cpu"))
  yield proc, wd
  if proc.poll() is None:
    proc.kill()
  proc.communicate()


def _json(path):
  with open(path) as f:
    return json.load(f)


def _parse(argv, default=CUSTOM):
  return parse_cli_flags(argv, default)


@pytest.mark.parametrize("arg, needle", [
    (f"--config={CUSTOM}:tiny", "unknown config variant 'tiny'; known variants: small"),
    ("--config.transformer.n_layers=1", 'Did you mean "n_layer" instead of "n_layers"?'),
    ("--config.net2net.pkeep=most", "--config.net2net.pkeep=most"),
])
def test_flag_errors_are_one_message_with_exit_code_2(capsys, arg, needle):
  with pytest.raises(SystemExit) as e:
    _parse(["train_transformer.py", "--workdir=w", arg])
  err = capsys.readouterr().err
  assert e.value.code == 2 and err.startswith("error: ") and needle in err, err
  assert "Traceback" not in err


def test_default_config_is_found_from_any_directory(tmp_path, monkeypatch):
  default = cli.default_config_path("configs/transformer_custom.py", SCRIPT)
  assert default == CUSTOM
  monkeypatch.chdir(tmp_path)
  fv = _parse(["train_transformer.py", "--workdir=w", "--config.total_steps=7"], default)
  assert fv.config.total_steps == 7 and fv.config.transformer.n_layer == 12


def test_config_errors_name_the_fields():
  """The messages cli.run prints, one per bad field, before it exits with code 2 (that
  path of cli.run is shared with train_vqgan.py, whose smoke test runs it)."""
  fv = _parse(["train_transformer.py", "--workdir=w", f"--config={CUSTOM}:small",
               "--config.net2net.cond=clas", "--config.net2net.pkeep=1.5",
               "--config.data.codes=x", "--config.data.on_the_fly=True",
               "--config.transformer.n_head=3",
               "--config.optim.schedule=linear", "--config.sample.temperature=0.0",
               "--config.batch_size=6", "--config.optim.accum_steps=4"])
  errors = gpt_config.validate_config(fv.config)
  for needle in ("net2net.cond: expected one of ('sos', 'class', 'vq', 'coord', 'first_stage'),",
                 "net2net.pkeep: expected a probability in [0, 1], got 1.5",
                 "data: set exactly one of data.codes",
                 "transformer.n_head: n_embd=128 is not divisible by n_head=3",
                 "optim.schedule: expected one of ('constant', 'cosine'), got 'linear'",
                 "sample.temperature: expected > 0, got 0.0",
                 "optim.accum_steps: expected a positive divisor of batch_size 6, got 4"):
    assert any(needle in e for e in errors), (needle, errors)
  # The `:small` recipe as it stands is valid once it has data.
  fv = _parse(["train_transformer.py", "--workdir=w", f"--config={CUSTOM}:small",
               "--config.data.codes=somewhere"])
  assert gpt_config.validate_config(fv.config) == []


@pytest.mark.slow
def test_cli_smoke(smoke_run):
  import vqgan_jax
  proc, wd = smoke_run
  stdout, stderr = proc.communicate(timeout=600)
  assert proc.returncode == 0, stderr[-3000:]
  assert f"step {STEPS}/{STEPS} (100.0%)" in stdout and "steps/s  ETA" in stdout, stdout
  lines = stdout.splitlines()
  model = os.path.join(wd, "model")
  assert f"model_dir:    {model}" in lines, stdout
  val = [line for line in lines if line.startswith("val ")]
  assert [v.split(":")[0] for v in val] == ["val 0", f"val {STEPS}"], stdout
  assert all("nll " in v and "bits_per_token " in v and "num_examples 6.0000" in v
             for v in val), val
  summary = _json(os.path.join(wd, "summary.json"))
  assert summary["end_step"] == STEPS and summary["train"]["learning_rate"] > 0
  assert _json(os.path.join(wd, "config.json"))["transformer"]["n_layer"] == 1
  assert sorted(os.listdir(os.path.join(wd, "checkpoints"))) == [str(STEPS)]
  n2n = vqgan_jax.load_transformer(model)
  assert (n2n.config.cond, n2n.config.n_classes, n2n.transformer_config.n_layer) == ("class", 2, 1)
