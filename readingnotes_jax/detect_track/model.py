"""R-FCN with a jointly trained RPN, and the D&T RoI-tracking head (Feichtenhofer et al., 2017).

Detector (`RFCN`), as D&T's `models/rfcn_prototxts/ResNet-101L_ILSVRCvid_dilation_OHEM_res3a/
train_val.prototxt` (feichtenhofer/Detect-Track):
- backbone: the MSRA Caffe ResNet-50/101 (7x7 stem, stride on the first 1x1 of a stage) at
  output stride 16 (res5 undilated stride 1, its 3x3 convs dilated by 2); conv1 and res2
  frozen, every BatchNorm frozen (global statistics; `parameter_labels` marks their scale and
  shift frozen too, the prototxts' lr_mult 0);
- `conv_new_1`: 3x3 conv, dilation 6, 512 channels, ReLU, on res5;
- `rfcn_cls`: 1x1 conv to (C+1) * 7 * 7 position-sensitive class maps; `rfcn_bbox`: 1x1 conv
  to 8 * 7 * 7 class-agnostic box maps (background and foreground deltas, only the latter
  trained and used); PS-RoI pooling (group 7, scale 1/16) and the average of the 7 x 7 bins;
- new layers initialised gaussian(0.01) with zero bias (Caffe fillers); the prototxts give
  biases twice the learning rate (`parameter_labels`).
- RPN (not in the official training, which read precomputed proposals): py-R-FCN's
  (`models/pascal_voc/ResNet-101/rfcn_end2end/train_agnostic_ohem.prototxt`) on res4:
  `rpn_conv/3x3` (512, ReLU), `rpn_cls_score` (2A), `rpn_bbox_pred` (4A); anchors of 3
  ratios x 3 scales at stride 16; 300 proposals per image (6000 before NMS at 0.7).

Training (`detector_loss`): RPN losses (softmax over 256 sampled anchors, smooth L1 with
sigma 3, normalized per image as py-R-FCN's one-image batches, then averaged) plus the R-FCN
losses on the proposals and the ground-truth boxes (fg IoU >= 0.5, bg [0, 0.5)), OHEM
keeping the 128 RoIs per image with the largest classification + box loss
(`BoxAnnotatorOHEM`); softmax loss averaged over the kept RoIs, box loss (smooth L1, sigma 1,
targets normalized by D&T's box moments) summed and divided by 128 per image (the
prototxt's `pre_fixed_normalizer: 256` for its 2 images).

D&T (`DetectTrack`), as `models/rfcn_prototxts/ResNet-101L_ILSVRCvid_corr/train_val_track.prototxt`:
both frames through the detector (shared weights); correlation (`nn.correlation`, d = 8)
of the two frames' res5 (strides 1/1), res3 (2/2, landing on the stride-16 grid) and res4
(1/1); `rfcn_disp`: 1x1 conv of concat(box maps t, box maps t+tau, corr res5, corr res3,
corr res4) = 392 + 392 + 289 + 81 + 289 = 1443 channels (the prototxt's order) to 8 * 7 * 7,
PS-RoI pooling at the tracking RoIs of frame t and the average of the bins. `dt_loss` =
detector losses of both frames + the track loss: smooth L1 (sigma 1) of the foreground
deltas against `targets.track_targets`, averaged over the tracking RoIs (lambda = 1).

Official schedules (solver prototxts; `DETECTOR_SCHEDULE`, `DT_SCHEDULE`, `make_optimizer`):
detector SGD lr 1e-3 (x0.1 at 120k), 160k iterations, iter_size 2, 2 images a pass; D&T from
the detector, lr 1e-4 (x0.1 at 160k), 240k iterations, iter_size 4, one pair (t, t + 1) of a
video a pass; momentum 0.9, weight decay 5e-4; horizontal flips; images scaled to 600 px
(max 1000). Test time (`detect`, `track_regression`, `detect_pair`): per-class NMS at 0.3 on
the class-agnostic boxes; frame t's regressed boxes are the tracking RoIs.
"""
import functools
from collections.abc import Sequence
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from readingnotes_jax.detect_track import targets
from readingnotes_jax.errors import UserError
from readingnotes_jax.nn.conv import conv2d
from readingnotes_jax.nn.correlation import correlation
from readingnotes_jax.nn.nms import nms
from readingnotes_jax.nn.resnet import STAGE_NAMES, ResNet
from readingnotes_jax.nn.roi import ps_roi_pool

FEATURE_STRIDE = 16
# Box-map channels: class-agnostic deltas for (background, foreground), 4 each.
BOX_CHANNELS = 8
# Correlation layers (layer, stride_1 = stride_2) in the prototxt's concatenation order.
CORRELATIONS = (("res5", 1), ("res3", 2), ("res4", 1))


class SolverSchedule(NamedTuple):
  """A Caffe "step" solver: lr = base_lr * gamma^floor(iteration / step_size) for max_iter
  iterations, each averaging the gradients of iter_size forward/backward passes."""
  base_lr: float
  step_size: int
  max_iter: int
  iter_size: int
  gamma: float = 0.1
  momentum: float = 0.9
  weight_decay: float = 5e-4


# `ResNet-101L_ILSVRCvid_dilation_OHEM_res3a/solver_120k160k_lr1_3.prototxt` (2 images a pass).
DETECTOR_SCHEDULE = SolverSchedule(base_lr=1e-3, step_size=120_000, max_iter=160_000,
                                   iter_size=2)
# `ResNet-101L_ILSVRCvid_corr/solver_160k240k_lr1_4.prototxt` (one frame pair a pass).
DT_SCHEDULE = SolverSchedule(base_lr=1e-4, step_size=160_000, max_iter=240_000, iter_size=4)


class CaffeConv(nn.Module):
  """Convolution with bias, Caffe fillers: weights gaussian(std), bias 0; 'same' padding."""
  features: int
  kernel_size: int = 1
  dilation: int = 1
  std: float = 0.01
  dtype: Any = jnp.float32
  lowering: str | None = None

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    k = self.kernel_size
    kernel = self.param("kernel", nn.initializers.normal(self.std),
                        (k, k, x.shape[-1], self.features), jnp.float32)
    bias = self.param("bias", nn.initializers.zeros, (self.features,), jnp.float32)
    y = conv2d(x.astype(self.dtype), kernel, dilation=self.dilation,
               padding=self.dilation * (k // 2), lowering=self.lowering)
    return y + bias.astype(self.dtype)


class RPNHead(nn.Module):
  """py-R-FCN's RPN: `rpn_conv/3x3` + ReLU, `rpn_cls_score` (2A), `rpn_bbox_pred` (4A).

  Returns float32 (logits [N, h, w, A, 2] as (background, foreground), deltas [N, h, w, A,
  4]); the Caffe channel layouts are kept (score channel k * A + a, delta channel 4a + j).
  Submodules conv, cls_score, bbox_pred.
  """
  num_anchors: int
  features: int = 512
  dtype: Any = jnp.float32
  lowering: str | None = None

  @nn.compact
  def __call__(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
    conv = functools.partial(CaffeConv, dtype=self.dtype, lowering=self.lowering)
    a = self.num_anchors
    y = nn.relu(conv(self.features, 3, name="conv")(x))
    scores = conv(2 * a, name="cls_score")(y).astype(jnp.float32)
    n, h, w, _ = scores.shape
    logits = scores.reshape(n, h, w, 2, a).swapaxes(-1, -2)
    deltas = conv(4 * a, name="bbox_pred")(y).astype(jnp.float32).reshape(n, h, w, a, 4)
    return logits, deltas


class RFCNHead(nn.Module):
  """`conv_new_1` (3x3, dilation 6, ReLU), `rfcn_cls` ((C+1) g^2), `rfcn_bbox` (8 g^2).

  Returns (class maps, box maps), NHWC in the compute dtype. Submodules conv_new_1,
  rfcn_cls, rfcn_bbox.
  """
  num_classes: int
  features: int = 512
  group_size: int = 7
  dtype: Any = jnp.float32
  lowering: str | None = None

  @nn.compact
  def __call__(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
    conv = functools.partial(CaffeConv, dtype=self.dtype, lowering=self.lowering)
    bins = self.group_size ** 2
    y = nn.relu(conv(self.features, 3, dilation=6, name="conv_new_1")(x))
    return (conv((self.num_classes + 1) * bins, name="rfcn_cls")(y),
            conv(BOX_CHANNELS * bins, name="rfcn_bbox")(y))


class RFCN(nn.Module):
  """R-FCN detector with a jointly trained RPN (see the module docstring).

  Attributes:
    num_classes: object classes C (30 for ImageNet VID); class 0 is background.
    layers: backbone depth, 50 or 101 (14 for quick runs).
    width: the backbone's base width (64); `conv_new_1` and the RPN conv have 8 * width
      channels (512), unless `head_features` is given.
    head_features: channels of `conv_new_1` and of the RPN's 3x3 conv.
    group_size: PS-RoI pooling bins per side (7).
    anchor_base_size, anchor_scales, anchor_ratios: `targets.generate_anchors`.
    num_rois: RPN proposals per image after NMS (300); the ground-truth boxes are added
      to them in training.
    pre_nms_rois: proposals scored before the RPN's NMS (6000).
    rpn_nms_iou, rpn_min_size: the RPN's NMS IoU (0.7) and minimum box side in pixels of the
      original image (16; times `image_scales`).
    rpn_batch_size, rpn_fg_fraction, rpn_positive_iou, rpn_negative_iou: anchor sampling
      (256, 0.5, 0.7, 0.3); rpn_sigma: smooth-L1 sigma of the RPN box loss (3).
    fg_iou, bg_iou_low: RoI foreground IoU (0.5; background is [bg_iou_low, fg_iou)).
    ohem_rois: RoIs per image kept by OHEM (128).
    box_means, box_stds: normalization of the R-FCN box targets (D&T's moments).
    test_nms_iou: per-class NMS IoU of `detect` (0.3).
    max_detections_per_class: output slots per class of `detect` (None: every RoI).
    frozen_stages: backbone stages frozen (1: conv1 and res2).
    stride_in_1x1: stride on a stage's first 1x1 conv (the MSRA Caffe ResNets D&T fine-tunes);
      False for torchvision's ImageNet ResNets (stride on the 3x3).
    frozen_bn: every BatchNorm frozen (the official fine-tuning of ImageNet weights); False
      trains them on batch statistics (a backbone from scratch: without normalization a
      randomly initialised ResNet's activations grow with depth).
    dtype: compute dtype (parameters float32; losses float32).
    lowering: conv2d lowering, "xla", "matmul" or None (per platform).

  `__call__(images [N, H, W, 3], *, train)` returns a dict of maps: res3 [N, H/8, W/8, .],
  res4 and res5 [N, H/16, W/16, .], rpn_logits [N, h, w, A, 2], rpn_deltas [N, h, w, A, 4],
  cls_maps [N, h, w, (C+1) g^2], box_maps [N, h, w, 8 g^2]. With `frozen_bn` no
  `batch_stats` are mutated. Submodules backbone (`ResNet`), rpn, head.
  """
  num_classes: int = 30
  layers: int = 101
  width: int = 64
  head_features: int | None = None
  group_size: int = 7
  anchor_base_size: int = 16
  anchor_scales: Sequence[float] = (8, 16, 32)
  anchor_ratios: Sequence[float] = (0.5, 1, 2)
  num_rois: int = 300
  pre_nms_rois: int = 6000
  rpn_nms_iou: float = 0.7
  rpn_min_size: float = 16.0
  rpn_batch_size: int = 256
  rpn_fg_fraction: float = 0.5
  rpn_positive_iou: float = 0.7
  rpn_negative_iou: float = 0.3
  rpn_sigma: float = 3.0
  fg_iou: float = 0.5
  bg_iou_low: float = 0.0
  ohem_rois: int = 128
  box_means: Sequence[float] = targets.DT_BOX_MEANS
  box_stds: Sequence[float] = targets.DT_BOX_STDS
  test_nms_iou: float = 0.3
  max_detections_per_class: int | None = None
  frozen_stages: int = 1
  stride_in_1x1: bool = True
  frozen_bn: bool = True
  dtype: Any = jnp.float32
  lowering: str | None = None

  @property
  def num_anchors(self) -> int:
    return len(self.anchor_scales) * len(self.anchor_ratios)

  @nn.compact
  def __call__(self, images: jax.Array, *, train: bool) -> dict[str, jax.Array]:
    if images.ndim != 4 or images.shape[-1] != 3:
      raise UserError(f"RFCN needs images [N, H, W, 3], got {images.shape}")
    features = self.head_features or 8 * self.width
    maps = ResNet(layers=self.layers, width=self.width, output_stride=FEATURE_STRIDE,
                  deep_stem=False, stride_in_1x1=self.stride_in_1x1, outputs=("layer2", "layer3", "layer4"),
                  frozen_stages=self.frozen_stages, frozen_bn=self.frozen_bn, dtype=self.dtype,
                  lowering=self.lowering, name="backbone")(images, train=train)
    rpn_logits, rpn_deltas = RPNHead(self.num_anchors, features, dtype=self.dtype,
                                     lowering=self.lowering, name="rpn")(maps["layer3"])
    cls_maps, box_maps = RFCNHead(self.num_classes, features, self.group_size, dtype=self.dtype,
                                  lowering=self.lowering, name="head")(maps["layer4"])
    return {"res3": maps["layer2"], "res4": maps["layer3"], "res5": maps["layer4"],
            "rpn_logits": rpn_logits, "rpn_deltas": rpn_deltas, "cls_maps": cls_maps,
            "box_maps": box_maps}


class DetectTrack(nn.Module):
  """D&T: the detector on frames t and t + tau, correlation features, RoI-tracking maps.

  Attributes:
    detector: the `RFCN` (its parameters sit under "detector", so a trained detector's
      parameters initialise it: the official D&T stage starts from the detector stage).
    max_displacement: correlation displacement d (8) and padding.
    correlation_method: `nn.correlation` method ("conv", "matmul" or None per platform).

  `__call__(frames [N, 2, H, W, 3], *, train)` returns {"detector": the `RFCN` maps of the
  2N images, frames t first (entries 0..N-1) then frames t + tau, "track_maps": [N, h, w,
  8 g^2]}. Submodules detector, rfcn_disp.
  """
  detector: RFCN
  max_displacement: int = 8
  correlation_method: str | None = None

  @nn.compact
  def __call__(self, frames: jax.Array, *, train: bool) -> dict[str, Any]:
    if frames.ndim != 5 or frames.shape[1] != 2:
      raise UserError(f"DetectTrack needs frame pairs [N, 2, H, W, 3], got {frames.shape}")
    n = frames.shape[0]
    maps = self.detector(jnp.concatenate([frames[:, 0], frames[:, 1]]), train=train)
    d = self.max_displacement
    features = [maps["box_maps"][:n], maps["box_maps"][n:]]
    for layer, stride in CORRELATIONS:
      features.append(correlation(maps[layer][:n], maps[layer][n:], d, stride, stride, d,
                                  method=self.correlation_method))
    track_maps = CaffeConv(BOX_CHANNELS * self.detector.group_size ** 2,
                           dtype=self.detector.dtype, lowering=self.detector.lowering,
                           name="rfcn_disp")(jnp.concatenate(features, axis=-1))
    return {"detector": maps, "track_maps": track_maps}


def parameter_labels(params: Any, frozen_stages: int = 1, frozen_bn: bool = True) -> Any:
  """Per parameter "frozen", "weight" or "bias" (Caffe lr_mult 0, 1, 2), for optax.multi_transform.

  Frozen: the backbone's stem and stages up to `frozen_stages` (as `ResNet.frozen_stages`)
  and, with `frozen_bn`, every BatchNorm scale and shift (the prototxts' lr_mult 0 Scale
  layers). Give "frozen"
  `optax.set_to_zero()` (no update and no weight decay) and "bias" twice the learning rate.
  """
  frozen_modules = set(STAGE_NAMES[:frozen_stages + 1])

  def label(path, _):
    keys = [getattr(key, "key", None) for key in path]
    is_bn = any(str(k).startswith(("bn", "downsample_bn")) for k in keys)
    if "backbone" in keys and (keys[keys.index("backbone") + 1] in frozen_modules
                               or (frozen_bn and is_bn)):
      return "frozen"
    return "bias" if keys[-1] == "bias" else "weight"

  return jax.tree_util.tree_map_with_path(label, params)


def make_optimizer(params: Any, schedule: SolverSchedule, frozen_stages: int = 1,
                   frozen_bn: bool = True) -> optax.GradientTransformation:
  """Caffe's SGD solver (`sgd_solver.cpp`) over `parameter_labels`, as optax.

  Per iteration: gradients averaged over `iter_size` calls (optax.MultiSteps), plus
  weight_decay * w; history = momentum * history + lr * lr_mult * gradient; w -= history
  (the learning rate inside the momentum, as Caffe). lr_mult 1 for weights, 2 for biases,
  frozen parameters never change. The step schedule counts solver iterations.
  """
  def caffe_sgd(lr_mult: float) -> optax.GradientTransformation:
    rate = lambda step: lr_mult * schedule.base_lr * schedule.gamma ** (step // schedule.step_size)
    return optax.chain(optax.add_decayed_weights(schedule.weight_decay),
                       optax.scale_by_schedule(rate), optax.trace(schedule.momentum),
                       optax.scale(-1.0))

  groups = optax.multi_transform({"frozen": optax.set_to_zero(), "weight": caffe_sgd(1.0),
                                  "bias": caffe_sgd(2.0)},
                                 parameter_labels(params, frozen_stages, frozen_bn))
  return optax.MultiSteps(groups, schedule.iter_size).gradient_transformation()


def model_anchors(model: RFCN, height: int, width: int) -> np.ndarray:
  """[height * width * A, 4] anchors of an h x w stride-16 map, (row, column, anchor) order."""
  reference = targets.generate_anchors(model.anchor_base_size, model.anchor_ratios,
                                       model.anchor_scales)
  return targets.shift_anchors(reference, height, width, FEATURE_STRIDE)


def pool_rois(maps: jax.Array, rois: jax.Array, valid: jax.Array, output_dim: int,
              group_size: int) -> jax.Array:
  """PS-RoI pooling then the average over the bins (the prototxts' AVE 7x7 pooling).

  Args:
    maps: [N, h, w, output_dim * g^2] position-sensitive maps (stride 16).
    rois: [N, R, 4] boxes in input pixels; valid: [N, R] (invalid rows give 0).

  Returns:
    [N, R, output_dim] float32.
  """
  def one_image(image_maps, image_rois, image_valid):
    index = jnp.where(image_valid, 0.0, -1.0)[:, None]
    pooled = ps_roi_pool(image_maps[None], jnp.concatenate([index, image_rois], axis=-1),
                         output_dim, group_size, 1.0 / FEATURE_STRIDE)
    return jnp.mean(pooled.astype(jnp.float32), axis=(1, 2))

  return jax.vmap(one_image)(maps, rois.astype(jnp.float32), valid)


def _image_sizes(sizes: jax.Array | None, n: int, height: int, width: int) -> jax.Array:
  if sizes is None:
    return jnp.tile(jnp.asarray([height, width], jnp.int32), (n, 1))
  return jnp.asarray(sizes)


def rpn_proposals(model: RFCN, maps: dict[str, jax.Array], image_sizes: jax.Array,
                  image_scales: jax.Array | None = None) -> tuple[jax.Array, jax.Array, jax.Array]:
  """The RPN's `model.num_rois` proposals per image (`targets.proposals`), no gradient.

  Returns (boxes [N, P, 4], objectness [N, P], valid [N, P]).
  """
  logits = jax.lax.stop_gradient(maps["rpn_logits"])
  n, h, w = logits.shape[:3]
  anchors = jnp.asarray(model_anchors(model, h, w))
  scores = jax.nn.softmax(logits, axis=-1)[..., 1].reshape(n, -1)
  deltas = jax.lax.stop_gradient(maps["rpn_deltas"]).reshape(n, -1, 4)
  scales = jnp.ones(n) if image_scales is None else jnp.asarray(image_scales, jnp.float32)
  propose = functools.partial(targets.proposals, pre_nms=model.pre_nms_rois,
                              post_nms=model.num_rois, nms_iou=model.rpn_nms_iou)
  return jax.vmap(lambda s, d, size, scale: propose(anchors, s, d, size,
                                                     min_size=model.rpn_min_size * scale))(
                                                         scores, deltas, image_sizes, scales)


def detector_loss(model: RFCN, maps: dict[str, jax.Array], batch: dict[str, jax.Array],
                  key: jax.Array) -> tuple[jax.Array, dict[str, jax.Array]]:
  """RPN + R-FCN training loss of one batch of images (see the module docstring).

  Args:
    model: the `RFCN` (its attributes set the targets, sampling and OHEM).
    maps: `model.apply(variables, batch["images"], train=True)`.
    batch: "gt_boxes" [N, G, 4] (0-based inclusive pixels of the input), "gt_labels" [N, G]
      int (1..C; 0 marks padding), optional "image_sizes" [N, 2] (height, width of each
      image inside the padded input; default 16 x the map size, the input when its sides
      are multiples of 16) and "image_scales" [N] (the resize factor, for the RPN's minimum
      box size; default 1).
    key: PRNG key for the RPN's anchor sampling.

  Returns:
    (loss, metrics): loss = rpn_cls_loss + rpn_box_loss + cls_loss + box_loss, metrics
    those four, the loss and the classification accuracy over the OHEM-selected RoIs.
  """
  cls_maps = maps["cls_maps"]
  n, h, w = cls_maps.shape[:3]
  image_sizes = _image_sizes(batch.get("image_sizes"), n, h * FEATURE_STRIDE,
                             w * FEATURE_STRIDE)
  gt_boxes = jnp.asarray(batch["gt_boxes"], jnp.float32)
  gt_labels = jnp.asarray(batch["gt_labels"], jnp.int32)
  gt_valid = gt_labels > 0
  anchors = jnp.asarray(model_anchors(model, h, w))
  sample = functools.partial(
      targets.anchor_targets, positive_iou=model.rpn_positive_iou,
      negative_iou=model.rpn_negative_iou, batch_size=model.rpn_batch_size,
      fg_fraction=model.rpn_fg_fraction)
  rpn_labels, rpn_targets = jax.vmap(sample, in_axes=(None, 0, 0, 0, 0))(
      anchors, gt_boxes, gt_valid, image_sizes, jax.random.split(key, n))
  rpn_logits = maps["rpn_logits"].reshape(n, -1, 2)
  rpn_deltas = maps["rpn_deltas"].reshape(n, -1, 4)
  sampled = rpn_labels >= 0
  per_image_samples = jnp.maximum(jnp.sum(sampled, axis=1), 1)
  rpn_ce = optax.softmax_cross_entropy_with_integer_labels(rpn_logits,
                                                           jnp.maximum(rpn_labels, 0))
  rpn_cls_loss = jnp.mean(jnp.sum(rpn_ce * sampled, axis=1) / per_image_samples)
  rpn_box = jnp.sum(targets.smooth_l1(rpn_deltas - rpn_targets, model.rpn_sigma), axis=-1)
  rpn_box_loss = jnp.mean(jnp.sum(rpn_box * (rpn_labels == 1), axis=1) / per_image_samples)

  proposal_boxes, _, proposal_valid = rpn_proposals(model, maps, image_sizes,
                                                    batch.get("image_scales"))
  rois = jnp.concatenate([proposal_boxes, gt_boxes], axis=1)
  roi_valid = jnp.concatenate([proposal_valid, gt_valid], axis=1)
  label_rois = functools.partial(targets.roi_targets, fg_iou=model.fg_iou,
                                 bg_iou_high=model.fg_iou, bg_iou_low=model.bg_iou_low,
                                 box_means=model.box_means, box_stds=model.box_stds)
  labels, box_targets, foreground = jax.vmap(label_rois)(rois, roi_valid, gt_boxes, gt_labels,
                                                         gt_valid)
  logits = pool_rois(cls_maps, rois, roi_valid, model.num_classes + 1, model.group_size)
  box_deltas = pool_rois(maps["box_maps"], rois, roi_valid, BOX_CHANNELS,
                         model.group_size)[..., 4:]
  ce = optax.softmax_cross_entropy_with_integer_labels(logits, jnp.maximum(labels, 0))
  box = jnp.sum(targets.smooth_l1(box_deltas - box_targets), axis=-1) * foreground
  selected = jax.vmap(functools.partial(targets.ohem_select, count=model.ohem_rois))(
      ce + box, labels >= 0)
  num_selected = jnp.maximum(jnp.sum(selected), 1)
  cls_loss = jnp.sum(ce * selected) / num_selected
  box_loss = jnp.sum(box * selected) / (model.ohem_rois * n)
  correct = (jnp.argmax(logits, axis=-1) == labels) & selected
  loss = rpn_cls_loss + rpn_box_loss + cls_loss + box_loss
  return loss, {"loss": loss, "rpn_cls_loss": rpn_cls_loss, "rpn_box_loss": rpn_box_loss,
                "cls_loss": cls_loss, "box_loss": box_loss,
                "accuracy": jnp.sum(correct) / num_selected}


def frame_major(x: jax.Array) -> jax.Array:
  """[N, 2, ...] -> [2N, ...] with frames t first, as `DetectTrack` orders its images."""
  return jnp.concatenate([x[:, 0], x[:, 1]])


def dt_loss(model: DetectTrack, outputs: dict[str, Any], batch: dict[str, jax.Array],
            key: jax.Array) -> tuple[jax.Array, dict[str, jax.Array]]:
  """D&T training loss: detector losses of both frames + the RoI-tracking loss (lambda 1).

  Args:
    model: the `DetectTrack`.
    outputs: `model.apply(variables, batch["frames"], train=True)`.
    batch: per pair [N, 2, ...]: "gt_boxes" [N, 2, G, 4], "gt_labels" [N, 2, G] (0 =
      padding), "gt_ids" [N, 2, G] track ids, optional "image_sizes" [N, 2, 2] and
      "image_scales" [N, 2].
    key: PRNG key (anchor sampling).

  Returns:
    (loss, metrics): `detector_loss`'s metrics over the 2N images (the official batch is
    one pair: its box-loss normalizer 256 = 128 x 2) plus "track_loss" (smooth L1 summed
    over the 4 deltas, averaged over the tracking RoIs, as the Caffe `SmoothL1Loss`'s VALID
    normalization) and "track_rois" (their number).
  """
  frames = {k: frame_major(jnp.asarray(batch[k]))
            for k in ("gt_boxes", "gt_labels", "image_sizes", "image_scales") if k in batch}
  detection, metrics = detector_loss(model.detector, outputs["detector"], frames, key)
  boxes = jnp.asarray(batch["gt_boxes"], jnp.float32)
  valid = jnp.asarray(batch["gt_labels"]) > 0
  ids = jnp.asarray(batch["gt_ids"])
  track_targets, matched = jax.vmap(targets.track_targets)(
      boxes[:, 0], ids[:, 0], valid[:, 0], boxes[:, 1], ids[:, 1], valid[:, 1])
  deltas = pool_rois(outputs["track_maps"], boxes[:, 0], matched, BOX_CHANNELS,
                     model.detector.group_size)[..., 4:]
  per_roi = jnp.sum(targets.smooth_l1(deltas - track_targets), axis=-1) * matched
  track_rois = jnp.sum(matched)
  track_loss = jnp.sum(per_roi) / jnp.maximum(track_rois, 1)
  loss = detection + track_loss
  return loss, {**metrics, "loss": loss, "detection_loss": detection, "track_loss": track_loss,
                "track_rois": track_rois}


def detect(model: RFCN, maps: dict[str, jax.Array], image_sizes: jax.Array | None = None,
           image_scales: jax.Array | None = None) -> dict[str, jax.Array]:
  """Test-time detections with fixed-size outputs (D&T `rfcn_im_detect.m`, `rfcn_test.m`).

  RPN proposals; class probabilities (softmax) and class-agnostic foreground deltas
  (de-normalized: deltas * box_stds + box_means, as the official snapshot folds them into
  `rfcn_bbox`) at each proposal; boxes decoded and clipped to the image; per class NMS at
  `model.test_nms_iou`.

  `image_sizes` [N, 2] as in `detector_loss`. Returns a dict:
    boxes [N, C, K, 4], scores [N, C, K], valid [N, C, K]: per object class (index c is
      label c + 1) the kept boxes, best first, K = `max_detections_per_class` or every RoI;
    rois [N, R, 4], roi_valid [N, R]: the proposals; roi_boxes [N, R, 4]: their regressed
      boxes (D&T's tracking RoIs at test time); roi_probs [N, R, C + 1].
  """
  cls_maps = maps["cls_maps"]
  n, h, w = cls_maps.shape[:3]
  sizes = _image_sizes(image_sizes, n, h * FEATURE_STRIDE, w * FEATURE_STRIDE)
  rois, _, valid = rpn_proposals(model, maps, sizes, image_scales)
  probs = jax.nn.softmax(pool_rois(cls_maps, rois, valid, model.num_classes + 1,
                                   model.group_size), axis=-1)
  deltas = pool_rois(maps["box_maps"], rois, valid, BOX_CHANNELS, model.group_size)[..., 4:]
  deltas = deltas * jnp.asarray(model.box_stds) + jnp.asarray(model.box_means)
  boxes = jax.vmap(lambda b, size: targets.clip_boxes(b, size[0], size[1]))(
      targets.decode_boxes(rois, deltas), sizes)
  keep = model.max_detections_per_class or rois.shape[1]

  def per_class(image_boxes, class_scores, image_valid):
    kept, kept_valid = nms(image_boxes, class_scores, model.test_nms_iou, keep,
                                   valid=image_valid)
    return image_boxes[kept], jnp.where(kept_valid, class_scores[kept], 0), kept_valid

  per_image = jax.vmap(per_class, in_axes=(None, 1, None))
  out_boxes, out_scores, out_valid = jax.vmap(per_image)(boxes, probs[..., 1:], valid)
  return {"boxes": out_boxes, "scores": out_scores, "valid": out_valid, "rois": rois,
          "roi_valid": valid, "roi_boxes": boxes, "roi_probs": probs}


def track_regression(model: DetectTrack, track_maps: jax.Array, boxes: jax.Array,
                     valid: jax.Array, image_sizes: jax.Array | None = None) -> jax.Array:
  """Where the RoI tracker moves `boxes` of frame t in frame t + tau: [N, R, 4].

  The foreground deltas pooled from `track_maps` at each box, decoded relative to it (not
  normalized, as the track targets) and clipped (`rfcn_im_detect.m`). The official test
  net pools at the unclipped regressed boxes (`BoxTransform`, whose centre is half a pixel
  off) and applies the deltas to the clipped ones; here both are the boxes given.
  """
  n, h, w = track_maps.shape[:3]
  sizes = _image_sizes(image_sizes, n, h * FEATURE_STRIDE, w * FEATURE_STRIDE)
  deltas = pool_rois(track_maps, boxes, valid, BOX_CHANNELS, model.detector.group_size)[..., 4:]
  moved = targets.decode_boxes(jnp.asarray(boxes, jnp.float32), deltas)
  return jax.vmap(lambda b, size: targets.clip_boxes(b, size[0], size[1]))(moved, sizes)


def detect_pair(model: DetectTrack, outputs: dict[str, Any],
                image_sizes: jax.Array | None = None) -> dict[str, jax.Array]:
  """D&T test time for a pair: `detect` on frames t and t + tau, plus "tracked_boxes"
  [N, R, 4], frame t's regressed RoIs (`roi_boxes`) moved into frame t + tau.

  `image_sizes` [N, 2, 2] per pair and frame. Every output has a leading frame axis of 2
  (t, t + tau) before N, except tracked_boxes.
  """
  maps = outputs["detector"]
  n = outputs["track_maps"].shape[0]
  sizes = None if image_sizes is None else frame_major(jnp.asarray(image_sizes))
  detections = detect(model.detector, maps, sizes)
  tracked = track_regression(model, outputs["track_maps"], detections["roi_boxes"][:n],
                             detections["roi_valid"][:n], None if sizes is None else sizes[:n])
  out = {k: v.reshape(2, n, *v.shape[1:]) for k, v in detections.items()}
  return {**out, "tracked_boxes": tracked}
