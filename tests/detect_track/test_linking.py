"""D&T linking on constructed cases and against brute-force path enumeration."""
import itertools

import numpy as np
import pytest

from readingnotes_jax.detect_track import linking
from readingnotes_jax.errors import UserError
from readingnotes_jax.metrics import detection


def _iou(a, b, one):
  """IoU of two boxes written from the definition (one = 1 for pixel-inclusive widths)."""
  w = min(a[2], b[2]) - max(a[0], b[0]) + one
  h = min(a[3], b[3]) - max(a[1], b[1]) + one
  if w <= 0 or h <= 0:
    return 0.0
  area = lambda r: (r[2] - r[0] + one) * (r[3] - r[1] + one)
  return w * h / (area(a) + area(b) - w * h)


def _edge(boxes, scores, tracks, i, a, b):
  """score_of_edge from zero_jump_link.m: p_a + p_b (+1 if a correspondence links a to b)."""
  bonus = 0.0
  if tracks[i] is not None:
    for start, end in zip(*tracks[i]):
      if _iou(boxes[i][a], start, 0) >= 0.5 and _iou(boxes[i + 1][b], end, 0) >= 0.5:
        bonus = 1.0
  return scores[i][a] + scores[i + 1][b] + bonus


def _brute_force_tubes(boxes, scores, tracks):
  """All paths enumerated; best removed, repeated until a frame is empty."""
  remaining = [list(range(len(s))) for s in scores]
  found = []
  while all(remaining):
    best, best_path = -np.inf, None
    for path in itertools.product(*remaining):
      total = sum(_edge(boxes, scores, tracks, i, path[i], path[i + 1])
                  for i in range(len(path) - 1))
      if total > best:
        best, best_path = total, path
    found.append((best_path, best / len(scores)))
    for i, j in enumerate(best_path):
      remaining[i].remove(j)
  return found


def _random_video(rng, num_frames, max_boxes):
  boxes, scores = [], []
  for _ in range(num_frames):
    n = rng.integers(1, max_boxes + 1)
    xy = rng.uniform(0, 40, (n, 2))
    boxes.append(np.concatenate([xy, xy + rng.uniform(5, 20, (n, 2))], axis=1))
    scores.append(rng.uniform(0, 1, n))
  tracks = []
  for t in range(num_frames - 1):
    pairs = [(a, b) for a in range(len(boxes[t])) for b in range(len(boxes[t + 1]))
             if rng.uniform() < 0.3]
    if not pairs:
      tracks.append(None)
      continue
    jitter = lambda box: box + rng.uniform(-0.5, 0.5, 4)
    tracks.append((np.stack([jitter(boxes[t][a]) for a, _ in pairs]),
                   np.stack([jitter(boxes[t + 1][b]) for _, b in pairs])))
  tracks.append(None)
  return boxes, scores, tracks


@pytest.mark.parametrize("seed", range(6))
def test_viterbi_matches_brute_force(seed):
  rng = np.random.default_rng(seed)
  boxes, scores, tracks = _random_video(rng, num_frames=4, max_boxes=4)
  tubes = linking.viterbi_tubes(boxes, scores, tracks)
  expected = _brute_force_tubes(boxes, scores, tracks)
  assert len(tubes) == len(expected) == min(len(s) for s in scores)
  for tube, (path, path_score) in zip(tubes, expected):
    np.testing.assert_array_equal(tube.box_indices, path)
    np.testing.assert_array_equal(tube.frames, np.arange(4))
    # Same sums of float64 scores in another order: a few ulps of values below ~10.
    assert tube.path_score == pytest.approx(path_score, rel=1e-12)
    expected_scores = np.array([scores[t][j] for t, j in enumerate(path)])
    np.testing.assert_array_equal(tube.scores, expected_scores)
    np.testing.assert_array_equal(tube.boxes, np.stack([boxes[t][j] for t, j in enumerate(path)]))


def test_track_bonus_beats_higher_scores():
  """A (0.9), B (0.5) then C (0.9), D (0.5); a track B -> D: edge B-D = 2.0 > A-C = 1.8."""
  a, b = [0, 0, 10, 10], [50, 50, 60, 60]
  c, d = [1, 1, 11, 11], [52, 52, 62, 62]
  boxes = [np.array([a, b], float), np.array([c, d], float)]
  scores = [np.array([0.9, 0.5]), np.array([0.9, 0.5])]
  tracks = [(np.array([b], float), np.array([d], float)), None]
  first, second = linking.viterbi_tubes(boxes, scores, tracks)
  np.testing.assert_array_equal(first.box_indices, [1, 1])
  assert first.path_score == pytest.approx(2.0 / 2)
  np.testing.assert_allclose(first.rescored, [0.5 + 0.5, 0.5 + 0.5])
  np.testing.assert_array_equal(second.box_indices, [0, 0])
  assert second.path_score == pytest.approx(1.8 / 2)
  # Without the track the higher scores win.
  first, _ = linking.viterbi_tubes(boxes, scores, [None, None])
  np.testing.assert_array_equal(first.box_indices, [0, 0])


def test_track_needs_iou_half_at_both_ends():
  """IoU(box, track start) = 0.5 exactly counts (MATLAB round(0.5) = 1); 0.45 does not."""
  a, b = [0, 0, 10, 10], [50, 50, 60, 60]
  boxes = [np.array([a, b], float), np.array([a, b], float)]
  scores = [np.array([0.9, 0.5]), np.array([0.9, 0.5])]
  start_half = [50, 50, 70, 60]  # intersection 100, union 200: IoU 0.5 with b
  start_less = [50, 50, 72.2222222, 60]  # IoU 100 / 222.2 = 0.45
  for start, linked in ((start_half, True), (start_less, False)):
    tracks = [(np.array([start], float), np.array([b], float)), None]
    first, _ = linking.viterbi_tubes(boxes, scores, tracks)
    assert list(first.box_indices) == ([1, 1] if linked else [0, 0])


def test_rescoring_adds_mean_of_top_half():
  boxes = [np.array([[0, 0, 10, 10]], float)] * 3
  scores = [np.array([0.2]), np.array([0.8]), np.array([0.5])]
  (tube,) = linking.viterbi_tubes(boxes, scores)
  # L = 3: the top ceil(1.5) = 2 scores are 0.8 and 0.5.
  np.testing.assert_allclose(tube.rescored, np.array([0.2, 0.8, 0.5]) + 0.65, rtol=1e-15)
  assert tube.path_score == pytest.approx((0.2 + 0.8 + 0.8 + 0.5) / 3)


def test_stops_when_a_frame_runs_out_and_skips_empty_frames():
  rng = np.random.default_rng(0)
  boxes = [rng.uniform(0, 5, (n, 4)) + [0, 0, 10, 10] for n in (2, 0, 3, 1)]
  scores = [rng.uniform(0, 1, len(b)) for b in boxes]
  tubes = linking.viterbi_tubes(boxes, scores)
  assert len(tubes) == 1  # frame 3 has a single box
  np.testing.assert_array_equal(tubes[0].frames, [0, 2, 3])
  np.testing.assert_array_equal(tubes[0].box_indices,
                                [np.argmax(scores[0]), np.argmax(scores[2]), 0])
  assert linking.viterbi_tubes([np.zeros((0, 4))] * 2, [np.zeros(0)] * 2) == []


def test_edge_over_an_empty_frame_uses_the_earlier_frames_tracks():
  """rfcn_test_vid.m drops empty frames; the edge 0 -> 2 then reads frame 0's tracks."""
  a, b = [0, 0, 10, 10], [50, 50, 60, 60]
  boxes = [np.array([a, b], float), np.zeros((0, 4)), np.array([a, b], float)]
  scores = [np.array([0.9, 0.5]), np.zeros(0), np.array([0.9, 0.5])]
  tracks = [(np.array([b], float), np.array([b], float)), None, None]
  first, _ = linking.viterbi_tubes(boxes, scores, tracks)
  np.testing.assert_array_equal(first.frames, [0, 2])
  np.testing.assert_array_equal(first.box_indices, [1, 1])


def _reference_nms(boxes, scores, threshold):
  order = sorted(range(len(scores)), key=lambda i: -scores[i])
  keep = []
  for i in order:
    if all(_iou(boxes[i], boxes[k], 1) <= threshold for k in keep):
      keep.append(i)
  return keep


def test_nms_box_voting_constructed():
  boxes = np.array([[0, 0, 9, 9], [1, 1, 10, 10], [20, 20, 29, 29]], float)
  scores = np.array([0.9, 0.6, 0.8])
  # IoU(A, B) = 81 / 119 = 0.68 > 0.4: B suppressed; it votes on A with weight 0.6.
  voted, kept_scores = linking.nms_box_voting(boxes, scores)
  np.testing.assert_allclose(kept_scores, [0.9, 0.8])
  np.testing.assert_allclose(voted, [[0.4, 0.4, 9.4, 9.4], [20, 20, 29, 29]], rtol=1e-12)
  # Non-finite candidates are dropped before NMS.
  voted, kept_scores = linking.nms_box_voting(
      np.concatenate([boxes, [[0, 0, np.nan, 9]]]), np.append(scores, 0.99))
  np.testing.assert_allclose(voted, [[0.4, 0.4, 9.4, 9.4], [20, 20, 29, 29]], rtol=1e-12)


def test_nms_matches_reference_and_keeps_25():
  rng = np.random.default_rng(1)
  xy = rng.uniform(0, 60, (200, 2))
  boxes = np.concatenate([xy, xy + rng.uniform(5, 30, (200, 2))], axis=1)
  scores = rng.uniform(0, 1, 200)
  keep = linking.nms(boxes, scores, 0.4)
  assert list(keep) == _reference_nms(boxes, scores, 0.4)
  voted, kept_scores = linking.nms_box_voting(boxes, scores)
  assert len(kept_scores) == min(25, len(keep))
  np.testing.assert_array_equal(kept_scores, scores[keep[:25]])
  for box, k in zip(voted, keep[:25]):
    weights = np.array([np.finfo(float).eps + s if _iou(boxes[k], other, 1) >= 0.5 else 0.0
                        for other, s in zip(boxes, scores)])
    # A weighted mean of coordinates < 100: float64 rounding well under 1e-12 relative.
    np.testing.assert_allclose(box, weights @ boxes / weights.sum(), rtol=1e-12)


def test_tracklets_keep_max_class_score_above_001():
  starts = np.arange(12, dtype=float).reshape(3, 4)
  ends = starts + 1
  class_scores = np.array([[0.005, 0.009], [0.0, 0.02], [0.011, 0.0]])
  kept_starts, kept_ends = linking.tracklets(starts, ends, class_scores)
  np.testing.assert_array_equal(kept_starts, starts[1:])
  np.testing.assert_array_equal(kept_ends, ends[1:])


def test_link_video_classwise_and_perfect_ap():
  """Two objects moving right; class 0 scores object 0 high, class 1 object 1."""
  frames = 4
  boxes, class_scores, gt_boxes, gt_labels = [], [], [], []
  for t in range(frames):
    objects = np.array([[10 + 3 * t, 10, 40 + 3 * t, 50], [100, 20 + 2 * t, 150, 80 + 2 * t]],
                       float)
    boxes.append(objects)
    class_scores.append(np.array([[0.9, 0.05], [0.1, 0.7]]))
    gt_boxes.append(objects)
    gt_labels.append(np.array([0, 1]))
  tracks = [(boxes[t], boxes[t + 1]) for t in range(frames - 1)] + [None]
  per_class = linking.link_video(boxes, class_scores, tracks)
  assert len(per_class) == 2
  for label, tubes in enumerate(per_class):
    assert len(tubes) == 2
    # Disjoint boxes: voting leaves each as it is. The best tube follows the object the
    # class scores highest.
    # (w * x) / w: two roundings, at most 2 ulp.
    np.testing.assert_allclose(tubes[0].boxes, [b[label] for b in boxes], rtol=5e-16)
    np.testing.assert_allclose(tubes[0].scores, [class_scores[0][label, label]] * frames)
  det = linking.tubes_to_detections(per_class, frames)
  result = detection.vid_average_precision(*det, gt_boxes, gt_labels, num_classes=2)
  np.testing.assert_allclose(result["ap"], [1.0, 1.0])


def test_link_video_class_specific_boxes():
  """[N, C, 4] boxes: each class links its own regressed boxes."""
  objects = np.array([[10, 10, 40, 50], [100, 20, 150, 80]], float)
  per_class_boxes = np.stack([objects, objects + 2], axis=1)  # class 1's boxes moved by 2
  scores = np.array([[0.9, 0.3], [0.2, 0.8]])
  per_class = linking.link_video([per_class_boxes] * 2, [scores] * 2)
  np.testing.assert_allclose(per_class[0][0].boxes, [objects[0]] * 2, rtol=5e-16)
  np.testing.assert_allclose(per_class[1][0].boxes, [objects[1] + 2] * 2, rtol=5e-16)


def test_link_video_frame_without_detections():
  box = np.array([[0, 0, 10, 10]], float)
  per_class = linking.link_video([box, np.zeros((0, 4)), box],
                                 [np.array([[0.6, 0.1]]), np.zeros((0, 2)), np.array([[0.4, 0.2]])])
  np.testing.assert_array_equal(per_class[0][0].frames, [0, 2])
  np.testing.assert_allclose(per_class[1][0].rescored, [0.1 + 0.2, 0.2 + 0.2])


def test_frame_count_mismatch_is_user_error():
  with pytest.raises(UserError, match="one entry per frame"):
    linking.viterbi_tubes([np.zeros((1, 4))] * 2, [np.ones(1)])
  with pytest.raises(UserError, match="same C in every frame"):
    linking.link_video([np.zeros((1, 4))] * 2, [np.ones((1, 2)), np.ones((1, 3))])
