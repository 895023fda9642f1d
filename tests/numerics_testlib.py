"""Tolerances derived from float32's rounding or from a reference's own float32 error.

A bar in this suite is either exact arithmetic, a derivation from the unit roundoffs below
(each float32 operation rounds by <= eps32 / 2 of its result; a K-term sum, by ~ sqrt(K)
eps32 / 2 of its partial sums as a random walk in any order, (K - 1) eps32 / 2 at worst), or
`reference_bar`: SAFETY x the reference's own float32 error against its float64 run of the
same computation. The suite must pass on any x86-64 CPU (AVX2 or
AVX-512, Intel or AMD, any thread count), where MKL, oneDNN and XLA pick other kernels and
summation orders, and still fail on a real bug.
"""
import numpy as np

EPS32 = float(np.finfo(np.float32).eps)  # 2^-23: float32's ulp at 1 (rounding <= half of it)
EPS_BF16 = 2.0 ** -8  # bfloat16's unit roundoff: 8 significand bits, ulp 2^-7 at 1

# Torch's own float32 error moves with the CPU: on PSPNet-50's train-mode aux logits it was
# 4.6e-5 (AVX-512, 2 threads), 8.5e-5 (ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2) and
# 6.4e-5 (1 thread), while ours stayed 8.5e-5: ours over torch ran 1.0-1.8 on network outputs
# (our batch variance is one-pass, E[x^2] - mean^2, and loses about a bit more than torch's
# two-pass one), 2.8 on a 2-value batch variance. SAFETY 2 left 8% on those aux logits (an AMD
# Zen 3 missed the former atol=1e-4 by 16%); 4 leaves at least 2x. Where few elements are
# compared or torch happens to round well, the ulps floor carries the bar: sqrt(K) ulps for
# reductions of K terms (ResNet blocks' parameter gradients ran up to 2.7x torch's error).
SAFETY = 4


def reference_bar(f32, f64, ulps=1.0, safety=SAFETY):
  """safety x (max |f32 - f64| + `ulps` float32 ulps of max |f64|).

  `f32` and `f64` are the reference (torch, NumPy) computed in float32 and in float64 from
  the same float32 inputs; the bar applies to |ours - f64|, and |ours - f32| is then at most
  (safety + 1) x the reference's error. The ulps term is a floor for outputs the reference
  happens to round well; give more ulps where our side rounds more often.
  """
  f64 = np.asarray(f64, np.float64)
  return safety * (np.abs(np.asarray(f32, np.float64) - f64).max()
                   + ulps * EPS32 * np.abs(f64).max())


def assert_within_reference(got, f32, f64, ulps=1.0, safety=SAFETY, err_msg=""):
  """|got - f64| < reference_bar(f32, f64): as accurate as the reference, up to `safety`."""
  bar = reference_bar(f32, f64, ulps, safety)
  err = np.abs(np.asarray(got, np.float64) - np.asarray(f64, np.float64)).max()
  assert err < bar, (f"{err_msg}: max |got - float64| = {err:.3g} >= bar {bar:.3g} "
                     f"({safety} x the reference's float32 error + {ulps} ulp)")
  return bar
