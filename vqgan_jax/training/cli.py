"""The command-line frame shared by the trainers: flags, distributed init, validation.

    python train_<stage>.py --config=configs/<recipe>.py:small --workdir=DIR \
        --config.<field>=VALUE ...

`--config` is an ml_collections config file (`file.py:variant`), locked: overriding a
field that does not exist is an error naming it, as is an unknown variant. Multi-host: pass
`--coordinator_address`, `--num_processes` and `--process_id` (or nothing on TPU pods,
where `jax.distributed.initialize()` finds its peers).
"""

import contextlib
import os
import sys
from typing import Any, Callable, Dict, List

from absl import app, flags, logging
from ml_collections import config_flags


def default_config_path(default_config: str, script: str) -> str:
  """`default_config` relative to the folder of `script` (the trainer), not the cwd."""
  if os.path.isabs(default_config):
    return default_config
  return os.path.join(os.path.dirname(os.path.abspath(script)), default_config)


def define_flags(default_config: str, flag_values=flags.FLAGS):
  fv = dict(flag_values=flag_values)
  config_flags.DEFINE_config_file("config", default_config, "Training config file.",
                                  lock_config=True, **fv)
  flags.DEFINE_string("workdir", None, "Where checkpoints, logs and images go.", **fv)
  flags.DEFINE_string("coordinator_address", None, "host:port of process 0 (multi-process).",
                      **fv)
  flags.DEFINE_integer("num_processes", None, "Number of processes (multi-process).", **fv)
  flags.DEFINE_integer("process_id", None, "This process's index (multi-process).", **fv)
  flags.DEFINE_bool("distributed", False, "Call jax.distributed.initialize() (TPU pods).", **fv)
  flags.mark_flags_as_required(["workdir"], **fv)


def print_summary(summary: Dict[str, Any], out=None) -> None:
  """The paths a run wrote and its validation metrics, whatever the trainer."""
  out = out or sys.stdout
  for key in ("workdir", "checkpoints", "tensorboard", "image_grid", "model_dir"):
    if summary.get(key):
      print(f"{key + ':':<13} {summary[key]}", file=out)
  for step, values in sorted(summary.get("val", {}).items(), key=lambda kv: int(kv[0])):
    vals = ", ".join(f"{k.split('/')[-1]} {v:.4f}" for k, v in values.items()
                     if not k.endswith("num_images"))
    print(f"{'val ' + step + ':':<13} {vals}", file=out)


@contextlib.contextmanager
def flag_errors_as_messages():
  """A flag error (a bad --config variant or field) exits with status 2 and one message
  instead of ml_collections' (embedded) traceback."""
  try:
    yield
  except flags.Error as e:
    lines = [line.strip() for line in str(e).splitlines() if line.strip()]
    if any(line.startswith("Traceback") for line in lines):
      flag = lines[0].split(": Error whilst")[0]
      lines = [flag + ": " + lines[-1].split(": ", 1)[-1]]
    print("error: " + "\n  ".join(lines), file=sys.stderr)
    sys.exit(2)
  except (AttributeError, KeyError) as e:  # ml_collections: an override of no such field
    what = str(e).strip("'\"").replace("\\n", " ").replace("\\'", "'")
    print(f"error: a --config.* override names no field of the config: {what}", file=sys.stderr)
    sys.exit(2)


def parse_flags(argv, flag_values=flags.FLAGS):
  """absl's flag parsing under `flag_errors_as_messages`."""
  with flag_errors_as_messages():
    return flag_values(argv)


def run(default_config: str, validate: Callable[..., List[str]], train: Callable):
  """Parses flags, starts jax.distributed if asked, validates the config, trains.

  `default_config` is resolved relative to the calling script, not the current
  directory. Bad configs exit with status 2, a run that cannot go on (resume
  mismatch, bad init_from, non-finite loss) with status 1, each with one message.
  """
  with flag_errors_as_messages():
    define_flags(default_config_path(default_config, sys.argv[0]))

  def main(argv):
    if len(argv) > 1:
      raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    FLAGS = flags.FLAGS
    import jax
    if FLAGS.coordinator_address or FLAGS.distributed:
      jax.distributed.initialize(coordinator_address=FLAGS.coordinator_address,
                                 num_processes=FLAGS.num_processes,
                                 process_id=FLAGS.process_id)
    config = FLAGS.config
    errors = validate(config, num_devices=jax.device_count(), process_count=jax.process_count())
    if errors:
      print("error: the config has problems:\n" + "\n".join(f"  {e}" for e in errors),
            file=sys.stderr)
      sys.exit(2)
    logging.info("devices: %s; processes: %d", jax.devices(), jax.process_count())
    from vqgan_jax.training.loop import TrainingError
    try:
      summary = train(config, FLAGS.workdir)
    except TrainingError as e:
      print(f"error: {e}", file=sys.stderr)
      sys.exit(1)
    if jax.process_index() == 0:
      print_summary(summary)

  app.run(main, flags_parser=parse_flags)
