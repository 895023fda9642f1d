"""Bilinear resizing with align_corners=True semantics.

`jax.image.resize` samples at half-pixel centres (align_corners=False). PSPNet's
official code (hszhao/semseg `model/pspnet.py`, and the Caffe `Interp` layer)
upsamples with `F.interpolate(..., mode='bilinear', align_corners=True)`: output
pixel i of n samples input position i * (m - 1) / (n - 1), so the corner pixels
of input and output coincide.
"""
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from readingnotes_jax.errors import UserError


def _taps(in_size: int, out_size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Left index, right index and right weight of each output sample on one axis.

  Matches PyTorch's `area_pixel_compute_scale` with align_corners=True: the scale
  is (in - 1) / (out - 1), or 0 for a single output sample.
  """
  scale = (in_size - 1) / (out_size - 1) if out_size > 1 else 0.0
  source = np.arange(out_size, dtype=np.float64) * scale
  left = np.minimum(np.floor(source).astype(np.int32), in_size - 1)
  right = np.minimum(left + 1, in_size - 1)
  return left, right, (source - left).astype(np.float32)


def align_corners_matrix(in_size: int, out_size: int) -> np.ndarray:
  """[out_size, in_size] float32 matrix of the align_corners=True resize of one axis."""
  left, right, weight = _taps(in_size, out_size)
  matrix = np.zeros((out_size, in_size), np.float32)
  rows = np.arange(out_size)
  np.add.at(matrix, (rows, left), 1 - weight)
  np.add.at(matrix, (rows, right), weight)
  return matrix


def _resize_axis(x: jax.Array, axis: int, out_size: int) -> jax.Array:
  left, right, weight = _taps(x.shape[axis], out_size)
  shape = [1] * x.ndim
  shape[axis] = out_size
  weight = jnp.asarray(weight.reshape(shape), x.dtype)
  lo = jnp.take(x, left, axis=axis)
  hi = jnp.take(x, right, axis=axis)
  return lo + (hi - lo) * weight


def resize_bilinear_align_corners(x: jax.Array, size: Sequence[int]) -> jax.Array:
  """Resizes NHWC `x` to spatial `size` = (h, w), bilinear with aligned corners.

  Equals `torch.nn.functional.interpolate(x, size, mode='bilinear',
  align_corners=True)` on the NCHW transpose. Separable: height, then width,
  each a gather of the two neighbours and a linear blend.
  """
  if x.ndim != 4 or len(size) != 2 or min(size) < 1:
    raise UserError(
        f"resize_bilinear_align_corners wants NHWC input and size (h, w) >= 1; got "
        f"input shape {x.shape} and size {tuple(size)}")
  out_h, out_w = int(size[0]), int(size[1])
  if out_h != x.shape[1]:
    x = _resize_axis(x, 1, out_h)
  if out_w != x.shape[2]:
    x = _resize_axis(x, 2, out_w)
  return x
