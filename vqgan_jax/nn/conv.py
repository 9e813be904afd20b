"""Convolution with PyTorch's Conv2d defaults, shared by the VQGAN and LPIPS modules.

`Conv` has the params of `flax.linen.Conv` (`kernel` [kh, kw, I, O], `bias` [O]) and
torch's default init (kernel and bias ~ U(+-1/sqrt(fan_in))). XLA's CPU convolution is
pathologically slow on tiny maps with many channels (a 2x2 map with 512 channels: 0.4 s
instead of 1 ms), so 3x3 stride-1 convs on maps of <= 16 pixels run as one matmul over
the nine shifted copies of the input (im2col), which computes the same sums.
"""

from typing import Any, Optional, Sequence, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

Padding = Sequence[Tuple[int, int]]


def torch_uniform_init(fan_in: int):
  bound = 1.0 / np.sqrt(fan_in)
  def init(key, shape, dtype=jnp.float32):
    return jax.random.uniform(key, shape, dtype, -bound, bound)
  return init


def conv3x3_as_matmul(x, kernel, precision=None):
  """3x3 'same' stride-1 conv of x [B, H, W, C] with kernel [3, 3, C, O] as one matmul."""
  _, h, w, c = x.shape
  xp = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
  patches = jnp.concatenate([xp[:, i:i + h, j:j + w] for i in range(3) for j in range(3)], -1)
  return jnp.dot(patches, kernel.reshape(9 * c, -1), precision=precision)


class Conv(nn.Module):
  """Conv2d(features, kernel, stride, padding) on NHWC inputs."""
  features: int
  kernel_size: int = 3
  stride: int = 1
  padding: Optional[Padding] = None   # None: symmetric kernel_size // 2
  use_bias: bool = True
  dtype: Any = jnp.float32
  precision: Any = None
  matmul_max_pixels: int = 16

  @nn.compact
  def __call__(self, x):
    k, c = self.kernel_size, x.shape[-1]
    init = torch_uniform_init(k * k * c)
    kernel = self.param("kernel", init, (k, k, c, self.features), jnp.float32)
    pad = self.padding if self.padding is not None else ((k // 2, k // 2),) * 2
    x, kernel = x.astype(self.dtype), kernel.astype(self.dtype)
    if (k == 3 and self.stride == 1 and tuple(map(tuple, pad)) == ((1, 1), (1, 1))
        and x.shape[1] * x.shape[2] <= self.matmul_max_pixels):
      y = conv3x3_as_matmul(x, kernel, self.precision)
    else:
      y = jax.lax.conv_general_dilated(x, kernel, (self.stride, self.stride), pad,
                                       dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                       precision=self.precision)
    if self.use_bias:
      y = y + self.param("bias", init, (self.features,), jnp.float32).astype(self.dtype)
    return y
