"""Two-process VQGAN training (jax.distributed + gloo on CPU) equals one process.

Two local processes with 2 CPU devices each form a ("data", 2) x ("fsdp", 2) mesh over
4 global devices: params are split over the two devices of a process, the batch over
all four, and each process feeds only its half of every global batch through
sharding.global_batch. They train 3 chained steps (GAN terms and D update active),
then one single-device process redoes each step from the two-process run's own state
before it (see training_worker.py for why steps are compared from equal inputs).
"""

import json
import os
import pathlib
import socket
import subprocess
import sys

import numpy as np
import pytest

from vqgan_test_utils import xla_flags

HERE = pathlib.Path(__file__).resolve().parent
REPO = HERE.parents[1]
WORKER = str(HERE / "training_worker.py")
STEPS = 3
TIMEOUT_S = 420


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _env(devices: int) -> dict:
  return dict(os.environ, XLA_FLAGS=xla_flags(devices),
              PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))


def _last_json(text: str) -> dict:
  return json.loads([line for line in text.splitlines() if line.startswith("{")][-1])


def _run_pair(out_dir: pathlib.Path):
  """Starts both processes, waits (killing both on timeout or failure); returns outputs."""
  port = _free_port()
  procs, logs = [], []
  try:
    for i in range(2):
      log = open(out_dir / f"process_{i}.log", "w+")
      logs.append(log)
      procs.append(subprocess.Popen(
          [sys.executable, WORKER, "dist", "--out", str(out_dir), "--num-processes", "2",
           "--process-id", str(i), "--port", str(port), "--fsdp", "2", "--steps", str(STEPS)],
          stdout=log, stderr=subprocess.STDOUT, env=_env(2), cwd=str(REPO)))
    for p in procs:
      p.wait(timeout=TIMEOUT_S)
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
        p.wait()
  outputs = []
  for log in logs:
    log.seek(0)
    outputs.append(log.read())
    log.close()
  return [p.returncode for p in procs], outputs


@pytest.mark.slow
def test_two_processes_train_like_one(tmp_path):
  rcs, outputs = _run_pair(tmp_path)
  for i, (rc, out) in enumerate(zip(rcs, outputs)):
    assert rc == 0, f"process {i} exited with {rc}:\n{out[-4000:]}"
  reports = [_last_json(out) for out in outputs]
  for i, r in enumerate(reports):
    assert (r["process_index"], r["process_count"]) == (i, 2)
    assert (r["devices"], r["local_devices"]) == (4, 2)
    assert r["rows"] == [4 * i, 4 * i + 4]  # each process fed its own half
    assert r["cache_size"] == 1
    assert r["grid_gathered"]  # image grids see the rows of both processes
  assert reports[0]["ae_param_checksum"] == reports[1]["ae_param_checksum"]
  assert reports[0]["metrics"] == reports[1]["metrics"]
  # Each process's own copy of every state leaf, before and after every step, and every
  # metric: bit for bit the same in both processes.
  runs = [dict(np.load(tmp_path / f"process_{i}.npz")) for i in range(2)]
  assert sorted(runs[0]) == sorted(runs[1])
  for k in runs[0]:
    np.testing.assert_array_equal(runs[0][k], runs[1][k], err_msg=k)

  proc = subprocess.run([sys.executable, WORKER, "replay", "--out", str(tmp_path),
                         "--steps", str(STEPS)], capture_output=True, text=True,
                        env=_env(1), cwd=str(REPO), timeout=TIMEOUT_S)
  assert proc.returncode == 0, proc.stderr[-4000:]
  replay = _last_json(proc.stdout)
  checks = [("init", replay["init"])]
  for step, entry in enumerate(replay["steps"]):
    checks += [(f"step {step + 1} state", entry["state"]),
               (f"step {step + 1} metrics", entry["metrics"])]
  for what, c in checks:
    assert c["ratio"] <= 1.0, (
        f"{what}: 2 processes vs 1 device beyond 1e-5 + 1e-5 |ref| at {c['ratio_leaf']} "
        f"(max abs diff {c['max_abs']:.3g} at {c['max_abs_leaf']})")
  assert len(replay["steps"]) == STEPS and replay["cache_size"] == 1
