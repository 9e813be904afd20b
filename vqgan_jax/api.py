"""`load_vqgan`: a converted or taming checkpoint as an object with jitted methods.

    vq = vqgan_jax.load_vqgan("vqgan_imagenet_f16_1024/last.ckpt")  # or a model directory
    z_q, indices = vq.encode(images)       # images float32[B, H, W, 3] in [-1, 1]
    images = vq.decode_indices(indices)    # indices int32[B, H/f, W/f]
"""

import os
from typing import Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from vqgan_jax import model_dir
from vqgan_jax.nn.vqgan import VQGANConfig, VQModel


class VQGAN:
  """A first-stage model with its variables; every method is jitted per input shape."""

  def __init__(self, config: VQGANConfig, variables, name: str = "vqgan"):
    errors = config.validate()
    if errors:
      raise ValueError(f"{name}: invalid model config: " + "; ".join(errors))
    self.config = config
    self.name = name
    self.model = VQModel(config)
    self.variables = jax.tree_util.tree_map(jnp.asarray, variables)
    m = self.model
    self._encode = jax.jit(lambda v, x: m.apply(v, x, method=VQModel.encode))
    self._encode_sample = jax.jit(lambda v, x, rng: m.apply(
        v, x, sample=True, method=VQModel.encode, rngs={"gumbel": rng, "remap": rng}))
    self._decode = jax.jit(lambda v, z: m.apply(v, z, method=VQModel.decode))
    self._decode_indices = jax.jit(lambda v, i: m.apply(v, i, method=VQModel.decode_indices))
    self._prequant = jax.jit(lambda v, x: m.apply(v, x, method=VQModel.encode_to_prequant))

  @property
  def downsample_factor(self) -> int:
    return self.config.downsample_factor

  def _check_images(self, images) -> jax.Array:
    images = np.asarray(images) if not isinstance(images, jax.Array) else images
    c, f = self.config.in_channels, self.downsample_factor
    if images.ndim != 4 or images.shape[-1] != c:
      raise ValueError(f"{self.name}: images must be float32[B, H, W, {c}] (NHWC) in [-1, 1]; "
                       f"got shape {tuple(images.shape)}")
    if images.shape[1] % f or images.shape[2] % f:
      raise ValueError(f"{self.name}: image height and width must be multiples of the "
                       f"downsampling factor {f}; got {images.shape[1]}x{images.shape[2]}")
    return jnp.asarray(images, jnp.float32)

  def encode_to_prequant(self, images):
    """images float32[B, H, W, C] -> pre-quantisation latent float32[B, h, w, embed_dim]."""
    return self._prequant(self.variables, self._check_images(images))

  def encode(self, images, rng: Optional[jax.Array] = None):
    """images float32[B, H, W, C] in [-1, 1] -> (z_q float32[B, h, w, D], indices int32[B, h, w]).

    Deterministic (nearest code, or argmax for a Gumbel model) unless `rng` is given: then
    a Gumbel model samples its codes as taming does, and a remapped model draws the
    indices of unknown codes from it.
    """
    x = self._check_images(images)
    if rng is None:
      if self.config.remap_size and self.config.unknown_index == "random":
        rng = jax.random.PRNGKey(0)
      else:
        z_q, _, info = self._encode(self.variables, x)
        return z_q, info["indices"]
    z_q, _, info = self._encode_sample(self.variables, x, rng)
    return z_q, info["indices"]

  def decode(self, z_q):
    """z_q float32[B, h, w, embed_dim] -> images float32[B, h*f, w*f, out_ch]."""
    z_q = jnp.asarray(z_q, jnp.float32)
    if z_q.ndim != 4 or z_q.shape[-1] != self.config.embed_dim:
      raise ValueError(f"{self.name}: z_q must be float32[B, h, w, {self.config.embed_dim}]; "
                       f"got shape {tuple(z_q.shape)}")
    return self._decode(self.variables, z_q)

  def decode_indices(self, indices):
    """indices int[B, h, w] in [0, n_codes) -> images float32[B, h*f, w*f, out_ch].

    Out-of-range indices are refused (a jitted gather would silently clamp them); a jax
    array costs one device_get of its min and max.
    """
    indices = np.asarray(indices) if not isinstance(indices, jax.Array) else indices
    c = self.config
    n = c.num_codes
    if indices.ndim != 3:
      raise ValueError(f"{self.name}: indices must be int32[B, h, w]; got shape "
                       f"{tuple(indices.shape)}")
    if indices.size:
      lo, hi = (int(v) for v in jax.device_get((indices.min(), indices.max())))
      if lo < 0 or hi >= n:
        raise ValueError(f"{self.name}: indices must lie in [0, {n}); got values in "
                         f"[{lo}, {hi}]")
    return self._decode_indices(self.variables, jnp.asarray(indices, jnp.int32))

  def reconstruct(self, images, rng: Optional[jax.Array] = None):
    """images float32[B, H, W, C] -> reconstructions float32[B, H, W, out_ch]."""
    z_q, _ = self.encode(images, rng)
    return self.decode(z_q)


def read_model(path: str, project_yaml: Optional[str] = None,
               kinds: Optional[Sequence[str]] = None):
  """(config dict, {name: variables}) of a model directory or a taming `.ckpt`.

  config["kind"] says what it holds ("vqgan", "net2net"; see `vqgan_jax/model_dir.py`);
  with `kinds`, any other kind is refused.
  """
  if not os.path.exists(path):
    raise FileNotFoundError(f"{path}: no such file or directory (expected a model "
                            "directory or a taming .ckpt)")
  if os.path.isdir(path):
    return model_dir.load_model_dir(path, kinds=kinds)
  from vqgan_jax.convert.checkpoint import convert_taming_checkpoint
  config, variables = convert_taming_checkpoint(path, project_yaml)
  if kinds is not None and config["kind"] not in kinds:
    raise ValueError(f"{path}: holds a {config['kind']!r} model, expected one of {list(kinds)}")
  return config, variables


def load_vqgan(path: str, config: Optional[str] = None, which: str = "vqgan") -> VQGAN:
  """Loads a first-stage model.

  Args:
    path: a model directory written by `python -m vqgan_jax.convert` (or by training),
      or a taming `.ckpt` file (VQModel, GumbelVQ, or a Net2Net transformer, whose
      first stage is returned), read without torch.
    config: for a `.ckpt`, taming's project YAML; without it the architecture is
      inferred from the weights. Ignored for a model directory.
    which: "vqgan" (the first stage; of a "net2net" model too) or "cond_stage" (a
      Net2Net VQ cond stage).
  """
  cfg, variables = read_model(path, config, kinds=("vqgan", "net2net"))
  if which not in variables or which not in cfg:
    raise KeyError(f"{path}: holds no {which!r} model (it has {sorted(variables)})")
  return VQGAN(VQGANConfig.from_dict(cfg[which]), variables[which], name=f"{path}:{which}")
