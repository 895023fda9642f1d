"""Multi-object tracking scores: CLEAR MOT (MOTA, MOTP, ID switches) and IDF1.

CLEAR MOT (Bernardin & Stiefelhagen 2008), frame by frame as py-motmetrics'
`MOTAccumulator.update` does it: a ground-truth object and a track hypothesis may pair
when their IoU >= 0.5. First every object keeps the hypothesis it was last matched to
(in any earlier frame) if that pair is still allowed; the others are matched by a
min-cost assignment (Hungarian) on 1 - IoU that first maximises the number of pairs; an
object matched to another hypothesis than its last one is an ID switch. Unmatched objects
are misses, unmatched hypotheses false positives.

    MOTA = 1 - (misses + false positives + switches) / objects
    MOTP = mean IoU of the matched pairs (MOTChallenge's convention; motmetrics reports
           the mean distance 1 - IoU)

IDF1 (Ristani et al. 2016): identities are matched one-to-one over the whole sequence so
that the number of frames where a matched pair overlaps (IoU >= 0.5) is largest; that
number is IDTP, and IDF1 = 2 IDTP / (objects + hypotheses), IDP = IDTP / hypotheses,
IDR = IDTP / objects (counts over all frames).

Boxes are continuous corners (x1, y1, x2, y2) (width x2 - x1), as MOTChallenge's IoU.
"""
import numpy as np
import scipy.optimize

from readingnotes_jax.errors import UserError
from readingnotes_jax.metrics.detection import box_iou

IOU_THRESHOLD = 0.5


def _assign(cost: np.ndarray, allowed: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Most pairs among the allowed ones, then least total cost (motmetrics' lap.py rule)."""
  if not allowed.any():
    return np.zeros(0, np.int64), np.zeros(0, np.int64)
  # Any disallowed pair costs more than all allowed pairs together, so the optimum uses
  # as few of them as possible; they are dropped afterwards.
  large = 2 * min(cost.shape) * (np.abs(cost[allowed]).max() + 1) + 1
  rows, cols = scipy.optimize.linear_sum_assignment(np.where(allowed, cost, large))
  keep = allowed[rows, cols]
  return rows[keep], cols[keep]


def _check(frames: np.ndarray, ids: np.ndarray, boxes: np.ndarray, what: str) -> None:
  if not len(frames) == len(ids) == len(boxes):
    raise UserError(f"{what}: {len(frames)} frames, {len(ids)} ids and {len(boxes)} boxes: "
                    "give one frame number, id and box per row")
  for frame in np.unique(frames):
    frame_ids = ids[frames == frame]
    if len(np.unique(frame_ids)) != len(frame_ids):
      raise UserError(f"{what}: frame {frame} has the same id twice: ids must be unique "
                      "within a frame")


def mot_metrics(gt_frames: np.ndarray, gt_ids: np.ndarray, gt_boxes: np.ndarray,
                track_frames: np.ndarray, track_ids: np.ndarray, track_boxes: np.ndarray, *,
                iou_threshold: float = IOU_THRESHOLD) -> dict:
  """CLEAR MOT and ID scores of tracks against ground truth over one sequence.

  Args:
    gt_frames: [N] frame number of each ground-truth box (any integers; frames are
      processed in increasing order, including frames that only one side has).
    gt_ids: [N] object identity.
    gt_boxes: [N, 4] corners (x1, y1, x2, y2).
    track_frames: [M] frame number of each tracked box.
    track_ids: [M] track identity.
    track_boxes: [M, 4].
    iou_threshold: a pair may match when IoU >= this (0.5).

  Returns:
    A dict: `mota`, `motp` (mean IoU of matched pairs), `idf1`, `idp`, `idr` (floats, NaN
    when undefined), and the counts `num_objects`, `num_predictions`, `num_matches`
    (matched pairs that are not switches), `num_switches`, `num_detections` (both),
    `num_false_positives`, `num_misses`, `idtp`, `idfp`, `idfn`, `num_frames`; count names
    as in motmetrics.
  """
  gt_frames, track_frames = np.asarray(gt_frames).reshape(-1), np.asarray(track_frames).reshape(-1)
  gt_ids, track_ids = np.asarray(gt_ids).reshape(-1), np.asarray(track_ids).reshape(-1)
  gt_boxes = np.asarray(gt_boxes, np.float64).reshape(-1, 4)
  track_boxes = np.asarray(track_boxes, np.float64).reshape(-1, 4)
  _check(gt_frames, gt_ids, gt_boxes, "ground truth")
  _check(track_frames, track_ids, track_boxes, "tracks")
  object_index = {o: i for i, o in enumerate(np.unique(gt_ids))}
  track_index = {h: i for i, h in enumerate(np.unique(track_ids))}
  co_occurrence = np.zeros((len(object_index), len(track_index)), np.int64)
  last_match = {}  # object id -> hypothesis id of its latest match
  matches = switches = false_positives = misses = 0
  iou_sum = 0.0
  frames = np.union1d(gt_frames, track_frames)
  for frame in frames:
    in_gt, in_track = gt_frames == frame, track_frames == frame
    objects, hypotheses = gt_ids[in_gt], track_ids[in_track]
    iou = box_iou(gt_boxes[in_gt], track_boxes[in_track])
    allowed = iou >= iou_threshold
    for i, j in zip(*np.nonzero(allowed)):
      co_occurrence[object_index[objects[i]], track_index[hypotheses[j]]] += 1
    object_free = np.ones(len(objects), bool)
    track_free = np.ones(len(hypotheses), bool)
    # 1. Keep earlier correspondences that are still allowed (objects in given order).
    for i, o in enumerate(objects):
      if o not in last_match:
        continue
      same = np.flatnonzero(track_free & (hypotheses == last_match[o]))
      if len(same) and allowed[i, same[0]]:
        object_free[i] = track_free[same[0]] = False
        matches += 1
        iou_sum += iou[i, same[0]]
    # 2. Assign the rest; a new partner for an object matched before is a switch.
    rows, cols = _assign(1.0 - iou, allowed & object_free[:, None] & track_free[None, :])
    for i, j in zip(rows, cols):
      o, h = objects[i], hypotheses[j]
      if o in last_match and last_match[o] != h:
        switches += 1
      else:
        matches += 1
      last_match[o] = h
      iou_sum += iou[i, j]
    object_free[rows] = False
    track_free[cols] = False
    misses += int(object_free.sum())
    false_positives += int(track_free.sum())
  num_objects, num_predictions = len(gt_ids), len(track_ids)
  rows, cols = scipy.optimize.linear_sum_assignment(co_occurrence, maximize=True)
  idtp = int(co_occurrence[rows, cols].sum())
  divide = lambda a, b: float(a / b) if b else float("nan")
  return {
      "mota": 1.0 - divide(misses + false_positives + switches, num_objects),
      "motp": divide(iou_sum, matches + switches),
      "idf1": divide(2 * idtp, num_objects + num_predictions),
      "idp": divide(idtp, num_predictions),
      "idr": divide(idtp, num_objects),
      "num_objects": num_objects,
      "num_predictions": num_predictions,
      "num_matches": matches,
      "num_detections": matches + switches,
      "num_switches": switches,
      "num_false_positives": false_positives,
      "num_misses": misses,
      "idtp": idtp,
      "idfp": num_predictions - idtp,
      "idfn": num_objects - idtp,
      "num_frames": len(frames),
  }
