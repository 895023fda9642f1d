"""resize_bilinear_align_corners against NumPy (from the formula) and torch."""
import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from readingnotes_jax.errors import UserError
from readingnotes_jax.nn.resize import resize_bilinear_align_corners
from numerics_testlib import assert_within_reference


def _numpy_align_corners(x: np.ndarray, out_h: int, out_w: int) -> np.ndarray:
  """Per-pixel bilinear interpolation at y = i (H - 1) / (out_h - 1), same in x."""
  n, h, w, c = x.shape
  out = np.zeros((n, out_h, out_w, c), np.float64)
  for i in range(out_h):
    sy = i * (h - 1) / (out_h - 1) if out_h > 1 else 0.0
    y0 = int(np.floor(sy))
    y1 = min(y0 + 1, h - 1)
    fy = sy - y0
    for j in range(out_w):
      sx = j * (w - 1) / (out_w - 1) if out_w > 1 else 0.0
      x0 = int(np.floor(sx))
      x1 = min(x0 + 1, w - 1)
      fx = sx - x0
      out[:, i, j] = ((1 - fy) * (1 - fx) * x[:, y0, x0] + (1 - fy) * fx * x[:, y0, x1]
                      + fy * (1 - fx) * x[:, y1, x0] + fy * fx * x[:, y1, x1])
  return out


# Integer factors on both axes (blends of neighbours), on one axis, on none
# (products), downsampling, size-1 axes, identity.
SIZES = [((5, 7), (17, 25)), ((12, 15), (89, 113)), ((4, 5), (11, 13)), ((4, 6), (7, 8)),
         ((9, 4), (3, 2)), ((1, 6), (4, 1)), ((6, 6), (6, 6)), ((2, 3), (1, 1))]


@pytest.mark.parametrize("in_size,out_size", SIZES)
def test_matches_numpy_formula(in_size, out_size):
  x = np.random.default_rng(0).normal(size=(2, *in_size, 3))
  got = resize_bilinear_align_corners(jnp.asarray(x, jnp.float32), out_size)
  chex.assert_shape(got, (2, *out_size, 3))
  # A blend of 4 float32 inputs (each rounded from float64): x, 4 weights, 4 products and 3
  # sums round by <= eps32 / 2 of O(max |x|) each: <= 6 eps32 max |x| = 3e-6 (max |x| < 4.5).
  np.testing.assert_allclose(got, _numpy_align_corners(x, *out_size), atol=1e-5)


@pytest.mark.parametrize("in_size,out_size", SIZES)
def test_matches_torch_interpolate(in_size, out_size):
  torch = pytest.importorskip("torch")
  x = np.random.default_rng(1).normal(size=(2, 4, *in_size)).astype(np.float32)
  want = torch.nn.functional.interpolate(
      torch.from_numpy(x), size=out_size, mode="bilinear", align_corners=True).numpy()
  got = resize_bilinear_align_corners(jnp.asarray(x.transpose(0, 2, 3, 1)), out_size)
  # As above, on both sides: <= 2 x 5.5 eps32 max |x| = 6e-6 (measured 6.1e-7).
  np.testing.assert_allclose(np.asarray(got).transpose(0, 3, 1, 2), want, atol=1e-5)


@pytest.mark.parametrize("in_size,out_size", SIZES)
def test_gradient_matches_torch(in_size, out_size):
  torch = pytest.importorskip("torch")
  x = np.random.default_rng(2).normal(size=(2, 3, *in_size)).astype(np.float32)
  cotangent = np.random.default_rng(3).normal(size=(2, 3, *out_size)).astype(np.float32)
  want = {}
  for dtype in (torch.float32, torch.float64):
    tx = torch.from_numpy(x).to(dtype).requires_grad_(True)
    torch.nn.functional.interpolate(tx, size=out_size, mode="bilinear",
                                    align_corners=True).backward(
                                        torch.from_numpy(cotangent).to(dtype))
    want[dtype] = tx.grad.numpy()
  grad = jax.grad(lambda v: jnp.sum(resize_bilinear_align_corners(v, out_size)
                                    * cotangent.transpose(0, 2, 3, 1)))(
                                        jnp.asarray(x.transpose(0, 2, 3, 1)))
  # Sums of up to (2 x 8 - 1)^2 weighted cotangents (12 -> 89 is 8x): torch's float32 scatter
  # missed its float64 by up to 6.8e-6 (the former atol=1e-5 was 61% used), ours by 2.4e-6.
  assert_within_reference(np.asarray(grad).transpose(0, 3, 1, 2), want[torch.float32],
                          want[torch.float64])


def test_bfloat16_keeps_dtype():
  x = jnp.ones((1, 3, 3, 2), jnp.bfloat16)
  got = resize_bilinear_align_corners(x, (5, 5))
  assert got.dtype == jnp.bfloat16
  np.testing.assert_array_equal(np.asarray(got, np.float32), 1.0)


def test_bad_size_raises():
  with pytest.raises(UserError, match="size"):
    resize_bilinear_align_corners(jnp.zeros((1, 3, 3, 1)), (0, 4))
