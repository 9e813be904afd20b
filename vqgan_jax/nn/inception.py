"""The FID Inception network (TF's 2015-12-05 graph, as pytorch-fid ports it) in NHWC.

`FIDInception` is pytorch-fid 0.3.0's `InceptionV3(output_blocks=[3])` built on
`fid_inception_v3()`: torchvision's Inception3 (no aux head, 1008-way `fc`) with the
FID-specific blocks: Mixed_5b-d / 6b-e / 7b average-pool without counting the zero
padding (TF's SAME pooling) and Mixed_7c max-pools in its pool branch. Input handling is
pytorch-fid's: bilinear resize to 299x299 as `F.interpolate(mode='bilinear',
align_corners=False)` does it (no antialiasing, also when shrinking), then 2x - 1.

Outputs: `pool3` (the 2048-d average pool: FID/KID features), `logits` (torchvision's
`fc`, weight and bias; pytorch-fid itself never computes them) and `logits_unbiased`
(pool3 @ fc.weight^T, what torch-fidelity feeds its Inception Score).

Parameter names mirror the torch state dict (`Conv2d_1a_3x3.conv.weight` ->
params/Conv2d_1a_3x3/conv/kernel, `Mixed_5b.branch1x1.bn.running_var` ->
batch_stats/Mixed_5b/branch1x1/bn/var, `fc.weight` -> params/fc/kernel), so the
weights file that pytorch-fid downloads (`pt_inception-2015-12-05-6726825d.pth`) loads
with `load_inception(path)` through our torch-free reader and
`convert.taming.convert_state_dict`, which names every missing / unexpected /
mis-shaped key.

Note torch-fidelity's own input handling differs (uint8 - 128) / 128 and TF1-style
resize); only pytorch-fid's is implemented here.
"""

import functools
import os
from typing import Any, Dict, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

INPUT_SIZE = 299
BN_EPSILON = 1e-3
NUM_CLASSES = 1008
FEATURE_DIM = 2048
FID_WEIGHTS_FILE = "pt_inception-2015-12-05-6726825d.pth"

Pad = Tuple[Tuple[int, int], Tuple[int, int]]


def _pair(v) -> Tuple[int, int]:
  return (v, v) if isinstance(v, int) else tuple(v)


@functools.lru_cache(maxsize=32)
def bilinear_taps(size_in: int, size_out: int):
  """torch's 1-D bilinear resize (align_corners=False, no antialiasing) as two taps per
  output: (i0 int64[size_out], i1 int64[size_out], lam float32[size_out]), out[o] =
  (1 - lam[o]) * x[i0[o]] + lam[o] * x[i1[o]].

  src = (dst + 0.5) * size_in / size_out - 0.5, clamped below at 0; the taps are
  floor(src) and min(floor(src) + 1, size_in - 1). When shrinking, each output still
  reads only two inputs, as torch (antialias=False) does.
  """
  # torch computes the source coordinate in float32 (opmath of float); so do we.
  f32 = np.float32
  scale = f32(size_in) / f32(size_out)
  dst = np.arange(size_out, dtype=f32)
  src = np.maximum(scale * (dst + f32(0.5)) - f32(0.5), f32(0.0))
  i0 = np.minimum(np.floor(src).astype(np.int64), size_in - 1)
  i1 = np.minimum(i0 + 1, size_in - 1)
  lam = (src - i0.astype(f32)).astype(f32)
  return i0, i1, lam


@functools.lru_cache(maxsize=32)
def bilinear_matrix(size_in: int, size_out: int) -> np.ndarray:
  """float32[size_out, size_in]: `bilinear_taps` as a matrix (for resizing on device)."""
  i0, i1, lam = bilinear_taps(size_in, size_out)
  m = np.zeros((size_out, size_in), np.float32)
  np.add.at(m, (np.arange(size_out), i0), np.float32(1.0) - lam)
  np.add.at(m, (np.arange(size_out), i1), lam)
  return m


def resize_bilinear_numpy(image, size: Tuple[int, int] = (INPUT_SIZE, INPUT_SIZE)) -> np.ndarray:
  """uint8 or float[H, W, C] -> float32[size[0], size[1], C] on the host: the same resize
  as `resize_bilinear_torch` (uint8 input is first divided by 255, as torchvision's
  ToTensor does), by gathering the two taps per axis (width, then height, as torch)."""
  x = np.asarray(image)
  x = x.astype(np.float32) / np.float32(255.0) if x.dtype == np.uint8 else x.astype(np.float32)
  if x.ndim != 3:
    raise ValueError(f"resize_bilinear_numpy: expected an image [H, W, C], got {x.shape}")
  if x.shape[:2] == tuple(size):
    return x
  j0, j1, m = bilinear_taps(x.shape[1], size[1])
  x = x[:, j0] * (np.float32(1.0) - m)[None, :, None] + x[:, j1] * m[None, :, None]
  i0, i1, lam = bilinear_taps(x.shape[0], size[0])
  return x[i0] * (np.float32(1.0) - lam)[:, None, None] + x[i1] * lam[:, None, None]


def resize_bilinear_torch(x, size: Tuple[int, int] = (INPUT_SIZE, INPUT_SIZE)):
  """x: float[B, H, W, C] -> float32[B, size[0], size[1], C], as torch's F.interpolate
  (mode='bilinear', align_corners=False, antialias=False) resizes it."""
  x = x.astype(jnp.float32)
  if x.shape[1:3] == tuple(size):
    return x  # torch's weights are then exactly the identity
  mh = jnp.asarray(bilinear_matrix(x.shape[1], size[0]))
  mw = jnp.asarray(bilinear_matrix(x.shape[2], size[1]))
  hp = jax.lax.Precision.HIGHEST
  x = jnp.einsum("oh,bhwc->bowc", mh, x, precision=hp)
  return jnp.einsum("pw,bowc->bopc", mw, x, precision=hp)


def _pool(x, kind: str, window: int = 3, stride: int = 1, padding: int = 0):
  """Max- or average-pool of x [B, H, W, C]; the average ignores padded cells
  (torch's count_include_pad=False, TF's SAME)."""
  pad = ((padding, padding), (padding, padding))
  if kind == "max":
    return nn.max_pool(x, (window, window), (stride, stride), pad)
  return nn.avg_pool(x, (window, window), (stride, stride), pad, count_include_pad=False)


class BasicConv2d(nn.Module):
  """Bias-free conv (`conv`) -> BatchNorm(eps 1e-3, running stats) (`bn`) -> ReLU."""
  features: int
  kernel_size: Any = 1
  stride: int = 1
  padding: Any = 0
  dtype: Any = jnp.float32
  precision: Any = jax.lax.Precision.HIGHEST

  @nn.compact
  def __call__(self, x):
    ph, pw = _pair(self.padding)
    x = nn.Conv(self.features, _pair(self.kernel_size), (self.stride, self.stride),
                ((ph, ph), (pw, pw)), use_bias=False, dtype=self.dtype,
                precision=self.precision, name="conv")(x)
    x = nn.BatchNorm(use_running_average=True, epsilon=BN_EPSILON, dtype=self.dtype,
                     name="bn")(x)
    return nn.relu(x)


class _Block(nn.Module):
  """Base of the Mixed blocks: `conv(name, features, kernel, ...)` builds a BasicConv2d."""
  dtype: Any = jnp.float32
  precision: Any = jax.lax.Precision.HIGHEST

  def conv(self, name, features, kernel=1, stride=1, padding=0):
    return BasicConv2d(features, kernel, stride, padding, self.dtype, self.precision,
                       name=name)


class InceptionA(_Block):
  """Mixed_5b-d: 1x1 | 1x1-5x5 | 1x1-3x3-3x3 | avgpool(no pad count)-1x1."""
  pool_features: int = 32

  @nn.compact
  def __call__(self, x):
    a = self.conv("branch1x1", 64)(x)
    b = self.conv("branch5x5_2", 64, 5, padding=2)(self.conv("branch5x5_1", 48)(x))
    c = self.conv("branch3x3dbl_1", 64)(x)
    c = self.conv("branch3x3dbl_3", 96, 3, padding=1)(
        self.conv("branch3x3dbl_2", 96, 3, padding=1)(c))
    d = self.conv("branch_pool", self.pool_features)(_pool(x, "avg", padding=1))
    return jnp.concatenate([a, b, c, d], -1)


class InceptionB(_Block):
  """Mixed_6a (grid 35 -> 17): 3x3/2 | 1x1-3x3-3x3/2 | maxpool/2."""

  @nn.compact
  def __call__(self, x):
    a = self.conv("branch3x3", 384, 3, stride=2)(x)
    c = self.conv("branch3x3dbl_1", 64)(x)
    c = self.conv("branch3x3dbl_2", 96, 3, padding=1)(c)
    c = self.conv("branch3x3dbl_3", 96, 3, stride=2)(c)
    return jnp.concatenate([a, c, _pool(x, "max", stride=2)], -1)


class InceptionC(_Block):
  """Mixed_6b-e: factorized 7x7 branches; avgpool(no pad count)-1x1."""
  channels_7x7: int = 128

  @nn.compact
  def __call__(self, x):
    c7 = self.channels_7x7
    a = self.conv("branch1x1", 192)(x)
    b = self.conv("branch7x7_1", c7)(x)
    b = self.conv("branch7x7_2", c7, (1, 7), padding=(0, 3))(b)
    b = self.conv("branch7x7_3", 192, (7, 1), padding=(3, 0))(b)
    c = self.conv("branch7x7dbl_1", c7)(x)
    c = self.conv("branch7x7dbl_2", c7, (7, 1), padding=(3, 0))(c)
    c = self.conv("branch7x7dbl_3", c7, (1, 7), padding=(0, 3))(c)
    c = self.conv("branch7x7dbl_4", c7, (7, 1), padding=(3, 0))(c)
    c = self.conv("branch7x7dbl_5", 192, (1, 7), padding=(0, 3))(c)
    d = self.conv("branch_pool", 192)(_pool(x, "avg", padding=1))
    return jnp.concatenate([a, b, c, d], -1)


class InceptionD(_Block):
  """Mixed_7a (grid 17 -> 8): 1x1-3x3/2 | 1x1-1x7-7x1-3x3/2 | maxpool/2."""

  @nn.compact
  def __call__(self, x):
    a = self.conv("branch3x3_2", 320, 3, stride=2)(self.conv("branch3x3_1", 192)(x))
    b = self.conv("branch7x7x3_1", 192)(x)
    b = self.conv("branch7x7x3_2", 192, (1, 7), padding=(0, 3))(b)
    b = self.conv("branch7x7x3_3", 192, (7, 1), padding=(3, 0))(b)
    b = self.conv("branch7x7x3_4", 192, 3, stride=2)(b)
    return jnp.concatenate([a, b, _pool(x, "max", stride=2)], -1)


class InceptionE(_Block):
  """Mixed_7b ('avg' pool, no pad count) and Mixed_7c ('max' pool: the FID graph's quirk)."""
  pool: str = "avg"

  @nn.compact
  def __call__(self, x):
    a = self.conv("branch1x1", 320)(x)
    b = self.conv("branch3x3_1", 384)(x)
    b = jnp.concatenate([self.conv("branch3x3_2a", 384, (1, 3), padding=(0, 1))(b),
                         self.conv("branch3x3_2b", 384, (3, 1), padding=(1, 0))(b)], -1)
    c = self.conv("branch3x3dbl_1", 448)(x)
    c = self.conv("branch3x3dbl_2", 384, 3, padding=1)(c)
    c = jnp.concatenate([self.conv("branch3x3dbl_3a", 384, (1, 3), padding=(0, 1))(c),
                         self.conv("branch3x3dbl_3b", 384, (3, 1), padding=(1, 0))(c)], -1)
    d = self.conv("branch_pool", 192)(_pool(x, self.pool, padding=1))
    return jnp.concatenate([a, b, c, d], -1)


class FIDInception(nn.Module):
  """pytorch-fid's FID InceptionV3 (pool3) plus the graph's 1008-way logits.

  Fields:
    resize_input: resize to 299x299 as pytorch-fid does (its default True).
    dtype: compute dtype of the convs; resize, pooled features and logits are float32.
    precision: of every conv and the fc; HIGHEST keeps float32 parity on accelerators.
  """
  resize_input: bool = True
  dtype: Any = jnp.float32
  precision: Any = jax.lax.Precision.HIGHEST

  @nn.compact
  def __call__(self, x) -> Dict[str, jax.Array]:
    """x: float[B, H, W, 3] in [0, 1] (uint8 images / 255) -> {'pool3': float32[B, 2048],
    'logits': float32[B, 1008], 'logits_unbiased': float32[B, 1008]}.

    With resize_input=False, H, W >= 75 (the trunk's smallest valid input).
    """
    if x.ndim != 4 or x.shape[-1] != 3:
      raise ValueError(f"FIDInception: expected NHWC RGB images [B, H, W, 3], got {x.shape}")
    if self.resize_input:
      x = resize_bilinear_torch(x)
    x = (2.0 * x.astype(jnp.float32) - 1.0).astype(self.dtype)
    kw = dict(dtype=self.dtype, precision=self.precision)
    x = BasicConv2d(32, 3, stride=2, name="Conv2d_1a_3x3", **kw)(x)
    x = BasicConv2d(32, 3, name="Conv2d_2a_3x3", **kw)(x)
    x = BasicConv2d(64, 3, padding=1, name="Conv2d_2b_3x3", **kw)(x)
    x = _pool(x, "max", stride=2)
    x = BasicConv2d(80, 1, name="Conv2d_3b_1x1", **kw)(x)
    x = BasicConv2d(192, 3, name="Conv2d_4a_3x3", **kw)(x)
    x = _pool(x, "max", stride=2)
    for name, pf in (("Mixed_5b", 32), ("Mixed_5c", 64), ("Mixed_5d", 64)):
      x = InceptionA(pool_features=pf, name=name, **kw)(x)
    x = InceptionB(name="Mixed_6a", **kw)(x)
    for name, c7 in (("Mixed_6b", 128), ("Mixed_6c", 160), ("Mixed_6d", 160), ("Mixed_6e", 192)):
      x = InceptionC(channels_7x7=c7, name=name, **kw)(x)
    x = InceptionD(name="Mixed_7a", **kw)(x)
    x = InceptionE(pool="avg", name="Mixed_7b", **kw)(x)
    x = InceptionE(pool="max", name="Mixed_7c", **kw)(x)
    pool3 = jnp.mean(x.astype(jnp.float32), axis=(1, 2))
    fc = nn.Dense(NUM_CLASSES, dtype=jnp.float32, precision=self.precision, name="fc")
    logits = fc(pool3)
    unbiased = jnp.dot(pool3, fc.variables["params"]["kernel"], precision=self.precision)
    return {"pool3": pool3, "logits": logits, "logits_unbiased": unbiased}


def inception_shapes(model: FIDInception = FIDInception()):
  """The variables tree of `model` as ShapeDtypeStructs (nothing is computed)."""
  x = jax.ShapeDtypeStruct((1, INPUT_SIZE, INPUT_SIZE, 3), jnp.float32)
  return jax.eval_shape(model.init, jax.random.PRNGKey(0), x)


def inception_variables_from_state_dict(state_dict, source: str = "state dict",
                                        model: FIDInception = FIDInception()):
  """torch key -> array (the FID InceptionV3 state dict) -> our variables.

  Raises convert.taming.ConversionError naming every missing / unexpected / mis-shaped key.
  """
  from vqgan_jax.convert.taming import convert_state_dict  # convert/ imports nn/
  return convert_state_dict(state_dict, inception_shapes(model), source=source)


def load_inception(path: str | os.PathLike,
                   model: FIDInception = FIDInception()) -> Dict[str, Any]:
  """Reads pytorch-fid's `pt_inception-2015-12-05-6726825d.pth` (or any file with the
  same state dict) without torch.

  Returns:
    {'params': ..., 'batch_stats': ...} of float32 np.ndarray for `FIDInception().apply`.
  Raises:
    FileNotFoundError when there is no file; convert.torch_reader.CheckpointFormatError
    when it is not a torch state dict; convert.taming.ConversionError listing every
    missing, unexpected or mis-shaped key.
  """
  from vqgan_jax.convert.torch_reader import read_state_dict
  path = os.fspath(path)
  if not os.path.isfile(path):
    raise FileNotFoundError(
        f"FID Inception weights not found at {path}: expected pytorch-fid's {FID_WEIGHTS_FILE} "
        f"(https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/"
        f"{FID_WEIGHTS_FILE}); it is never downloaded here")
  return inception_variables_from_state_dict(read_state_dict(path), source=path, model=model)
