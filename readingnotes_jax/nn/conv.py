"""2D convolution with a choice of lowering (NHWC activations, HWIO kernels).

Two lowerings compute the same convolution:

- ``"xla"``: `jax.lax.conv_general_dilated`, XLA's own convolution. Right on
  TPU and GPU.
- ``"matmul"``: the convolution written as a sum over kernel taps of matmuls
  of shifted (padded, strided-sliced) inputs. On an AMX CPU XLA's convolution
  backward pass was slow for wide layers (3x3 conv 512->512 at 32x32, batch
  16: ~82 GFLOP/s backward against ~200 for the shifted matmuls), so wide
  convolutions use it on CPU by default. For narrow layers the per-tap
  matmuls are too thin and XLA's convolution wins (measured 2-5x at 64-256
  channels on this project's CPUs), so `lowering=None` picks per layer with
  `default_lowering(channels)`. See benchmarks/conv_lowering.py.

In bfloat16 (or float16) the "matmul" lowering accumulates the taps in
float32 and casts once at the end, and its gradients, of every order, are
low-precision products accumulated in float32 as well (`_matmul_f32`): on an
AVX512-BF16 CPU without AMX (AMD EPYC Zen 4) XLA's bf16 x bf16 -> bf16 dot ran
~40 GFLOP/s and bf16 x bf16 -> f32 ~90, against ~50 for float32; JAX's own
gradient of an f32-accumulating dot would multiply a float32 cotangent by a
bf16 operand, a float32 product. Measured 3x3 conv 512->512 at 32x32, batch
16, loaded machine: forward 48 -> 109, forward+backward 41 -> 80 GFLOP/s;
ProGAN's gradient-penalty double backward ~2x faster.
"""
import jax
import jax.numpy as jnp

from readingnotes_jax.errors import UserError

LOWERINGS = ("xla", "matmul")
# On CPU, convolutions with fewer input or output channels than this use "xla".
MATMUL_MIN_CHANNELS = 512


def default_lowering(channels: int | None = None) -> str:
  """The lowering `conv2d(..., lowering=None)` uses.

  "xla" on TPU and GPU (where XLA's convolution is strong). On CPU "matmul",
  except for convolutions whose narrower side (min of input and output
  channels, when given) is below `MATMUL_MIN_CHANNELS`.
  """
  if jax.default_backend() != "cpu":
    return "xla"
  return "xla" if channels is not None and channels < MATMUL_MIN_CHANNELS else "matmul"


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
    kernel: HWIO weights, same dtype as `x` (the caller casts).
    stride: spatial stride (both axes).
    dilation: kernel dilation (both axes).
    padding: "SAME" (TensorFlow's rule, output size ceil(H / stride)),
      "VALID", or a number of zeros added on each side.
    lowering: "xla", "matmul", or None for `default_lowering(min(Cin, Cout))`.

  Returns:
    [N, H_out, W_out, Cout] in the dtype of `x`.
  """
  if x.ndim != 4 or kernel.ndim != 4 or x.shape[-1] != kernel.shape[2]:
    raise UserError(f"conv2d needs x [N,H,W,C] and kernel [kh,kw,C,Cout], got "
                    f"{x.shape} and {kernel.shape}: fix the input channels")
  if lowering is None:
    lowering = default_lowering(min(kernel.shape[2:]))
  if lowering not in LOWERINGS:
    raise UserError(f"unknown conv lowering {lowering!r}: use one of {LOWERINGS} or None")
  if padding == "VALID":
    padding = 0
  if not (padding == "SAME" or isinstance(padding, int)) or stride < 1 or dilation < 1:
    raise UserError(f"conv2d: bad padding={padding!r}, stride={stride} or "
                    f"dilation={dilation}: use 'SAME'/'VALID'/int and positive ints")
  kh, kw = kernel.shape[:2]
  pad_h = _pads(x.shape[1], kh, stride, dilation, padding)
  pad_w = _pads(x.shape[2], kw, stride, dilation, padding)
  if lowering == "xla":
    return jax.lax.conv_general_dilated(
        x, kernel, window_strides=(stride, stride), padding=(pad_h, pad_w),
        rhs_dilation=(dilation, dilation),
        dimension_numbers=("NHWC", "HWIO", "NHWC"))
  return _conv2d_matmul(x, kernel, stride, dilation, pad_h, pad_w)


@jax.custom_vjp
def _matmul_f32(a: jax.Array, b: jax.Array) -> jax.Array:
  """a [M, K] @ b [K, N] of low-precision operands, accumulated in and returned as float32.

  Its gradients cast the cotangent to the operands' dtype and go through this
  same function, so gradients of gradients (WGAN-GP) are fast products too.
  """
  return jnp.dot(a, b, preferred_element_type=jnp.float32)


def _matmul_f32_fwd(a, b):
  return _matmul_f32(a, b), (a, b)


def _matmul_f32_bwd(residuals, g):
  a, b = residuals
  g = g.astype(a.dtype)
  return _matmul_f32(g, b.T).astype(a.dtype), _matmul_f32(a.T, g).astype(b.dtype)


_matmul_f32.defvjp(_matmul_f32_fwd, _matmul_f32_bwd)


def _conv2d_matmul(x, kernel, stride, dilation, pad_h, pad_w):
  """Sum over the kh*kw taps of (strided slice of padded x) @ kernel[i, j].

  bfloat16 / float16 inputs accumulate in float32 through `_matmul_f32` and
  cast the sum back to the input dtype; other dtypes use einsum.
  """
  kh, kw = kernel.shape[:2]
  if pad_h != (0, 0) or pad_w != (0, 0):
    x = jnp.pad(x, ((0, 0), pad_h, pad_w, (0, 0)))
  n, h, w, c = x.shape
  out_h = (h - (kh - 1) * dilation - 1) // stride + 1
  out_w = (w - (kw - 1) * dilation - 1) // stride + 1
  if out_h < 1 or out_w < 1:
    raise UserError(f"conv2d: input {h}x{w} (padded) is smaller than the "
                    f"dilated kernel: use a larger input or more padding")
  out = None
  for i in range(kh):
    for j in range(kw):
      tap = jax.lax.slice(
          x, (0, i * dilation, j * dilation, 0),
          (n, i * dilation + (out_h - 1) * stride + 1,
           j * dilation + (out_w - 1) * stride + 1, c),
          (1, stride, stride, 1))
      if x.dtype in (jnp.bfloat16, jnp.float16):
        y = _matmul_f32(tap.reshape(-1, c), kernel[i, j]).reshape(tap.shape[:3] + (-1,))
      else:
        y = jnp.einsum("nhwc,cd->nhwd", tap, kernel[i, j])
      out = y if out is None else out + y
  return out.astype(x.dtype)
