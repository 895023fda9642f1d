"""Anchors, box encoding, RPN proposals, anchor / RoI / track targets and OHEM, on device.

Boxes are (x1, y1, x2, y2) corners in 0-based pixels of the (scaled) input image, widths
pixel-inclusive (x2 - x1 + 1), as in the R-CNN family. Every function works on one image
with static shapes (padded inputs with validity masks); vmap it over a batch.

Official sources matched (cited per function):
- feichtenhofer/Detect-Track (MATLAB): `functions/rfcn/rfcn_bbox_transform.m`,
  `rfcn_bbox_transform_inv.m`, `rfcn_prepare_image_roidb_offline.m` (RoI and track
  targets), `rfcn_get_minibatch.m`, `rfcn_train.m`, `functions/rpn/proposal_generate_anchors.m`,
  `proposal_locate_anchors.m`; caffe-rfcn `box_annotator_ohem_layer.cu` (OHEM).
- The jointly trained RPN (D&T used precomputed proposals) follows py-R-FCN
  (YuwenXiong/py-R-FCN, `experiments/cfgs/rfcn_end2end_ohem.yml`): `lib/rpn/generate_anchors.py`,
  `anchor_target_layer.py`, `proposal_layer.py`.
"""
import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from readingnotes_jax.nn.nms import nms, pairwise_iou

# py-R-FCN `TRAIN.RPN_NORMALIZE_STDS` (means 0): RPN deltas are predicted divided by these.
RPN_BOX_STDS = (0.1, 0.1, 0.2, 0.2)
# D&T's R-FCN box-target moments (`bbox_moments.mat`, the foreground row; `rfcn_train.m` sets
# the dx mean to 0 so that negating dx implements a horizontal flip).
DT_BOX_MEANS = (0.0, 0.00392536, 0.06380377, 0.03698498)
DT_BOX_STDS = (0.12771491, 0.11373407, 0.23619236, 0.21304659)
# Largest log-scale a decoded box may take (Detectron's BBOX_XFORM_CLIP, log(1000 / 16)). The
# official decoders do not clamp; untrained networks would otherwise give infinite boxes.
MAX_LOG_SCALE = math.log(1000.0 / 16)


def generate_anchors(base_size: int = 16, ratios: Sequence[float] = (0.5, 1, 2),
                     scales: Sequence[float] = (8, 16, 32)) -> np.ndarray:
  """[len(ratios) * len(scales), 4] reference anchors around the 0-based (0, 0, b-1, b-1) cell.

  `proposal_generate_anchors.m` / `generate_anchors.py`: per ratio r (outer) the base box
  of area b^2 reshaped to width round(sqrt(b^2 / r)), height round(width * r) (C's round),
  then per scale s (inner) both sides times s, all around the base box's centre.
  """
  base = float(base_size)
  centre = (base - 1) / 2
  rows = []
  for ratio in ratios:
    width = math.floor(math.sqrt(base * base / ratio) + 0.5)
    height = math.floor(width * ratio + 0.5)
    for scale in scales:
      w, h = width * scale, height * scale
      rows.append((centre - (w - 1) / 2, centre - (h - 1) / 2,
                   centre + (w - 1) / 2, centre + (h - 1) / 2))
  return np.asarray(rows, np.float32)


def shift_anchors(anchors: np.ndarray, height: int, width: int, stride: int) -> np.ndarray:
  """[height * width * A, 4] anchors of every feature-map cell, ordered (row, column, anchor).

  Cell (i, j) shifts the reference anchors by (j * stride, i * stride), as
  `proposal_layer.py` (the order its reshaped scores and deltas have).
  """
  shift_x, shift_y = np.meshgrid(np.arange(width) * stride, np.arange(height) * stride)
  shifts = np.stack([shift_x, shift_y, shift_x, shift_y], axis=-1).reshape(-1, 1, 4)
  return (shifts + np.asarray(anchors)[None]).reshape(-1, 4).astype(np.float32)


def _centre_size(boxes):
  width = boxes[..., 2] - boxes[..., 0] + 1
  height = boxes[..., 3] - boxes[..., 1] + 1
  return boxes[..., 0] + 0.5 * (width - 1), boxes[..., 1] + 0.5 * (height - 1), width, height


def encode_boxes(boxes: jax.Array, targets: jax.Array) -> jax.Array:
  """Deltas (dx, dy, dw, dh) taking `boxes` to `targets`, both [..., 4] (`rfcn_bbox_transform.m`).

  dx = (x' - x) / w, dy = (y' - y) / h, dw = log(w' / w), dh = log(h' / h), with centres
  x = x1 + (w - 1) / 2 and inclusive sizes w = x2 - x1 + 1 (the MATLAB code's `+ eps` on
  the denominators, 2.2e-16, is left out).
  """
  x, y, w, h = _centre_size(boxes)
  tx, ty, tw, th = _centre_size(targets)
  return jnp.stack([(tx - x) / w, (ty - y) / h, jnp.log(tw / w), jnp.log(th / h)], axis=-1)


def decode_boxes(boxes: jax.Array, deltas: jax.Array,
                 max_log_scale: float = MAX_LOG_SCALE) -> jax.Array:
  """Boxes [..., 4] moved by deltas [..., 4] (`rfcn_bbox_transform_inv.m`; inverse of encode).

  Centre x + dx * w, width exp(dw) * w; corners centre -+ (width - 1) / 2. dw and dh are
  clamped at `max_log_scale` first.
  """
  x, y, w, h = _centre_size(boxes)
  dx, dy, dw, dh = (deltas[..., k] for k in range(4))
  cx, cy = x + dx * w, y + dy * h
  pw = jnp.exp(jnp.minimum(dw, max_log_scale)) * w
  ph = jnp.exp(jnp.minimum(dh, max_log_scale)) * h
  return jnp.stack([cx - 0.5 * (pw - 1), cy - 0.5 * (ph - 1),
                    cx + 0.5 * (pw - 1), cy + 0.5 * (ph - 1)], axis=-1)


def clip_boxes(boxes: jax.Array, height: jax.Array, width: jax.Array) -> jax.Array:
  """Corners clipped into the image, [0, width - 1] x [0, height - 1] (`clip_boxes`)."""
  upper = jnp.stack([width - 1, height - 1, width - 1, height - 1]).astype(boxes.dtype)
  return jnp.clip(boxes, 0, upper)


def smooth_l1(x: jax.Array, sigma: float = 1.0) -> jax.Array:
  """Fast R-CNN's smooth L1: 0.5 (sigma x)^2 if |x| < 1 / sigma^2, else |x| - 0.5 / sigma^2.

  sigma 1 in R-FCN's and D&T's `SmoothL1Loss`; 3 for py-R-FCN's RPN box loss.
  """
  beta = 1.0 / (sigma * sigma)
  ax = jnp.abs(x)
  return jnp.where(ax < beta, 0.5 * x * x / beta, ax - 0.5 * beta)


def sample_subset(key: jax.Array, candidates: jax.Array, count: jax.Array) -> jax.Array:
  """A uniformly random subset of min(count, #candidates) of the True entries of `candidates`.

  (`npr.choice(..., replace=False)` on device: the candidates in a random order, the first
  `count` kept; `count` may be traced.)
  """
  priority = jnp.where(candidates, jax.random.uniform(key, candidates.shape), 2.0)
  order = jnp.argsort(priority)
  rank = jnp.zeros(candidates.shape, jnp.int32).at[order].set(
      jnp.arange(candidates.size, dtype=jnp.int32))
  return candidates & (rank < count)


def _max_overlap(iou, valid_columns):
  """Per row, the best valid column and its IoU (-1 where no column is valid)."""
  iou = jnp.where(valid_columns[None, :], iou, -1.0)
  return jnp.argmax(iou, axis=1), jnp.max(iou, axis=1, initial=-1.0), iou


def anchor_targets(anchors: jax.Array, gt_boxes: jax.Array, gt_valid: jax.Array,
                   image_size: jax.Array, key: jax.Array, *, positive_iou: float = 0.7,
                   negative_iou: float = 0.3, batch_size: int = 256, fg_fraction: float = 0.5,
                   allowed_border: float = 0.0,
                   box_stds: Sequence[float] = RPN_BOX_STDS) -> tuple[jax.Array, jax.Array]:
  """RPN anchor labels and box targets for one image (py-R-FCN `anchor_target_layer.py`).

  Only anchors inside the image (corners within `allowed_border` of it) take part. Label 0
  (negative) for max IoU < `negative_iou`; then 1 (positive) for the anchors with the
  largest IoU of some ground-truth box (every anchor tying that maximum) and for max IoU >=
  `positive_iou` (positives clobber negatives: RPN_CLOBBER_POSITIVES False). Then at most
  fg_fraction * batch_size random positives and batch_size - #positives random negatives
  are kept; the rest become -1 (ignored). IoU is pixel-inclusive. Unlike the official
  layer, a ground-truth box that overlaps no inside anchor makes no positive (there
  `overlaps == 0` would label every anchor missing it).

  Args:
    anchors: [K, 4] (`shift_anchors`).
    gt_boxes: [G, 4] ground-truth boxes (padded).
    gt_valid: [G] bool.
    image_size: (height, width) of the image inside the padded input.
    key: PRNG key for the sampling.
    positive_iou, negative_iou, batch_size, fg_fraction, allowed_border: as
      TRAIN.RPN_POSITIVE_OVERLAP, RPN_NEGATIVE_OVERLAP, RPN_BATCHSIZE, RPN_FG_FRACTION and
      the layer's `allowed_border`.
    box_stds: targets are divided by these (RPN_NORMALIZE_STDS).

  Returns:
    (labels [K] int32 in {1, 0, -1}, box targets [K, 4] against each anchor's best
    ground-truth box; meaningful where the label is 1).
  """
  height, width = image_size[0], image_size[1]
  inside = ((anchors[:, 0] >= -allowed_border) & (anchors[:, 1] >= -allowed_border)
            & (anchors[:, 2] < width + allowed_border)
            & (anchors[:, 3] < height + allowed_border))
  best_gt, max_iou, iou = _max_overlap(pairwise_iou(anchors, gt_boxes), gt_valid)
  iou = jnp.where(inside[:, None], iou, -1.0)
  gt_max = jnp.max(iou, axis=0)  # [G]
  best_for_some_gt = jnp.any((iou == gt_max[None, :]) & (gt_max[None, :] > 0)
                             & gt_valid[None, :], axis=1) & inside
  labels = jnp.where(inside & (max_iou < negative_iou), 0, -1)
  labels = jnp.where(best_for_some_gt | (inside & (max_iou >= positive_iou)), 1, labels)
  fg_key, bg_key = jax.random.split(key)
  positives = labels == 1
  keep = sample_subset(fg_key, positives, int(fg_fraction * batch_size))
  labels = jnp.where(positives & ~keep, -1, labels)
  negatives = labels == 0
  keep = sample_subset(bg_key, negatives, batch_size - jnp.sum(labels == 1))
  labels = jnp.where(negatives & ~keep, -1, labels)
  targets = encode_boxes(anchors, gt_boxes[best_gt]) / jnp.asarray(box_stds, anchors.dtype)
  return labels.astype(jnp.int32), targets


def proposals(anchors: jax.Array, scores: jax.Array, deltas: jax.Array, image_size: jax.Array,
              *, pre_nms: int = 6000, post_nms: int = 300, nms_iou: float = 0.7,
              min_size: float | jax.Array = 16.0,
              box_stds: Sequence[float] = RPN_BOX_STDS) -> tuple[jax.Array, jax.Array, jax.Array]:
  """RPN proposals of one image (py-R-FCN `proposal_layer.py`), padded to `post_nms`.

  Deltas times `box_stds` decoded from the anchors, clipped to the image; boxes narrower or
  lower than `min_size` pixels dropped (the layer's RPN_MIN_SIZE times the image scale);
  the `pre_nms` best by score kept, then NMS at `nms_iou`, then the first `post_nms`.

  Args:
    anchors: [K, 4].
    scores: [K] objectness (the foreground softmax probability).
    deltas: [K, 4] predicted (normalized) deltas.
    image_size: (height, width) of the image inside the padded input.

  Returns:
    (boxes [post_nms, 4], scores [post_nms], valid [post_nms] bool), best first; invalid
    slots hold zero boxes.
  """
  boxes = decode_boxes(anchors, deltas * jnp.asarray(box_stds, deltas.dtype))
  boxes = clip_boxes(boxes, image_size[0], image_size[1])
  large = ((boxes[:, 2] - boxes[:, 0] + 1 >= min_size)
           & (boxes[:, 3] - boxes[:, 1] + 1 >= min_size))
  top_scores, top = jax.lax.top_k(jnp.where(large, scores, -jnp.inf),
                                  min(pre_nms, scores.shape[0]))
  candidates = boxes[top]
  kept, valid = nms(candidates, top_scores, nms_iou, post_nms, valid=large[top])
  return (jnp.where(valid[:, None], candidates[kept], 0), jnp.where(valid, top_scores[kept], 0),
          valid)


def roi_targets(rois: jax.Array, roi_valid: jax.Array, gt_boxes: jax.Array,
                gt_labels: jax.Array, gt_valid: jax.Array, *, fg_iou: float = 0.5,
                bg_iou_high: float = 0.5, bg_iou_low: float = 0.0,
                box_means: Sequence[float] = DT_BOX_MEANS,
                box_stds: Sequence[float] = DT_BOX_STDS) -> tuple[jax.Array, jax.Array, jax.Array]:
  """Class labels and box targets of one image's RoIs (D&T `rfcn_prepare_image_roidb_offline.m`
  `compute_targets` with `rfcn_config_ohem.m`: all RoIs used, no sampling; OHEM follows).

  A RoI's max IoU (0 without ground truth) with the ground-truth boxes decides:
  foreground (>= fg_iou) takes the class of its best box; background ([bg_iou_low,
  bg_iou_high)) class 0; others and invalid RoIs -1 (ignored). Foreground RoIs regress
  class-agnostically to their best box: (encode - box_means) / box_stds.

  Returns:
    (labels [R] int32, box targets [R, 4], foreground [R] bool).
  """
  best_gt, max_iou, _ = _max_overlap(pairwise_iou(rois, gt_boxes), gt_valid)
  max_iou = jnp.maximum(max_iou, 0.0)
  foreground = roi_valid & (max_iou >= fg_iou)
  background = roi_valid & ~foreground & (max_iou < bg_iou_high) & (max_iou >= bg_iou_low)
  labels = jnp.where(foreground, gt_labels[best_gt], jnp.where(background, 0, -1))
  targets = ((encode_boxes(rois, gt_boxes[best_gt]) - jnp.asarray(box_means, rois.dtype))
             / jnp.asarray(box_stds, rois.dtype))
  return labels.astype(jnp.int32), targets, foreground


def ohem_select(losses: jax.Array, candidates: jax.Array, count: int) -> jax.Array:
  """[R] bool: the `count` candidates with the largest loss (caffe-rfcn `BoxAnnotatorOHEM`,
  `roi_per_img`; fewer when there are fewer candidates). No gradient flows through it."""
  masked = jnp.where(candidates, jax.lax.stop_gradient(losses), -jnp.inf)
  _, top = jax.lax.top_k(masked, min(count, losses.shape[0]))
  return jnp.zeros(losses.shape, bool).at[top].set(True) & candidates


def track_targets(boxes_t: jax.Array, ids_t: jax.Array, valid_t: jax.Array,
                  boxes_tau: jax.Array, ids_tau: jax.Array,
                  valid_tau: jax.Array) -> tuple[jax.Array, jax.Array]:
  """RoI-tracking targets of a frame pair (`append_track_regression_targets` in D&T's
  `rfcn_prepare_image_roidb_offline.m`).

  The tracking RoIs are the ground-truth boxes of frame t; one whose track id also appears
  in frame t + tau regresses to that box: `encode_boxes(box_t, box_tau)`, not normalized.
  (The official code also trains on still DET images paired with themselves, with zero
  targets: give such a pair the same boxes and ids in both frames.)

  Args:
    boxes_t, ids_t, valid_t: [G, 4], [G], [G] boxes, track ids and validity in frame t.
    boxes_tau, ids_tau, valid_tau: [G', 4], [G'], [G'] the same in frame t + tau.

  Returns:
    (targets [G, 4], matched [G] bool: the RoIs with a target).
  """
  same = valid_t[:, None] & valid_tau[None, :] & (ids_t[:, None] == ids_tau[None, :])
  matched = jnp.any(same, axis=1)
  partner = boxes_tau[jnp.argmax(same, axis=1)]
  targets = encode_boxes(boxes_t, jnp.where(matched[:, None], partner, boxes_t))
  return targets, matched
