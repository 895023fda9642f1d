"""Box overlap and ImageNet VID mAP, the ILSVRC2015 development kit's protocol.

`vid_average_precision` matches `evaluation/eval_vid_detection.m` of the ILSVRC2015 devkit
(the evaluator D&T's `imdb/imdb_eval_ilsvrc14.m` calls; msracver/Flow-Guided-Feature-
Aggregation `lib/dataset/imagenet_vid_eval.py` is a Python port):

- Boxes are inclusive pixel corners (x1, y1, x2, y2), width x2 - x1 + 1, as in the VID XML
  annotations (0-based).
- Each ground-truth object has its own IoU threshold min(0.5, w*h / ((w+10)*(h+10))), so
  small objects are matched more leniently (`vid_iou_thresholds`).
- Per frame, detections in descending score order each take the not yet matched
  ground-truth object of their class with the largest IoU at or above that object's
  threshold (a true positive), else count as a false positive.
- Per class, the detections of all frames are sorted by score (stably: frame order, then
  the frame's own order, break ties), and AP is the devkit's `VOCap` area: the precision
  envelope summed over every recall step (all points, not VOC2007's 11-point average).

The devkit's optional blacklist (image/class pairs to skip) is not supported; D&T
evaluates without one.
"""
from collections.abc import Sequence

import numpy as np

from readingnotes_jax.errors import UserError

VID_DEFAULT_IOU = 0.5
VID_PIXEL_TOLERANCE = 10


def box_iou(boxes1: np.ndarray, boxes2: np.ndarray, *, inclusive: bool = False) -> np.ndarray:
  """Pairwise IoU, [N, 4] x [M, 4] corner boxes (x1, y1, x2, y2) -> [N, M] float64.

  Args:
    boxes1: [N, 4].
    boxes2: [M, 4].
    inclusive: pixel-inclusive corners, width x2 - x1 + 1 (R-CNN's `boxoverlap`, the VID
      devkit); False: continuous corners, width x2 - x1 (D&T's `get_overlap_1toN`,
      MOTChallenge).
  """
  boxes1 = np.asarray(boxes1, np.float64).reshape(-1, 4)
  boxes2 = np.asarray(boxes2, np.float64).reshape(-1, 4)
  one = 1.0 if inclusive else 0.0
  area1 = (boxes1[:, 2] - boxes1[:, 0] + one) * (boxes1[:, 3] - boxes1[:, 1] + one)
  area2 = (boxes2[:, 2] - boxes2[:, 0] + one) * (boxes2[:, 3] - boxes2[:, 1] + one)
  width = (np.minimum(boxes1[:, None, 2], boxes2[None, :, 2])
           - np.maximum(boxes1[:, None, 0], boxes2[None, :, 0]) + one)
  height = (np.minimum(boxes1[:, None, 3], boxes2[None, :, 3])
            - np.maximum(boxes1[:, None, 1], boxes2[None, :, 1]) + one)
  intersection = np.maximum(width, 0.0) * np.maximum(height, 0.0)
  union = area1[:, None] + area2[None, :] - intersection
  with np.errstate(divide="ignore", invalid="ignore"):
    return np.where(intersection > 0, intersection / union, 0.0)


def vid_iou_thresholds(gt_boxes: np.ndarray) -> np.ndarray:
  """Per-object IoU thresholds min(0.5, w*h / ((w+10)*(h+10))), inclusive widths, [M]."""
  gt_boxes = np.asarray(gt_boxes, np.float64).reshape(-1, 4)
  width = gt_boxes[:, 2] - gt_boxes[:, 0] + 1
  height = gt_boxes[:, 3] - gt_boxes[:, 1] + 1
  relaxed = width * height / ((width + VID_PIXEL_TOLERANCE) * (height + VID_PIXEL_TOLERANCE))
  return np.minimum(VID_DEFAULT_IOU, relaxed)


def voc_ap(recall: np.ndarray, precision: np.ndarray) -> float:
  """Area under the precision envelope over all recall steps (the devkit's `VOCap`)."""
  recall = np.concatenate([[0.0], recall, [1.0]])
  precision = np.concatenate([[0.0], precision, [0.0]])
  envelope = np.maximum.accumulate(precision[::-1])[::-1]
  steps = np.flatnonzero(recall[1:] != recall[:-1]) + 1
  return float(np.sum((recall[steps] - recall[steps - 1]) * envelope[steps]))


def match_frame(det_boxes: np.ndarray, det_scores: np.ndarray, det_labels: np.ndarray,
                gt_boxes: np.ndarray, gt_labels: np.ndarray) -> np.ndarray:
  """True-positive flags of one frame's detections (in their given order), the devkit's rule.

  Detections are visited in descending score order (stable); each takes the unmatched
  ground-truth object of its label with the largest IoU >= that object's VID threshold
  (first such object on ties, as the devkit's strict `ov > ovmax`).
  """
  num_dets = len(det_scores)
  true_positive = np.zeros(num_dets, bool)
  if num_dets == 0 or len(gt_labels) == 0:
    return true_positive
  iou = box_iou(det_boxes, gt_boxes, inclusive=True)
  eligible = ((iou > 0) & (iou >= vid_iou_thresholds(gt_boxes)[None, :])
              & (np.asarray(det_labels)[:, None] == np.asarray(gt_labels)[None, :]))
  matched = np.zeros(len(gt_labels), bool)
  order = np.argsort(-np.asarray(det_scores, np.float64), kind="stable")
  # Detections without any eligible object are false positives whatever the order.
  for det in order[eligible[order].any(axis=1)]:
    candidates = eligible[det] & ~matched
    if candidates.any():
      matched[np.argmax(np.where(candidates, iou[det], -1.0))] = True
      true_positive[det] = True
  return true_positive


def vid_average_precision(det_boxes: Sequence[np.ndarray], det_scores: Sequence[np.ndarray],
                          det_labels: Sequence[np.ndarray], gt_boxes: Sequence[np.ndarray],
                          gt_labels: Sequence[np.ndarray], num_classes: int) -> dict:
  """ImageNet VID AP per class and mAP over a set of frames (the devkit's protocol).

  Args:
    det_boxes: per frame, [N_t, 4] detected boxes (inclusive pixel corners).
    det_scores: per frame, [N_t] confidences.
    det_labels: per frame, [N_t] class ids in [0, num_classes).
    gt_boxes: per frame, [M_t, 4] ground-truth boxes (inclusive pixel corners).
    gt_labels: per frame, [M_t] class ids in [0, num_classes).
    num_classes: C (30 for ImageNet VID).

  Returns:
    {"ap": float64 [C] (NaN for a class without ground-truth objects), "map": mean AP
    over the classes that have ground truth (NaN if none), "num_positives": int64 [C]}.

  Raises:
    UserError: the per-frame lists differ in length, or a label is outside [0, C).
  """
  lengths = {len(x) for x in (det_boxes, det_scores, det_labels, gt_boxes, gt_labels)}
  if len(lengths) != 1:
    raise UserError(f"detections and ground truth cover different numbers of frames "
                    f"({sorted(lengths)}): pass one entry per frame in each list")
  num_positives = np.zeros(num_classes, np.int64)
  all_scores, all_tp, all_labels = [], [], []
  for frame, (boxes, scores, labels, gtb, gtl) in enumerate(
      zip(det_boxes, det_scores, det_labels, gt_boxes, gt_labels)):
    scores = np.asarray(scores, np.float64).reshape(-1)
    labels = np.asarray(labels, np.int64).reshape(-1)
    gtl = np.asarray(gtl, np.int64).reshape(-1)
    for name, values in (("detection", labels), ("ground-truth", gtl)):
      outside = values[(values < 0) | (values >= num_classes)]
      if outside.size:
        raise UserError(f"frame {frame}: {name} label {int(outside[0])} outside "
                        f"[0, {num_classes}): use class ids 0..{num_classes - 1}")
    num_positives += np.bincount(gtl, minlength=num_classes)
    order = np.argsort(-scores, kind="stable")
    true_positive = match_frame(np.asarray(boxes).reshape(-1, 4), scores, labels,
                                np.asarray(gtb).reshape(-1, 4), gtl)
    all_scores.append(scores[order])
    all_tp.append(true_positive[order])
    all_labels.append(labels[order])
  scores = np.concatenate(all_scores) if all_scores else np.zeros(0)
  order = np.argsort(-scores, kind="stable")
  true_positive = (np.concatenate(all_tp) if all_tp else np.zeros(0, bool))[order]
  labels = (np.concatenate(all_labels) if all_labels else np.zeros(0, np.int64))[order]
  ap = np.full(num_classes, np.nan)
  for c in np.flatnonzero(num_positives):
    tp = np.cumsum(true_positive[labels == c])
    fp = np.cumsum(~true_positive[labels == c])
    ap[c] = voc_ap(tp / num_positives[c], tp / np.maximum(tp + fp, 1))
  mean_ap = float(np.mean(ap[num_positives > 0])) if num_positives.any() else float("nan")
  return {"ap": ap, "map": mean_ap, "num_positives": num_positives}
