"""The VQGAN autoencoder of Taming Transformers: Encoder, Decoder and VQModel.

All modules are NHWC. Submodule names mirror the state-dict names of taming's
PyTorch modules with `name.<i>` written `name_<i>` (`encoder/down_0/block_1/conv1`),
so converting a checkpoint is renaming plus transposing. Normalisation statistics,
attention softmax and the quantizer run in float32 whatever the compute dtype.
"""

import dataclasses
import functools
from typing import Any, Optional, Sequence, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from vqgan_jax.nn import configs, quantizers
from vqgan_jax.nn.conv import Conv

Dtype = Any


def normalize(name: str, dtype: Dtype = jnp.float32) -> nn.Module:
  """GroupNorm(32 groups, eps 1e-6, affine); statistics in float32."""
  return nn.GroupNorm(num_groups=32, epsilon=1e-6, dtype=dtype, param_dtype=jnp.float32,
                      use_fast_variance=False, name=name)


def conv(features: int, kernel: int, name: Optional[str], dtype: Dtype, stride: int = 1,
         padding: Any = None) -> nn.Module:
  """torch's Conv2d(kernel, stride, padding=kernel // 2 unless given), NHWC."""
  return Conv(features, kernel, stride, padding, dtype=dtype, name=name)


class ResnetBlock(nn.Module):
  """norm-swish-conv twice with a residual; 1x1 `nin_shortcut` when channels change."""
  out_channels: int
  dropout: float = 0.0
  use_conv_shortcut: bool = False
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False):
    """x: [B, H, W, C_in] -> [B, H, W, out_channels]."""
    h = nn.swish(normalize("norm1", self.dtype)(x))
    h = conv(self.out_channels, 3, "conv1", self.dtype)(h)
    h = nn.swish(normalize("norm2", self.dtype)(h))
    h = nn.Dropout(self.dropout, deterministic=not train)(h)
    h = conv(self.out_channels, 3, "conv2", self.dtype)(h)
    if x.shape[-1] != self.out_channels:
      if self.use_conv_shortcut:
        x = conv(self.out_channels, 3, "conv_shortcut", self.dtype)(x)
      else:
        x = conv(self.out_channels, 1, "nin_shortcut", self.dtype)(x)
    return x + h


class AttnBlock(nn.Module):
  """Single-head self-attention over all H*W positions, scaled by C^-1/2."""
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    """x: [B, H, W, C] -> [B, H, W, C]."""
    b, hh, ww, c = x.shape
    h = normalize("norm", self.dtype)(x)
    q = conv(c, 1, "q", self.dtype)(h).reshape(b, hh * ww, c)
    k = conv(c, 1, "k", self.dtype)(h).reshape(b, hh * ww, c)
    v = conv(c, 1, "v", self.dtype)(h).reshape(b, hh * ww, c)
    logits = jnp.einsum("bqc,bkc->bqk", q, k).astype(jnp.float32) * (c ** -0.5)
    weights = jax.nn.softmax(logits, axis=-1).astype(v.dtype)
    out = jnp.einsum("bqk,bkc->bqc", weights, v).reshape(b, hh, ww, c)
    return x + conv(c, 1, "proj_out", self.dtype)(out)


class Downsample(nn.Module):
  """Stride-2 3x3 conv after zero-padding right and bottom by one (taming's quirk)."""
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    return conv(x.shape[-1], 3, "conv", self.dtype, stride=2, padding=((0, 1), (0, 1)))(x)


def _subpixel_upsample_conv(x, kernel, bias):
  """Nearest x2 upsampling followed by a 3x3 'same' conv, computed at low resolution.

  Output pixel (2i+a, 2j+b) only sees input rows i-1..i (a=0) or i..i+1 (a=1), with the
  kernel rows that land on the same input row summed: four 2x2 convolutions replace one
  3x3 convolution at twice the size (16 instead of 36 multiplies per output pair).
  """
  b, h, w, _ = x.shape
  k = kernel.astype(x.dtype)
  def split(t, axis):  # kernel taps grouped by the input row/column they read
    t0, t1, t2 = (jax.lax.index_in_dim(t, i, axis) for i in range(3))
    return (jnp.concatenate([t0, t1 + t2], axis), jnp.concatenate([t0 + t1, t2], axis))
  xp = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
  rows = []
  for a, ka in enumerate(split(k, 0)):
    cols = [jax.lax.conv_general_dilated(xp[:, a:a + h + 1, c:c + w + 1], kb, (1, 1), "VALID",
                                         dimension_numbers=("NHWC", "HWIO", "NHWC"))
            for c, kb in enumerate(split(ka, 1))]
    rows.append(jnp.stack(cols, axis=3))            # [B, h, w, 2 (b), K]
  y = jnp.stack(rows, axis=2)                        # [B, h, 2 (a), w, 2 (b), K]
  return y.reshape(b, 2 * h, 2 * w, -1) + bias.astype(x.dtype)


class Upsample(nn.Module):
  """Nearest-neighbour x2 then a 3x3 conv (params as `nn.Conv`: conv/kernel, conv/bias).

  Large inputs take the equivalent low-resolution sub-pixel form, which needs 2.25x
  fewer multiplies; small ones, where XLA's direct convolution is faster, do not.
  """
  dtype: Dtype = jnp.float32
  subpixel_min_pixels: int = 32 * 32

  @nn.compact
  def __call__(self, x):
    layer = conv(x.shape[-1], 3, "conv", self.dtype)
    if x.shape[1] * x.shape[2] < self.subpixel_min_pixels or self.is_initializing():
      return layer(jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2))
    p = layer.variables["params"]
    return _subpixel_upsample_conv(x.astype(self.dtype), p["kernel"], p["bias"])


def attention_levels(ch_mult: Sequence[int], resolution: int,
                     attn_resolutions: Sequence[int]) -> Tuple[bool, ...]:
  """Which resolution levels carry attention, decided from the config as taming does."""
  return tuple((resolution // 2 ** i) in attn_resolutions for i in range(len(ch_mult)))


class Level(nn.Module):
  """One resolution level: ResnetBlocks `block_i`, each followed by `attn_i` if any."""
  out_channels: int
  num_blocks: int
  with_attn: bool
  resample: Optional[str]  # "down", "up" or None
  dropout: float = 0.0
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False):
    for i in range(self.num_blocks):
      x = ResnetBlock(self.out_channels, self.dropout, dtype=self.dtype,
                      name=f"block_{i}")(x, train)
      if self.with_attn:
        x = AttnBlock(self.dtype, name=f"attn_{i}")(x)
    if self.resample == "down":
      x = Downsample(self.dtype, name="downsample")(x)
    elif self.resample == "up":
      x = Upsample(self.dtype, name="upsample")(x)
    return x


class Mid(nn.Module):
  """block_1 - attn_1 - block_2 at the lowest resolution."""
  channels: int
  dropout: float = 0.0
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False):
    x = ResnetBlock(self.channels, self.dropout, dtype=self.dtype, name="block_1")(x, train)
    x = AttnBlock(self.dtype, name="attn_1")(x)
    return ResnetBlock(self.channels, self.dropout, dtype=self.dtype, name="block_2")(x, train)


class Encoder(nn.Module):
  """Image [B, H, W, in_channels] -> latent [B, H/f, W/f, z_channels (x2 if double_z)]."""
  ch: int = 128
  ch_mult: Sequence[int] = (1, 1, 2, 2, 4)
  num_res_blocks: int = 2
  attn_resolutions: Sequence[int] = (16,)
  dropout: float = 0.0
  resolution: int = 256
  in_channels: int = 3
  z_channels: int = 256
  double_z: bool = False
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False):
    attn = attention_levels(self.ch_mult, self.resolution, self.attn_resolutions)
    h = conv(self.ch, 3, "conv_in", self.dtype)(x.astype(self.dtype))
    last = len(self.ch_mult) - 1
    for i, mult in enumerate(self.ch_mult):
      h = Level(self.ch * mult, self.num_res_blocks, attn[i],
                "down" if i != last else None, self.dropout, self.dtype, name=f"down_{i}")(h, train)
    h = Mid(h.shape[-1], self.dropout, self.dtype, name="mid")(h, train)
    h = nn.swish(normalize("norm_out", self.dtype)(h))
    z = 2 * self.z_channels if self.double_z else self.z_channels
    return conv(z, 3, "conv_out", self.dtype)(h)


class Decoder(nn.Module):
  """Latent [B, h, w, z_channels] -> image [B, h*f, w*f, out_ch] (no output activation)."""
  ch: int = 128
  out_ch: int = 3
  ch_mult: Sequence[int] = (1, 1, 2, 2, 4)
  num_res_blocks: int = 2
  attn_resolutions: Sequence[int] = (16,)
  dropout: float = 0.0
  resolution: int = 256
  z_channels: int = 256
  give_pre_end: bool = False
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, z, train: bool = False, features_only: bool = False):
    """features_only: return the input of `conv_out` (what the adaptive GAN weight needs)."""
    attn = attention_levels(self.ch_mult, self.resolution, self.attn_resolutions)
    h = conv(self.ch * self.ch_mult[-1], 3, "conv_in", self.dtype)(z.astype(self.dtype))
    h = Mid(h.shape[-1], self.dropout, self.dtype, name="mid")(h, train)
    for i in reversed(range(len(self.ch_mult))):
      h = Level(self.ch * self.ch_mult[i], self.num_res_blocks + 1, attn[i],
                "up" if i != 0 else None, self.dropout, self.dtype, name=f"up_{i}")(h, train)
    if self.give_pre_end:
      return h
    h = nn.swish(normalize("norm_out", self.dtype)(h))
    if features_only:
      return h
    return conv(self.out_ch, 3, "conv_out", self.dtype)(h)


def conv_out_apply(h, kernel, bias, dtype: Dtype = jnp.float32):
  """The decoder's `conv_out` as a function of its parameters: float32[B, H, W, out_ch]."""
  y = jax.lax.conv_general_dilated(h.astype(dtype), kernel.astype(dtype), (1, 1),
                                   ((1, 1), (1, 1)), dimension_numbers=("NHWC", "HWIO", "NHWC"))
  return (y + bias.astype(dtype)).astype(jnp.float32)


@dataclasses.dataclass(frozen=True)
class VQGANConfig:
  """Everything that fixes a first-stage model: taming's `ddconfig` plus the quantizer.

  `quantizer` is "vq" (VectorQuantizer2), "gumbel" (GumbelQuantize) or "ema".
  `remap_size` > 0 means indices are remapped to `remap_size` used codes (taming's
  `remap`); the used-code list lives in the `remap` variable collection.
  """
  ch: int = 128
  ch_mult: Tuple[int, ...] = (1, 1, 2, 2, 4)
  num_res_blocks: int = 2
  attn_resolutions: Tuple[int, ...] = (16,)
  dropout: float = 0.0
  resolution: int = 256
  in_channels: int = 3
  out_ch: int = 3
  z_channels: int = 256
  double_z: bool = False
  give_pre_end: bool = False
  n_embed: int = 1024
  embed_dim: int = 256
  quantizer: str = "vq"
  beta: float = 0.25
  legacy: bool = True
  remap_size: int = 0
  unknown_index: Any = "random"
  kl_weight: float = 5e-4
  straight_through: bool = True
  ema_decay: float = 0.99
  ema_eps: float = 1e-5
  # Beyond taming (vq and ema quantizers; off = taming): codes looked up in a
  # codebook_dim space through learned projections, and/or compared as unit vectors.
  codebook_dim: int = 0
  l2_normalize_codes: bool = False

  @property
  def downsample_factor(self) -> int:
    return 2 ** (len(self.ch_mult) - 1)

  def to_dict(self) -> dict:
    d = dataclasses.asdict(self)
    d["ch_mult"], d["attn_resolutions"] = list(self.ch_mult), list(self.attn_resolutions)
    return d

  @classmethod
  def from_dict(cls, d: dict) -> "VQGANConfig":
    return configs.from_dict(cls, d, ("ch_mult", "attn_resolutions"))

  @property
  def num_codes(self) -> int:
    """The number of values the indices take (the remapped count if remapped)."""
    if self.remap_size:
      return self.remap_size + (self.unknown_index == "extra")
    return self.n_embed

  def validate(self) -> list:
    """Returns one message per field that cannot build a model."""
    errors = []
    if self.quantizer not in ("vq", "gumbel", "ema"):
      errors.append(f"quantizer: expected 'vq', 'gumbel' or 'ema', got {self.quantizer!r}")
    if not isinstance(self.codebook_dim, int) or self.codebook_dim < 0:
      errors.append(f"codebook_dim: expected an int >= 0 (0: look codes up in embed_dim), "
                    f"got {self.codebook_dim!r}")
    if self.quantizer == "gumbel" and (self.codebook_dim or self.l2_normalize_codes):
      errors.append("codebook_dim / l2_normalize_codes: only for the 'vq' and 'ema' "
                    "quantizers, not 'gumbel'")
    for name in ("ch", "num_res_blocks", "z_channels", "n_embed", "embed_dim", "in_channels",
                 "out_ch", "resolution"):
      if int(getattr(self, name)) <= 0:
        errors.append(f"{name}: expected a positive integer, got {getattr(self, name)!r}")
    if not self.ch_mult or any(int(m) <= 0 for m in self.ch_mult):
      errors.append(f"ch_mult: expected positive integers, got {self.ch_mult!r}")
    elif any((self.ch * m) % 32 for m in self.ch_mult):
      errors.append(f"ch, ch_mult: every level's channels ch*mult must be divisible by 32 "
                    f"(GroupNorm(32)); got ch={self.ch}, ch_mult={list(self.ch_mult)}")
    return errors


class VQModel(nn.Module):
  """Encoder -> quant_conv -> quantizer -> post_quant_conv -> Decoder."""
  config: VQGANConfig
  dtype: Dtype = jnp.float32

  def setup(self):
    c = self.config
    dd = dict(ch=c.ch, ch_mult=tuple(c.ch_mult), num_res_blocks=c.num_res_blocks,
              attn_resolutions=tuple(c.attn_resolutions), dropout=c.dropout,
              resolution=c.resolution, z_channels=c.z_channels, dtype=self.dtype)
    self.encoder = Encoder(in_channels=c.in_channels, double_z=c.double_z, **dd)
    self.decoder = Decoder(out_ch=c.out_ch, give_pre_end=c.give_pre_end, **dd)
    self.quant_conv = conv(c.embed_dim, 1, None, jnp.float32)
    self.post_quant_conv = conv(c.z_channels, 1, None, self.dtype)
    if c.quantizer == "gumbel":
      self.quantize = quantizers.GumbelQuantizer(
          n_embed=c.n_embed, embed_dim=c.embed_dim, kl_weight=c.kl_weight,
          straight_through=c.straight_through, remap_size=c.remap_size,
          unknown_index=c.unknown_index)
    elif c.quantizer == "ema":
      self.quantize = quantizers.EMAVectorQuantizer(
          n_embed=c.n_embed, embed_dim=c.embed_dim, beta=c.beta, decay=c.ema_decay,
          eps=c.ema_eps, remap_size=c.remap_size, unknown_index=c.unknown_index,
          codebook_dim=c.codebook_dim, l2_normalize=c.l2_normalize_codes)
    else:
      self.quantize = quantizers.VectorQuantizer(
          n_embed=c.n_embed, embed_dim=c.embed_dim, beta=c.beta, legacy=c.legacy,
          remap_size=c.remap_size, unknown_index=c.unknown_index,
          codebook_dim=c.codebook_dim, l2_normalize=c.l2_normalize_codes)

  def encode_to_prequant(self, x, train: bool = False):
    """x: float[B, H, W, in_channels] in [-1, 1] -> h: float32[B, H/f, W/f, embed_dim]."""
    return self.quant_conv(self.encoder(x, train).astype(jnp.float32))

  def encode(self, x, train: bool = False, **quantize_kwargs):
    """Returns (z_q float32[B, h, w, embed_dim], codebook_loss, info dict with `indices`)."""
    h = self.encode_to_prequant(x, train)
    z_q, loss, info = self.quantize(h, train=train, **quantize_kwargs)
    return z_q, loss, dict(info, prequant=h)

  def decode(self, z_q, train: bool = False):
    """z_q: float[B, h, w, embed_dim] -> image float32[B, h*f, w*f, out_ch]."""
    h = self.post_quant_conv(z_q.astype(self.dtype))
    return self.decoder(h, train).astype(jnp.float32)

  def decode_indices(self, indices, train: bool = False):
    """indices: int32[B, h, w] -> image float32[B, h*f, w*f, out_ch]."""
    return self.decode(self.quantize.embed_indices(indices), train)

  def encode_decode_features(self, x, train: bool = False, **quantize_kwargs):
    """Like __call__ but stops before the decoder's conv_out: (features, loss, info)."""
    z_q, loss, info = self.encode(x, train, **quantize_kwargs)
    h = self.decoder(self.post_quant_conv(z_q.astype(self.dtype)), train, features_only=True)
    return h, loss, info

  def __call__(self, x, train: bool = False, **quantize_kwargs):
    """Returns (reconstruction float32[B, H, W, out_ch], codebook_loss, info)."""
    z_q, loss, info = self.encode(x, train, **quantize_kwargs)
    return self.decode(z_q, train), loss, info


def init_variables(config: VQGANConfig, rng, image_size: Tuple[int, int] = None,
                   dtype: Dtype = jnp.float32):
  """Initial variables of a VQModel for an input of `image_size` (H, W)."""
  f = config.downsample_factor
  hw = image_size or (f, f)
  x = jnp.zeros((1, hw[0], hw[1], config.in_channels), jnp.float32)
  return VQModel(config, dtype).init({"params": rng}, x)


@functools.lru_cache(maxsize=32)
def abstract_variables(config: VQGANConfig):
  """Shapes and dtypes of a VQModel's variables, without allocating them."""
  return jax.eval_shape(lambda: init_variables(config, jax.random.PRNGKey(0)))


def param_count(tree) -> int:
  return int(sum(np.prod(x.shape) for x in jax.tree_util.tree_leaves(tree)))
