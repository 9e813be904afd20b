"""vqgan_jax: Taming Transformers (VQGAN + transformer) in JAX/Flax.

`load_vqgan(path)` loads a first stage and `load_transformer(path)` a Net2Net transformer,
from a converted model directory or a taming `.ckpt` file.
"""

__version__ = "0.1.0"


def load_vqgan(path, config=None, which="vqgan"):
  """Loads a VQGAN; see `vqgan_jax.api.load_vqgan`."""
  from vqgan_jax.api import load_vqgan as _load  # deferred: keeps `import vqgan_jax` light
  return _load(path, config=config, which=which)


def load_transformer(path, config=None):
  """Loads a Net2Net transformer; see `vqgan_jax.net2net.load_transformer`."""
  from vqgan_jax.net2net import load_transformer as _load  # deferred, as above
  return _load(path, config=config)
