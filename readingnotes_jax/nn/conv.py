"""2D convolution with a choice of lowering (NHWC activations, HWIO kernels).

Five lowerings compute the same convolution:

- ``"xla"``: `jax.lax.conv_general_dilated`, XLA's own convolution. Right on
  TPU and GPU.
- ``"matmul"``: the convolution written as a sum over kernel taps of matmuls
  of shifted (padded, strided-sliced) inputs. On an AMX CPU XLA's convolution
  backward pass was slow for wide layers (3x3 conv 512->512 at 32x32, batch
  16: ~82 GFLOP/s backward against ~200 for the shifted matmuls), so wide
  convolutions use it on CPU by default. For narrow float32 layers the
  per-tap matmuls are too thin and XLA's convolution wins (in bfloat16 the
  matmuls win from 128 channels), so `lowering=None` picks per layer with
  `default_lowering`. See benchmarks/conv_lowering.py.

- ``"patches"``: im2col, the kh*kw taps side by side and one GEMM with the
  kernel as a [kh*kw*Cin, Cout] matrix (its HWIO layout as it is), gradients by
  JAX (two GEMMs, the taps' pads summed). For convolutions with few output
  positions, where the work is in the weights: XLA:CPU's strided convolutions
  there take slow generic paths and transpose the kernel for the backward pass.
  `lowering=None` picks it on CPU for strided convolutions with few output
  positions in the batch (`patches_preferred`, `conv2d_patches`).

- ``"space_to_depth"``: a stride-s convolution as a stride-1 one of x's s x s blocks
  stacked on channels (s^2 Cin) with the kernel regrouped the same way (its taps at
  ceil(k / s)), the stride-1 convolution lowered by `default_lowering` (`conv2d_space_to_depth`).
  FashionGAN's 4x4 stride-2 convolutions become 2x2 stride-1 ones at 4 Cin: no strided
  access and 4 taps instead of 16, the same multiply-adds. `lowering=None` picks it on CPU for
  strided kernels that the stride divides, when "patches" is not preferred.

- ``"winograd"``: Winograd's F(2x2, 3x3) and F(2x2, 2x2) (`nn.winograd`): 3x3 and 2x2 kernels
  at stride 1, dilation 1, padding 0..k-1 per side, in 2.25x (1.78x) fewer multiply-adds (16
  or 9 GEMMs over the input's tiles and elementwise transforms). On CPU `lowering=None` picks
  it for 3x3 kernels from `WINOGRAD_MIN_CHANNELS` (float32) or
  `LOW_PRECISION_WINOGRAD_MIN_CHANNELS` channels, for 2x2 ones in float32 from
  `WINOGRAD_MIN_CHANNELS`.

The "matmul" lowering's gradients are written by hand for stride 1
(`_conv_stride1`): the input gradient as the same shifted-matmul sum over the
flipped kernel (so gradients of gradients, WGAN-GP's double backward, are too),
the kernel gradient as one tap^T @ g product per tap. In bfloat16 (or float16)
the products accumulate in float32 and the sum is cast once: on an AVX512-BF16
CPU without AMX (AMD EPYC Zen 4) XLA's bf16 x bf16 -> bf16 dot ran ~40 GFLOP/s
under load, bf16 x bf16 -> f32 ~90, float32 ~50. 3x3 conv 512->512 at 32x32,
batch 16, that CPU, seconds forward / forward+backward / WGAN-GP-style
gradient of a gradient: float32 0.59 / 1.96 / 3.85 with JAX's own gradients,
0.59 / 1.48 / 2.54 with these; bfloat16 0.52 / 1.55 / 3.01 before, 0.33 /
0.83 / 1.37 now.

XLA:CPU can hand dots to YNNPACK one by one (`enable_xla_cpu_ynn`, flag
`XLA_CPU_YNN_FLAG`), which also changes how it runs `lax.conv`. Measured on
the AMD EPYC (2 cores, idle; benchmarks/conv_lowering.py shape, GFLOP/s
forward / forward+backward): float32 "xla" 148 / 132 without, 201 / 199 with
it ("matmul" ~145 / 155 either way; PyTorch 2.13 209 / 190); bfloat16 "matmul"
224 / 260 without, 237 / 272 with it ("xla" 196 / 197 with). With the flag on,
`default_lowering` therefore keeps "xla" for float32 and "matmul" for
bfloat16 convolutions from 128 channels.
"""
import functools
import math
import os

import jax
import jax.numpy as jnp

from readingnotes_jax.errors import UserError
from readingnotes_jax.nn import winograd

LOWERINGS = ("xla", "matmul", "patches", "space_to_depth", "winograd")
# On CPU, strided convolutions (and FashionGAN's transposed ones) whose GEMM has at most this
# many rows (N * H_out * W_out) use "patches". 4x4 stride-2 convolutions, forward+backward,
# idle 2-core Sapphire Rapids, jax 0.10.2 with `individual_dot,reduce`, ms "xla" / "patches":
# float32, batch 4, 512->512 from 8x8 10.1 / 6.9, from 4x4 60.8 / 2.9, from 2x2 17.1 / 2.0;
# 256->512 from 16x16 (256 rows) 13.8 / 11.0, 128->256 from 32x32 (1024 rows) 13.6 / 13.1;
# batch 16, 64->128 from 8x8 (256 rows) 1.7 / 1.4, 32->64 from 16x16 (1024 rows) 1.5 / 2.7.
# bfloat16 gains less from small kernels: batch 16, 128->128 from 8x8 (256 rows) 3.3 / 4.6,
# from 4x4 (64 rows) 5.4 / 1.4; transposed 256->128 from 2x2 (256 rows) 3.9 / 4.3 but
# 1024->512 (8.4M weights) from 4x4 at batch 4 (256 rows) 125 / 60. So in bfloat16 / float16
# up to LOW_PRECISION_PATCHES_MAX_ROWS, or PATCHES_MAX_ROWS for kernels of at least
# LOW_PRECISION_PATCHES_MIN_WEIGHTS elements.
PATCHES_MAX_ROWS = 256
LOW_PRECISION_PATCHES_MAX_ROWS = 64
LOW_PRECISION_PATCHES_MIN_WEIGHTS = 2 ** 22
# On CPU, convolutions with fewer input or output channels than this use "xla". In
# bfloat16 the shifted matmuls win from 128 channels (PSPNet-50's stride-1 3x3 layers,
# forward+backward: 128 ch 291 vs 199 GFLOP/s, 256 dilated 334 vs 198; 64 ch at 117x117
# 95 vs 123), in float32 only from 512 (128 ch: 158 vs 194).
MATMUL_MIN_CHANNELS = 512
LOW_PRECISION_MATMUL_MIN_CHANNELS = 128
# The matmul lowering uses one wide GEMM when Cin >= WIDE_RATIO * Cout: PSPNet's 3x3
# 4096->512 head, forward GFLOP/s float32 171 vs 146 (9 thin GEMMs), bfloat16 325 vs 288;
# PSPNet-50 inference at 473 px (same process, alternating) float32 1.90 vs 2.05 s, bfloat16
# 1.21 vs 1.24 s; training at 233 px float32 3.50 vs 3.57 s, bfloat16 2.67 vs 2.57 s.
# (One GEMM over the kh*kw taps side by side, for the reverse shape, gained nothing.)
WIDE_RATIO = 4
# On CPU, 3x3 stride-1 undilated convolutions with at least this many input and output channels
# use "winograd". Forward+backward, 2-core AMD EPYC Zen 4, jax 0.10.2 with `individual_dot,reduce`
# (against the default before it), ms: float32 [4, 16, 16] 512 -> 512 57 vs 77, 256 -> 512 24
# vs 39, [4, 64, 64] 128 -> 128 91 vs 89; bfloat16 128 -> 128 77 vs 91, 512 -> 512 50 vs 54.
# 2x2 kernels (FashionGAN's stride-2 layers after "space_to_depth" and its "phases" transposed
# ones) in float32 only, from the same channels: [4, 9, 9] 1024 -> 512 18 vs 23 ms, [4, 34,
# 34] 128 -> 256 16 vs 18, but 256 -> 128 at 33 x 33 19 vs 17; in bfloat16 0.96-1.17x.
WINOGRAD_MIN_CHANNELS = 256
LOW_PRECISION_WINOGRAD_MIN_CHANNELS = 128
XLA_CPU_YNN_FLAG = "--xla_cpu_experimental_ynn_fusion_type=individual_dot"
_YNN_FLAG_NAME = XLA_CPU_YNN_FLAG.split("=")[0]


def enable_xla_cpu_ynn(fusion_types: str = "individual_dot") -> None:
  """Adds `--xla_cpu_experimental_ynn_fusion_type=<fusion_types>` to XLA_FLAGS, unless
  XLA_FLAGS already sets that flag (`XLA_CPU_YNN_FLAG` is the default, dots alone).

  XLA reads XLA_FLAGS once, when the first computation starts its backend: call
  this before that (the experiment commands do when the config says
  `xla_cpu_ynn`, with its `xla_cpu_ynn_types` if any). No effect on GPU or TPU
  computations. "individual_dot,reduce" also hands reductions to YNNPACK: with
  dots alone XLA:CPU's own reductions ran 10-30x slower than without the flag (a
  [16, 32, 32, 128] float32 sum over all axes but the last: 5.0 ms against 0.17 ms
  without the flag and 0.29 ms with reductions added; idle 2-core Sapphire Rapids,
  jax 0.10.2), while convolutions stay XLA's own either way.
  """
  flags = os.environ.get("XLA_FLAGS", "")
  if _YNN_FLAG_NAME not in flags:
    os.environ["XLA_FLAGS"] = f"{flags} {_YNN_FLAG_NAME}={fusion_types}".strip()


def xla_cpu_ynn_enabled() -> bool:
  """Whether XLA_FLAGS hands XLA:CPU's dots to YNNPACK one by one (the flag's fusion types
  include individual_dot)."""
  for token in os.environ.get("XLA_FLAGS", "").split():
    if token.startswith(_YNN_FLAG_NAME + "="):
      return "individual_dot" in token.split("=", 1)[1].split(",")
  return False


def patches_preferred(rows: int | None, dtype=jnp.float32, weights: int = 0) -> bool:
  """Whether a convolution whose GEMM has `rows` rows (N * H_out * W_out) and whose kernel has
  `weights` elements runs as "patches": on CPU, at most `PATCHES_MAX_ROWS` rows, in bfloat16 /
  float16 at most `LOW_PRECISION_PATCHES_MAX_ROWS` unless the kernel has at least
  `LOW_PRECISION_PATCHES_MIN_WEIGHTS` elements."""
  if jax.default_backend() != "cpu" or rows is None:
    return False
  if _low_precision(jnp.dtype(dtype)) and weights < LOW_PRECISION_PATCHES_MIN_WEIGHTS:
    return rows <= LOW_PRECISION_PATCHES_MAX_ROWS
  return rows <= PATCHES_MAX_ROWS


def default_lowering(channels: int | None = None, dtype=jnp.float32,
                     kernel_size: tuple[int, int] | None = None, stride: int = 1,
                     rows: int | None = None, weights: int = 0, dilation: int = 1,
                     winograd_padding: bool = False) -> str:
  """The lowering `conv2d(..., lowering=None)` uses.

  "xla" on TPU and GPU (where XLA's convolution is strong). On CPU:
  "winograd" for 3x3 kernels at stride 1 and dilation 1 whose padding it takes
  (`winograd_padding`) when the narrower side has at least `WINOGRAD_MIN_CHANNELS` (float32)
  or `LOW_PRECISION_WINOGRAD_MIN_CHANNELS` (bfloat16, float16) channels, and for such 2x2
  kernels in float32 from `WINOGRAD_MIN_CHANNELS`;
  "matmul" for 1x1 kernels (one dot; XLA's kernel gradient of a 1x1
  convolution transposes both operands); for other strided ones "patches" when
  `patches_preferred(rows, dtype, weights)` (`rows` = N * H_out * W_out, when
  given; `weights` the kernel's elements), else "xla" (the matmul lowering has hand-written
  gradients for stride 1 only); otherwise
  "matmul" when the narrower side (min of input and output channels, when
  given) is at least `MATMUL_MIN_CHANNELS` (float32) or
  `LOW_PRECISION_MATMUL_MIN_CHANNELS` (bfloat16, float16), except float32
  ones when `xla_cpu_ynn_enabled()`; "xla" otherwise.
  """
  if jax.default_backend() != "cpu":
    return "xla"
  if kernel_size is not None and tuple(kernel_size) == (1, 1):
    return "matmul"
  if stride > 1:
    if patches_preferred(rows, dtype, weights):
      return "patches"
    divides = kernel_size is not None and all(k % stride == 0 for k in kernel_size)
    return "space_to_depth" if divides and dilation == 1 else "xla"
  low_precision = _low_precision(jnp.dtype(dtype))
  winograd_min = LOW_PRECISION_WINOGRAD_MIN_CHANNELS if low_precision else WINOGRAD_MIN_CHANNELS
  if winograd_padding and dilation == 1 and channels is not None and kernel_size is not None:
    if ((tuple(kernel_size) == (3, 3) and channels >= winograd_min)
        or (tuple(kernel_size) == (2, 2) and not low_precision
            and channels >= WINOGRAD_MIN_CHANNELS)):
      return "winograd"
  threshold = LOW_PRECISION_MATMUL_MIN_CHANNELS if low_precision else MATMUL_MIN_CHANNELS
  if channels is not None and channels < threshold:
    return "xla"
  if xla_cpu_ynn_enabled() and not low_precision:
    return "xla"
  return "matmul"


def _pads(size: int, kernel_size: int, stride: int, dilation: int,
          padding: str | int) -> tuple[int, int]:
  """(low, high) padding of one spatial axis, "SAME" as XLA/TensorFlow define it."""
  if isinstance(padding, int):
    return padding, padding
  span = (kernel_size - 1) * dilation + 1
  out = -(-size // stride)
  total = max((out - 1) * stride + span - size, 0)
  return total // 2, total - total // 2


def conv2d(x: jax.Array, kernel: jax.Array, *, stride: int = 1,
           dilation: int = 1, padding: str | int = "SAME",
           lowering: str | None = None) -> jax.Array:
  """Cross-correlation of `x` [N, H, W, Cin] with `kernel` [kh, kw, Cin, Cout].

  Args:
    x: input, NHWC.
    kernel: HWIO weights in the dtype of `x`, or float32 weights for a bfloat16 /
      float16 `x` (mixed precision: cast inside; with the "matmul" lowering at
      stride 1 the kernel gradient is then float32, accumulated without rounding).
    stride: spatial stride (both axes).
    dilation: kernel dilation (both axes).
    padding: "SAME" (TensorFlow's rule, output size ceil(H / stride)),
      "VALID", or a number of zeros added on each side.
    lowering: one of `LOWERINGS`, or None for `default_lowering(min(Cin, Cout), x.dtype,
      (kh, kw), stride, N * H_out * W_out, kernel.size, dilation, <padding fits "winograd">)`.

  Returns:
    [N, H_out, W_out, Cout] in the dtype of `x`.
  """
  if x.ndim != 4 or kernel.ndim != 4 or x.shape[-1] != kernel.shape[2]:
    raise UserError(f"conv2d needs x [N,H,W,C] and kernel [kh,kw,C,Cout], got "
                    f"{x.shape} and {kernel.shape}: fix the input channels")
  if kernel.dtype != x.dtype and not (_low_precision(x.dtype) and kernel.dtype == jnp.float32):
    raise UserError(f"conv2d: kernel dtype {kernel.dtype} with input dtype {x.dtype}: pass "
                    f"the kernel in the input's dtype (or float32 for bfloat16 / float16)")
  if padding == "VALID":
    padding = 0
  if not (padding == "SAME" or isinstance(padding, int)) or stride < 1 or dilation < 1:
    raise UserError(f"conv2d: bad padding={padding!r}, stride={stride} or "
                    f"dilation={dilation}: use 'SAME'/'VALID'/int and positive ints")
  kh, kw = kernel.shape[:2]
  pad_h = _pads(x.shape[1], kh, stride, dilation, padding)
  pad_w = _pads(x.shape[2], kw, stride, dilation, padding)
  if lowering is None:
    rows = x.shape[0] * math.prod(
        max(0, _output_size(size + sum(pads), k, stride, dilation))
        for size, pads, k in ((x.shape[1], pad_h, kh), (x.shape[2], pad_w, kw)))
    lowering = default_lowering(min(kernel.shape[2:]), x.dtype, kernel.shape[:2], stride, rows,
                                kernel.size, dilation,
                                winograd.supported(kernel.shape, stride, dilation, pad_h, pad_w))
  if lowering not in LOWERINGS:
    raise UserError(f"unknown conv lowering {lowering!r}: use one of {LOWERINGS} or None")
  if lowering == "winograd":
    if not winograd.supported(kernel.shape, stride, dilation, pad_h, pad_w):
      raise UserError(f"conv2d lowering 'winograd' takes 3x3 or 2x2 kernels at stride 1, "
                      f"dilation 1 and padding 0..k-1, got kernel {kernel.shape[:2]}, stride "
                      f"{stride}, dilation {dilation}, padding {pad_h} x {pad_w}: use another "
                      "lowering")
    _output_shape(x.shape[1] + sum(pad_h), x.shape[2] + sum(pad_w), kh, kw, 1, 1)
    return winograd.winograd_conv2d(x, kernel, pad_h, pad_w)
  if lowering == "xla":
    return jax.lax.conv_general_dilated(
        x, kernel.astype(x.dtype), window_strides=(stride, stride), padding=(pad_h, pad_w),
        rhs_dilation=(dilation, dilation),
        dimension_numbers=("NHWC", "HWIO", "NHWC"))
  if lowering == "patches":
    return conv2d_patches(x, kernel, stride=stride, dilation=dilation, pad_h=pad_h, pad_w=pad_w)
  if lowering == "space_to_depth":
    return conv2d_space_to_depth(x, kernel, stride=stride, dilation=dilation, pad_h=pad_h,
                                 pad_w=pad_w)
  return _conv2d_matmul(x, kernel, stride, dilation, pad_h, pad_w)


def conv2d_patches(x: jax.Array, kernel: jax.Array, *, stride: int = 1, dilation: int = 1,
                   pad_h: tuple[int, int] = (0, 0), pad_w: tuple[int, int] = (0, 0),
                   input_dilation: int = 1, flip_kernel: bool = False) -> jax.Array:
  """The "patches" lowering: x with `input_dilation` - 1 zeros between its pixels, padded by
  `pad_h` / `pad_w`, correlated with `kernel` [kh, kw, Cin, Cout] as one GEMM of its kh*kw
  taps side by side (im2col) and the kernel reshaped to [kh*kw*Cin, Cout].

  `flip_kernel` puts the taps in reverse order, which correlates with the kernel flipped on
  both spatial axes without copying it: a transposed convolution is this with
  `input_dilation` = its stride and padding kh - 1 - p (`fashiongan.model.conv_transpose`).
  bfloat16 / float16 products accumulate in float32, cast once.
  """
  kh, kw = kernel.shape[:2]
  zero = jnp.zeros((), x.dtype)
  x = jax.lax.pad(x, zero, ((0, 0, 0), (*pad_h, input_dilation - 1),
                            (*pad_w, input_dilation - 1), (0, 0, 0)))
  n, h, w, c = x.shape
  out_h, out_w = _output_shape(h, w, kh, kw, stride, dilation)
  taps = [tap for _, _, tap in kernel_taps(x, kh, kw, stride, dilation, out_h, out_w)]
  if flip_kernel:
    taps = taps[::-1]
  patches = jnp.concatenate(taps, axis=-1).reshape(n * out_h * out_w, kh * kw * c)
  accumulate = jnp.float32 if _low_precision(x.dtype) else None
  y = jnp.dot(patches, kernel.astype(x.dtype).reshape(kh * kw * c, -1),
              preferred_element_type=accumulate)
  return y.reshape(n, out_h, out_w, -1).astype(x.dtype)


def conv2d_space_to_depth(x: jax.Array, kernel: jax.Array, *, stride: int, dilation: int = 1,
                          pad_h: tuple[int, int] = (0, 0),
                          pad_w: tuple[int, int] = (0, 0)) -> jax.Array:
  """The "space_to_depth" lowering: y[p, q] = sum_ij xpad[s p + i, s q + j] W[i, j] regrouped by
  i = s a + u, j = s b + v as sum_ab X[p + a, q + b] K[a, b], X[P, Q] the s x s block (u, v) of
  xpad at (s P, s Q) flattened to s^2 Cin channels and K[a, b] the matching [s^2 Cin, Cout] rows
  of W; a stride-1 convolution `conv2d` lowers by `default_lowering`.

  The kernel is zero-padded to a multiple of s taps (a dilated one is first spelled out with
  its zeros) and the padded input to whole blocks; no extra multiply-adds when s divides the
  kernel and dilation is 1, the only case `default_lowering` picks it for. Gradients by JAX
  through the regrouping and the stride-1 lowering (the matmul lowering's are hand-written).
  """
  kh, kw, cin, cout = kernel.shape
  if stride == 1:
    return conv2d(_pad(x, pad_h, pad_w), kernel, dilation=dilation, padding=0)
  if dilation > 1:
    spelled = ((kh - 1) * dilation + 1, (kw - 1) * dilation + 1, cin, cout)
    kernel = jnp.zeros(spelled, kernel.dtype).at[::dilation, ::dilation].set(kernel)
    kh, kw = kernel.shape[:2]
  s = stride
  out_h, out_w = _output_shape(x.shape[1] + sum(pad_h), x.shape[2] + sum(pad_w), kh, kw, s, 1)
  th, tw = -(-kh // s), -(-kw // s)  # taps of the regrouped kernel
  kernel = jnp.pad(kernel, ((0, th * s - kh), (0, tw * s - kw), (0, 0), (0, 0)))
  kernel = kernel.reshape(th, s, tw, s, cin, cout).transpose(0, 2, 1, 3, 4, 5)
  blocks_h, blocks_w = out_h + th - 1, out_w + tw - 1
  x = _pad(x, (pad_h[0], blocks_h * s - x.shape[1] - pad_h[0]),
           (pad_w[0], blocks_w * s - x.shape[2] - pad_w[0]))
  n = x.shape[0]
  x = x.reshape(n, blocks_h, s, blocks_w, s, cin).transpose(0, 1, 3, 2, 4, 5)
  return conv2d(x.reshape(n, blocks_h, blocks_w, s * s * cin),
                kernel.reshape(th, tw, s * s * cin, cout), padding=0)


def _output_size(padded: int, kernel_size: int, stride: int, dilation: int) -> int:
  """Output rows (or columns) of a padded input: (padded - (k - 1) * d - 1) // stride + 1."""
  return (padded - (kernel_size - 1) * dilation - 1) // stride + 1


def _output_shape(h, w, kh, kw, stride, dilation) -> tuple[int, int]:
  """(out_h, out_w) of a padded h x w input; a UserError when the kernel does not fit."""
  out_h, out_w = _output_size(h, kh, stride, dilation), _output_size(w, kw, stride, dilation)
  if out_h < 1 or out_w < 1:
    raise UserError(f"conv2d: input {h}x{w} (padded) is smaller than the "
                    f"dilated kernel: use a larger input or more padding")
  return out_h, out_w


def _low_precision(dtype) -> bool:
  return dtype in (jnp.bfloat16, jnp.float16)


def kernel_taps(x, kh, kw, stride, dilation, out_h, out_w):
  """(i, j, x[:, i*d : ... : stride, j*d : ... : stride, :]) for each kernel tap of padded NHWC x,
  each cropped to the out_h x out_w output positions (also `nn.pool.max_pool`'s windows)."""
  n, _, _, c = x.shape
  for i in range(kh):
    for j in range(kw):
      yield i, j, jax.lax.slice(
          x, (0, i * dilation, j * dilation, 0),
          (n, i * dilation + (out_h - 1) * stride + 1, j * dilation + (out_w - 1) * stride + 1, c),
          (1, stride, stride, 1))


def _pad(x, pad_h, pad_w):
  """Zero padding of the spatial axes 1 and 2; negative amounts crop (lax.pad semantics)."""
  if pad_h == (0, 0) and pad_w == (0, 0):
    return x
  config = ((0, 0, 0), (*pad_h, 0), (*pad_w, 0)) + ((0, 0, 0),) * (x.ndim - 3)
  return jax.lax.pad(x, jnp.zeros((), x.dtype), config)


def _conv2d_matmul(x, kernel, stride, dilation, pad_h, pad_w):
  """Sum over the kh*kw taps of (strided slice of padded x) @ kernel[i, j].

  bfloat16 / float16 products accumulate in float32 and the sum is cast back
  to the input dtype. Stride 1 has hand-written gradients (`_conv_stride1`);
  other strides are differentiated by JAX through `_matmul_f32`.
  """
  kh, kw = kernel.shape[:2]
  h, w = x.shape[1] + sum(pad_h), x.shape[2] + sum(pad_w)
  out_h, out_w = _output_shape(h, w, kh, kw, stride, dilation)
  if stride == 1:
    return _conv_stride1(x, kernel, dilation, pad_h, pad_w)
  kernel = kernel.astype(x.dtype)
  x = _pad(x, pad_h, pad_w)
  c = x.shape[-1]
  out = None
  for i, j, tap in kernel_taps(x, kh, kw, stride, dilation, out_h, out_w):
    if _low_precision(x.dtype):
      y = _matmul_f32(tap.reshape(-1, c), kernel[i, j]).reshape(tap.shape[:3] + (-1,))
    else:
      y = jnp.einsum("nhwc,cd->nhwd", tap, kernel[i, j])
    out = y if out is None else out + y
  return out.astype(x.dtype)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4))
def _conv_stride1(x, kernel, dilation, pad_h, pad_w):
  """Stride-1 shifted-matmul convolution with gradients written as the same kind of sums.

  Input gradient: the correlation of the output gradient with the flipped,
  transposed kernel (this function again, so gradients of gradients, WGAN-GP's
  double backward, stay shifted matmuls). Kernel gradient: per tap, tap^T @ g.
  JAX's own gradient of the forward (pads of each tap's product, then sums)
  ran at half the forward's speed in bfloat16.

  When the input is at least `WIDE_RATIO` times wider than the output
  (PSPNet's 3x3 4096->512 head), `_shifted_outputs`: one wide GEMM instead of
  kh*kw thin ones.

  A float32 kernel with a low-precision x is cast here, and its gradient is
  returned in float32 straight from the float32 accumulation.
  """
  kernel = kernel.astype(x.dtype)
  if _wide_input(kernel.shape):
    return _shifted_outputs(x, kernel, dilation, pad_h, pad_w)
  kh, kw = kernel.shape[:2]
  x = _pad(x, pad_h, pad_w)
  n, h, w, c = x.shape
  out_h, out_w = h - (kh - 1) * dilation, w - (kw - 1) * dilation
  accumulate = jnp.float32 if _low_precision(x.dtype) else None
  out = None
  for i, j, tap in kernel_taps(x, kh, kw, 1, dilation, out_h, out_w):
    y = jnp.dot(tap.reshape(-1, c), kernel[i, j], preferred_element_type=accumulate)
    out = y if out is None else out + y
  return out.reshape(n, out_h, out_w, -1).astype(x.dtype)


def _wide_input(kernel_shape) -> bool:
  """A kh x kw kernel (not 1x1) reading at least WIDE_RATIO times more channels than it writes."""
  kh, kw, c, d = kernel_shape
  return kh * kw > 1 and c >= WIDE_RATIO * d


def _shifted_outputs(x, kernel, dilation, pad_h, pad_w):
  """z = x @ [Cin, kh*kw*Cout] (one GEMM), then y = sum of kh*kw shifted Cout-wide slices of z.

  y[p, q] = sum_ij xpad[p + i*d, q + j*d] @ W[i, j] = sum_ij zpad_ij[p + i*d, q + j*d],
  zpad the product padded like x. Copies Cout-wide slices instead of Cin-wide taps.
  """
  kh, kw, c, d = kernel.shape
  n, h, w, _ = x.shape
  accumulate = jnp.float32 if _low_precision(x.dtype) else None
  z = jnp.dot(x.reshape(-1, c), kernel.transpose(2, 0, 1, 3).reshape(c, kh * kw * d),
              preferred_element_type=accumulate).reshape(n, h, w, kh * kw, d)
  z = _pad(z, pad_h, pad_w)
  out_h, out_w = z.shape[1] - (kh - 1) * dilation, z.shape[2] - (kw - 1) * dilation
  out = None
  for i in range(kh):
    for j in range(kw):
      t = i * kw + j
      y = jax.lax.slice(z, (0, i * dilation, j * dilation, t, 0),
                        (n, i * dilation + out_h, j * dilation + out_w, t + 1, d))
      out = y if out is None else out + y
  return out.reshape(n, out_h, out_w, d).astype(x.dtype)


def _conv_stride1_fwd(x, kernel, dilation, pad_h, pad_w):
  return _conv_stride1(x, kernel, dilation, pad_h, pad_w), (x, kernel)


def _conv_stride1_bwd(dilation, pad_h, pad_w, residuals, g):
  x, kernel = residuals
  kh, kw = kernel.shape[:2]
  span_h, span_w = (kh - 1) * dilation, (kw - 1) * dilation
  flipped = jnp.flip(kernel, (0, 1)).transpose(0, 1, 3, 2)  # cast by _conv_stride1
  dx = _conv_stride1(g, flipped, dilation, (span_h - pad_h[0], span_h - pad_h[1]),
                     (span_w - pad_w[0], span_w - pad_w[1]))
  if _wide_input(kernel.shape) and not _low_precision(x.dtype):
    dw = _kernel_grad_shifted_g(x, g, kh, kw, dilation, pad_h, pad_w)
    return dx.astype(x.dtype), dw.astype(kernel.dtype)
  g2d = g.reshape(-1, g.shape[-1])
  dw = []
  for _, _, tap in kernel_taps(_pad(x, pad_h, pad_w), kh, kw, 1, dilation, *g.shape[1:3]):
    if _low_precision(x.dtype):  # measured fastest for bf16 on CPU
      dw.append(jnp.einsum("nhwc,nhwd->cd", tap, g, preferred_element_type=jnp.float32))
    else:  # measured fastest for float32 on CPU
      dw.append(jnp.dot(g2d.T, tap.reshape(-1, tap.shape[-1])).T)
  dw = jnp.stack(dw).reshape(kernel.shape)
  return dx.astype(x.dtype), dw.astype(kernel.dtype)


def _kernel_grad_shifted_g(x, g, kh, kw, dilation, pad_h, pad_w):
  """dW[i, j] = sum_pq x[p, q]^T g[p + pad_lo - i*d, q + pad_lo - j*d] for all taps in one GEMM.

  x^T [Cin, M] @ [g shifted by each tap, side by side] [M, kh*kw*Cout]: copies
  Cout-wide shifts of g instead of Cin-wide taps of x. Used for float32 wide
  inputs (`_shifted_outputs`): PSPNet-50 train step, same process, 3.10-3.15 ->
  2.98-3.05 s; in bfloat16 the per-tap einsums stayed as fast or faster
  (2.37-2.50 vs 2.44-2.51 s).
  """
  n, h, w, c = x.shape
  d = g.shape[-1]
  span_h, span_w = (kh - 1) * dilation, (kw - 1) * dilation
  gpad = _pad(g, (span_h, max(0, h + pad_h[0] - g.shape[1])),
              (span_w, max(0, w + pad_w[0] - g.shape[2])))
  starts = [(pad_h[0] + span_h - i * dilation, pad_w[0] + span_w - j * dilation)
            for i in range(kh) for j in range(kw)]
  shifts = [jax.lax.slice(gpad, (0, top, left, 0), (n, top + h, left + w, d))
            for top, left in starts]
  dw = jnp.dot(x.reshape(-1, c).T, jnp.stack(shifts, axis=3).reshape(-1, kh * kw * d))
  return dw.reshape(c, kh, kw, d).transpose(1, 2, 0, 3)


_conv_stride1.defvjp(_conv_stride1_fwd, _conv_stride1_bwd)


@jax.custom_vjp
def _matmul_f32(a: jax.Array, b: jax.Array) -> jax.Array:
  """a [M, K] @ b [K, N] of low-precision operands, accumulated in and returned as float32.

  Its gradients cast the cotangent to the operands' dtype and go through this
  same function, so gradients of gradients are fast products too (JAX's own
  would multiply the float32 cotangent by a low-precision operand in float32).
  """
  return jnp.dot(a, b, preferred_element_type=jnp.float32)


def _matmul_f32_fwd(a, b):
  return _matmul_f32(a, b), (a, b)


def _matmul_f32_bwd(residuals, g):
  a, b = residuals
  g = g.astype(a.dtype)
  return _matmul_f32(g, b.T).astype(a.dtype), _matmul_f32(a.T, g).astype(b.dtype)


_matmul_f32.defvjp(_matmul_f32_fwd, _matmul_f32_bwd)
