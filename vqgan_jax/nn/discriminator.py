"""The PatchGAN discriminator of Taming Transformers and its two discriminator losses.

`NLayerDiscriminator` is taming's `taming.modules.discriminator.model.NLayerDiscriminator`
in NHWC. Its submodules are named after the indices of taming's `nn.Sequential`
(`main_0`, `main_2`, `main_3`, ..., LeakyReLUs own no parameters), so a torch state dict
`loss.discriminator.main.<i>.*` converts by name with `convert.taming.convert_state_dict`.

The normalisation is either `BatchNorm` (taming's default, written here to match
torch exactly: biased batch variance to normalise, unbiased variance in the running
average, momentum 0.1, eps 1e-5) or `ActNorm` (per-channel affine with a data-dependent
initialisation on the first training call). Statistics are always float32.

Variable collections: `params`; `batch_stats` (BatchNorm `mean`, `var`); `actnorm_state`
(ActNorm `initialized`). A training call must make `batch_stats` mutable:

  logits, upd = disc.apply(variables, x, train=True, mutable=["batch_stats"])
"""

import math
from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

Dtype = Any

BN_EPSILON = 1e-5
BN_MOMENTUM = 0.1  # torch convention: running = (1 - m) * running + m * batch
ACTNORM_EPSILON = 1e-6


def _normal(mean: float, std: float):
  """Initializer drawing float32 N(mean, std^2) (taming's `weights_init`)."""
  def init(key, shape, dtype=jnp.float32):
    return mean + std * jax.random.normal(key, shape, dtype)
  return init


def _torch_bias_init(fan_in: int):
  """torch's default Conv2d bias init U(-1/sqrt(fan_in), 1/sqrt(fan_in))."""
  bound = 1.0 / math.sqrt(fan_in)
  def init(key, shape, dtype=jnp.float32):
    return jax.random.uniform(key, shape, dtype, -bound, bound)
  return init


class BatchNorm(nn.Module):
  """torch.nn.BatchNorm2d over the channel axis of NHWC inputs.

  Train mode normalises with the biased batch variance and updates
  `running = (1 - momentum) * running + momentum * batch` with the unbiased variance
  (n / (n - 1)), like torch; eval mode uses the running statistics. The running
  statistics are not updated while the module is being initialised.
  """
  momentum: float = BN_MOMENTUM
  epsilon: float = BN_EPSILON

  @nn.compact
  def __call__(self, x, train: bool):
    """x: float[B, H, W, C] -> same shape and dtype."""
    c = x.shape[-1]
    scale = self.param("scale", _normal(1.0, 0.02), (c,), jnp.float32)
    bias = self.param("bias", nn.initializers.zeros, (c,), jnp.float32)
    running_mean = self.variable("batch_stats", "mean", lambda: jnp.zeros((c,), jnp.float32))
    running_var = self.variable("batch_stats", "var", lambda: jnp.ones((c,), jnp.float32))
    xf = x.astype(jnp.float32)
    if train:
      axes = tuple(range(x.ndim - 1))
      mean = jnp.mean(xf, axis=axes)
      var = jnp.mean(jnp.square(xf - mean), axis=axes)  # biased, used to normalise
      if not self.is_initializing():
        n = xf.size // c
        unbiased = var * (n / max(n - 1, 1))
        m = self.momentum
        running_mean.value = (1.0 - m) * running_mean.value + m * mean
        running_var.value = (1.0 - m) * running_var.value + m * unbiased
    else:
      mean, var = running_mean.value, running_var.value
    y = (xf - mean) * jax.lax.rsqrt(var + self.epsilon) * scale + bias
    return y.astype(x.dtype)


class ActNorm(nn.Module):
  """taming's ActNorm: `scale * (x + loc)` per channel, initialised from data.

  The first training call sets `loc = -mean` and `scale = 1 / (std + 1e-6)` over
  N*H*W (unbiased std), as taming does on its first `train()` forward:
  - `init(..., train=True)` is such a call: the params come out data-dependent and
    `actnorm_state/initialized` is True;
  - after `init(..., train=False)` (loc 0, scale 1, not initialized), the first
    `apply(..., train=True, mutable=["params", "actnorm_state"])` normalises with the
    batch's statistics and writes them into `loc`/`scale`. Without `params` mutable
    the batch statistics are used but nothing is stored, and the flag stays False.
  Once initialized, the stored `loc`/`scale` are used (trainable params).
  """

  @nn.compact
  def __call__(self, x, train: bool):
    """x: float[B, H, W, C] -> same shape and dtype."""
    c = x.shape[-1]
    xf = x.astype(jnp.float32)

    def batch_loc_scale():
      flat = xf.reshape(-1, c)
      mean = jnp.mean(flat, axis=0)
      std = jnp.std(flat, axis=0, ddof=1)
      return -mean, 1.0 / (std + ACTNORM_EPSILON)

    data_init = train and self.is_initializing()
    loc = self.param("loc", lambda k, s: batch_loc_scale()[0] if data_init
                     else jnp.zeros(s, jnp.float32), (c,))
    scale = self.param("scale", lambda k, s: batch_loc_scale()[1] if data_init
                       else jnp.ones(s, jnp.float32), (c,))
    initialized = self.variable("actnorm_state", "initialized", lambda: jnp.asarray(data_init))
    if train and not self.is_initializing():
      flag = initialized.value
      new_loc, new_scale = batch_loc_scale()
      # Value = batch statistics until initialized; the gradient still reaches loc/scale.
      loc = loc + jnp.where(flag, 0.0, jax.lax.stop_gradient(new_loc - loc))
      scale = scale + jnp.where(flag, 0.0, jax.lax.stop_gradient(new_scale - scale))
      if self.is_mutable_collection("params"):
        self.put_variable("params", "loc", loc)
        self.put_variable("params", "scale", scale)
        if self.is_mutable_collection("actnorm_state"):
          initialized.value = jnp.asarray(True)
    return (scale * (xf + loc)).astype(x.dtype)


class NLayerDiscriminator(nn.Module):
  """PatchGAN discriminator (pix2pix), taming's layout and init.

  main_0 conv(ndf, 4x4, s2) + LeakyReLU(0.2); then n_layers - 1 blocks of
  conv(ndf * min(2^n, 8), 4x4, s2) + norm + LeakyReLU; one block with stride 1;
  a final conv(1, 4x4, s1). All convs pad 1 on every side. Inner convs have no bias
  with BatchNorm and a bias with ActNorm.

  Init (taming's `weights_init`): conv kernels N(0, 0.02), conv biases torch's default
  U(+-1/sqrt(fan_in)), BatchNorm scale N(1, 0.02) and bias 0.
  """
  input_nc: int = 3
  ndf: int = 64
  n_layers: int = 3
  use_actnorm: bool = False
  dtype: Dtype = jnp.float32
  precision: Optional[Any] = None

  def _conv(self, x, features: int, stride: int, use_bias: bool, index: int):
    fan_in = x.shape[-1] * 16
    return nn.Conv(features, (4, 4), strides=(stride, stride), padding=((1, 1), (1, 1)),
                   use_bias=use_bias, dtype=self.dtype, param_dtype=jnp.float32,
                   precision=self.precision, kernel_init=_normal(0.0, 0.02),
                   bias_init=_torch_bias_init(fan_in), name=f"main_{index}")(x)

  def _norm(self, x, train: bool, index: int):
    if self.use_actnorm:
      return ActNorm(name=f"main_{index}")(x, train)
    return BatchNorm(name=f"main_{index}")(x, train)

  @nn.compact
  def __call__(self, x, train: bool):
    """x: float[B, H, W, input_nc] in [-1, 1] -> logits float32[B, h', w', 1].

    For H = W = 256 and n_layers 3, h' = w' = 30. `train` selects batch statistics
    (BatchNorm; needs `mutable=["batch_stats"]`) and ActNorm's data-dependent init.
    """
    if x.shape[-1] != self.input_nc:
      raise ValueError(f"NLayerDiscriminator: input has {x.shape[-1]} channels, expected "
                       f"input_nc={self.input_nc} (x.shape={x.shape}, NHWC)")
    inner_bias = self.use_actnorm
    h = self._conv(x.astype(self.dtype), self.ndf, 2, True, 0)
    h = nn.leaky_relu(h, 0.2)
    index = 2
    for n in range(1, self.n_layers + 1):
      stride = 2 if n < self.n_layers else 1
      h = self._conv(h, self.ndf * min(2 ** n, 8), stride, inner_bias, index)
      h = self._norm(h, train, index + 1)
      h = nn.leaky_relu(h, 0.2)
      index += 3
    h = self._conv(h, 1, 1, True, index)
    return h.astype(jnp.float32)


def hinge_d_loss(logits_real, logits_fake):
  """taming's hinge loss: 0.5 * (mean(relu(1 - real)) + mean(relu(1 + fake))).

  logits_real, logits_fake: float[...] (any shapes) -> float32[].
  """
  real = logits_real.astype(jnp.float32)
  fake = logits_fake.astype(jnp.float32)
  return 0.5 * (jnp.mean(jax.nn.relu(1.0 - real)) + jnp.mean(jax.nn.relu(1.0 + fake)))


def vanilla_d_loss(logits_real, logits_fake):
  """taming's vanilla loss: 0.5 * (mean(softplus(-real)) + mean(softplus(fake))).

  logits_real, logits_fake: float[...] (any shapes) -> float32[].
  """
  real = logits_real.astype(jnp.float32)
  fake = logits_fake.astype(jnp.float32)
  return 0.5 * (jnp.mean(jax.nn.softplus(-real)) + jnp.mean(jax.nn.softplus(fake)))
