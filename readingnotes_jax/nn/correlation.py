"""Correlation layer of Detect to Track and Track to Detect (FlowNet's, kernel size 1), NHWC.

out[n, i, j, ky * K + kx] = mean over c of
    xt_pad[n, d + i*s1, d + j*s1, c] * xtau_pad[n, d + i*s1 + dy, d + j*s1 + dx, c],
with xt_pad, xtau_pad the inputs zero-padded by `padding` on each side, d =
max_displacement, s1 = stride1, R = d // stride2, K = 2R + 1 and (dy, dx) = ((ky - R) *
stride2, (kx - R) * stride2): displacement dy major, dx minor. With padding = d, output
(i, j) sits over input pixel (i*s1, j*s1).

Matches `CorrelationLayer` of feichtenhofer/caffe-rfcn (D&T's Caffe fork):
`src/caffe/layers/correlation_layer.cpp` `Reshape` (kernel_radius = 0 for kernel_size 1,
border_size = max_displacement, output size ceil((H + 2*pad - 2*border_size) / stride_1),
grid radius max_displacement / stride_2 in integer division, top_channels = K*K) and
`correlation_layer.cu` `CorrelateData` (centre x1 = x*stride_1 + max_displacement in padded
coordinates; s2o = (top_channel % K - R) * stride_2, s2p = (top_channel / K - R) *
stride_2; the sum divided by kernel_size**2 * C). When stride_2 does not divide
max_displacement the largest displacement is R * stride_2 < d while the border stays d,
as there.

Four formulations compute it (`method`):

- ``"conv"`` (the design card's): per displacement row, the K horizontal shifts of
  x_tau extracted with `jax.lax.conv_general_dilated_patches` (a grouped convolution
  with one-hot kernels), then multiplied with x_t and averaged over channels. Each row
  is rematerialized in the backward pass so its K-fold patches are never all held.
- ``"matmul"`` (banded): per displacement row, one batched product x_t[row i] @
  x_tau[row i + dy]^T over all column pairs, whose band of K diagonals is the output
  (read off with a reshape: row j of the product padded to width Wb + s1 holds columns
  j*s1 + 0, 1, ...). It does (Wb / K) times the multiply-adds (res4: 79 / 17) but as
  dense products.
- ``"blocked"``: a block of up to 19 x 19 output positions at a time (`BLOCK`), one
  product of their centres with every x_tau pixel they can reach (all K x K
  displacements), the band read off both axes with the same reshape. More multiply-adds
  than needed ((Lr / K) (Lq / K): res4 2.1 x 2.1) in a few large products.
- ``"blocked_scan"``: the same products for blocks of up to 8 x 8 (`SCAN_BLOCK`; res4
  1.4 x 1.4 the multiply-adds) one at a time in a `lax.scan`, so each block's window and
  products stay in cache, on x_tau taken every gcd(stride1, stride2)-th pixel (the only
  ones the displacements reach: res3's strides 2/2 become 1/1 there), with a hand-written
  VJP that adds each window's gradient in place into one buffer.

Measured with benchmarks/correlation.py on the idle 2-core Intel Xeon (Sapphire Rapids),
res4 [1, 38, 38, 1024], d 8, strides 1/1, best of 5, forward / forward+backward seconds:
"blocked" 0.014-0.016 / 0.039-0.044 with its x_tau windows cut straight from x_tau (0.020-0.022
/ 0.041-0.044 when they were sliced from a padded copy; blocks of 19 x 13, 10 x 19 or 19 x 10
0.019-0.021 / 0.041-0.042, 13 x 13 0.032 / 0.051, 38 x 19 0.019 / 0.061; 8 x 38 0.025 / 0.063
and 38 x 38 0.026 / 0.080 before), "matmul" 0.065-0.083 / 0.20-0.23, "conv" 2.26 / 8.03; a plain
PyTorch shift-multiply-mean loop 0.30 / 1.43. On one NVIDIA H200 (jax 0.11.2, default
precision), res4 [1, 38, 63, 1024], best of 20: "blocked" 0.23 / 0.28 ms, "matmul" 0.40 / 1.67
ms, "conv" 71 / 152 ms; the PyTorch loop on CUDA 6.6 / 32.0 ms. On the 2-core AMD EPYC Zen 4
(2026-12-05, six runs, best of 10): res4 "blocked_scan" 0.015-0.017 / 0.044-0.047 s in five,
0.022 / 0.079 in one run through a spell in which the machine slowed it (and "blocked" by
5-10%), "blocked" 0.020-0.022 / 0.060-0.068 s; [1, 38, 63, 1024] 0.025 / 0.081 against
0.051 / 0.113; res3 [1, 75, 125, 512], strides 2/2, 0.006 / 0.022 against 0.062 / 0.128.
Blocks of 10 x 8 to 10 x 10 ran within 5% of 8 x 8, 6 x 6 and 13 x 13 slower. `method=None`
takes "blocked_scan" on CPU, "blocked" on GPU (the scan is not measured there) and the
design card's "conv" on TPU (not measured there).
"""
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np

from readingnotes_jax.errors import UserError

METHODS = ("conv", "matmul", "blocked", "blocked_scan")
# The largest block of output rows and columns of "blocked" and of "blocked_scan"; each axis
# is split into the fewest blocks of at most this size, of equal size (res4's 38 -> 2 x 19;
# 5 x 8, "blocked" zero-pads its last block, "blocked_scan" moves it back).
BLOCK = (19, 19)
SCAN_BLOCK = (8, 8)


def default_method() -> str:
  """"blocked_scan" on CPU, "blocked" on GPU (the fastest measured on each, module docstring),
  "conv" on TPU."""
  return {"cpu": "blocked_scan", "tpu": "conv"}.get(jax.default_backend(), "blocked")


def correlation_output_size(size: int, max_displacement: int = 8, stride1: int = 1,
                            padding: int = 8) -> int:
  """Output rows (or columns) for `size` input ones: ceil((size + 2*pad - 2*d) / stride1)."""
  return -(-(size + 2 * padding - 2 * max_displacement) // stride1)


def correlation(x_t: jax.Array, x_tau: jax.Array, max_displacement: int = 8,
                stride1: int = 1, stride2: int = 1, padding: int = 8, *,
                method: str | None = None, precision: jax.lax.PrecisionLike = None) -> jax.Array:
  """Mean over channels of `x_t` times displaced `x_tau` (D&T's correlation features).

  Args:
    x_t: [N, H, W, C] features of frame t.
    x_tau: [N, H, W, C] features of frame t + tau.
    max_displacement: d, the largest displacement in input pixels.
    stride1: subsampling of the output positions.
    stride2: spacing of the displacements: a (2*(d // stride2) + 1)**2 grid.
    padding: zeros added on each side of both inputs.
    method: "conv", "matmul", "blocked", "blocked_scan", or None for `default_method()`.
      "blocked_scan" has a hand-written VJP: reverse mode only (`jax.grad`, `jax.vjp`; not
      `jax.jvp`, for which take another method).
    precision: passed to the channel contractions (e.g. HIGHEST for full float32
      products on TPU/GPU, whose default may round operands).

  Returns:
    [N, H_out, W_out, (2*(d // stride2) + 1)**2] in the dtype of `x_t`, H_out =
    `correlation_output_size(H, d, stride1, padding)`; bfloat16 / float16 inputs
    accumulate in float32.
  """
  if x_t.ndim != 4 or x_t.shape != x_tau.shape or x_t.dtype != x_tau.dtype:
    raise UserError(f"correlation needs two [N,H,W,C] inputs of one shape and dtype, got "
                    f"{x_t.shape} {x_t.dtype} and {x_tau.shape} {x_tau.dtype}")
  if method is None:
    method = default_method()
  if method not in METHODS:
    raise UserError(f"unknown correlation method {method!r}: use one of {METHODS} or None")
  d, s1, s2 = max_displacement, stride1, stride2
  if d < 0 or padding < 0 or s1 < 1 or s2 < 1:
    raise UserError(f"correlation: bad max_displacement={d}, padding={padding}, stride1={s1} "
                    f"or stride2={s2}: use non-negative displacement/padding, positive strides")
  n, h, w, c = x_t.shape
  out_h = correlation_output_size(h, d, s1, padding)
  out_w = correlation_output_size(w, d, s1, padding)
  if out_h < 1 or out_w < 1:
    raise UserError(f"correlation: a {h}x{w} input with padding {padding} is too small for "
                    f"max_displacement {d}: use a larger input or more padding")
  pads = ((0, 0, 0), (padding, padding, 0), (padding, padding, 0), (0, 0, 0))
  zero = jnp.zeros((), x_t.dtype)
  xt_pad = jax.lax.pad(x_t, zero, pads)
  centres = jax.lax.slice(xt_pad, (0, d, d, 0),
                          (n, d + (out_h - 1) * s1 + 1, d + (out_w - 1) * s1 + 1, c),
                          (1, s1, s1, 1))
  if method in ("blocked", "blocked_scan"):
    blocked, block = (_blocked, BLOCK) if method == "blocked" else (_blocked_scan, SCAN_BLOCK)
    out = blocked(centres, x_tau, padding, d, s1, s2, out_h, out_w, precision, block)
    return (out / c).astype(x_t.dtype)
  xtau_pad = jax.lax.pad(x_tau, zero, pads)
  geometry = (d, s1, s2, out_h, out_w, precision)
  row = _row_conv if method == "conv" else _row_matmul
  k = 2 * (d // s2) + 1

  def displacement_row(carry, ky):
    return carry, row(centres, _displaced_rows(xtau_pad, ky, *geometry[:5]), *geometry)

  # A rolled loop over the K displacement rows. Fully unrolled, "matmul" ran forward+backward
  # in 0.76-0.84 instead of 0.87-0.90 CPU-s at res4 on this CPU (forward 0.34-0.38 vs
  # 0.27-0.36, noisy under load) but compiled in 4.1-5.0 instead of 2.8 s ("conv": 3.7 vs 1.3 s).
  _, rows = jax.lax.scan(displacement_row, None, jnp.arange(k))  # [K (dy), N, H', W', K (dx)]
  out = jnp.moveaxis(rows, 0, 3).reshape(n, out_h, out_w, k * k)
  return (out / c).astype(x_t.dtype)


def _accumulation(dtype):
  return jnp.float32 if dtype in (jnp.bfloat16, jnp.float16) else None


def _displaced_rows(xtau_pad, ky, d, s1, s2, out_h, out_w):
  """x_tau rows d + i*s1 + (ky - R)*s2 for the out_h output rows i (ky may be traced), columns
  d - R*s2 .. d + R*s2 + (out_w - 1)*s1: [N, out_h, Wb, C], Wb = 2R*s2 + (out_w-1)*s1 + 1."""
  n, _, _, c = xtau_pad.shape
  radius = d // s2
  span_h, width = (out_h - 1) * s1 + 1, 2 * radius * s2 + (out_w - 1) * s1 + 1
  top = d + (ky - radius) * s2
  rows = jax.lax.dynamic_slice(xtau_pad, (0, top, d - radius * s2, 0), (n, span_h, width, c))
  return rows[:, ::s1]


def _row_matmul(centres, rows, d, s1, s2, out_h, out_w, precision):
  """Sums over channels for the K displacements (ky, 0..K-1): [N, out_h, out_w, K].

  products[n, i, j, z] = centres[n, i, j] . rows[n, i, z]; the output is the band
  z = j*s1 + kx*s2. Flattened (j, z) and padded by out_w * s1, then viewed as rows of
  Wb + s1, row j starts at flat index j*(Wb + s1) = j*Wb + j*s1: column kx*s2 of it is
  products[j, j*s1 + kx*s2] (in range: j*s1 + 2R*s2 <= Wb - 1).
  """
  n, _, wb, _ = rows.shape
  products = jnp.einsum("nijc,nizc->nijz", centres, rows, precision=precision,
                        preferred_element_type=_accumulation(centres.dtype))
  flat = products.reshape(n, out_h, out_w * wb)
  flat = jax.lax.pad(flat, jnp.zeros((), flat.dtype), ((0, 0, 0), (0, 0, 0), (0, out_w * s1, 0)))
  return flat.reshape(n, out_h, out_w, wb + s1)[..., :2 * (d // s2) * s2 + 1:s2]


@functools.partial(jax.checkpoint, static_argnums=(2, 3, 4, 5, 6, 7))
def _row_conv(centres, rows, d, s1, s2, out_h, out_w, precision):
  """The K horizontal shifts of `rows` as conv patches, times the centres, summed over C."""
  n, _, _, c = rows.shape
  k = 2 * (d // s2) + 1
  shifts = jax.lax.conv_general_dilated_patches(
      rows, (1, k), (1, s1), "VALID", rhs_dilation=(1, s2),
      dimension_numbers=("NHWC", "HWIO", "NHWC"),
      precision=jax.lax.Precision.HIGHEST)  # one-hot kernels: exact copies
  shifts = shifts.reshape(n, out_h, out_w, c, k)  # channel-major patch features
  return jnp.einsum("nijc,nijck->nijk", centres, shifts, precision=precision,
                    preferred_element_type=_accumulation(centres.dtype))


def _block_geometry(out_h, out_w, block, s1, s2, radius):
  """Blocks per axis (nb, ne), block size (r, q) and the window a block reaches (span_r,
  span_q): each axis split into the fewest equal blocks of at most `block`."""
  nb, ne = -(-out_h // block[0]), -(-out_w // block[1])
  r, q = -(-out_h // nb), -(-out_w // ne)
  return nb, ne, r, q, (r - 1) * s1 + 2 * radius * s2 + 1, (q - 1) * s1 + 2 * radius * s2 + 1


def _blocked(centres, x_tau, padding, d, s1, s2, out_h, out_w, precision, block):
  """All K x K displacements of a block of output positions at a time: [N, out_h, out_w, K*K].

  Block (b, e) holds r x q output positions (each axis split evenly into blocks of at most
  `block`); its centres times every x_tau
  pixel they can reach (a window of Lr x Lq pixels, Lr = (r-1)*s1 + 2R*s2 + 1, Lq likewise,
  starting at d - R*s2 + (b*r*s1, e*q*s1)) is one product [r*q, Lr*Lq]. Centre (i, j) meets
  displacement (ky, kx) at window pixel (i*s1 + ky*s2, j*s1 + kx*s2), so the output is read
  off each axis with `_row_matmul`'s reshape (rows of Lr + s1, then of Lq + s1). It does
  (Lr / K) (Lq / K) times the multiply-adds in a few large products.
  """
  n, _, _, c = centres.shape
  radius = d // s2
  k = 2 * radius + 1
  nb, ne, r, q, span_r, span_q = _block_geometry(out_h, out_w, block, s1, s2, radius)
  first = d - radius * s2
  zero = jnp.zeros((), centres.dtype)
  _, h, w, _ = x_tau.shape

  def window(top, left):
    """x_tau_pad[top : top + span_r, left : left + span_q] cut from x_tau by one pad: its
    negative widths crop, its positive ones add the zero border (no padded copy of x_tau)."""
    top, left = top - padding, left - padding
    return jax.lax.pad(x_tau, zero, ((0, 0, 0), (-top, top + span_r - h, 0),
                                     (-left, left + span_q - w, 0), (0, 0, 0)))

  windows = jnp.stack([window(first + b * r * s1, first + e * q * s1)
                       for b in range(nb) for e in range(ne)],
                      axis=1).reshape(n, nb, ne, span_r * span_q, c)
  centres = jax.lax.pad(centres, zero, ((0, 0, 0), (0, nb * r - out_h, 0),
                                        (0, ne * q - out_w, 0), (0, 0, 0)))
  centres = centres.reshape(n, nb, r, ne, q, c).transpose(0, 1, 3, 2, 4, 5).reshape(
      n, nb, ne, r * q, c)
  products = jnp.einsum("nbemc,nbezc->nbemz", centres, windows, precision=precision,
                        preferred_element_type=_accumulation(centres.dtype))
  cols = _read_band(products, r, q, span_r, span_q, s1, s2, radius)  # [n, nb, ne, r, q, K*K]
  out = cols.transpose(0, 1, 3, 2, 4, 5).reshape(n, nb * r, ne * q, k * k)
  return out[:, :out_h, :out_w]


def _blocked_scan(centres, x_tau, padding, d, s1, s2, out_h, out_w, precision, block):
  """`_blocked`'s products one block at a time in a `lax.scan`: [N, out_h, out_w, K*K].

  Smaller blocks (8 x 8: res4 1.99 times the multiply-adds, `_blocked`'s 19 x 19 4.24) whose
  window and products stay in cache, and x_tau taken on the grid of pixels the displacements
  reach (every gcd(s1, s2)-th: res3's strides 2/2 are strides 1/1 on that grid, a quarter of
  the window). The last block of each axis is moved back to end at the last output (no
  padded copy of x_t). The VJP is written by hand so the scan of the backward pass adds each
  block's gradients in place, the windows' into one float32 buffer and the centres' into one
  of the input's dtype (autodiff would add a full-size buffer per block).
  """
  n, _, _, c = centres.shape
  dtype = centres.dtype
  acc = _accumulation(dtype) or dtype
  radius = d // s2
  g = math.gcd(s1, s2)
  t1, t2 = s1 // g, s2 // g  # strides on the grid
  nb, ne, r, q, span_r, span_q = _block_geometry(out_h, out_w, block, t1, t2, radius)
  # The last block of each axis ends at the last output (it overlaps the one before it).
  corners = np.array([(min(b * r, out_h - r), min(e * q, out_w - q))
                      for b in range(nb) for e in range(ne)], np.int32)
  # grid[u, v] = x_tau_pad[first + g*u, first + g*v], first = d - R*s2: the window of the
  # block at output (i, j) is grid[i*t1 : + span_r, j*t1 : + span_q].
  _, h, w, _ = x_tau.shape
  lo = d - radius * s2 - padding  # the x_tau pixel under grid[0]
  rows, cols = (out_h - r) * t1 + span_r, (out_w - q) * t1 + span_q
  grid = jax.lax.pad(x_tau, jnp.zeros((), dtype), (
      (0, 0, 0), (-lo, g * (rows - 1) + 1 - h + lo, 0), (-lo, g * (cols - 1) + 1 - w + lo, 0),
      (0, 0, 0)))
  grid = jax.lax.slice(grid, (0, 0, 0, 0), grid.shape, (1, g, g, 1))

  def cut(centres, grid, corner):
    i, j = corner[0], corner[1]
    block_centres = jax.lax.dynamic_slice(centres, (0, i, j, 0), (n, r, q, c))
    window = jax.lax.dynamic_slice(grid, (0, i * t1, j * t1, 0), (n, span_r, span_q, c))
    return block_centres.reshape(n, r * q, c), window.reshape(n, span_r * span_q, c)

  def assemble(blocks):
    """[blocks, N, r, q, F] -> [N, out_h, out_w, F], each last block without its overlap."""
    x = blocks.reshape(nb, ne, n, r, q, -1).transpose(2, 0, 3, 1, 4, 5)
    x = x.reshape(n, nb * r, ne * q, -1)
    x = jnp.concatenate([x[:, :(nb - 1) * r], x[:, (2 * nb - 1) * r - out_h:]], axis=1)
    return jnp.concatenate([x[:, :, :(ne - 1) * q], x[:, :, (2 * ne - 1) * q - out_w:]], axis=2)

  band = functools.partial(_read_band, r=r, q=q, span_r=span_r, span_q=span_q, s1=t1, s2=t2,
                           radius=radius)

  @jax.custom_vjp
  def blocks(centres, grid):
    def block(carry, corner):
      products = jnp.einsum("nmc,nzc->nmz", *cut(centres, grid, corner), precision=precision,
                            preferred_element_type=acc)
      return carry, band(products)
    return jax.lax.scan(block, None, corners)[1]  # [blocks, N, r, q, K*K]

  def blocks_bwd(residuals, g_blocks):
    centres, grid = residuals
    band_t = jax.linear_transpose(band, jax.ShapeDtypeStruct((n, r * q, span_r * span_q), acc))

    def block(carry, inputs):
      d_centres, d_grid = carry
      corner, g_block = inputs
      block_centres, window = cut(centres, grid, corner)
      d_products = band_t(g_block)[0].astype(dtype)
      d_block = jnp.einsum("nmz,nzc->nmc", d_products, window, precision=precision,
                           preferred_element_type=acc).astype(dtype)
      d_window = jnp.einsum("nmz,nmc->nzc", d_products, block_centres, precision=precision,
                            preferred_element_type=acc)
      # In place: a moved-back last block adds its zero gradients (g is zero where it
      # overlaps) to the rows of the block before, exactly.
      d_centres = _add_at(d_centres, d_block.reshape(n, r, q, c), (0, corner[0], corner[1], 0))
      d_grid = _add_at(d_grid, d_window.reshape(n, span_r, span_q, c),
                       (0, corner[0] * t1, corner[1] * t1, 0))
      return (d_centres, d_grid), None

    zeros = (jnp.zeros(centres.shape, dtype), jnp.zeros(grid.shape, acc))
    (d_centres, d_grid), _ = jax.lax.scan(block, zeros, (corners, g_blocks))
    return d_centres, d_grid.astype(dtype)

  blocks.defvjp(lambda centres, grid: (blocks(centres, grid), (centres, grid)), blocks_bwd)
  return assemble(blocks(centres, grid))


def _add_at(x, update, start):
  """x with `update` added to its slice at `start` (in place under jit)."""
  total = jax.lax.dynamic_slice(x, start, update.shape) + update
  return jax.lax.dynamic_update_slice(x, total, start)


def _read_band(products, r, q, span_r, span_q, s1, s2, radius):
  """[..., r*q, span_r*span_q] products of a block -> [..., r, q, K*K] (dy major, dx minor).

  Centre (i, j) meets displacement (ky, kx) at window pixel (i*s1 + ky*s2, j*s1 + kx*s2).
  Along rows: (i, window row) flattened and padded by r*s1, then viewed as rows of span_r +
  s1, row i starts at i*(span_r + s1), so its column ky*s2 is window row i*s1 + ky*s2. Then
  the same along columns.
  """
  lead = len(products.shape) - 2
  k = 2 * radius + 1
  band = slice(0, 2 * radius * s2 + 1, s2)
  pad_end = lambda x, axis, size: jax.lax.pad(x, jnp.zeros((), x.dtype), tuple(
      (0, size if a == axis else 0, 0) for a in range(x.ndim)))
  shape = products.shape[:-2]
  grid = jnp.swapaxes(products.reshape(*shape, r, q, span_r, span_q), lead + 1, lead + 2)
  rows = pad_end(grid.reshape(*shape, r * span_r, q, span_q), lead, r * s1)
  rows = rows.reshape(*shape, r, span_r + s1, q, span_q)[..., band, :, :]  # [.., r, K, q, Lq]
  cols = pad_end(rows.reshape(*shape, r, k, q * span_q), lead + 2, q * s1)
  cols = cols.reshape(*shape, r, k, q, span_q + s1)[..., band]  # [..., r, K (dy), q, K (dx)]
  return jnp.swapaxes(cols, lead + 1, lead + 2).reshape(*shape, r, q, k * k)
