"""`python -m vqgan_jax.plan` against a real compiled step on 8 fake CPU devices.

The planner compiles the train step from abstract arrays; here the same trainer's step is
built from real, initialised state on the same 2 x 4 mesh (a second path: real shards,
real compile). Per-device parameter and optimizer bytes must equal the real shards'
bytes, XLA's temporaries agree within 10%, and FSDP (4) divides the parameter bytes of a
data-parallel state by 3 to 4.
Runs in a subprocess (fake devices are fixed when jax starts).
"""

import json
import os
import subprocess
import sys
import textwrap

import pytest

from vqgan_test_utils import xla_flags

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

WORKER = textwrap.dedent('''
    import json, sys
    import jax, jax.numpy as jnp, numpy as np
    sys.path.insert(0, "tests"); sys.path.insert(0, "tests/training")
    from test_vqgan_trainer import tiny_config
    from vqgan_jax import plan
    from vqgan_jax.training import config_lib, sharding, vqgan_lib
    def config():
        c = tiny_config((".", "."))
        c.data.val_images = ""
        return c
    dev0 = lambda tree: sum(s.data.nbytes for leaf in jax.tree_util.tree_leaves(tree)
                            for s in leaf.addressable_shards if s.device == jax.devices()[0])
    def real_state(data, fsdp):
        c = config(); c.mesh.data, c.mesh.fsdp = data, fsdp
        mesh = sharding.make_mesh(data, fsdp)
        steps = vqgan_lib.CompiledSteps(vqgan_lib.build_setup(c), mesh,
                                        config_lib.sharding_rules(c))
        return steps, mesh, steps.init(jax.random.PRNGKey(0))
    p = plan.plan(config(), 2, 4, batch=8, fit=False)
    steps, mesh, state = real_state(2, 4)
    batch = sharding.global_batch({"image": np.zeros((8, 16, 16, 3), np.float32)}, mesh)
    real = steps.train.lower(state, None, batch).compile().memory_analysis()
    _, _, replicated = real_state(8, 1)  # data parallel only: every device holds everything
    out = dict(plan=p, real_params=dev0((state.ae_params, state.d_params)),
               real_opt=dev0((state.ae_opt_state, state.d_opt_state)),
               real_temp=int(real.temp_size_in_bytes),
               dp_params=dev0((replicated.ae_params, replicated.d_params)),
               dp_opt=dev0((replicated.ae_opt_state, replicated.d_opt_state)))
    print(json.dumps(out))
''')


@pytest.fixture(scope="module")
def results():
  env = dict(os.environ, XLA_FLAGS=xla_flags(8))
  res = subprocess.run([sys.executable, "-c", WORKER], cwd=REPO, env=env, capture_output=True,
                       text=True, timeout=900)
  assert res.returncode == 0, res.stderr[-3000:]
  return json.loads(res.stdout.strip().splitlines()[-1])


def test_plan_equals_the_real_step(results):
  r = results
  p = r["plan"]
  assert p["plan"] == "vqgan" and p["devices"] == 8 and p["global_batch"] == 8
  assert p["mesh"] == {"data": 2, "fsdp": 4}
  assert p["params_bytes"] == r["real_params"]
  assert p["optimizer_bytes"] == r["real_opt"]
  assert abs(p["temp_bytes"] - r["real_temp"]) <= 0.1 * r["real_temp"]
  assert p["flops_per_step"] > 0 and p["peak_bytes"] >= p["params_bytes"] + p["optimizer_bytes"]


def test_fsdp_divides_the_sharded_parameters(results):
  p = results["plan"]
  # kernels / embeddings split in 4 ways; biases and norms replicated
  assert 3.0 < results["dp_params"] / p["params_bytes"] <= 4.0
  assert 3.0 < results["dp_opt"] / p["optimizer_bytes"] <= 4.0


def test_cli_smoke_and_errors():
  base = [sys.executable, "-m", "vqgan_jax.plan", "--config=configs/transformer_custom.py:small",
          "--vocab_size=128", "--block_size=64", "--mesh", "data=2,fsdp=1", "--batch=4",
          "--nofit", "--peak_tflops=100"]
  res = subprocess.run(base, cwd=REPO, capture_output=True, text=True, timeout=600)
  assert res.returncode == 0, res.stderr[-3000:]
  p = json.loads(res.stdout.strip().splitlines()[-1])
  assert p["plan"] == "transformer" and p["devices"] == 2 and p["step_s"] > 0
  assert "per device: parameters" in res.stdout
  res = subprocess.run(base[:6] + ["--mesh", "data=3,fsdp=1", "--batch=4"], cwd=REPO,
                       capture_output=True, text=True, timeout=600)
  assert res.returncode == 2 and "does not split over the 3 devices" in res.stderr
