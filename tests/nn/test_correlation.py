"""correlation: every method against NumPy code written from the formula (values, gradients).

Tolerances are worst-case float32 rounding bounds, not guesses. Each output is a float32
sum of C products divided by C; in any summation order (blocked, pairwise, FMA)
|error| <= gamma_{C+1} * mean_c |a_c * b_c| with gamma_m = m*u / (1 - m*u), u = 2**-24
(Higham, Accuracy and Stability of Numerical Algorithms, Sec. 3.1), which is at most
(C + 2) * u times the correlation of |x_t| with |x_tau|. Each input gradient is a sum of
at most K = (2*(d // stride2) + 1)**2 products (one per displacement) scaled by 1/C, so
|error| <= (K + 2) * u times the same gradient computed from |g|, |x_t| and |x_tau|.
The NumPy reference works in float64 on the same float32 numbers.
"""
import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from readingnotes_jax.errors import UserError
from readingnotes_jax.nn import correlation as corr
from numerics_testlib import EPS32, EPS_BF16

U = EPS32 / 2  # float32's unit roundoff, 2**-24

# (max_displacement, stride1, stride2, padding, H, W, C)
CASES = {
    "res3": (8, 2, 2, 8, 9, 11, 6),         # D&T res3: 81 channels; odd H, W; 9 / 2 -> ceil 5
    "res4_res5": (8, 1, 1, 8, 7, 10, 5),    # D&T res4 and res5: 289 channels
    "stride2_not_dividing": (8, 3, 3, 8, 10, 8, 4),  # grid radius 2: displacements -6..6
    "pad_below_d": (5, 1, 2, 3, 13, 12, 3),  # output 9 x 8, centres start at pixel 2
    "pad_above_d": (2, 2, 1, 4, 5, 6, 3),    # centres reach into the zero border
    "no_displacement": (0, 1, 1, 0, 4, 5, 7),
    # Several blocks of both blocked methods (at most 19 x 19 and 8 x 8); "blocked" pads its
    # last blocks, "blocked_scan" moves them back to overlap the ones before.
    "res4_blocks": (8, 1, 1, 8, 22, 39, 2),  # "blocked" 2 x 3 blocks, "blocked_scan" 3 x 5
    "res3_blocks": (8, 2, 2, 8, 45, 23, 3),  # output 23 x 12: 2 x 1 and 3 x 2 blocks
}


def _corr_np(xt, xtau, d, s1, s2, pad):
  """out[..., ky*K + kx] = mean_c xt_pad[d + i*s1, d + j*s1] * xtau_pad[. + dy, . + dx]; and VJP.

  One loop over the displacements; output positions as strided slices.
  """
  n, h, w, c = xt.shape
  padding = ((0, 0), (pad, pad), (pad, pad), (0, 0))
  xt_pad = np.pad(xt.astype(np.float64), padding)
  xtau_pad = np.pad(xtau.astype(np.float64), padding)
  out_h = math.ceil((h + 2 * pad - 2 * d) / s1)
  out_w = math.ceil((w + 2 * pad - 2 * d) / s1)
  r = d // s2
  k = 2 * r + 1

  def window(dy, dx):
    return (slice(None), slice(d + dy, d + dy + (out_h - 1) * s1 + 1, s1),
            slice(d + dx, d + dx + (out_w - 1) * s1 + 1, s1))

  displacements = [(ky * k + kx, (ky - r) * s2, (kx - r) * s2)
                   for ky in range(k) for kx in range(k)]
  out = np.zeros((n, out_h, out_w, k * k))
  for index, dy, dx in displacements:
    out[..., index] = np.mean(xt_pad[window(0, 0)] * xtau_pad[window(dy, dx)], axis=-1)

  def vjp(g):
    g_t, g_tau = np.zeros(xt_pad.shape), np.zeros(xtau_pad.shape)
    for index, dy, dx in displacements:
      gk = g[..., index, None] / c
      g_t[window(0, 0)] += gk * xtau_pad[window(dy, dx)]
      g_tau[window(dy, dx)] += gk * xt_pad[window(0, 0)]
    crop = (slice(None), slice(pad, pad + h), slice(pad, pad + w))
    return g_t[crop], g_tau[crop]

  return out, vjp


def _assert_within(got, want, bound, name):
  err = np.abs(np.asarray(got, np.float64) - want)
  worst = np.unravel_index(np.argmax(err - bound), err.shape)
  assert np.all(err <= bound), (f"{name}: |error| {err[worst]:.3g} > bound {bound[worst]:.3g} "
                                f"at {worst}")


@pytest.mark.parametrize("case", CASES)
def test_every_method_matches_numpy_and_the_others(case):
  d, s1, s2, pad, h, w, c = CASES[case]
  rng = np.random.default_rng(len(case))
  xt, xtau = (rng.normal(size=(2, h, w, c)).astype(np.float32) for _ in range(2))
  ref, vjp = _corr_np(xt, xtau, d, s1, s2, pad)
  channels = (2 * (d // s2) + 1)**2
  assert ref.shape == (2, corr.correlation_output_size(h, d, s1, pad),
                       corr.correlation_output_size(w, d, s1, pad), channels)
  abs_ref, abs_vjp = _corr_np(np.abs(xt), np.abs(xtau), d, s1, s2, pad)
  g = rng.normal(size=ref.shape).astype(np.float32)
  want = vjp(g.astype(np.float64))
  bounds = abs_vjp(np.abs(g).astype(np.float64))
  # Every method in one compiled function (one compilation).
  fn = jax.jit(lambda a, b: [corr.correlation(a, b, d, s1, s2, pad, method=m)
                             for m in corr.METHODS])
  outs, pullback = jax.vjp(fn, xt, xtau)
  zero = jnp.zeros(ref.shape, jnp.float32)
  for i, (method, out) in enumerate(zip(corr.METHODS, outs)):
    chex.assert_shape(out, ref.shape)
    _assert_within(out, ref, (c + 2) * U * abs_ref, f"{method} values")
    grads = pullback([jnp.asarray(g) if j == i else zero for j in range(len(outs))])
    for name, a, b, bound in zip(("d/dx_t", "d/dx_tau"), grads, want, bounds):
      _assert_within(a, b, (channels + 2) * U * bound, f"{method} {name}")


def test_displacement_order_is_dy_major():
  """x_tau = x_t moved 3 rows down and 2 columns left peaks at (dy, dx) = (3, -2)."""
  rng = np.random.default_rng(3)
  xt = rng.normal(size=(1, 16, 16, 64)).astype(np.float32)  # zero mean: peaks only at the match
  xtau = np.roll(xt, (3, -2), axis=(1, 2))  # xtau[i + 3, j - 2] = xt[i, j]
  out = corr.correlation(xt, xtau, max_displacement=4, stride1=1, stride2=1, padding=4,
                         method="matmul")
  k = 9
  assert int(np.argmax(out[0, 8, 8])) == (4 + 3) * k + (4 - 2)


def test_bfloat16_accumulates_in_float32():
  rng = np.random.default_rng(4)
  xt, xtau = (jnp.asarray(rng.normal(size=(1, 9, 11, 64)), jnp.bfloat16) for _ in range(2))
  outs = jax.jit(lambda a, b: [corr.correlation(a, b, 2, 2, 1, 2, method=m)
                               for m in corr.METHODS])(xt, xtau)
  f32 = lambda v: np.asarray(v, np.float32)
  ref, _ = _corr_np(f32(xt), f32(xtau), 2, 2, 1, 2)
  abs_ref, _ = _corr_np(np.abs(f32(xt)), np.abs(f32(xtau)), 2, 2, 1, 2)
  for method, out in zip(corr.METHODS, outs):
    assert out.dtype == jnp.bfloat16
    # Products of bf16 numbers are exact in float32: the float32 bound (times 1 + 2**-8)
    # plus one bf16 rounding of the result.
    _assert_within(out, ref, EPS_BF16 * np.abs(ref) + 67 * U * abs_ref, f"{method} bfloat16")


def test_blocked_scan_bfloat16_gradients():
  """The hand-written VJP in bfloat16: several blocks, strides 2/2, 48 channels (g / C inexact).

  Each input gradient is a sum of at most K products (g / C) * x: g / C rounded once to
  bfloat16 (2**-8 relative), products exact in float32, the sum and the overlapping windows'
  accumulation in float32 ((K + 2) * u), one rounding of the result to bfloat16.
  """
  d, s1, s2, pad = 8, 2, 2, 8
  rng = np.random.default_rng(5)
  xt, xtau = (jnp.asarray(rng.normal(size=(1, 41, 23, 48)), jnp.bfloat16) for _ in range(2))
  f64 = lambda v: np.asarray(v, np.float32).astype(np.float64)
  ref, vjp = _corr_np(f64(xt), f64(xtau), d, s1, s2, pad)
  _, abs_vjp = _corr_np(np.abs(f64(xt)), np.abs(f64(xtau)), d, s1, s2, pad)
  g = jnp.asarray(rng.normal(size=ref.shape), jnp.bfloat16)
  _, pullback = jax.vjp(lambda a, b: corr.correlation(a, b, d, s1, s2, pad,
                                                      method="blocked_scan"), xt, xtau)
  k = (2 * (d // s2) + 1) ** 2
  for name, got, want, bound in zip(("d/dx_t", "d/dx_tau"), pullback(g), vjp(f64(g)),
                                    abs_vjp(np.abs(f64(g)))):
    assert got.dtype == jnp.bfloat16
    _assert_within(got, want, EPS_BF16 * np.abs(want) + (EPS_BF16 + (k + 2) * U) * bound,
                   f"blocked_scan bfloat16 {name}")


def test_official_output_sizes():
  """Caffe Reshape: ceil((H + 2*pad - 2*d) / stride1); res3 lands on the stride-16 grid."""
  assert corr.correlation_output_size(76, 8, 2, 8) == 38   # res3 of a 600 x 1000 image
  assert corr.correlation_output_size(75, 8, 2, 8) == 38   # odd: ceil(37.5)
  assert corr.correlation_output_size(38, 8, 1, 8) == 38   # res4 / res5
  assert corr.correlation_output_size(10, 8, 3, 8) == 4    # ceil(10 / 3)


def test_bad_arguments_are_user_errors():
  x = jnp.zeros((1, 6, 6, 2))
  with pytest.raises(UserError, match="method"):
    corr.correlation(x, x, method="fft")
  with pytest.raises(UserError, match="same|one shape"):
    corr.correlation(x, jnp.zeros((1, 6, 5, 2)))
  with pytest.raises(UserError, match="too small"):
    corr.correlation(x, x, max_displacement=4, padding=0)
  with pytest.raises(UserError, match="stride"):
    corr.correlation(x, x, stride2=0)
