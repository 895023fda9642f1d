"""Batch normalization with PyTorch's `nn.BatchNorm2d` semantics.

Differences from `flax.linen.BatchNorm`, all to match the official PyTorch code
that later papers port (e.g. hszhao/semseg, which trains with `nn.SyncBatchNorm`):
- the running variance is updated with the unbiased batch variance
  (n / (n - 1) times the biased one used for normalizing), as torch does;
- statistics are computed in float32 whatever the compute dtype, and so is the
  backward pass with batch statistics (`_batch_norm_train`, hand-written: JAX's
  own gradient of the bfloat16 normalization computed dx with 54% error against
  float32, and ran 4-6x slower on CPU).
Momentum uses flax's convention: running = momentum * running + (1 - momentum) *
batch, so torch's momentum 0.1 is 0.9 here. Under `jax.jit` with a batch sharded
over devices the reductions are global: synchronized BN with no extra code.
"""
import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4))
def _batch_norm_train(x, scale, bias, epsilon, dtype):
  """(y in dtype, batch mean, biased batch variance) over all axes but the last."""
  return _batch_norm_train_fwd(x, scale, bias, epsilon, dtype)[0]


def _batch_norm_train_fwd(x, scale, bias, epsilon, dtype):
  axes = tuple(range(x.ndim - 1))
  x32 = x.astype(jnp.float32)
  mean = jnp.mean(x32, axis=axes)
  var = jnp.maximum(jnp.mean(jnp.square(x32), axis=axes) - jnp.square(mean), 0.0)
  rstd = jax.lax.rsqrt(var + epsilon)
  y = _normalize(x, scale * rstd, bias - mean * scale * rstd, dtype)
  return (y, mean, var), (x, scale, mean, rstd)


def _batch_norm_train_bwd(epsilon, dtype, residuals, cotangents):
  """Float32 gradients: with xhat = (x - mean) rstd, d_bias = sum g, d_scale = sum g xhat,
  dx = scale rstd (g - mean(g) - xhat mean(g xhat)) (+ the mean / var outputs' terms)."""
  del epsilon, dtype
  x, scale, mean, rstd = residuals
  g, g_mean, g_var = cotangents
  axes = tuple(range(x.ndim - 1))
  count = x.size // x.shape[-1]
  x32, g32 = x.astype(jnp.float32), g.astype(jnp.float32)
  sum_g = jnp.sum(g32, axis=axes)
  d_scale = (jnp.sum(g32 * x32, axis=axes) - mean * sum_g) * rstd
  centred = x32 - mean
  dx = (scale * rstd * (g32 - sum_g / count - centred * rstd * (d_scale / count))
        + (g_mean + 2 * centred * g_var) / count)
  return dx.astype(x.dtype), d_scale, sum_g


_batch_norm_train.defvjp(_batch_norm_train_fwd, _batch_norm_train_bwd)


def _normalize(x, multiplier, offset, dtype):
  return x.astype(dtype) * multiplier.astype(dtype) + offset.astype(dtype)


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
      multiplier = scale * jax.lax.rsqrt(running_var.value + self.epsilon)
      return _normalize(x, multiplier, bias - running_mean.value * multiplier, self.dtype)
    y, mean, var = _batch_norm_train(x, scale, bias, self.epsilon, self.dtype)
    if not self.is_initializing():
      count = x.size // features
      unbiased = var * (count / max(count - 1, 1))
      running_mean.value = (self.momentum * running_mean.value
                            + (1 - self.momentum) * jax.lax.stop_gradient(mean))
      running_var.value = (self.momentum * running_var.value
                           + (1 - self.momentum) * jax.lax.stop_gradient(unbiased))
    return y
