"""detect_track.targets against the official code's known values and NumPy written from its
formulas (Faster R-CNN / R-FCN / D&T), on constructed and random cases."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from readingnotes_jax.detect_track import targets
from numerics_testlib import EPS32


def _iou_np(a, b):
  """Pixel-inclusive IoU (R-CNN's boxoverlap) from the definition, float64."""
  w = min(a[2], b[2]) - max(a[0], b[0]) + 1
  h = min(a[3], b[3]) - max(a[1], b[1]) + 1
  if w <= 0 or h <= 0:
    return 0.0
  area = lambda r: (r[2] - r[0] + 1) * (r[3] - r[1] + 1)
  return w * h / (area(a) + area(b) - w * h)


def _centre_size_np(b):
  b = np.asarray(b, np.float64)
  w, h = b[..., 2] - b[..., 0] + 1, b[..., 3] - b[..., 1] + 1
  return b[..., 0] + 0.5 * (w - 1), b[..., 1] + 0.5 * (h - 1), w, h


def _encode_np(boxes, gts):
  """rfcn_bbox_transform.m in float64."""
  x, y, w, h = _centre_size_np(boxes)
  gx, gy, gw, gh = _centre_size_np(gts)
  return np.stack([(gx - x) / w, (gy - y) / h, np.log(gw / w), np.log(gh / h)], -1)


def _decode_np(boxes, deltas):
  """rfcn_bbox_transform_inv.m in float64."""
  x, y, w, h = _centre_size_np(boxes)
  d = np.asarray(deltas, np.float64)
  cx, cy = d[..., 0] * w + x, d[..., 1] * h + y
  pw, ph = np.exp(d[..., 2]) * w, np.exp(d[..., 3]) * h
  return np.stack([cx - 0.5 * (pw - 1), cy - 0.5 * (ph - 1), cx + 0.5 * (pw - 1),
                   cy + 0.5 * (ph - 1)], -1)


def _delta_bar(boxes, gts):
  """Float32 error bound of encoded deltas: a centre is a few roundings of relative size eps/2
  of coordinates up to M, so (gx - x) / w errs by <= ~4 eps M / w; log(gw / w) by ~3 eps.
  Twice that."""
  m = np.abs(np.concatenate([boxes, gts])).max() + 1
  _, _, w, h = _centre_size_np(boxes)
  scale = m / np.minimum(w, h)[..., None]
  return 8 * EPS32 * np.concatenate([scale, scale, np.ones_like(scale), np.ones_like(scale)], -1)


def test_generate_anchors_official_values():
  # The 9 anchors for base 16, ratios (0.5, 1, 2), scales (8, 16, 32) of Shaoqing Ren's MATLAB
  # code (`output/rpn_cachedir/.../anchors.mat`), as py-faster-rcnn's lib/rpn/generate_anchors.py
  # quotes them in its comments. MATLAB's are 1-based (base anchor [1, 1, 16, 16]); ours are
  # 0-based, as Python's output and the Caffe RoIs (`rois_blob - 1`): one less.
  matlab = np.array([[-83, -39, 100, 56], [-175, -87, 192, 104], [-359, -183, 376, 200],
                     [-55, -55, 72, 72], [-119, -119, 136, 136], [-247, -247, 264, 264],
                     [-35, -79, 52, 96], [-79, -167, 96, 184], [-167, -343, 184, 360]])
  np.testing.assert_array_equal(targets.generate_anchors(), matlab - 1)


def test_shift_anchors_order_row_column_anchor():
  reference = np.array([[0, 0, 15, 15], [-8, -4, 23, 19]], np.float32)
  got = targets.shift_anchors(reference, 2, 3, 16)
  want = [reference[a] + [16 * j, 16 * i, 16 * j, 16 * i]
          for i in range(2) for j in range(3) for a in range(2)]
  np.testing.assert_array_equal(got, want)


def test_encode_decode_known_values_and_round_trip():
  rng = np.random.default_rng(0)
  xy = rng.uniform(-50, 500, (64, 2))
  boxes = np.concatenate([xy, xy + rng.uniform(4, 300, (64, 2))], 1).astype(np.float32)
  xy = xy + rng.uniform(-40, 40, (64, 2))
  gts = np.concatenate([xy, xy + rng.uniform(4, 300, (64, 2))], 1).astype(np.float32)
  deltas = rng.normal(0, 0.5, (64, 4)).astype(np.float32)
  # Row 0, known values: box w 10, h 20, centre (4.5, 9.5); gt w 20, h 20, centre (14.5, 19.5).
  boxes[0], gts[0], deltas[0] = [0, 0, 9, 19], [5, 10, 24, 29], [1, 0.5, np.log(2), 0]
  # Row 1: dw = 10 is clamped at log(1000 / 16): the width grows by 62.5 at most (to 625).
  deltas[1] = [0, 0, 10, 0]
  encode, decode = jax.jit(targets.encode_boxes), jax.jit(targets.decode_boxes)
  encoded, decoded = np.asarray(encode(boxes, gts)), np.asarray(decode(boxes, deltas))
  np.testing.assert_allclose(encoded[0], [1.0, 0.5, np.log(2), 0.0], rtol=4 * EPS32)
  np.testing.assert_allclose(decoded[0], gts[0], atol=64 * EPS32)
  np.testing.assert_allclose(decoded[1, 2] - decoded[1, 0] + 1,
                             62.5 * (boxes[1, 2] - boxes[1, 0] + 1), rtol=16 * EPS32)
  np.testing.assert_array_less(np.abs(encoded - _encode_np(boxes, gts)), _delta_bar(boxes, gts))
  want = _decode_np(boxes[2:], deltas[2:])
  # Each corner: a few roundings of values up to ~|coordinates| * e^|d|.
  np.testing.assert_allclose(decoded[2:], want, rtol=0, atol=16 * EPS32 * np.abs(want).max())
  np.testing.assert_allclose(decode(boxes, encode(boxes, gts)), gts, rtol=0,
                             atol=32 * EPS32 * np.abs(gts).max())


def test_clip_boxes_and_smooth_l1_known_values():
  clipped, l1, l1_sigma3 = jax.jit(lambda b, x: (
      targets.clip_boxes(b, 80, 120), targets.smooth_l1(x), targets.smooth_l1(x, 3.0)))(
          jnp.asarray([[-5.0, 3.0, 130.0, 90.0]]), jnp.asarray([0.5, -2.0, 0.1, 0.2]))
  np.testing.assert_array_equal(clipped, [[0, 3, 119, 79]])
  np.testing.assert_allclose(l1, [0.125, 1.5, 0.005, 0.02], rtol=2 * EPS32)
  # sigma 3: quadratic below 1/9: 4.5 x^2, else |x| - 1/18.
  np.testing.assert_allclose(l1_sigma3, [0.5 - 1 / 18, 2 - 1 / 18, 0.045, 0.2 - 1 / 18],
                             rtol=4 * EPS32)


_anchor_targets = jax.jit(targets.anchor_targets)


def test_anchor_targets_constructed_case():
  """IoU >= 0.7 positive, < 0.3 negative, the best anchor(s) of each ground-truth box positive,
  anchors outside the image and padded ground truth ignored (py-R-FCN anchor_target_layer)."""
  height, width = 100, 120
  gts = np.array([[10, 10, 49, 49], [60, 60, 69, 69], [0, 60, 29, 89],
                  [100, 0, 119, 19]], np.float32)  # the last one is padding
  gt_valid = np.array([True, True, True, False])
  anchors = np.array([
      [10, 10, 49, 49],   # IoU 1 with gt 0: positive
      [12, 12, 51, 51],   # IoU 0.82: positive
      [20, 20, 59, 59],   # IoU 0.39: ignored
      [30, 30, 69, 69],   # IoU 0.14: negative
      [80, 0, 99, 19],    # no overlap: negative
      [-2, 60, 27, 89],   # IoU 0.88 with gt 2 but outside the image: ignored
      [0, 70, 29, 99],    # IoU 0.5, the best inside anchor of gt 2: positive
      [58, 58, 73, 73],   # IoU 0.39, the best of gt 1: positive
      [58, 58, 73, 73],   # tied for best of gt 1: positive too
      [62, 62, 77, 77],   # IoU 0.22 with gt 1: negative
      [100, 0, 119, 19],  # only overlaps the padding: negative
  ], np.float32)
  want = np.array([1, 1, -1, 0, 0, -1, 1, 1, 1, 0, 0])
  iou = np.array([[_iou_np(a, g) for g, v in zip(gts, gt_valid) if v] for a in anchors])
  # Padded to the 700 anchors of the sampling cases with anchors outside the image (one compile).
  padded = np.concatenate([anchors, np.tile([[200, 200, 215, 215]], (689, 1))]).astype(np.float32)
  assert iou[1, 0] >= 0.7 and 0.3 <= iou[2].max() < 0.7 and iou[3].max() < 0.3
  assert iou[5, 2] >= 0.7 and iou[6, 2] < 0.7 and iou[7, 1] < 0.7
  labels, box_targets = _anchor_targets(padded, gts, gt_valid, jnp.asarray([height, width]),
                                        jax.random.key(0))
  np.testing.assert_array_equal(labels, np.r_[want, -np.ones(689)])
  positive = want == 1
  best = iou.argmax(1)
  want_targets = _encode_np(anchors, gts[best]) / np.asarray(targets.RPN_BOX_STDS)
  bar = _delta_bar(anchors, gts[best]) / np.asarray(targets.RPN_BOX_STDS)
  np.testing.assert_array_less(np.abs(np.asarray(box_targets)[:11] - want_targets)[positive],
                               bar[positive])


def _sampling_case(num_positive):
  """700 anchors: 300 that overlap the ground truth with IoU >= 0.7 (only `num_positive` of
  them inside the image) and 400 negatives inside it."""
  rng = np.random.default_rng(1)
  gt = np.array([[20, 20, 79, 79], [0, 0, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0]], np.float32)
  near = gt[0] + rng.integers(-3, 4, (300, 4))
  near[num_positive:] += 200  # outside the 100 x 100 image
  far = np.array([80, 80, 92, 92]) + rng.integers(0, 5, (400, 4))
  anchors = np.concatenate([near, far]).astype(np.float32)
  assert min(_iou_np(a, gt[0]) for a in near[:num_positive]) >= 0.7
  return anchors, gt, np.array([True, False, False, False])


@pytest.mark.parametrize("num_positive", [300, 5])
def test_anchor_sampling_256_at_most_half_positive(num_positive):
  anchors, gt, valid = _sampling_case(num_positive)
  size = jnp.asarray([100, 100])
  labels = np.asarray(_anchor_targets(anchors, gt, valid, size, jax.random.key(3))[0])
  full = np.r_[np.ones(num_positive), -np.ones(300 - num_positive), np.zeros(400)]
  assert np.sum(labels == 1) == min(num_positive, 128)
  assert np.sum(labels == 0) == 256 - min(num_positive, 128)
  assert np.all((labels == -1) | (labels == full))  # sampling only ignores anchors
  again = np.asarray(_anchor_targets(anchors, gt, valid, size, jax.random.key(3))[0])
  other = np.asarray(_anchor_targets(anchors, gt, valid, size, jax.random.key(4))[0])
  np.testing.assert_array_equal(again, labels)
  assert np.any(other != labels)


def _proposals_np(anchors, scores, deltas, size, pre_nms, post_nms, nms_iou, min_size):
  """py-R-FCN proposal_layer.py in float64: decode, clip, drop small, top pre_nms, NMS, top."""
  boxes = _decode_np(anchors, deltas * np.asarray(targets.RPN_BOX_STDS))
  boxes = np.clip(boxes, 0, [size[1] - 1, size[0] - 1, size[1] - 1, size[0] - 1])
  sides = np.stack([boxes[:, 2] - boxes[:, 0] + 1, boxes[:, 3] - boxes[:, 1] + 1], 1)
  assert np.all(np.abs(sides - min_size) > 1e-3)  # float32 cannot flip the size test
  large = np.nonzero((sides >= min_size).all(1))[0]
  order = large[np.argsort(-scores[large], kind="stable")][:pre_nms]
  kept = []
  for i in order:
    overlaps = [_iou_np(boxes[i], boxes[j]) for j in kept]
    assert all(abs(o - nms_iou) > 1e-3 for o in overlaps)  # nor the NMS test
    if all(o <= nms_iou for o in overlaps):
      kept.append(i)
  return boxes[kept[:post_nms]]


def test_proposals_match_numpy_pipeline():
  rng = np.random.default_rng(2)
  xy = rng.uniform(0, 100, (60, 2))
  anchors = np.concatenate([xy, xy + rng.uniform(6, 40, (60, 2))], 1).astype(np.float32)
  scores = rng.permutation(60).astype(np.float32) / 60
  deltas = rng.normal(0, 0.5, (60, 4)).astype(np.float32)
  size = (80, 120)
  settings = dict(pre_nms=40, post_nms=40, nms_iou=0.7, min_size=8.0)
  propose = jax.jit(functools.partial(targets.proposals, **settings))
  boxes, box_scores, valid = propose(anchors, scores, deltas, jnp.asarray(size))
  want = _proposals_np(anchors, scores, deltas, size, **settings)
  assert 0 < len(want) < 40  # some slots stay empty
  np.testing.assert_array_equal(valid, np.arange(40) < len(want))
  # Decoding errs by a few roundings of coordinates up to 160 (the bound of test_encode...).
  np.testing.assert_allclose(np.asarray(boxes)[:len(want)], want, rtol=0, atol=16 * EPS32 * 160)
  np.testing.assert_array_equal(np.asarray(boxes)[len(want):], 0)
  assert np.all(np.diff(np.asarray(box_scores)[:len(want)]) < 0)


def test_roi_targets_constructed_case():
  gts = np.array([[10, 10, 49, 49], [60, 60, 89, 89], [0, 0, 0, 0]], np.float32)
  gt_labels = np.array([2, 1, 0])
  gt_valid = gt_labels > 0
  rois = np.array([
      [10, 10, 49, 49],   # a ground-truth box itself: class 2
      [14, 10, 53, 49],   # IoU 0.82 with gt 0: class 2
      [60, 60, 79, 89],   # IoU 0.67 with gt 1: class 1
      [10, 10, 49, 89],   # IoU exactly 0.5 with gt 0: foreground
      [30, 30, 69, 69],   # IoU 0.14: background
      [0, 0, 5, 5],       # overlaps only the padding: background
      [20, 20, 40, 40],   # an invalid (padding) RoI: ignored
  ], np.float32)
  roi_valid = np.array([True] * 6 + [False])
  labels, box_targets, foreground = jax.jit(targets.roi_targets)(rois, roi_valid, gts,
                                                                 gt_labels, gt_valid)
  np.testing.assert_array_equal(labels, [2, 2, 1, 2, 0, 0, -1])
  np.testing.assert_array_equal(foreground, [True] * 4 + [False] * 3)
  best = [0, 0, 1, 0]
  means, stds = np.asarray(targets.DT_BOX_MEANS), np.asarray(targets.DT_BOX_STDS)
  want = (_encode_np(rois[:4], gts[best]) - means) / stds
  np.testing.assert_array_less(np.abs(np.asarray(box_targets)[:4] - want),
                               _delta_bar(rois[:4], gts[best]) / stds + 4 * EPS32 * np.abs(want))
  # Without ground truth every valid RoI is background.
  labels, _, foreground = jax.jit(targets.roi_targets)(rois, roi_valid, gts, gt_labels,
                                                       np.zeros(3, bool))
  np.testing.assert_array_equal(labels, [0] * 6 + [-1])
  assert not np.any(foreground)


@pytest.mark.parametrize("num_valid", [260, 50])
def test_ohem_selects_largest_losses(num_valid):
  rng = np.random.default_rng(num_valid)
  losses = rng.permutation(300).astype(np.float32) / 7
  candidates = np.zeros(300, bool)
  candidates[rng.choice(300, num_valid, replace=False)] = True
  selected = np.asarray(jax.jit(targets.ohem_select, static_argnums=2)(losses, candidates, 128))
  valid_ids = np.nonzero(candidates)[0]
  want = np.zeros(300, bool)
  want[valid_ids[np.argsort(-losses[valid_ids])[:128]]] = True
  np.testing.assert_array_equal(selected, want)


def test_sample_subset_counts():
  candidates = np.arange(50) % 3 == 0  # 17 candidates
  for count, want in [(5, 5), (17, 17), (30, 17), (0, 0)]:
    chosen = np.asarray(jax.jit(targets.sample_subset)(jax.random.key(count), candidates,
                                                       count))
    assert chosen.sum() == want and not np.any(chosen & ~candidates)


def test_track_targets_from_matched_identities():
  boxes_t = np.array([[10, 12, 40, 50], [60, 5, 90, 30], [0, 0, 20, 20], [30, 30, 60, 70],
                      [0, 0, 0, 0]], np.float32)
  ids_t = np.array([3, 7, 1, 5, 0])
  valid_t = np.array([True, True, True, True, False])
  boxes_tau = np.array([[2, 1, 25, 22], [70, 70, 99, 99], [13, 15, 45, 52], [31, 30, 62, 71]],
                       np.float32)
  ids_tau = np.array([1, 9, 3, 5])
  valid_tau = np.array([True, True, True, False])  # id 5 is padding in frame t + tau
  got, matched = jax.jit(targets.track_targets)(boxes_t, ids_t, valid_t, boxes_tau, ids_tau,
                                                valid_tau)
  np.testing.assert_array_equal(matched, [True, False, True, False, False])
  rows, partners = [0, 2], [2, 0]
  want = _encode_np(boxes_t[rows], boxes_tau[partners])
  np.testing.assert_array_less(np.abs(np.asarray(got)[rows] - want),
                               _delta_bar(boxes_t[rows], boxes_tau[partners]))
  assert np.all(np.isfinite(np.asarray(got)))
