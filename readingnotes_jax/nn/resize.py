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


def align_corners_matrix(in_size: int, out_size: int) -> np.ndarray:
  """[out_size, in_size] float32 matrix of the align_corners=True resize of one axis.

  Row i blends input samples floor(s) and floor(s) + 1 at s = i (in - 1) / (out - 1)
  (0 for a single output sample), as PyTorch's `area_pixel_compute_scale` with
  align_corners=True.
  """
  scale = (in_size - 1) / (out_size - 1) if out_size > 1 else 0.0
  source = np.arange(out_size, dtype=np.float64) * scale
  left = np.minimum(np.floor(source).astype(np.int64), in_size - 1)
  right = np.minimum(left + 1, in_size - 1)
  matrix = np.zeros((out_size, in_size), np.float64)
  rows = np.arange(out_size)
  np.add.at(matrix, (rows, left), 1 - (source - left))
  np.add.at(matrix, (rows, right), source - left)
  return matrix.astype(np.float32)


def resize_bilinear_align_corners(x: jax.Array, size: Sequence[int]) -> jax.Array:
  """Resizes NHWC `x` to spatial `size` = (h, w), bilinear with aligned corners.

  Equals `torch.nn.functional.interpolate(x, size, mode='bilinear',
  align_corners=True)` on the NCHW transpose. Separable: width, then height,
  each a product with that axis' `align_corners_matrix` in float32 at full
  precision, batched so that no transpose is needed. Products rather than
  gathers because their gradients are products too: the gradient of a gather
  is a scatter-add, slow on XLA:CPU (PSPNet-50 train step, same process:
  bfloat16 2.50 -> 2.35 s, float32 3.13 -> 3.04 s; inference unchanged).
  """
  if x.ndim != 4 or len(size) != 2 or min(size) < 1:
    raise UserError(
        f"resize_bilinear_align_corners wants NHWC input and size (h, w) >= 1; got "
        f"input shape {x.shape} and size {tuple(size)}")
  out_h, out_w = int(size[0]), int(size[1])
  n, h, w, c = x.shape
  y = x.astype(jnp.float32)
  highest = jax.lax.Precision.HIGHEST
  if out_w != w:  # [n, h] batches of [out_w, w] @ [w, c]
    cols = jnp.broadcast_to(jnp.asarray(align_corners_matrix(w, out_w)), (n, h, out_w, w))
    y = jnp.einsum("nhqw,nhwc->nhqc", cols, y, precision=highest)
  if out_h != h:  # [n] batches of [out_h, h] @ [h, out_w * c]
    rows = jnp.broadcast_to(jnp.asarray(align_corners_matrix(h, out_h)), (n, out_h, h))
    y = jnp.einsum("nph,nhk->npk", rows, y.reshape(n, h, -1), precision=highest)
  return y.reshape(n, out_h, out_w, c).astype(x.dtype)
