"""The command-line frame shared by the trainers: flags, distributed init, validation.

    python train_vqgan.py --config=configs/vqgan_custom.py:small --workdir=DIR \
        --config.data.train_images=PATH --config.total_steps=N

`--config` is an ml_collections config file (`file.py:arg`), locked: overriding a
field that does not exist is an error naming it. Multi-host: pass
`--coordinator_address`, `--num_processes` and `--process_id` (or nothing on TPU pods,
where `jax.distributed.initialize()` finds its peers).
"""

import sys
from typing import Callable, List

from absl import app, flags, logging
from ml_collections import config_flags


def define_flags(default_config: str):
  config_flags.DEFINE_config_file("config", default_config, "Training config file.",
                                  lock_config=True)
  flags.DEFINE_string("workdir", None, "Where checkpoints, logs and images go.")
  flags.DEFINE_string("coordinator_address", None, "host:port of process 0 (multi-process).")
  flags.DEFINE_integer("num_processes", None, "Number of processes (multi-process).")
  flags.DEFINE_integer("process_id", None, "This process's index (multi-process).")
  flags.DEFINE_bool("distributed", False, "Call jax.distributed.initialize() (TPU pods).")
  flags.mark_flags_as_required(["workdir"])


def run(default_config: str, validate: Callable[..., List[str]], train: Callable):
  """Parses flags, starts jax.distributed if asked, validates the config, trains."""
  define_flags(default_config)

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
    summary = train(config, FLAGS.workdir)
    if jax.process_index() == 0:
      print(f"workdir:      {summary['workdir']}")
      for key in ("checkpoints", "tensorboard", "image_grid", "model_dir"):
        if summary.get(key):
          print(f"{key + ':':<13} {summary[key]}")
      for key in ("val_before", "val_after"):
        if summary.get(key):
          vals = ", ".join(f"{k.split('/')[-1]} {v:.4f}" for k, v in summary[key].items())
          print(f"{key + ':':<13} {vals}")

  app.run(main)
