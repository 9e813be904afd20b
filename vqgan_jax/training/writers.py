"""Metric and image logging through clu: TensorBoard event files + console, progress.

The only place (with the CLIs) that imports clu; clu's writers need TensorFlow and
tensorboard, so this module is imported by trainers, never by the core.
"""

import os
from typing import Dict

import numpy as np

from vqgan_jax.reconstruct import to_uint8


class Writer:
  """clu's default writer (TensorBoard + logging) on process 0; no-op elsewhere."""

  def __init__(self, workdir: str, total_steps: int, is_main: bool = True):
    from clu import metric_writers, periodic_actions
    self.logdir = os.path.join(workdir, "tensorboard")
    self.is_main = is_main
    self.writer = metric_writers.create_default_writer(
        self.logdir, just_logging=not is_main, asynchronous=True)
    self.progress = periodic_actions.ReportProgress(
        num_train_steps=total_steps, writer=self.writer, every_secs=None, every_steps=None)

  def scalars(self, step: int, values: Dict[str, float]):
    self.writer.write_scalars(step, {k: float(v) for k, v in values.items()})

  def images(self, step: int, images: Dict[str, np.ndarray]):
    if self.is_main:
      self.writer.write_images(step, images)

  def report_progress(self, step: int):
    """Writes steps/s (and uptime) and logs the ETA."""
    self.progress(step)

  def flush(self):
    self.writer.flush()

  def close(self):
    self.writer.flush()
    self.writer.close()


def image_grid(columns) -> np.ndarray:
  """Arrays float32[N, H, W, C] in [-1, 1], shown side by side, one image per row -> uint8."""
  pairs = np.concatenate([np.asarray(c, np.float32) for c in columns], axis=2)  # N, H, kW, C
  grid = pairs.reshape(-1, *pairs.shape[2:])                                       # N*H, kW, C
  img = to_uint8(grid)
  return np.repeat(img, 3, axis=-1) if img.shape[-1] == 1 else img
