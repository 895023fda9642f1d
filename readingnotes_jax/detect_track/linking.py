"""D&T's test-time linking: NMS with box voting, class-wise Viterbi tubes, tube rescoring.

Follows feichtenhofer/Detect-Track (paper Sec. 3.5, "Linking tracklets to object tubes"):
- `functions/rfcn/rfcn_test_vid.m`: per video and class, the top 400 boxes of each frame by
  class score, frames without boxes left out, then `make_tubes(frameBoxes, 25, true,
  tracks)`. Tracklets are the RoI-tracking results whose largest class score is > 0.01;
  they are class agnostic (one set serves every class).
- `utils/make_tubes.m`: per frame `nms_box_voting` (NMS at IoU 0.4, keep the 25 best, box
  voting), then `zero_jump_link`.
- `utils/nms_box_voting.m` (Gidaris & Komodakis' box voting): every kept box becomes the
  score-weighted mean of all candidates overlapping it at IoU >= 0.5 (weights eps +
  max(0, score)); scores unchanged. NMS as Faster R-CNN's: pixel-inclusive IoU, a box is
  suppressed by a higher-scoring kept box when their IoU > threshold.
- `utils/zero_jump_link.m` with D&T's `score_of_edge`: the edge between box i of a frame
  and box j of the next is p_i + p_j, plus 1 when some track correspondence (start box in
  the first frame, end box in the next) has IoU >= 0.5 (MATLAB's round, continuous
  widths: `get_overlap_1toN`) with box i at its start and with box j at its end. Viterbi
  over all frames gives the best path (each frame contributes exactly one box; ties go
  to the lower index, as MATLAB's max); its boxes are removed and the search repeats until
  some frame has no box left. A tube's scores are rescored by adding the mean of its top
  ceil(L/2) scores; its path score is the Viterbi score / L.

Boxes are (x1, y1, x2, y2) pixel corners; arrays in, arrays out (NumPy, float64).
"""
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np

from readingnotes_jax.errors import UserError
from readingnotes_jax.metrics.detection import box_iou

NMS_THRESHOLD = 0.4
MAX_PER_FRAME = 25
MAX_CANDIDATES = 400
VOTE_THRESHOLD = 0.5
TRACK_IOU = 0.5
TRACKLET_MIN_SCORE = 0.01

TrackPairs = tuple[np.ndarray, np.ndarray]


class Tube(NamedTuple):
  """One linked object tube of one class.

  Attributes:
    frames: [L] indices of the video frames it passes (every frame given boxes).
    box_indices: [L] index of its box among each frame's boxes given to the linker.
    boxes: [L, 4] its boxes.
    scores: [L] the boxes' detection scores.
    rescored: [L] scores + mean of the top ceil(L/2) scores (what D&T evaluates).
    path_score: Viterbi score of the path / L.
  """
  frames: np.ndarray
  box_indices: np.ndarray
  boxes: np.ndarray
  scores: np.ndarray
  rescored: np.ndarray
  path_score: float


def nms(boxes: np.ndarray, scores: np.ndarray, iou_threshold: float,
        max_keep: int | None = None) -> np.ndarray:
  """Indices kept by greedy NMS, in descending score order (stable on ties).

  Faster R-CNN's `nms`: pixel-inclusive IoU; a box is dropped when its IoU with a kept,
  higher-scoring box is > `iou_threshold`. `max_keep` stops after that many (the same
  first boxes as a full NMS).
  """
  order = np.argsort(-np.asarray(scores, np.float64), kind="stable")
  boxes = np.asarray(boxes, np.float64).reshape(-1, 4)[order]
  suppressed = np.zeros(len(order), bool)
  keep = []
  for i in range(len(order)):
    if suppressed[i]:
      continue
    keep.append(i)
    if len(keep) == max_keep:
      break
    suppressed[i + 1:] |= box_iou(boxes[i:i + 1], boxes[i + 1:], inclusive=True)[0] > iou_threshold
  return order[np.asarray(keep[:max_keep], np.int64)]


def nms_box_voting(boxes: np.ndarray, scores: np.ndarray, *,
                   nms_threshold: float = NMS_THRESHOLD, max_per_frame: int = MAX_PER_FRAME,
                   vote_threshold: float = VOTE_THRESHOLD) -> tuple[np.ndarray, np.ndarray]:
  """One frame's boxes of one class after NMS and box voting (`nms_box_voting.m`).

  Args:
    boxes: [N, 4] candidates.
    scores: [N] their scores; rows with a non-finite box or score are dropped first.
    nms_threshold: NMS IoU (0.4 in `make_tubes.m`).
    max_per_frame: boxes kept after NMS, best first (25).
    vote_threshold: IoU >= this with a kept box makes a candidate vote on it (0.5).

  Returns:
    ([K, 4] voted boxes, [K] scores), K <= max_per_frame, in descending score order.
  """
  boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
  scores = np.asarray(scores, np.float64).reshape(-1)
  finite = np.isfinite(boxes).all(axis=1) & np.isfinite(scores)
  boxes, scores = boxes[finite], scores[finite]
  keep = nms(boxes, scores, nms_threshold, max_per_frame)
  votes = box_iou(boxes[keep], boxes, inclusive=True) >= vote_threshold
  weights = np.where(votes, np.finfo(np.float64).eps + np.maximum(scores, 0.0)[None, :], 0.0)
  voted = weights @ boxes / weights.sum(axis=1, keepdims=True)
  return voted, scores[keep]


def tracklets(boxes: np.ndarray, tracked_boxes: np.ndarray, class_scores: np.ndarray, *,
              min_score: float = TRACKLET_MIN_SCORE) -> TrackPairs:
  """Track correspondences of one frame pair: the RoIs whose largest class score > min_score.

  Args:
    boxes: [R, 4] boxes in frame t (the tracked RoIs).
    tracked_boxes: [R, 4] where the RoI tracker moved them in frame t + 1.
    class_scores: [R, C] their class probabilities, background excluded.

  Returns:
    (start boxes [K, 4], end boxes [K, 4]) as `viterbi_tubes` takes them.
  """
  keep = np.asarray(class_scores).reshape(len(boxes), -1).max(axis=1) > min_score
  return np.asarray(boxes)[keep], np.asarray(tracked_boxes)[keep]


def _track_bonus(boxes_a: np.ndarray, boxes_b: np.ndarray, tracks: TrackPairs | None) -> np.ndarray:
  """[Na, Nb] 1.0 where a correspondence overlaps box a at its start and box b at its end."""
  if tracks is None or len(tracks[0]) == 0:
    return np.zeros((len(boxes_a), len(boxes_b)))
  starts = box_iou(boxes_a, tracks[0]) >= TRACK_IOU
  ends = box_iou(boxes_b, tracks[1]) >= TRACK_IOU
  return ((starts.astype(np.int64) @ ends.T.astype(np.int64)) > 0).astype(np.float64)


def viterbi_tubes(boxes: Sequence[np.ndarray], scores: Sequence[np.ndarray],
                  tracks: Sequence[TrackPairs | None] | None = None) -> list[Tube]:
  """Class-wise tubes through a video by repeated Viterbi (`zero_jump_link.m`).

  Args:
    boxes: per frame, [N_t, 4] boxes of one class (after `nms_box_voting`).
    scores: per frame, [N_t] their scores.
    tracks: per frame, the (start [K, 4], end [K, 4]) track correspondences from frame t
      to frame t + 1, or None. Frames without boxes are left out of the chain, as in
      `rfcn_test_vid.m`; an edge then joins the surrounding frames and uses the
      correspondences of its earlier frame, as the official code does.

  Returns:
    The tubes in the order found (best path first); empty if no frame has a box.
  """
  lengths = (len(boxes), len(scores)) + (() if tracks is None else (len(tracks),))
  if len(set(lengths)) != 1:
    raise UserError(f"linking got {' / '.join(map(str, lengths))} frames of boxes / scores"
                    f"{'' if tracks is None else ' / tracks'}: pass one entry per frame")
  frames = [t for t in range(len(boxes)) if len(scores[t])]
  if not frames:
    return []
  boxes = [np.asarray(boxes[t], np.float64).reshape(-1, 4) for t in frames]
  scores = [np.asarray(scores[t], np.float64).reshape(-1) for t in frames]
  edges = [scores[i][:, None] + scores[i + 1][None, :]
           + _track_bonus(boxes[i], boxes[i + 1], None if tracks is None else tracks[frames[i]])
           for i in range(len(frames) - 1)]
  alive = [np.ones(len(s), bool) for s in scores]
  tubes = []
  while all(a.any() for a in alive):
    # Removed boxes score -inf; ties still go to the lowest remaining index.
    best_to_end = np.where(alive[-1], 0.0, -np.inf)
    backpointers = []
    for i in range(len(frames) - 2, -1, -1):
      edge = edges[i] + best_to_end[None, :]
      pointer = np.argmax(edge, axis=1)
      best_to_end = np.where(alive[i], edge[np.arange(len(pointer)), pointer], -np.inf)
      backpointers.append(pointer)
    backpointers.reverse()
    chosen = [int(np.argmax(best_to_end))]
    path_score = float(best_to_end[chosen[0]])
    for pointer in backpointers:
      chosen.append(int(pointer[chosen[-1]]))
    chosen = np.asarray(chosen, np.int64)
    tube_scores = np.array([scores[i][j] for i, j in enumerate(chosen)])
    top_half = np.sort(tube_scores)[::-1][:int(np.ceil(0.5 * len(tube_scores)))]
    tubes.append(Tube(
        frames=np.asarray(frames, np.int64), box_indices=chosen,
        boxes=np.stack([boxes[i][j] for i, j in enumerate(chosen)]), scores=tube_scores,
        rescored=tube_scores + top_half.mean(), path_score=path_score / len(frames)))
    for i, j in enumerate(chosen):
      alive[i][j] = False
  return tubes


def link_video(boxes: Sequence[np.ndarray], class_scores: Sequence[np.ndarray],
               tracks: Sequence[TrackPairs | None] | None = None, *,
               max_candidates: int = MAX_CANDIDATES, nms_threshold: float = NMS_THRESHOLD,
               max_per_frame: int = MAX_PER_FRAME,
               vote_threshold: float = VOTE_THRESHOLD) -> list[list[Tube]]:
  """All classes' tubes of one video, from per-frame detections (`rfcn_test_vid.m`).

  Args:
    boxes: per frame, [N_t, 4] class-agnostic boxes or [N_t, C, 4] per class.
    class_scores: per frame, [N_t, C] class probabilities, background excluded.
    tracks: per frame, the (start, end) correspondences to the next frame (see
      `tracklets`), or None.
    max_candidates: per frame and class, the best boxes kept before NMS (400).
    nms_threshold, max_per_frame, vote_threshold: see `nms_box_voting`.

  Returns:
    Per class, its tubes (`Tube.box_indices` index the boxes after NMS and voting; use
    `Tube.boxes`).
  """
  if len(boxes) != len(class_scores):
    raise UserError(f"linking got {len(boxes)} frames of boxes but {len(class_scores)} of "
                    "scores: pass one entry per frame")
  class_scores = [np.asarray(s, np.float64) for s in class_scores]
  if any(s.ndim != 2 for s in class_scores) or len({s.shape[1] for s in class_scores}) > 1:
    raise UserError(f"class scores of shapes {sorted({s.shape for s in class_scores})}: give "
                    "an [N_t, C] array per frame, the same C in every frame")
  num_classes = class_scores[0].shape[1] if class_scores else 0
  per_class = []
  for c in range(num_classes):
    frame_boxes, frame_scores = [], []
    for frame_box, frame_score in zip(boxes, class_scores):
      frame_box = np.asarray(frame_box, np.float64)
      frame_box = frame_box[:, c] if frame_box.ndim == 3 else frame_box.reshape(-1, 4)
      best = np.argsort(-frame_score[:, c], kind="stable")[:max_candidates]
      voted = nms_box_voting(frame_box[best], frame_score[best, c],
                             nms_threshold=nms_threshold, max_per_frame=max_per_frame,
                             vote_threshold=vote_threshold)
      frame_boxes.append(voted[0])
      frame_scores.append(voted[1])
    per_class.append(viterbi_tubes(frame_boxes, frame_scores, tracks))
  return per_class


def tubes_to_detections(tubes_per_class: Sequence[Sequence[Tube]], num_frames: int
                        ) -> tuple[list[np.ndarray], list[np.ndarray], list[np.ndarray]]:
  """Per-frame (boxes [M, 4], rescored scores [M], labels [M]) of all tubes.

  The detections D&T evaluates (`track_boxes` in `rfcn_test_vid.m`), in the form
  `metrics.detection.vid_average_precision` takes.
  """
  boxes = [[] for _ in range(num_frames)]
  scores = [[] for _ in range(num_frames)]
  labels = [[] for _ in range(num_frames)]
  for label, tubes in enumerate(tubes_per_class):
    for tube in tubes:
      for frame, box, score in zip(tube.frames, tube.boxes, tube.rescored):
        boxes[frame].append(box)
        scores[frame].append(score)
        labels[frame].append(label)
  return ([np.asarray(b, np.float64).reshape(-1, 4) for b in boxes],
          [np.asarray(s, np.float64) for s in scores],
          [np.asarray(l, np.int64) for l in labels])
