"""Winograd's minimal filtering F(2x2, 3x3) for 3x3, stride-1 convolutions (NHWC, HWIO).

Lavin & Gray, "Fast Algorithms for Convolutional Neural Networks" (CVPR 2016), section 4:
each 2x2 output tile is A^T [(G g G^T) * (B^T d B)] A for its 4x4 input tile d and the 3x3
kernel g, so 16 products per tile and channel pair instead of 36 (2.25x fewer multiply-adds).
Here the 16 products of all tiles are 16 GEMMs [tiles, Cin] @ [Cin, Cout], one batched dot;
the transforms are elementwise sums of strided slices. On a 2-core AMD EPYC Zen 4 (jax
0.10.2 with `individual_dot,reduce`), forward+backward against `nn.conv`'s other lowerings:
float32 [4, 16, 16, 512] -> 512 57 vs 77 ms, 256 -> 512 24 vs 39 ms, [1, 60, 60, 4096] -> 512
(PSPNet's head) 1.35 vs 2.44 s; bfloat16 128 -> 128 at [4, 64, 64] 77 vs 91 ms, 512 -> 512
50 vs 54 ms.

Rounding: the transforms run in float32; in bfloat16 (float16) V = B^T d B and U = G g G^T are
rounded once to the input dtype (as the input and kernel of a direct convolution are) and the
products accumulate in float32. `tests/nn/test_winograd.py` bounds the error by the standard
one for sums of products, evaluated on the absolute values of the transforms.

Gradients, written by hand (`_winograd`): the input gradient is this same algorithm on the
output gradient with the kernel flipped and transposed, whose transform is U with tile rows
and columns 0 and 3 swapped, so it runs on U itself with B^T's rows and A^T's columns swapped;
the kernel gradient is G^T [sum over tiles V^T (A g_y A^T)] G. Gradients of gradients (WGAN-GP)
go through the same functions.
"""
import functools

import jax
import jax.numpy as jnp
import numpy as np

# Lavin & Gray eq. (7): F(2, 3).
B_T = np.array([[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]], np.float32)
G = np.array([[1, 0, 0], [.5, .5, .5], [.5, -.5, .5], [0, 0, 1]], np.float32)
A_T = np.array([[1, 1, 1, 0], [0, 1, -1, -1]], np.float32)
# G J = SWAP G for the kernel reversed by J: tile rows 0 and 3 trade places.
SWAP = np.eye(4, dtype=np.float32)[[3, 1, 2, 0]]
MAX_PAD = 2  # the input gradient pads by 2 - pad: both must be >= 0


def supported(kernel_shape, stride: int, dilation: int, pad_h, pad_w) -> bool:
  """Whether `winograd_conv2d` computes this convolution: 3x3, stride 1, dilation 1, each
  side's padding in 0..2."""
  return (tuple(kernel_shape[:2]) == (3, 3) and stride == 1 and dilation == 1
          and all(0 <= p <= MAX_PAD for p in (*pad_h, *pad_w)))


def winograd_conv2d(x: jax.Array, kernel: jax.Array, pad_h: tuple[int, int],
                    pad_w: tuple[int, int]) -> jax.Array:
  """Cross-correlation of x [N, H, W, Cin] padded by `pad_h` / `pad_w` with a 3x3 `kernel`
  [3, 3, Cin, Cout] (x's dtype, or float32 for a bfloat16 / float16 x), stride 1."""
  c, d = kernel.shape[2:]
  u = _kernel_transform(kernel.astype(jnp.float32)).reshape(16, c, d)
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
  """U = G g G^T per channel pair: [3, 3, C, D] -> [4, 4, C, D], float32."""
  rows = _combine(G, [kernel[i] for i in range(3)], 0)
  return _combine(G, [rows[:, j] for j in range(3)], 1)


def _kernel_transform_fwd(kernel):
  return _kernel_transform(kernel), None


def _kernel_transform_bwd(_, g):  # G^T g G: [4, 4, C, D] -> [3, 3, C, D]
  rows = _combine(G.T, [g[a] for a in range(4)], 0)
  return (_combine(G.T, [rows[:, b] for b in range(4)], 1),)


_kernel_transform.defvjp(_kernel_transform_fwd, _kernel_transform_bwd)


def _input_transform(xp, tiles_h, tiles_w, b_t):
  """V = B^T d B of each 4x4 tile d at (2p, 2q) of xp [N, 2P+2, 2Q+2, C]: [4, 4, N, P, Q, C]."""
  rows = _combine(b_t, [xp[:, i:i + 2 * tiles_h - 1:2] for i in range(4)], 0)
  return _combine(b_t, [rows[:, :, :, j:j + 2 * tiles_w - 1:2] for j in range(4)], 1)


def _output_transform(m, a_t):
  """Y = A^T M A per tile: [4, 4, N, P, Q, D] -> [N, P, 2, Q, 2, D] (rows 2p + a, cols 2q + b)."""
  out = 0
  for xi in range(4):
    for nu in range(4):
      coef = np.outer(a_t[:, xi], a_t[:, nu])
      if coef.any():
        out = out + jnp.asarray(coef.reshape(1, 1, 2, 1, 2, 1)) * m[xi, nu][:, :, None, :, None]
  return out


def _output_transform_t(g, a_t):
  """The transpose of `_output_transform`, A g A^T per tile: [N, P, 2, Q, 2, D] -> [4, 4, ...]."""
  rows = _combine(a_t.T, [jnp.stack([g[:, :, a, :, b] for b in range(2)]) for a in range(2)], 0)
  return _combine(a_t.T, [rows[:, b] for b in range(2)], 1)


def _geometry(h, w, pad_h, pad_w):
  """(output rows, output cols, tile rows P, tile cols Q)."""
  out_h, out_w = h + sum(pad_h) - 2, w + sum(pad_w) - 2
  return out_h, out_w, -(-out_h // 2), -(-out_w // 2)


def _matrices(flipped):
  """(B^T, A^T), or for the flipped, transposed kernel their row / column swaps."""
  return (SWAP @ B_T, A_T @ SWAP) if flipped else (B_T, A_T)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4))
def _winograd(x, u, pad_h, pad_w, flipped):
  """y = A^T [V (*) u] A with V = B^T d B of x's tiles; u [16, C, D] float32 (or, `flipped`,
  the transform of the kernel whose flipped transpose is convolved: [16, D, C])."""
  return _winograd_fwd(x, u, pad_h, pad_w, flipped)[0]


def _winograd_fwd(x, u, pad_h, pad_w, flipped):
  n, h, w, c = x.shape
  b_t, a_t = _matrices(flipped)
  out_h, out_w, tiles_h, tiles_w = _geometry(h, w, pad_h, pad_w)
  xp = jnp.pad(x, ((0, 0), (pad_h[0], 2 * tiles_h + 2 - h - pad_h[0]),
                   (pad_w[0], 2 * tiles_w + 2 - w - pad_w[0]), (0, 0)))
  v = _input_transform(xp.astype(jnp.float32), tiles_h, tiles_w, b_t)
  v = v.astype(x.dtype).reshape(16, n * tiles_h * tiles_w, c)
  u_low = u.astype(x.dtype)
  accumulate = jnp.float32 if x.dtype in (jnp.bfloat16, jnp.float16) else None
  m = jax.lax.dot_general(v, u_low, (((2,), (2 if flipped else 1,)), ((0,), (0,))),
                          preferred_element_type=accumulate)
  d = m.shape[-1]
  y = _output_transform(m.reshape(4, 4, n, tiles_h, tiles_w, d), a_t)
  y = y.reshape(n, 2 * tiles_h, 2 * tiles_w, d)[:, :out_h, :out_w]
  return y.astype(x.dtype), (v, u_low, x.shape)


def _winograd_bwd(pad_h, pad_w, flipped, residuals, g):
  v, u_low, (n, h, w, _) = residuals
  _, a_t = _matrices(flipped)
  out_h, out_w, tiles_h, tiles_w = _geometry(h, w, pad_h, pad_w)
  dx = _winograd(g, u_low.astype(jnp.float32), (MAX_PAD - pad_h[0], MAX_PAD - pad_h[1]),
                 (MAX_PAD - pad_w[0], MAX_PAD - pad_w[1]), not flipped)
  d = g.shape[-1]
  gp = jnp.pad(g, ((0, 0), (0, 2 * tiles_h - out_h), (0, 2 * tiles_w - out_w), (0, 0)))
  gm = _output_transform_t(gp.astype(jnp.float32).reshape(n, tiles_h, 2, tiles_w, 2, d), a_t)
  gm = gm.astype(g.dtype).reshape(16, n * tiles_h * tiles_w, d)
  # Contract the tiles: XLA:CPU keeps these transposed-operand dots in float32 either way.
  lhs, rhs = (gm, v) if flipped else (v, gm)
  du = jax.lax.dot_general(lhs, rhs, (((1,), (1,)), ((0,), (0,))),
                           preferred_element_type=jnp.float32)
  return dx, du


_winograd.defvjp(_winograd_fwd, _winograd_bwd)
