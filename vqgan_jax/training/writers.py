"""Metric and image logging through clu (TensorBoard + logging), and training progress.

The only place (with the CLIs) that imports clu; clu's writers need TensorFlow and
tensorboard, so this module is imported by trainers, never by the core.
"""

import os
import sys
import time
from typing import Callable, Dict, Optional

import numpy as np


class Writer:
  """clu's default writer (TensorBoard + logging) on process 0; logging only elsewhere."""

  def __init__(self, workdir: str, is_main: bool = True):
    from clu import metric_writers
    self.logdir = os.path.join(workdir, "tensorboard")
    self.is_main = is_main
    self.writer = metric_writers.create_default_writer(
        self.logdir, just_logging=not is_main, asynchronous=True)

  def scalars(self, step: int, values: Dict[str, float]):
    self.writer.write_scalars(step, {k: float(v) for k, v in values.items()})

  def images(self, step: int, images: Dict[str, np.ndarray]):
    if self.is_main:
      self.writer.write_images(step, images)

  def close(self):
    self.writer.flush()
    self.writer.close()


def format_seconds(s: float) -> str:
  s = int(round(s))
  if s < 60:
    return f"{s}s"
  if s < 3600:
    return f"{s // 60}m{s % 60:02d}s"
  return f"{s // 3600}h{(s % 3600) // 60:02d}m"


class Progress:
  """A live progress line (step, steps/s, ETA, loss) and the rates as scalars.

  `update(step, loss)` at the steps where metrics are fetched: the rate is measured
  over the steps since the previous update, written as `train/steps_per_sec` and
  printed (process 0) as `step 100/600 (16.7%)  3.21 steps/s  ETA 2m36s  loss 0.2310`;
  the first update, whose steps include compilation, prints their time instead.
  """

  def __init__(self, total_steps: int, start_step: int, scalars: Callable, is_main: bool = True,
               clock: Callable[[], float] = time.monotonic, out=None):
    self.total = total_steps
    self.scalars = scalars
    self.is_main = is_main
    self.clock = clock
    self.out = out
    self._t0 = self._last_t = clock()
    self._last_step = start_step

  def update(self, step: int, loss: Optional[float] = None) -> str:
    now = self.clock()
    steps = step - self._last_step
    dt = now - self._last_t
    first = self._last_t == self._t0
    line = f"step {step}/{self.total} ({100.0 * step / self.total:.1f}%)"
    if steps > 0 and dt > 0 and first:
      line += f"  {format_seconds(dt)} for the first {steps} steps (incl. compilation)"
    elif steps > 0 and dt > 0:
      rate = steps / dt
      self.scalars(step, {"train/steps_per_sec": rate, "train/uptime_sec": now - self._t0})
      line += f"  {rate:.2f} steps/s  ETA {format_seconds((self.total - step) / rate)}"
    if loss is not None:
      line += f"  loss {loss:.4f}"
    self._last_step, self._last_t = step, now
    if self.is_main:
      print(line, file=self.out or sys.stdout, flush=True)
    return line
