"""Winograd F(2x2, 3x3) and F(2x2, 2x2) (`nn.winograd`, conv2d's "winograd" lowering) against a
direct NumPy convolution in float64, values and gradients, within the rounding bound of its
arithmetic (gradients of gradients: tests/nn/test_conv.py, against lax.conv)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from readingnotes_jax.errors import UserError
from readingnotes_jax.nn import conv, winograd

EPS32 = 2.0 ** -24  # unit roundoff, float32
EPS16 = 2.0 ** -8  # bfloat16 (8-bit significand)


def _direct(xp, kernel):
  """y[n, p, q] = sum_ij xp[n, p + i, q + j] @ kernel[i, j], float64, no padding."""
  k = kernel.shape[0]
  oh, ow = xp.shape[1] - k + 1, xp.shape[2] - k + 1
  return sum(xp[:, i:i + oh, j:j + ow] @ kernel[i, j] for i in range(k) for j in range(k))


def _tiles(xp, tiles_h, tiles_w, t):
  """The t x t input tiles at (2p, 2q): [t, t, N, P, Q, C] (xp zero-extended to 2P+t-2)."""
  n, h, w, c = xp.shape
  full = np.zeros((n, 2 * tiles_h + t - 2, 2 * tiles_w + t - 2, c))
  full[:, :h, :w] = xp
  return np.stack([np.stack([full[:, i:i + 2 * tiles_h:2, j:j + 2 * tiles_w:2]
                             for j in range(t)]) for i in range(t)])


def _abs_winograd(xp, kernel, g=None):
  """The Winograd expression with every matrix and number replaced by its absolute value:
  |A^T| [(|G||k||G^T|) (*) (|B^T||d||B|)] |A| per output, or for `g` (the output gradient)
  |G^T| [sum over tiles (|B^T||d||B|)^T (|A||g||A^T|)] |G| per kernel entry. A sum of products
  computed with n roundings is within gamma_n = n eps / (1 - n eps) of this (Higham, Accuracy
  and Stability of Numerical Algorithms, 2nd ed., section 3.1)."""
  k = kernel.shape[0]
  bt, gm, at = (np.abs(m) for m in winograd.MATRICES[k])
  oh, ow = xp.shape[1] - k + 1, xp.shape[2] - k + 1
  tiles_h, tiles_w = -(-oh // 2), -(-ow // 2)
  v = np.einsum("ai,bj,ijnpqc->abnpqc", bt, bt, _tiles(np.abs(xp), tiles_h, tiles_w, k + 1))
  if g is None:
    u = np.einsum("ai,bj,ijco->abco", gm, gm, np.abs(kernel))
    m = np.einsum("abnpqc,abco->abnpqo", v, u)
    y = np.einsum("xa,yb,abnpqo->npxqyo", at, at, m)
    return y.reshape(y.shape[0], 2 * tiles_h, 2 * tiles_w, -1)[:, :oh, :ow]
  gp = np.zeros((g.shape[0], 2 * tiles_h, 2 * tiles_w, g.shape[-1]))
  gp[:, :oh, :ow] = np.abs(g)
  gm_t = np.einsum("xa,yb,npxqyo->abnpqo", at, at,
                   gp.reshape(g.shape[0], tiles_h, 2, tiles_w, 2, -1))
  return np.einsum("ai,bj,abnpqc,abnpqo->ijco", gm, gm, v, gm_t)


def _gamma(n):
  return n * EPS32 / (1 - n * EPS32)


def _bounds(xp, kernel, g, pad_h, pad_w, low_precision):
  """Rounding bounds of y, dx and dW. Float32 roundings per result, at most (3x3; 2x2 has
  fewer): the input transform 2 (two stages of two-term sums), the kernel's 4 (three-term
  sums), the output's 4 and the gradient's A g A^T 2; the channel (or tile) sum 1 per term.
  bfloat16 adds one 2^-8 rounding of V, U (or A g A^T) and the bfloat16 result."""
  c, tiles, span = xp.shape[-1], np.prod(g.shape[:3]), kernel.shape[0] - 1
  cast = 3 * EPS16 if low_precision else 0.0
  y = (_gamma(c + 10) + cast) * _abs_winograd(xp, kernel)
  # dx: this algorithm on g padded by k - 1 - pad with the flipped, transposed kernel.
  gpad = np.pad(g, ((0, 0), (span - pad_h[0], span - pad_h[1]), (span - pad_w[0], span - pad_w[1]),
                    (0, 0)))
  flipped = kernel[::-1, ::-1].transpose(0, 1, 3, 2)
  dx = (_gamma(g.shape[-1] + 10) + cast) * _abs_winograd(gpad, flipped)
  dw = (_gamma(tiles + 8) + (2 * EPS16 if low_precision else 0.0)) * _abs_winograd(xp, kernel, g)
  return y, dx, dw


def _check(x, kernel, g, pad_h, pad_w, fn, low_precision):
  f64 = lambda a: np.asarray(a, np.float32).astype(np.float64)
  x64, k64, g64 = f64(x), f64(kernel), f64(g)
  xp = np.pad(x64, ((0, 0), pad_h, pad_w, (0, 0)))
  want_y = _direct(xp, k64)
  # Reference VJP: dx is the correlation of g padded by k - 1 with the flipped, transposed
  # kernel (cropped to x), dW[i, j] = sum_pq xp[p + i, q + j]^T g[p, q].
  oh, ow = want_y.shape[1:3]
  k = kernel.shape[0]
  want_dxp = _direct(np.pad(g64, ((0, 0), (k - 1, k - 1), (k - 1, k - 1), (0, 0))),
                     k64[::-1, ::-1].transpose(0, 1, 3, 2))
  want_dx = want_dxp[:, pad_h[0]:pad_h[0] + x.shape[1], pad_w[0]:pad_w[0] + x.shape[2]]
  want_dw = np.stack([np.stack([np.einsum("nhwc,nhwd->cd", xp[:, i:i + oh, j:j + ow], g64)
                                for j in range(k)]) for i in range(k)])
  y, pullback = jax.vjp(jax.jit(fn), x, kernel)
  dx, dw = pullback(g)
  assert (y.dtype, dx.dtype, dw.dtype) == (x.dtype, x.dtype, kernel.dtype)
  bound_y, bound_dx, bound_dw = _bounds(xp, k64, g64, pad_h, pad_w, low_precision)
  for name, got, want, bound in (("y", y, want_y, bound_y), ("dx", dx, want_dx, bound_dx),
                                 ("dw", dw, want_dw, bound_dw)):
    assert got.shape == want.shape, name
    err = np.abs(f64(got) - want)
    assert np.all(err <= bound), (name, float((err / bound).max()))


# (kernel, input height, width, pad_h, pad_w): odd sizes (a partial last tile), every padding
# 0..k-1.
CASES = [(3, 6, 5, (1, 1), (1, 1)), (3, 5, 6, (0, 0), (0, 0)), (3, 7, 4, (2, 2), (2, 2)),
         (3, 5, 7, (0, 2), (1, 0)), (3, 3, 3, (0, 0), (0, 0)),
         (2, 6, 5, (0, 0), (0, 0)), (2, 5, 4, (1, 1), (0, 1)), (2, 2, 3, (0, 0), (1, 0))]


@pytest.mark.parametrize("k,h,w,pad_h,pad_w", CASES)
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_values_and_gradients_within_rounding_bound(dtype, k, h, w, pad_h, pad_w):
  rng = np.random.default_rng(k * 100 + h * 10 + w)
  x = jnp.asarray(rng.normal(size=(2, h, w, 6)), dtype)
  kernel = jnp.asarray(rng.normal(size=(k, k, 6, 5)), jnp.float32)
  if dtype == jnp.bfloat16:  # the float32 kernel's bf16 values, so NumPy sees the same numbers
    kernel = kernel.astype(jnp.bfloat16).astype(jnp.float32)
  out_shape = (2, h + sum(pad_h) - k + 1, w + sum(pad_w) - k + 1, 5)
  g = jnp.asarray(rng.normal(size=out_shape), dtype)
  fn = lambda x, k: winograd.winograd_conv2d(x, k, pad_h, pad_w)
  _check(x, kernel, g, pad_h, pad_w, fn, dtype == jnp.bfloat16)


@pytest.mark.parametrize("padding", ["SAME", "VALID", 2])
def test_conv2d_lowering_and_default(padding):
  """conv2d(lowering="winograd") is the same computation; the CPU default picks it for wide
  3x3 layers (float32 from WINOGRAD_MIN_CHANNELS), and for wide float32 2x2 ones."""
  rng = np.random.default_rng(7)
  c = conv.WINOGRAD_MIN_CHANNELS
  x = jnp.asarray(rng.normal(size=(1, 5, 4, c)), jnp.float32)
  kernel = jnp.asarray(rng.normal(size=(3, 3, c, c)) * 0.05, jnp.float32)
  pad = {"SAME": (1, 1), "VALID": (0, 0), 2: (2, 2)}[padding]
  g = jnp.asarray(rng.normal(size=(1, 5 + 2 * pad[0] - 2, 4 + 2 * pad[0] - 2, c)), jnp.float32)
  fn = lambda x, k: conv.conv2d(x, k, padding=padding, lowering="winograd")
  _check(x, kernel, g, pad, pad, fn, False)
  if jax.default_backend() == "cpu":
    default = jax.make_jaxpr(lambda x, k: conv.conv2d(x, k, padding=padding))(x, kernel)
    assert str(default) == str(jax.make_jaxpr(fn)(x, kernel))
    two = lambda x, k, low=None: conv.conv2d(x, k[:2, :2], padding=0, lowering=low)
    assert str(jax.make_jaxpr(two)(x, kernel)) == str(jax.make_jaxpr(
        lambda x, k: two(x, k, "winograd"))(x, kernel))


def test_unsupported_convolutions_are_user_errors():
  x = jnp.zeros((1, 6, 6, 2))
  for kernel, kwargs in ((jnp.zeros((5, 5, 2, 2)), {}), (jnp.zeros((3, 3, 2, 2)), {"stride": 2}),
                         (jnp.zeros((3, 3, 2, 2)), {"dilation": 2}),
                         (jnp.zeros((3, 3, 2, 2)), {"padding": 3}),
                         (jnp.zeros((2, 2, 2, 2)), {"padding": 2}),
                         (jnp.zeros((3, 2, 2, 2)), {"padding": 1})):
    with pytest.raises(UserError, match="winograd"):
      conv.conv2d(x, kernel, lowering="winograd", **kwargs)
