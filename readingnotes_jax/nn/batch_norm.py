"""Batch normalization with PyTorch's `nn.BatchNorm2d` semantics.

Differences from `flax.linen.BatchNorm`, all to match the official PyTorch code
that later papers port (e.g. hszhao/semseg, which trains with `nn.SyncBatchNorm`):
- the running variance is updated with the unbiased batch variance
  (n / (n - 1) times the biased one used for normalizing), as torch does;
- statistics are computed in float32 whatever the compute dtype.
Momentum uses flax's convention: running = momentum * running + (1 - momentum) *
batch, so torch's momentum 0.1 is 0.9 here. Under `jax.jit` with a batch sharded
over devices the reductions are global: synchronized BN with no extra code.
"""
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp


class BatchNorm(nn.Module):
  """BatchNorm over all axes but the last (NHWC, or any [..., C]).

  Attributes:
    momentum: running-average decay (flax convention; torch 0.1 == 0.9 here).
    epsilon: added to the variance (torch default 1e-5).
    dtype: dtype of the output (the computation of statistics is float32).
  Parameters `scale` (init 1) and `bias` (init 0); batch_stats `mean` (0), `var` (1).
  """
  momentum: float = 0.9
  epsilon: float = 1e-5
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, *, use_running_average: bool) -> jax.Array:
    features = x.shape[-1]
    scale = self.param("scale", nn.initializers.ones, (features,), jnp.float32)
    bias = self.param("bias", nn.initializers.zeros, (features,), jnp.float32)
    running_mean = self.variable("batch_stats", "mean", jnp.zeros, (features,), jnp.float32)
    running_var = self.variable("batch_stats", "var", jnp.ones, (features,), jnp.float32)
    if use_running_average:
      mean, var = running_mean.value, running_var.value
    else:
      axes = tuple(range(x.ndim - 1))
      x32 = x.astype(jnp.float32)
      mean = jnp.mean(x32, axis=axes)
      var = jnp.maximum(jnp.mean(jnp.square(x32), axis=axes) - jnp.square(mean), 0.0)
      if not self.is_initializing():
        count = x.size // features
        unbiased = var * (count / max(count - 1, 1))
        running_mean.value = (self.momentum * running_mean.value
                              + (1 - self.momentum) * jax.lax.stop_gradient(mean))
        running_var.value = (self.momentum * running_var.value
                             + (1 - self.momentum) * jax.lax.stop_gradient(unbiased))
    multiplier = scale * jax.lax.rsqrt(var + self.epsilon)
    offset = bias - mean * multiplier
    return x.astype(self.dtype) * multiplier.astype(self.dtype) + offset.astype(self.dtype)
