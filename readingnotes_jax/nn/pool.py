"""Max pooling as torch's `nn.MaxPool2d(window, stride, padding)`, NHWC.

A maximum over the window's strided slices, with a hand-written gradient that,
like torch, sends each output's gradient to the first maximum of its window
(row-major). `flax.linen.max_pool`'s gradient (XLA's select-and-scatter: a
variadic reduce-window with index iotas on CPU) made the ResNet stem's 3x3/2
pool at 117x117x128, batch 2, cost 64-70 ms forward+backward on a 2-core CPU;
this takes 6-8 ms. The forward keeps the index of each first maximum (int8)
for the backward: recomputing the masks from x there, XLA fused the maximum into
the scatter and ran it 30 ms (bfloat16 PSPNet-50 step, same process: -35 ms).
Computed in float32 (exact for a maximum): XLA:CPU ran the bfloat16 backward of
the mask version 5x slower, and with the index the bfloat16 step was still no
faster (2.08 vs 2.05 s).
"""
import functools

import jax
import jax.numpy as jnp

from readingnotes_jax.errors import UserError
from readingnotes_jax.nn.conv import kernel_taps


def max_pool(x: jax.Array, window: int, stride: int, padding: int) -> jax.Array:
  """Max over window x window patches of NHWC `x` every `stride` pixels, -inf padding."""
  if x.ndim != 4 or min(window, stride) < 1 or not 0 <= padding <= window // 2:
    raise UserError(f"max_pool wants NHWC input, window, stride >= 1 and 0 <= padding <= "
                    f"window // 2 (as torch); got shape {x.shape}, window={window}, "
                    f"stride={stride}, padding={padding}")
  if min(x.shape[1:3]) + 2 * padding < window:
    raise UserError(f"max_pool: input {x.shape[1:3]} is smaller than the {window}x{window} window")
  return _max_pool(x.astype(jnp.float32), window, stride, padding).astype(x.dtype)


def _padded(x, padding):
  return jax.lax.pad(x, jnp.array(-jnp.inf, x.dtype),
                     ((0, 0, 0), (padding, padding, 0), (padding, padding, 0), (0, 0, 0)))


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2, 3))
def _max_pool(x, window, stride, padding):
  return _max_pool_fwd(x, window, stride, padding)[0]


def _max_pool_fwd(x, window, stride, padding):
  """The maximum; residuals: the row-major index of its first tap (int8), and x for its shape.

  An argmax over the stacked taps: a reduction, which XLA materializes; the same
  index from elementwise compares it recomputed inside the backward's fused
  scatter (PSPNet-50 bf16 step, same process: 1.95 -> 1.91 s).
  """
  out_h, out_w = ((size + 2 * padding - window) // stride + 1 for size in x.shape[1:3])
  taps = jnp.stack([tap for _, _, tap in kernel_taps(_padded(x, padding), window, window,
                                                     stride, 1, out_h, out_w)])
  return jnp.max(taps, axis=0), (jnp.argmax(taps, axis=0).astype(jnp.int8), x)


def _max_pool_bwd(window, stride, padding, residuals, g):
  first, x = residuals
  height, width = x.shape[1:3]
  padded_h, padded_w = height + 2 * padding, width + 2 * padding
  out_h, out_w = g.shape[1:3]
  dxp = None
  for i in range(window):
    for j in range(window):
      # Back to the tap's positions in padded x: interior padding stride - 1.
      high_h = padded_h - i - stride * (out_h - 1) - 1
      high_w = padded_w - j - stride * (out_w - 1) - 1
      part = jax.lax.pad(jnp.where(first == i * window + j, g, 0), jnp.zeros((), g.dtype),
                         ((0, 0, 0), (i, high_h, stride - 1), (j, high_w, stride - 1), (0, 0, 0)))
      dxp = part if dxp is None else dxp + part
  return (dxp[:, padding:padding + height, padding:padding + width],)


_max_pool.defvjp(_max_pool_fwd, _max_pool_bwd)
