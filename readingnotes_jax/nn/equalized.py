"""Layers with the equalized learning rate of ProGAN (paper section 4.1).

Weights are stored N(0, 1) in float32 and multiplied at run time by
gain / sqrt(fan_in), so Adam sees every weight at the same scale. Matches
networks.py `get_weight(..., use_wscale=True)`, `dense`, `conv2d` and
`apply_bias` in tkarras/progressive_growing_of_gans. Parameters stay float32;
`dtype` is the compute dtype (weights and inputs are cast to it at use).
"""
import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from readingnotes_jax.nn.conv import conv2d


class EqualizedDense(nn.Module):
  """y = x @ (w * gain / sqrt(fan_in)) + b over the last axis of x.

  Attributes:
    features: output width.
    gain: He gain; sqrt(2) for LReLU layers, 1 for linear outputs.
    use_bias: add a bias (initialised to zero).
    dtype: compute dtype.
  """
  features: int
  gain: float = math.sqrt(2.0)
  use_bias: bool = True
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    fan_in = x.shape[-1]
    kernel = self.param("kernel", nn.initializers.normal(1.0), (fan_in, self.features),
                        jnp.float32)
    kernel = (kernel * (self.gain / math.sqrt(fan_in))).astype(self.dtype)
    y = jnp.matmul(x.astype(self.dtype), kernel)
    if self.use_bias:
      bias = self.param("bias", nn.initializers.zeros, (self.features,), jnp.float32)
      y = y + bias.astype(self.dtype)
    return y


class EqualizedConv(nn.Module):
  """Stride-1 'SAME' convolution with equalized learning rate, NHWC/HWIO.

  fan_in = kernel_size**2 * input channels.

  Attributes:
    features: output channels.
    kernel_size: square kernel size.
    gain: He gain; sqrt(2) for LReLU layers, 1 for linear outputs (ToRGB).
    use_bias: add a per-channel bias (initialised to zero).
    dtype: compute dtype.
    lowering: one of `nn.conv.LOWERINGS` or None (`readingnotes_jax.nn.conv.default_lowering`).
  """
  features: int
  kernel_size: int = 3
  gain: float = math.sqrt(2.0)
  use_bias: bool = True
  dtype: Any = jnp.float32
  lowering: str | None = None

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    k = self.kernel_size
    fan_in = k * k * x.shape[-1]
    kernel = self.param("kernel", nn.initializers.normal(1.0),
                        (k, k, x.shape[-1], self.features), jnp.float32)
    kernel = (kernel * (self.gain / math.sqrt(fan_in))).astype(self.dtype)
    y = conv2d(x.astype(self.dtype), kernel, lowering=self.lowering)
    if self.use_bias:
      bias = self.param("bias", nn.initializers.zeros, (self.features,), jnp.float32)
      y = y + bias.astype(self.dtype)
    return y
