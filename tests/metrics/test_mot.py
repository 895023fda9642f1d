"""CLEAR MOT and IDF1 against py-motmetrics on the same inputs, and constructed cases."""
import numpy as np
import pytest

from readingnotes_jax.errors import UserError
from readingnotes_jax.metrics import mot

mm = pytest.importorskip("motmetrics", reason="motmetrics (requirements-test.txt) not installed")

_COUNTS = ("num_objects", "num_predictions", "num_matches", "num_switches", "num_detections",
           "num_false_positives", "num_misses", "idtp", "idfp", "idfn", "num_frames")


def _motmetrics(gt_frames, gt_ids, gt_boxes, tr_frames, tr_ids, tr_boxes):
  """motmetrics with its IoU distance (iou_matrix's rule written out: it calls the
  np.asfarray that NumPy 2 removed)."""
  acc = mm.MOTAccumulator(auto_id=True)
  xywh = lambda b: np.concatenate([b[:, :2], b[:, 2:] - b[:, :2]], axis=1)
  for frame in np.union1d(gt_frames, tr_frames):
    g, t = gt_frames == frame, tr_frames == frame
    dist = 1.0 - mm.distances.boxiou(xywh(gt_boxes[g])[:, None], xywh(tr_boxes[t])[None, :])
    acc.update(gt_ids[g], tr_ids[t], np.where(dist > 0.5, np.nan, dist))
  names = ["mota", "motp", "idf1", "idp", "idr"] + [n for n in _COUNTS if n != "idfn"] + ["idfn"]
  summary = mm.metrics.create().compute(acc, metrics=names, name="seq")
  return {name: float(summary[name].iloc[0]) for name in names}


def _random_sequence(seed, num_frames=40, num_objects=6):
  """Moving objects; tracks = noisy copies with dropouts, swaps, fragments and clutter."""
  rng = np.random.default_rng(seed)
  gt, tracks = [], []
  starts = rng.integers(0, num_frames // 2, num_objects)
  ends = starts + rng.integers(num_frames // 4, num_frames, num_objects)
  position = rng.uniform(0, 300, (num_objects, 2))
  size = rng.uniform(20, 60, (num_objects, 2))
  track_of = np.arange(num_objects) + 100
  next_id = 200
  for frame in range(num_frames):
    position += rng.normal(0, 4, position.shape)
    if rng.uniform() < 0.15:  # two tracks exchange identities
      a, b = rng.choice(num_objects, 2, replace=False)
      track_of[[a, b]] = track_of[[b, a]]
    if rng.uniform() < 0.1:  # a track is fragmented: new identity
      track_of[rng.integers(num_objects)] = next_id
      next_id += 1
    for k in range(num_objects):
      if not starts[k] <= frame < ends[k]:
        continue
      box = np.concatenate([position[k], position[k] + size[k]])
      gt.append((frame, k, box))
      if rng.uniform() < 0.85:
        tracks.append((frame, track_of[k], box + rng.normal(0, 0.15, 4) * np.tile(size[k], 2)))
    for _ in range(rng.poisson(0.7)):
      xy = rng.uniform(0, 300, 2)
      tracks.append((frame, next_id, np.concatenate([xy, xy + rng.uniform(20, 60, 2)])))
      next_id += 1
  unpack = lambda rows: (np.array([r[0] for r in rows]), np.array([r[1] for r in rows]),
                         np.array([r[2] for r in rows]).reshape(-1, 4))
  return unpack(gt) + unpack(tracks)


def _assert_same(ours, reference):
  for name in _COUNTS:
    assert ours[name] == reference[name], name
  # Ratios of the same integer counts.
  for name in ("mota", "idf1", "idp", "idr"):
    assert ours[name] == pytest.approx(reference[name], rel=1e-12), name
  # motmetrics sums the distances 1 - IoU: float64 rounding of a few hundred terms.
  assert ours["motp"] == pytest.approx(1.0 - reference["motp"], rel=1e-12)


@pytest.mark.parametrize("seed", range(5))
def test_random_sequences_match_motmetrics(seed):
  data = _random_sequence(seed)
  ours = mot.mot_metrics(*data)
  reference = _motmetrics(*data)
  _assert_same(ours, reference)
  assert ours["num_switches"] > 0 and ours["num_false_positives"] > 0 and ours["num_misses"] > 0


def test_switch_and_idf1_by_hand():
  """One object, track 1 for frames 0-1, track 2 for frames 2-3."""
  box = np.array([0.0, 0.0, 10.0, 10.0])
  frames = np.arange(4)
  result = mot.mot_metrics(frames, np.zeros(4), np.tile(box, (4, 1)),
                           frames, np.array([1, 1, 2, 2]), np.tile(box, (4, 1)))
  assert result["num_switches"] == 1 and result["num_matches"] == 3
  assert result["mota"] == 0.75
  assert result["motp"] == 1.0
  assert result["idtp"] == 2 and result["idf1"] == 0.5


def test_earlier_correspondence_kept_over_better_overlap():
  """Frame 1: track 2 fits the object better, but track 1 still overlaps it (IoU 0.6)."""
  gt_boxes = np.array([[0, 0, 10, 10], [0, 0, 10, 10]], float)
  tracks = np.array([[0, 0, 10, 10], [0, 0, 10, 6], [0, 0, 10, 10]], float)  # IoU 1, 0.6, 1
  result = mot.mot_metrics(np.array([0, 1]), np.array([7, 7]), gt_boxes,
                           np.array([0, 1, 1]), np.array([1, 1, 2]), tracks)
  assert result["num_switches"] == 0 and result["num_false_positives"] == 1
  assert result["motp"] == pytest.approx((1.0 + 0.6) / 2)


def test_boxes_below_threshold_do_not_match():
  gt = np.array([[0, 0, 10, 10]], float)
  track = np.array([[0, 0, 10, 4.9]], float)  # IoU 0.49
  result = mot.mot_metrics([0], [1], gt, [0], [1], track)
  assert result["num_misses"] == 1 and result["num_false_positives"] == 1
  assert result["mota"] == -1.0 and np.isnan(result["motp"])


def test_duplicate_ids_in_a_frame_is_user_error():
  box = np.zeros((2, 4))
  with pytest.raises(UserError, match="same id twice"):
    mot.mot_metrics([0, 0], [1, 1], box, [0], [1], box[:1])


def test_pets_ground_truth_against_motmetrics(data_dir):
  """PETS09-S2L1 gt.txt (frames 1-150, parsed here) against a perturbed copy of itself."""
  rows = np.loadtxt(data_dir / "mot15" / "PETS09-S2L1" / "gt" / "gt.txt", delimiter=",")
  rows = rows[(rows[:, 0] <= 150) & (rows[:, 6] != 0)]
  boxes = np.concatenate([rows[:, 2:4], rows[:, 2:4] + rows[:, 4:6]], axis=1)
  rng = np.random.default_rng(0)
  keep = rng.uniform(size=len(rows)) < 0.9
  ids = rows[:, 1].copy()
  ids[(rows[:, 0] > 75) & (ids == ids[0])] = 999  # one identity changes half way
  noisy = boxes + rng.normal(0, 3, boxes.shape)
  data = (rows[:, 0], rows[:, 1], boxes, rows[keep, 0], ids[keep], noisy[keep])
  _assert_same(mot.mot_metrics(*data), _motmetrics(*data))
