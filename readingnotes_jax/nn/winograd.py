"""Winograd's minimal filtering F(2x2, 3x3) and F(2x2, 2x2) for stride-1 convolutions (NHWC,
HWIO).

Lavin & Gray, "Fast Algorithms for Convolutional Neural Networks" (CVPR 2016), section 4:
each 2x2 output tile is A^T [(G g G^T) * (B^T d B)] A for its t x t input tile d (t = k + 1)
and the k x k kernel g, so t^2 products per tile and channel pair instead of 4 k^2 (3x3: 16
against 36, 2.25x fewer multiply-adds; 2x2: 9 against 16, 1.78x). Here the t^2 products of
all tiles are t^2 GEMMs [tiles, Cin] @ [Cin, Cout], one batched dot; the transforms are
elementwise sums of strided slices. On a 2-core AMD EPYC Zen 4 (jax 0.10.2 with
`individual_dot,reduce`), forward+backward against `nn.conv`'s other lowerings: float32
[4, 16, 16, 512] -> 512 57 vs 77 ms, 256 -> 512 24 vs 39 ms, [1, 60, 60, 4096] -> 512
(PSPNet's head) 1.35 vs 2.44 s; bfloat16 128 -> 128 at [4, 64, 64] 77 vs 91 ms, 512 -> 512
50 vs 54 ms.

Rounding: the transforms run in float32; in bfloat16 (float16) V = B^T d B and U = G g G^T are
rounded once to the input dtype (as the input and kernel of a direct convolution are) and the
products accumulate in float32. `tests/nn/test_winograd.py` bounds the error by the standard
one for sums of products, evaluated on the absolute values of the transforms.

Gradients, written by hand (`_winograd`): the input gradient is this same algorithm on the
output gradient with the kernel flipped and transposed, whose transform is U with tile rows
and columns 0 and t-1 swapped, so it runs on U itself with B^T's rows and A^T's columns
swapped; the kernel gradient is G^T [sum over tiles V^T (A g_y A^T)] G. Gradients of
gradients (WGAN-GP) go through the same functions.
"""
import functools

import jax
import jax.numpy as jnp
import numpy as np

# Lavin & Gray eq. (7): F(2, 3), 4x4 tiles.
B_T = np.array([[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]], np.float32)
G = np.array([[1, 0, 0], [.5, .5, .5], [.5, -.5, .5], [0, 0, 1]], np.float32)
A_T = np.array([[1, 1, 1, 0], [0, 1, -1, -1]], np.float32)
# F(2, 2), 3x3 tiles: y0 = (d0 - d1) g0 + d1 (g0 + g1), y1 = d1 (g0 + g1) + (d2 - d1) g1.
B_T2 = np.array([[1, -1, 0], [0, 1, 0], [0, -1, 1]], np.float32)
G2 = np.array([[1, 0], [1, 1], [0, 1]], np.float32)
A_T2 = np.array([[1, 1, 0], [0, 1, 1]], np.float32)
# (B^T, G, A^T) by kernel size.
MATRICES = {3: (B_T, G, A_T), 2: (B_T2, G2, A_T2)}


def _swap(tile: int) -> np.ndarray:
  """G J = SWAP G for the kernel reversed by J (both kernel sizes): tile rows 0 and t-1 trade
  places."""
  order = list(range(tile))
  order[0], order[-1] = order[-1], order[0]
  return np.eye(tile, dtype=np.float32)[order]


def supported(kernel_shape, stride: int, dilation: int, pad_h, pad_w) -> bool:
  """Whether `winograd_conv2d` computes this convolution: 3x3 or 2x2, stride 1, dilation 1,
  each side's padding in 0..k-1 (the input gradient pads by k - 1 - pad)."""
  k = kernel_shape[0]
  return (k in MATRICES and kernel_shape[1] == k and stride == 1 and dilation == 1
          and all(0 <= p <= k - 1 for p in (*pad_h, *pad_w)))


def winograd_conv2d(x: jax.Array, kernel: jax.Array, pad_h: tuple[int, int],
                    pad_w: tuple[int, int]) -> jax.Array:
  """Cross-correlation of x [N, H, W, Cin] padded by `pad_h` / `pad_w` with a 3x3 or 2x2
  `kernel` [k, k, Cin, Cout] (x's dtype, or float32 for a bfloat16 / float16 x), stride 1."""
  k, _, c, d = kernel.shape
  u = _kernel_transform(kernel.astype(jnp.float32)).reshape((k + 1) ** 2, c, d)
  return _winograd(x, u, pad_h, pad_w, False)


def _combine(matrix, parts, axis):
  """sum_i matrix[:, i] * parts[i]: a new axis `axis` indexes the matrix's rows (zeros skipped,
  the coefficients broadcast constants, so XLA fuses it into one elementwise loop)."""
  out = 0
  for i, part in enumerate(parts):
    coef = matrix[:, i]
    if coef.any():
      shape = [1] * (part.ndim + 1)
      shape[axis] = len(coef)
      out = out + jnp.asarray(coef.reshape(shape)) * jnp.expand_dims(part, axis)
  return out


@jax.custom_vjp
def _kernel_transform(kernel):
  """U = G g G^T per channel pair: [k, k, C, D] -> [k+1, k+1, C, D], float32."""
  g = MATRICES[kernel.shape[0]][1]
  rows = _combine(g, [kernel[i] for i in range(g.shape[1])], 0)
  return _combine(g, [rows[:, j] for j in range(g.shape[1])], 1)


def _kernel_transform_fwd(kernel):
  return _kernel_transform(kernel), None


def _kernel_transform_bwd(_, du):  # G^T du G: [k+1, k+1, C, D] -> [k, k, C, D]
  g = MATRICES[du.shape[0] - 1][1]
  rows = _combine(g.T, [du[a] for a in range(g.shape[0])], 0)
  return (_combine(g.T, [rows[:, b] for b in range(g.shape[0])], 1),)


_kernel_transform.defvjp(_kernel_transform_fwd, _kernel_transform_bwd)


def _input_transform(xp, tiles_h, tiles_w, b_t):
  """V = B^T d B of each t x t tile d at (2p, 2q) of xp [N, 2P+t-2, 2Q+t-2, C]:
  [t, t, N, P, Q, C]."""
  t = b_t.shape[0]
  rows = _combine(b_t, [xp[:, i:i + 2 * tiles_h - 1:2] for i in range(t)], 0)
  return _combine(b_t, [rows[:, :, :, j:j + 2 * tiles_w - 1:2] for j in range(t)], 1)


def _output_transform(m, a_t):
  """Y = A^T M A per tile: [t, t, N, P, Q, D] -> [N, P, 2, Q, 2, D] (rows 2p + a, cols 2q + b)."""
  t = a_t.shape[1]
  rows = _combine(a_t, [m[xi] for xi in range(t)], 3)  # [t (nu), N, P, 2, Q, D]
  return _combine(a_t, [rows[nu] for nu in range(t)], 4)


def _output_transform_t(g, a_t):
  """The transpose of `_output_transform`, A g A^T per tile: [N, P, 2, Q, 2, D] -> [t, t, ...]."""
  rows = _combine(a_t.T, [jnp.stack([g[:, :, a, :, b] for b in range(2)]) for a in range(2)], 0)
  return _combine(a_t.T, [rows[:, b] for b in range(2)], 1)


def _geometry(h, w, k, pad_h, pad_w):
  """(output rows, output cols, tile rows P, tile cols Q) of a k x k kernel."""
  out_h, out_w = h + sum(pad_h) - k + 1, w + sum(pad_w) - k + 1
  return out_h, out_w, -(-out_h // 2), -(-out_w // 2)


def _matrices(k, flipped):
  """(B^T, A^T) of a k x k kernel, or for the flipped, transposed kernel their row / column
  swaps."""
  b_t, _, a_t = MATRICES[k]
  swap = _swap(k + 1)
  return (swap @ b_t, a_t @ swap) if flipped else (b_t, a_t)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4))
def _winograd(x, u, pad_h, pad_w, flipped):
  """y = A^T [V (*) u] A with V = B^T d B of x's tiles; u [t^2, C, D] float32 (or, `flipped`,
  the transform of the kernel whose flipped transpose is convolved: [t^2, D, C])."""
  return _winograd_fwd(x, u, pad_h, pad_w, flipped)[0]


def _winograd_fwd(x, u, pad_h, pad_w, flipped):
  n, h, w, c = x.shape
  t = round(u.shape[0] ** 0.5)
  b_t, a_t = _matrices(t - 1, flipped)
  out_h, out_w, tiles_h, tiles_w = _geometry(h, w, t - 1, pad_h, pad_w)
  xp = jnp.pad(x, ((0, 0), (pad_h[0], 2 * tiles_h + t - 2 - h - pad_h[0]),
                   (pad_w[0], 2 * tiles_w + t - 2 - w - pad_w[0]), (0, 0)))
  v = _input_transform(xp.astype(jnp.float32), tiles_h, tiles_w, b_t)
  v = v.astype(x.dtype).reshape(t * t, n * tiles_h * tiles_w, c)
  u_low = u.astype(x.dtype)
  accumulate = jnp.float32 if x.dtype in (jnp.bfloat16, jnp.float16) else None
  m = jax.lax.dot_general(v, u_low, (((2,), (2 if flipped else 1,)), ((0,), (0,))),
                          preferred_element_type=accumulate)
  d = m.shape[-1]
  y = _output_transform(m.reshape(t, t, n, tiles_h, tiles_w, d), a_t)
  y = y.reshape(n, 2 * tiles_h, 2 * tiles_w, d)[:, :out_h, :out_w]
  return y.astype(x.dtype), (v, u_low, x.shape)


def _winograd_bwd(pad_h, pad_w, flipped, residuals, g):
  v, u_low, (n, h, w, _) = residuals
  t = round(u_low.shape[0] ** 0.5)
  _, a_t = _matrices(t - 1, flipped)
  out_h, out_w, tiles_h, tiles_w = _geometry(h, w, t - 1, pad_h, pad_w)
  span = t - 2  # k - 1
  dx = _winograd(g, u_low.astype(jnp.float32), (span - pad_h[0], span - pad_h[1]),
                 (span - pad_w[0], span - pad_w[1]), not flipped)
  d = g.shape[-1]
  gp = jnp.pad(g, ((0, 0), (0, 2 * tiles_h - out_h), (0, 2 * tiles_w - out_w), (0, 0)))
  gm = _output_transform_t(gp.astype(jnp.float32).reshape(n, tiles_h, 2, tiles_w, 2, d), a_t)
  gm = gm.astype(g.dtype).reshape(t * t, n * tiles_h * tiles_w, d)
  # Contract the tiles: XLA:CPU keeps these transposed-operand dots in float32 either way.
  lhs, rhs = (gm, v) if flipped else (v, gm)
  du = jax.lax.dot_general(lhs, rhs, (((1,), (1,)), ((0,), (0,))),
                           preferred_element_type=jnp.float32)
  return dx, du


_winograd.defvjp(_winograd_fwd, _winograd_bwd)
