"""nn.nms against NumPy written from Faster R-CNN's greedy NMS (`py_cpu_nms.py`)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from readingnotes_jax.errors import UserError
from readingnotes_jax.nn import nms as nms_lib
from numerics_testlib import EPS32


def _iou_np(a, b):
  """Pixel-inclusive IoU of two boxes from the definition, float64."""
  w = min(a[2], b[2]) - max(a[0], b[0]) + 1
  h = min(a[3], b[3]) - max(a[1], b[1]) + 1
  if w <= 0 or h <= 0:
    return 0.0
  area = lambda r: (r[2] - r[0] + 1) * (r[3] - r[1] + 1)
  return w * h / (area(a) + area(b) - w * h)


def _greedy_nms_np(boxes, scores, threshold, valid):
  """Visit boxes by descending score (stable), keep one unless a kept box overlaps it > thr."""
  kept = []
  for i in np.argsort(-np.asarray(scores, np.float64), kind="stable"):
    if valid[i] and all(_iou_np(boxes[i], boxes[j]) <= threshold for j in kept):
      kept.append(int(i))
  return kept


def _clustered_boxes(rng, n):
  """Integer boxes (coordinates < 100) around a few centres, so that many overlap. Integer
  coordinates make every area exact in float32, and an IoU i/u that is not exactly a
  threshold t differs from it by >= 1/(10u) > 1e-5, far above float32's rounding: the float32
  and float64 comparisons agree."""
  centres = rng.integers(20, 80, (4, 2))[rng.integers(0, 4, n)]
  half = rng.integers(3, 15, (n, 2))
  jitter = rng.integers(-4, 5, (n, 2))
  return np.concatenate([centres - half + jitter, centres + half + jitter], 1).astype(np.float32)


def test_pairwise_iou_matches_definition():
  rng = np.random.default_rng(0)
  a = rng.uniform(0, 50, (30, 2))
  boxes1 = np.concatenate([a, a + rng.uniform(0, 30, (30, 2))], 1).astype(np.float32)
  b = rng.uniform(0, 50, (20, 2))
  boxes2 = np.concatenate([b, b + rng.uniform(0, 30, (20, 2))], 1).astype(np.float32)
  # Edge cases: identical, contained, touching in one pixel column (inclusive), disjoint.
  boxes2[:4] = [boxes1[0], [2, 2, 3, 3], [boxes1[1, 2], 0, boxes1[1, 2] + 5, 100], [90, 90, 95, 95]]
  boxes1[2] = [0, 0, 10, 10]
  got = np.asarray(jax.jit(nms_lib.pairwise_iou)(jnp.asarray(boxes1), jnp.asarray(boxes2)))
  want = np.array([[_iou_np(p.astype(np.float64), q.astype(np.float64)) for q in boxes2]
                   for p in boxes1])
  # About ten float32 roundings of relative size eps/2 on positive quantities (the union is
  # at least the intersection: no cancellation), so |error| < 16 eps on an IoU <= 1.
  np.testing.assert_allclose(got, want, rtol=0, atol=16 * EPS32)
  assert got[0, 0] == 1.0 and got[1, 2] > 0 and got[0, 3] == 0.0


@pytest.fixture(scope="module")
def jitted_nms():
  return jax.jit(nms_lib.nms, static_argnums=(3,))  # one compile for every threshold


@pytest.mark.parametrize("seed,threshold,max_output", [(0, 0.3, 40), (1, 0.5, 40), (2, 0.7, 40),
                                                       (3, 0.5, 5)])
def test_nms_matches_greedy_loop(jitted_nms, seed, threshold, max_output):
  rng = np.random.default_rng(seed)
  boxes = _clustered_boxes(rng, 40)
  scores = rng.permutation(40).astype(np.float32) / 40
  scores[rng.choice(40, 6, replace=False)] = 0.5  # ties: the lower index comes first
  valid = rng.uniform(size=40) > 0.15
  indices, kept = jitted_nms(jnp.asarray(boxes), jnp.asarray(scores), threshold, max_output,
                             jnp.asarray(valid))
  want = _greedy_nms_np(boxes, scores, threshold, valid)[:max_output]
  assert 0 < len(want)
  np.testing.assert_array_equal(np.asarray(kept), np.arange(max_output) < len(want))
  np.testing.assert_array_equal(np.asarray(indices)[:len(want)], want)
  np.testing.assert_array_equal(np.asarray(indices)[len(want):], 0)


def test_nms_without_valid_mask_and_bad_shapes(jitted_nms):
  boxes = jnp.asarray([[0, 0, 9, 9], [1, 1, 10, 10], [50, 50, 60, 60]], jnp.float32)
  indices, kept = jitted_nms(boxes, jnp.asarray([0.9, 0.8, 0.7]), 0.5, 4)
  np.testing.assert_array_equal(np.asarray(indices), [0, 2, 0, 0])
  np.testing.assert_array_equal(np.asarray(kept), [True, True, False, False])
  with pytest.raises(UserError, match="nms needs boxes"):
    jitted_nms(boxes[:, :3], jnp.zeros(3), 0.5, 2)
