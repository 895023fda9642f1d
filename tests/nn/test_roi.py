"""ps_roi_pool against NumPy loops written from the Caffe kernel (psroi_pooling_layer.cu)."""
import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from readingnotes_jax.errors import UserError
from readingnotes_jax.nn import roi
from numerics_testlib import EPS32, EPS_BF16

U = EPS32 / 2  # float32's unit roundoff, 2**-24


def _c_round(v):
  """C's round (halves away from zero), exact for float32 inputs in float64."""
  return math.copysign(math.floor(abs(v) + 0.5), v)


def _bins_np(start, end, scale, g, size):
  """[(lo, hi)] per bin along one axis, in float32 steps as the kernel (Dtype float)."""
  f32 = np.float32
  start = f32(_c_round(start)) * f32(scale)
  end = f32(_c_round(end) + 1.0) * f32(scale)
  bin_size = max(f32(end - start), f32(0.1)) / f32(g)
  out = []
  for k in range(g):
    lo = math.floor(f32(f32(k) * bin_size) + start)
    hi = math.ceil(f32(f32(k + 1) * bin_size) + start)
    out.append((min(max(lo, 0), size), min(max(hi, 0), size)))
  return out


def _psroi_np(x, rois, output_dim, g, scale):
  """Loops over RoIs, output channels and bins; returns the pooled values and their VJP."""
  n, h, w, _ = x.shape
  x = x.astype(np.float64)
  cells = []  # (r, gh, gw, ctop, batch, rows, cols, channel)
  out = np.zeros((len(rois), g, g, output_dim))
  for r, (b, x1, y1, x2, y2) in enumerate(np.asarray(rois, np.float32)):
    rows, cols = _bins_np(y1, y2, scale, g, h), _bins_np(x1, x2, scale, g, w)
    for ctop in range(output_dim):
      for gh in range(g):
        for gw in range(g):
          (hs, he), (ws, we) = rows[gh], cols[gw]
          if he <= hs or we <= ws or not 0 <= int(b) < n:
            continue
          ch = (ctop * g + gh) * g + gw
          out[r, gh, gw, ctop] = x[int(b), hs:he, ws:we, ch].mean()
          cells.append((r, gh, gw, ctop, int(b), slice(hs, he), slice(ws, we), ch))

  def vjp(ct):
    dx = np.zeros(x.shape)
    for r, gh, gw, ctop, b, rs, cs, ch in cells:
      area = (rs.stop - rs.start) * (cs.stop - cs.start)
      dx[b, rs, cs, ch] += ct[r, gh, gw, ctop] / area
    return dx

  return out, vjp


# (batch, x1, y1, x2, y2) in image pixels; feature maps 2 x 9 x 11 at spatial_scale 1/16
# (an image of about 144 x 176 px).
ROIS = np.array([
    [0, 10.0, 20.0, 100.0, 90.0],     # inside
    [1, 30.4, 15.5, 150.6, 130.5],    # batch index 1; x.5 corners round away from zero
    [0, -60.0, -40.0, 60.0, 50.0],    # partly outside (top-left): first bins empty
    [1, 120.0, 100.0, 300.0, 260.0],  # partly outside (bottom-right): last bins empty
    [0, 40.0, 40.0, 40.0, 40.0],      # a one-pixel RoI: 1/16-cell wide, floored to 0.1 cells
    [1, 64.2, 33.0, 64.4, 33.1],      # tiny, fractional
    [0, 0.0, 0.0, 175.0, 143.0],      # the whole map
    [1, -2.5, 7.0, 3.49, 300.0],      # -2.5 rounds to -3; tall
    [0, 200.0, 10.0, 260.0, 60.0],    # entirely right of the map: all bins empty
    [-1, 10.0, 10.0, 90.0, 90.0],     # padding row (batch -1): zeros
], np.float32)


@pytest.mark.parametrize("g,output_dim,scale", [(3, 2, 1 / 16), (7, 1, 1 / 16), (2, 3, 0.1)])
def test_values_and_feature_gradients_match_numpy(g, output_dim, scale):
  rng = np.random.default_rng(g)
  x = rng.normal(size=(2, 9, 11, output_dim * g * g)).astype(np.float32)
  ref, vjp = _psroi_np(x, ROIS, output_dim, g, scale)
  fn = jax.jit(lambda x, r: roi.ps_roi_pool(x, r, output_dim, g, scale))
  out, pullback = jax.vjp(fn, x, jnp.asarray(ROIS))
  chex.assert_shape(out, (len(ROIS), g, g, output_dim))
  # A bin average of m float32 values (m <= H*W), summed in any order then divided:
  # |error| <= (m + 1) * u * mean|x| (Higham's gamma bound), u = 2**-24.
  abs_ref, _ = _psroi_np(np.abs(x), ROIS, output_dim, g, scale)
  np.testing.assert_array_less(np.abs(out - ref), (9 * 11 + 2) * U * abs_ref + 1e-30)
  # The empty bins (RoIs partly or wholly off the map) and the padding row are exact zeros.
  empty = abs_ref == 0
  assert empty[:8].any() and empty[8].all() and empty[9].all()
  np.testing.assert_array_equal(np.asarray(out)[empty], 0.0)
  ct = rng.normal(size=out.shape).astype(np.float32)
  dx, drois = pullback(jnp.asarray(ct))
  want = vjp(ct.astype(np.float64))
  # Each feature gets one term ct / area per (RoI, bin) that covers it: at most R terms.
  bound_dx = vjp(np.abs(ct).astype(np.float64))
  np.testing.assert_array_less(np.abs(dx - want), (len(ROIS) + 2) * U * bound_dx + 1e-30)
  np.testing.assert_array_equal(drois, 0.0)


def test_kernel_rounding_rules():
  """Corners round half away from zero, end = round(x2) + 1, 0.1-cell minimum, clipping."""
  rois = jnp.asarray([[0, -2.5, 8.5, 13.5, 8.5], [0, 6.0, 2.0, 2.0, 2.0]])
  bins = jax.jit(roi.ps_roi_bins, static_argnums=(1, 2, 3, 4))(rois, 2, 0.5, 4, 10)
  lo_h, hi_h, lo_w, hi_w = (np.asarray(a) for a in bins)
  # RoI 0, x: round(-2.5) = -3 -> start -1.5; (round(13.5) + 1) * 0.5 = 7.5; bins 4.5 wide:
  # [floor(-1.5), ceil(3.0)) = [-2, 3) clipped to [0, 3), and [floor(3.0), ceil(7.5)) = [3, 8).
  np.testing.assert_array_equal(lo_w[0], [0, 3])
  np.testing.assert_array_equal(hi_w[0], [3, 8])
  # RoI 0, y: round(8.5) = 9 -> [4.5, 5.0), bins 0.25: [4, 5) and [4, 5), clipped to H = 4:
  # both empty.
  np.testing.assert_array_equal(lo_h[0], [4, 4])
  np.testing.assert_array_equal(hi_h[0], [4, 4])
  # RoI 1, x: start 3.0, end 1.5: width floored to 0.1 cells, bins 0.05 -> [3, 4) twice
  # (a negative width would have given an empty first bin [3, 3)).
  np.testing.assert_array_equal(lo_w[1], [3, 3])
  np.testing.assert_array_equal(hi_w[1], [4, 4])
  # RoI 1, y: [1.0, 1.5), bins 0.25 -> [1, 2) twice.
  np.testing.assert_array_equal(lo_h[1], [1, 1])
  np.testing.assert_array_equal(hi_h[1], [2, 2])
  np.testing.assert_array_equal(
      roi.round_half_away(jnp.asarray([-2.5, -0.5, 0.5, 1.4999999, 2.5, 3.5])),
      [-3, -1, 1, 1, 3, 4])


def test_jits_once_for_any_roi_values():
  traces = []

  @jax.jit
  def pool(x, rois):
    traces.append(1)
    return roi.ps_roi_pool(x, rois, 1, 2)

  x = jnp.ones((2, 5, 6, 4))
  for shift in (0.0, 17.0, -40.0):
    out = pool(x, jnp.asarray(ROIS) + jnp.asarray([0, shift, shift, shift, shift]))
  assert len(traces) == 1
  chex.assert_shape(out, (len(ROIS), 2, 2, 1))


def test_bfloat16_features_accumulate_in_float32():
  rng = np.random.default_rng(5)
  x = jnp.asarray(rng.normal(size=(2, 9, 11, 18)), jnp.bfloat16)
  out = jax.jit(roi.ps_roi_pool, static_argnums=(2, 3))(x, jnp.asarray(ROIS), 2, 3)
  assert out.dtype == jnp.bfloat16
  ref, _ = _psroi_np(np.asarray(x, np.float32), ROIS, 2, 3, 1 / 16)
  np.testing.assert_allclose(np.asarray(out, np.float32), ref, rtol=EPS_BF16, atol=1e-6)


def test_bad_shapes_are_user_errors():
  with pytest.raises(UserError, match="output_dim"):
    roi.ps_roi_pool(jnp.zeros((1, 4, 4, 10)), jnp.zeros((3, 5)), 2, 3)
  with pytest.raises(UserError, match="rois"):
    roi.ps_roi_pool(jnp.zeros((1, 4, 4, 18)), jnp.zeros((3, 4)), 2, 3)
