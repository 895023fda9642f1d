"""Max pooling as torch's `nn.MaxPool2d(window, stride, padding)`, NHWC.

A maximum over the window's strided slices, with a hand-written gradient that,
like torch, sends each output's gradient to the first maximum of its window
(row-major). `flax.linen.max_pool`'s gradient (XLA's select-and-scatter: a
variadic reduce-window with index iotas on CPU) made the ResNet stem's 3x3/2
pool at 117x117x128, batch 2, cost 64-70 ms forward+backward on a 2-core CPU;
this takes 6-8 ms. Computed in float32 (exact for a maximum): XLA:CPU ran the
bfloat16 backward 5x slower.
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
  out_h, out_w = ((size + 2 * padding - window) // stride + 1 for size in x.shape[1:3])
  out = None
  for _, _, tap in kernel_taps(_padded(x, padding), window, window, stride, 1, out_h, out_w):
    out = tap if out is None else jnp.maximum(out, tap)
  return out


def _max_pool_fwd(x, window, stride, padding):
  out = _max_pool(x, window, stride, padding)
  return out, (x, out)


def _max_pool_bwd(window, stride, padding, residuals, g):
  x, out = residuals
  xp = _padded(x, padding)
  out_h, out_w = out.shape[1:3]
  taken = jnp.zeros(out.shape, bool)
  dxp = jnp.zeros(xp.shape, x.dtype)
  for i, j, tap in kernel_taps(xp, window, window, stride, 1, out_h, out_w):
    first = (tap == out) & ~taken
    taken = taken | first
    # Back to the tap's positions in padded x: interior padding stride - 1.
    high_h = xp.shape[1] - i - stride * (out_h - 1) - 1
    high_w = xp.shape[2] - j - stride * (out_w - 1) - 1
    dxp = dxp + jax.lax.pad(jnp.where(first, g, 0), jnp.zeros((), x.dtype),
                            ((0, 0, 0), (i, high_h, stride - 1), (j, high_w, stride - 1),
                             (0, 0, 0)))
  return (dxp[:, padding:padding + x.shape[1], padding:padding + x.shape[2]],)


_max_pool.defvjp(_max_pool_fwd, _max_pool_bwd)
