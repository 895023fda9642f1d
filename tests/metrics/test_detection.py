"""ImageNet VID mAP: hand-computed cases and a transcription of the devkit's loops."""
import numpy as np
import pytest

from readingnotes_jax.errors import UserError
from readingnotes_jax.metrics import detection


def _ap(det, gt, num_classes=1):
  """det: per frame list of (box, score, label); gt: per frame list of (box, label)."""
  as_arrays = lambda rows, k: [np.array([r[k] for r in frame], float) for frame in rows]
  return detection.vid_average_precision(
      [np.array([r[0] for r in f], float).reshape(-1, 4) for f in det], as_arrays(det, 1),
      [np.array([r[2] for r in f], int) for f in det],
      [np.array([r[0] for r in f], float).reshape(-1, 4) for f in gt],
      [np.array([r[1] for r in f], int) for f in gt], num_classes)


def test_tp_fp_tp_gives_five_sixths():
  """Precision [1, 1/2, 2/3] at recall [1/2, 1/2, 1]: AP = 1/2 * 1 + 1/2 * 2/3."""
  a, b = [0, 0, 99, 99], [200, 200, 299, 299]
  result = _ap([[(a, 0.9, 0), ([400, 400, 450, 450], 0.8, 0), (b, 0.7, 0)]],
               [[(a, 0), (b, 0)]])
  assert result["ap"][0] == pytest.approx(5 / 6, rel=1e-15)
  assert result["map"] == pytest.approx(5 / 6, rel=1e-15)


def test_small_objects_have_a_lower_threshold():
  """10x10 object: threshold 100/400 = 0.25; IoU 1/3 counts. At 100x100 it does not."""
  assert detection.vid_iou_thresholds(np.array([[0, 0, 9, 9], [0, 0, 99, 99]])) == \
      pytest.approx([0.25, 0.5])
  small = _ap([[([0, 0, 9, 29], 0.9, 0)]], [[([0, 0, 9, 9], 0)]])  # IoU 100 / 300
  big = _ap([[([0, 0, 99, 299], 0.9, 0)]], [[([0, 0, 99, 99], 0)]])  # IoU 1e4 / 3e4
  assert small["ap"][0] == 1.0
  assert big["ap"][0] == 0.0


def test_greedy_takes_largest_iou_and_duplicates_are_false_positives():
  g1, g2 = [0, 0, 99, 99], [50, 0, 149, 99]
  # d1: IoU 0.43 with g1, 0.82 with g2 -> g2. d2: 0.38 with g1, g2 taken -> FP. d3 = g1.
  dets = [([40, 0, 139, 99], 0.9, 0), ([45, 0, 144, 99], 0.8, 0), (g1, 0.7, 0)]
  assert _ap([dets], [[(g1, 0), (g2, 0)]])["ap"][0] == pytest.approx(5 / 6, rel=1e-15)


def test_scores_sorted_across_frames():
  """Frame 0: FP at 0.9 and a missed object; frame 1: TP at 0.8. AP = 1/2 * 1/2."""
  result = _ap([[([300, 300, 340, 340], 0.9, 0)], [([0, 0, 49, 49], 0.8, 0)]],
               [[([100, 100, 149, 149], 0)], [([0, 0, 49, 49], 0)]])
  assert result["ap"][0] == pytest.approx(0.25, rel=1e-15)


def test_wrong_class_and_classes_without_ground_truth():
  result = _ap([[([0, 0, 49, 49], 0.9, 1)]], [[([0, 0, 49, 49], 0)]], num_classes=3)
  assert result["ap"][0] == 0.0
  assert np.isnan(result["ap"][1]) and np.isnan(result["ap"][2])
  assert result["map"] == 0.0
  np.testing.assert_array_equal(result["num_positives"], [1, 0, 0])


def test_bad_input():
  with pytest.raises(UserError, match="different numbers of frames"):
    detection.vid_average_precision([np.zeros((0, 4))], [np.zeros(0)], [np.zeros(0)], [], [], 1)
  with pytest.raises(UserError, match="label 3 outside"):
    _ap([[([0, 0, 9, 9], 0.9, 3)]], [[([0, 0, 9, 9], 0)]], num_classes=3)


def _devkit_reference(det_boxes, det_scores, det_labels, gt_boxes, gt_labels, num_classes):
  """eval_vid_detection.m's loops transcribed: per image, per detection, per object."""
  tps, scores, labels = [], [], []
  npos = np.zeros(num_classes)
  for boxes, confs, dl, gtb, gtl in zip(det_boxes, det_scores, det_labels, gt_boxes, gt_labels):
    thr = []
    for g, c in zip(gtb, gtl):
      w, h = g[2] - g[0] + 1, g[3] - g[1] + 1
      thr.append(min(0.5, w * h / ((w + 10) * (h + 10))))
      npos[c] += 1
    detected = [False] * len(gtl)
    order = sorted(range(len(confs)), key=lambda j: -confs[j])
    for j in order:
      bb = boxes[j]
      ovmax, kmax = -np.inf, -1
      for k, bbgt in enumerate(gtb):
        if dl[j] != gtl[k] or detected[k]:
          continue
        iw = min(bb[2], bbgt[2]) - max(bb[0], bbgt[0]) + 1
        ih = min(bb[3], bbgt[3]) - max(bb[1], bbgt[1]) + 1
        if iw > 0 and ih > 0:
          ua = ((bb[2] - bb[0] + 1) * (bb[3] - bb[1] + 1)
                + (bbgt[2] - bbgt[0] + 1) * (bbgt[3] - bbgt[1] + 1) - iw * ih)
          ov = iw * ih / ua
          if ov >= thr[k] and ov > ovmax:
            ovmax, kmax = ov, k
      if kmax >= 0:
        detected[kmax] = True
      tps.append(kmax >= 0)
      scores.append(confs[j])
      labels.append(dl[j])
  order = sorted(range(len(scores)), key=lambda j: -scores[j])
  ap = np.full(num_classes, np.nan)
  for c in range(num_classes):
    if npos[c] == 0:
      continue
    tp = fp = 0
    rec, prec = [], []
    for j in order:
      if labels[j] != c:
        continue
      tp += tps[j]
      fp += not tps[j]
      rec.append(tp / npos[c])
      prec.append(tp / (tp + fp))
    # VOCap.m
    mrec, mpre = [0.0] + rec + [1.0], [0.0] + prec + [0.0]
    for i in range(len(mpre) - 2, -1, -1):
      mpre[i] = max(mpre[i], mpre[i + 1])
    ap[c] = sum((mrec[i] - mrec[i - 1]) * mpre[i] for i in range(1, len(mrec))
                if mrec[i] != mrec[i - 1])
  return ap


@pytest.mark.parametrize("seed", range(4))
def test_random_frames_match_devkit_transcription(seed):
  rng = np.random.default_rng(seed)
  num_classes, frames = 3, 12
  data = [[], [], [], [], []]
  for _ in range(frames):
    m = rng.integers(0, 5)
    xy = rng.uniform(0, 200, (m, 2))
    gtb = np.round(np.concatenate([xy, xy + rng.uniform(3, 80, (m, 2))], axis=1))
    gtl = rng.integers(0, num_classes, m)
    # Detections: jittered copies of the objects (some wrong class) plus clutter.
    n = rng.integers(0, 8)
    source = rng.integers(0, max(m, 1), n)
    boxes = (gtb[source] if m else np.zeros((n, 4))) + rng.normal(0, 6, (n, 4))
    boxes[:, 2:] = np.maximum(boxes[:, 2:], boxes[:, :2] + 1)
    labels = np.where(rng.uniform(size=n) < 0.8, gtl[source] if m else 0,
                      rng.integers(0, num_classes, n))
    for target, value in zip(data, (boxes, rng.uniform(0, 1, n), labels, gtb, gtl)):
      target.append(value)
  result = detection.vid_average_precision(*data, num_classes)
  expected = _devkit_reference(*data, num_classes)
  # The same sums in the same order, up to float64 rounding of a few dozen terms.
  np.testing.assert_allclose(result["ap"], expected, rtol=1e-12, equal_nan=True)
  assert np.isfinite(expected).any()


def test_box_iou_inclusive_and_continuous():
  a = np.array([[0, 0, 9, 9]], float)
  b = np.array([[5, 0, 14, 9]], float)
  assert detection.box_iou(a, b, inclusive=True)[0, 0] == pytest.approx(50 / 150)
  assert detection.box_iou(a, b)[0, 0] == pytest.approx(36 / 126)
  assert detection.box_iou(a, np.array([[20, 20, 30, 30]], float))[0, 0] == 0.0
  assert detection.box_iou(np.zeros((0, 4)), b).shape == (0, 1)
