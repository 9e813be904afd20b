"""vqgan_jax: Taming Transformers (VQGAN + transformer) in JAX/Flax.

`load_vqgan(path)` loads a converted checkpoint directory or a taming `.ckpt` file.
"""

__version__ = "0.1.0"


def load_vqgan(path, config=None, which="vqgan"):
  """Loads a VQGAN; see `vqgan_jax.api.load_vqgan`."""
  from vqgan_jax.api import load_vqgan as _load  # deferred: keeps `import vqgan_jax` light
  return _load(path, config=config, which=which)
