"""detect_track.model: layer shapes against the official prototxts, losses and test-time outputs
against NumPy written from the official formulas, a few training steps on a tiny frame pair."""
import math

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from readingnotes_jax.detect_track import model as dt_model
from readingnotes_jax.detect_track import targets
from readingnotes_jax.errors import UserError
from numerics_testlib import EPS32

# A tiny detector for CPU tests: ResNet-14 at width 8, 64 x 96 images (4 x 6 score maps),
# 6 anchors per cell, the official group size 7.
TINY = dict(num_classes=2, layers=14, width=8, anchor_scales=(2, 4), num_rois=16,
            pre_nms_rois=64, rpn_batch_size=32, ohem_rois=8, rpn_min_size=4.0)
HEIGHT, WIDTH = 64, 96


def _iou_np(a, b):
  """Pixel-inclusive IoU from the definition, float64."""
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
  cx, cy = x + deltas[:, 0] * w, y + deltas[:, 1] * h
  pw, ph = np.exp(deltas[:, 2]) * w, np.exp(deltas[:, 3]) * h
  return np.stack([cx - 0.5 * (pw - 1), cy - 0.5 * (ph - 1), cx + 0.5 * (pw - 1),
                   cy + 0.5 * (ph - 1)], -1)


def _softmax_np(x):
  e = np.exp(x - x.max())
  return e / e.sum()


def _smooth_l1_np(x, sigma=1.0):
  x, beta = np.asarray(x, np.float64), 1 / sigma ** 2
  return np.where(np.abs(x) < beta, 0.5 * x * x / beta, np.abs(x) - 0.5 * beta)


def _greedy_nms_np(boxes, scores, valid, threshold):
  kept = []
  for i in np.argsort(-scores, kind="stable"):
    if valid[i] and all(_iou_np(boxes[i], boxes[j]) <= threshold for j in kept):
      kept.append(i)
  return kept


def _count(tree) -> int:
  return sum(math.prod(leaf.shape) for leaf in jax.tree.leaves(tree))


def _layer_params(tree, name):
  """(kernel shape, parameter count) of the submodule called `name`."""
  flat = flax.traverse_util.flatten_dict(tree)
  for path, leaf in flat.items():
    if path[-2:] == (name, "kernel"):
      prefix = path[:-1]
      return leaf.shape, sum(math.prod(v.shape) for k, v in flat.items()
                             if k[:len(prefix)] == prefix)
  raise KeyError(name)


@pytest.fixture(scope="module")
def official_shapes():
  """Parameter shapes of D&T with R-FCN ResNet-101 (30 classes) and of R-FCN ResNet-50."""
  frames = jax.ShapeDtypeStruct((1, 2, 64, 64, 3), jnp.float32)
  dt = dt_model.DetectTrack(dt_model.RFCN(num_classes=30, layers=101))
  r50 = dt_model.RFCN(num_classes=30, layers=50)
  return (jax.eval_shape(lambda f: dt.init(jax.random.key(0), f, train=False), frames)["params"],
          jax.eval_shape(lambda f: r50.init(jax.random.key(0), f[:, 0], train=False),
                         frames)["params"])


def test_tracking_head_reads_1443_channels(official_shapes):
  dt_params, _ = official_shapes
  d = 8
  bbox_maps = 8 * 7 * 7  # rfcn_bbox: 4 x (K+1) class-agnostic deltas x 7 x 7 bins
  corr_res3 = (2 * (d // 2) + 1) ** 2  # stride_2 2: 9 x 9 displacements
  corr_res45 = (2 * d + 1) ** 2  # stride_2 1: 17 x 17
  assert 2 * bbox_maps + corr_res3 + 2 * corr_res45 == 1443
  assert dt_params["rfcn_disp"]["kernel"].shape == (1, 1, 1443, 392)


def test_parameters_match_prototxt_layer_shapes(official_shapes):
  dt_params, r50_params = official_shapes
  # (kernel_size, input channels, num_output) of the prototxt layers (train_val_track.prototxt:
  # conv_new_1 on res5c 2048, rfcn_cls_ILSVRCvid 1519 = 31 x 49, rfcn_bbox 392, rfcn_disp
  # on the 1443-channel concat; py-R-FCN's RPN on res4b22 1024: 18 = 2 x 9, 36 = 4 x 9).
  layers = {"conv_new_1": (3, 2048, 512), "rfcn_cls": (1, 512, 1519), "rfcn_bbox": (1, 512, 392),
            "rfcn_disp": (1, 1443, 392), "conv": (3, 1024, 512), "cls_score": (1, 512, 18),
            "bbox_pred": (1, 512, 36)}
  for name, (k, cin, cout) in layers.items():
    shape, count = _layer_params(dt_params, name)
    assert shape == (k, k, cin, cout), name
    assert count == k * k * cin * cout + cout, name  # Caffe convolutions with bias
  # The MSRA ResNets (conv without bias, BN scale and shift): torchvision's ResNet-101 and
  # ResNet-50 counts without the fc layer, 44,549,160 - 2,049,000 and 25,557,032 - 2,049,000.
  assert _count(dt_params["detector"]["backbone"]) == 42_500_160
  assert _count(r50_params["backbone"]) == 23_508_032
  assert set(r50_params) == {"backbone", "rpn", "head"}


def test_feature_map_strides_and_bad_input():
  det = dt_model.RFCN(**TINY)
  images = jax.ShapeDtypeStruct((2, HEIGHT, WIDTH, 3), jnp.float32)
  maps = jax.eval_shape(lambda x: det.init_with_output(jax.random.key(0), x, train=False)[0],
                        images)
  shapes = {k: v.shape for k, v in maps.items()}
  assert shapes == {"res3": (2, 8, 12, 64), "res4": (2, 4, 6, 128), "res5": (2, 4, 6, 256),
                    "rpn_logits": (2, 4, 6, 6, 2), "rpn_deltas": (2, 4, 6, 6, 4),
                    "cls_maps": (2, 4, 6, 3 * 49), "box_maps": (2, 4, 6, 392)}
  with pytest.raises(UserError, match="frame pairs"):
    dt_model.DetectTrack(det).init(jax.random.key(0), jnp.zeros((1, HEIGHT, WIDTH, 3)),
                                   train=False)


def test_rpn_head_fillers_and_caffe_channel_layout():
  """New layers: N(0, 0.01) weights, zero biases (Caffe's gaussian and constant fillers).
  rpn_cls_score channel k * A + a is (class k, anchor a); rpn_bbox_pred channel 4a + j is
  delta j of anchor a (the order of the shifted anchors' last axis)."""
  head = dt_model.RPNHead(num_anchors=3, features=256)
  x = jnp.ones((1, 2, 2, 64))
  params = jax.jit(head.init)(jax.random.key(0, impl="rbg"), x)["params"]
  kernel = np.asarray(params["conv"]["kernel"])
  # 147456 draws of N(0, 0.01^2): the sample std errs by ~0.01 / sqrt(2 n) = 0.18%; 5 sigma.
  assert abs(kernel.std() / 0.01 - 1) < 0.01 and abs(kernel.mean()) < 5 * 0.01 / 384
  assert all(np.all(np.asarray(p["bias"]) == 0) for p in params.values())
  params = jax.tree.map(np.zeros_like, params)
  params["cls_score"]["bias"] = np.arange(6, dtype=np.float32)
  params["bbox_pred"]["bias"] = np.arange(12, dtype=np.float32)
  logits, deltas = jax.jit(head.apply)({"params": params}, x)
  np.testing.assert_array_equal(logits[0, 1, 1], [[0, 3], [1, 4], [2, 5]])
  np.testing.assert_array_equal(deltas[0, 1, 1], np.arange(12).reshape(3, 4))


def _caffe_sgd_np(params, labels, grads, schedule):
  """sgd_solver.cpp in NumPy: average iter_size gradients, add decay, momentum with lr inside."""
  history = {k: np.zeros_like(v) for k, v in params.items()}
  params = dict(params)
  for it in range(len(grads) // schedule.iter_size):
    lr = schedule.base_lr * schedule.gamma ** (it // schedule.step_size)
    for k in params:
      if labels[k] == "frozen":
        continue
      g = np.mean([grads[it * schedule.iter_size + j][k] for j in range(schedule.iter_size)], 0)
      g = g + schedule.weight_decay * params[k]
      history[k] = schedule.momentum * history[k] + lr * (2.0 if labels[k] == "bias" else 1) * g
      params[k] = params[k] - history[k]
  return params


def test_parameter_labels_and_caffe_sgd():
  rng = np.random.default_rng(0)
  tree = {"detector": {
      "backbone": {"stem": {"conv1": {"kernel": (3, 3)}, "bn1": {"scale": (3,), "bias": (3,)}},
                   "layer1": {"block0": {"conv1": {"kernel": (2, 2)}}},
                   "layer2": {"block0": {"conv2": {"kernel": (2, 3)},
                                         "downsample_bn": {"scale": (3,), "bias": (3,)}}}},
      "head": {"rfcn_cls": {"kernel": (2, 4), "bias": (4,)}}},
      "rfcn_disp": {"kernel": (3, 2), "bias": (2,)}}
  params = jax.tree.map(lambda s: rng.normal(size=s).astype(np.float32), tree,
                        is_leaf=lambda x: isinstance(x, tuple))
  flat_labels = flax.traverse_util.flatten_dict(dt_model.parameter_labels(params))
  backbone = ("detector", "backbone")
  want = {backbone + ("stem", "conv1", "kernel"): "frozen",
          backbone + ("stem", "bn1", "scale"): "frozen",
          backbone + ("stem", "bn1", "bias"): "frozen",
          backbone + ("layer1", "block0", "conv1", "kernel"): "frozen",
          backbone + ("layer2", "block0", "conv2", "kernel"): "weight",
          backbone + ("layer2", "block0", "downsample_bn", "scale"): "frozen",
          backbone + ("layer2", "block0", "downsample_bn", "bias"): "frozen",
          ("detector", "head", "rfcn_cls", "kernel"): "weight",
          ("detector", "head", "rfcn_cls", "bias"): "bias",
          ("rfcn_disp", "kernel"): "weight", ("rfcn_disp", "bias"): "bias"}
  assert flat_labels == want
  unfrozen = flax.traverse_util.flatten_dict(dt_model.parameter_labels(params, frozen_stages=-1))
  assert unfrozen[backbone + ("stem", "conv1", "kernel")] == "weight"
  assert unfrozen[backbone + ("stem", "bn1", "scale")] == "frozen"  # BatchNorm stays frozen
  schedule = dt_model.SolverSchedule(base_lr=0.1, step_size=2, max_iter=4, iter_size=2)
  tx = dt_model.make_optimizer(params, schedule)
  flat_params = flax.traverse_util.flatten_dict(params)
  grads = [{k: rng.normal(size=v.shape).astype(np.float32) for k, v in flat_params.items()}
           for _ in range(8)]
  update = jax.jit(lambda g, s, p: tx.update(g, s, p))
  state, current = tx.init(params), params
  for g in grads:
    updates, state = update(flax.traverse_util.unflatten_dict(g), state, current)
    current = optax.apply_updates(current, updates)
  want = _caffe_sgd_np({k: v.astype(np.float64) for k, v in flat_params.items()}, flat_labels,
                       grads, schedule)
  got = flax.traverse_util.flatten_dict(current)
  for k in want:  # 4 iterations of a few float32 roundings on values of order 1
    np.testing.assert_allclose(got[k], want[k], rtol=0, atol=64 * EPS32, err_msg=str(k))


def _numpy_variables(shapes, seed=0):
  """Variables drawn with NumPy (no compile of JAX's PRNG): kaiming-normal (fan_out) backbone
  kernels, N(0, 0.01) new kernels, zero biases, BatchNorm identity statistics."""
  rng = np.random.default_rng(seed)

  def draw(path, leaf):
    keys = [getattr(k, "key", None) for k in path]
    name, shape = keys[-1], leaf.shape
    if name in ("scale", "var"):
      return jnp.ones(shape)
    if name in ("bias", "mean"):
      return jnp.zeros(shape)
    std = math.sqrt(2.0 / math.prod(shape[:2] + shape[3:])) if "backbone" in keys else 0.01
    return jnp.asarray(rng.normal(0, std, shape), jnp.float32)

  return jax.tree_util.tree_map_with_path(draw, shapes)


def _synthetic_pair():
  """Two noisy 64 x 96 frames with a bright square (class 1, id 4) moving by (3, 2) pixels and a
  dark bar (class 2, id 9) leaving the picture; G = 3 (one padding row)."""
  rng = np.random.default_rng(5)
  frames = rng.uniform(0.3, 0.5, (1, 2, HEIGHT, WIDTH, 3)).astype(np.float32)
  boxes = np.zeros((1, 2, 3, 4), np.float32)
  for t, (dx, dy) in enumerate([(0, 0), (3, 2)]):
    boxes[0, t, 0] = [20 + dx, 16 + dy, 43 + dx, 39 + dy]
    frames[0, t, 16 + dy:40 + dy, 20 + dx:44 + dx] = 0.95
  boxes[0, 0, 1] = [60, 30, 91, 45]
  frames[0, 0, 30:46, 60:92] = 0.05
  labels = np.array([[[1, 2, 0], [1, 0, 0]]])
  ids = np.array([[[4, 9, -1], [4, -1, -1]]])
  return {"frames": frames, "gt_boxes": boxes, "gt_labels": labels, "gt_ids": ids,
          "image_sizes": np.full((1, 2, 2), [HEIGHT, WIDTH])}


@pytest.fixture(scope="module")
def training():
  """The tiny D&T, its variables, one jitted Adam step (compiled once for this module)."""
  model = dt_model.DetectTrack(dt_model.RFCN(**TINY))
  batch = _synthetic_pair()
  shapes = jax.eval_shape(lambda f: model.init(jax.random.key(0), f, train=False),
                          batch["frames"])
  variables = _numpy_variables(shapes)
  labels = dt_model.parameter_labels(variables["params"])
  tx = optax.multi_transform({"frozen": optax.set_to_zero(), "weight": optax.adam(1e-3),
                              "bias": optax.adam(2e-3)}, labels)

  def step(params, opt_state, batch, key):
    def loss_fn(p):
      outputs = model.apply({**variables, "params": p}, batch["frames"], train=True)
      return dt_model.dt_loss(model, outputs, batch, key)
    (loss, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, metrics, grads

  return model, variables, tx, jax.jit(step), batch


def test_training_steps_reduce_loss_and_compile_once(training):
  _, variables, tx, step, batch = training
  params, opt_state = variables["params"], tx.init(variables["params"])
  key = jax.random.key(7)
  losses = []
  for _ in range(8):
    params, opt_state, metrics, grads = step(params, opt_state, batch, key)
    losses.append(float(metrics["loss"]))
  assert np.all(np.isfinite(losses)) and int(metrics["track_rois"]) == 1
  # Measured: 2.515 -> 2.232, each step lower by 0.013 to 0.079 (float32 noise is ~1e-6).
  assert np.all(np.diff(losses) < 0) and losses[-1] < 0.95 * losses[0], losses
  # Frozen stages get no gradient at all (stop_gradient after res2).
  backbone = grads["detector"]["backbone"]
  assert all(np.all(np.asarray(g) == 0) for g in jax.tree.leaves(
      (backbone["stem"], backbone["layer1"])))
  assert any(np.any(np.asarray(g) != 0) for g in jax.tree.leaves(backbone["layer2"]))
  # Another batch of the same shapes (flipped frames and boxes) reuses the compiled step.
  flipped = dict(batch, frames=batch["frames"][:, :, :, ::-1],
                 gt_boxes=np.where(batch["gt_labels"][..., None] > 0,
                                   batch["gt_boxes"][..., [2, 1, 0, 3]] * [-1, 1, -1, 1]
                                   + [WIDTH - 1, 0, WIDTH - 1, 0], 0).astype(np.float32))
  step(params, opt_state, flipped, jax.random.key(8))
  assert step._cache_size() == 1


def _rpn_labels_np(anchors, gts, size):
  """Unsampled anchor labels from anchor_target_layer.py's rule (every anchor kept)."""
  h, w = size
  inside = (anchors[:, 0] >= 0) & (anchors[:, 1] >= 0) & (anchors[:, 2] < w) & (anchors[:, 3] < h)
  iou = np.array([[_iou_np(a, g) for g in gts] for a in anchors])
  iou[~inside] = -1
  labels = np.where(inside & (iou.max(1) < 0.3), 0, -1)
  best = (iou == iou.max(0)) & (iou.max(0) > 0)
  labels[best.any(1) | (inside & (iou.max(1) >= 0.7))] = 1
  return labels, iou.argmax(1)


def _constant_maps(rng, n, num_classes):
  """Score maps constant over space (so every RoI pools the same values) for n images. The
  class logits are multiples of 1/8: every bin sum and average is exact, so all RoIs get
  bit-identical scores (and NMS visits them in index order)."""
  h, w, a = HEIGHT // 16, WIDTH // 16, 6
  cls = rng.integers(-16, 17, num_classes + 1) / 8
  box = rng.normal(0, 0.3, 8)
  tile = lambda v: np.tile(np.repeat(v, 49)[None, None, None], (n, h, w, 1)).astype(np.float32)
  return {"cls_maps": tile(cls), "box_maps": tile(box),
          "rpn_logits": np.zeros((n, h, w, a, 2), np.float32),
          "rpn_deltas": np.zeros((n, h, w, a, 4), np.float32)}, cls, box


def test_dt_loss_matches_numpy_on_constant_maps():
  """RPN, R-FCN and tracking losses with their normalizations: every anchor sampled (a batch
  larger than the 144 anchors), no valid proposal (deltas shrink every box below the minimum
  size), so the RoIs are the ground-truth boxes."""
  rng = np.random.default_rng(3)
  det = dt_model.RFCN(**dict(TINY, rpn_batch_size=512))
  model = dt_model.DetectTrack(det)
  batch = _synthetic_pair()
  maps, cls, box = _constant_maps(rng, 2, 2)
  rpn_deltas = rng.normal(0, 0.5, maps["rpn_deltas"].shape).astype(np.float32)
  rpn_deltas[..., 2:] = -20.0
  maps["rpn_deltas"] = rpn_deltas
  track = rng.normal(0, 0.3, 8)
  outputs = {"detector": maps, "track_maps": np.tile(np.repeat(track, 49), (1, 4, 6, 1))
             .astype(np.float32)}
  loss, metrics = jax.jit(lambda o, b, k: dt_model.dt_loss(model, o, b, k))(
      outputs, batch, jax.random.key(0))

  anchors = targets.shift_anchors(targets.generate_anchors(16, (0.5, 1, 2), (2, 4)), 4, 6, 16)
  frames = [(0, 0), (0, 1)]  # (pair, frame) in the detector's image order: t, then t + tau
  rpn_cls, rpn_box, ce, box_sum, correct, rois = [], [], [], 0.0, 0, 0
  for (p, t), image in zip(frames, range(2)):
    valid = batch["gt_labels"][p, t] > 0
    gts, gt_labels = batch["gt_boxes"][p, t][valid], batch["gt_labels"][p, t][valid]
    labels, best = _rpn_labels_np(anchors, gts, (HEIGHT, WIDTH))
    rpn_cls.append(np.log(2.0))  # zero logits: every sampled anchor costs log 2
    deltas = rpn_deltas[image].reshape(-1, 4)
    t_rpn = _encode_np(anchors, gts[best]) / np.asarray(targets.RPN_BOX_STDS)
    rpn_box.append(np.sum(_smooth_l1_np(deltas - t_rpn, 3.0)[labels == 1]) / np.sum(labels >= 0))
    probs = _softmax_np(cls)
    ce += list(-np.log(probs[gt_labels]))
    correct += np.sum(np.argmax(cls) == gt_labels)
    t_box = (0 - np.asarray(targets.DT_BOX_MEANS)) / np.asarray(targets.DT_BOX_STDS)
    box_sum += len(gts) * np.sum(_smooth_l1_np(box[4:] - t_box))
    rois += len(gts)
  t_track = _encode_np(batch["gt_boxes"][0, 0, :1], batch["gt_boxes"][0, 1, :1])  # id 4 only
  want = {"rpn_cls_loss": np.mean(rpn_cls), "rpn_box_loss": np.mean(rpn_box),
          "cls_loss": np.mean(ce), "box_loss": box_sum / (TINY["ohem_rois"] * 2),
          "accuracy": correct / rois, "track_loss": np.sum(_smooth_l1_np(track[4:] - t_track))}
  want["loss"] = sum(want[k] for k in want if k.endswith("loss"))
  for k, v in want.items():  # float32 sums of ~300 terms of order 1, then a few more roundings
    np.testing.assert_allclose(metrics[k], v, rtol=64 * EPS32, atol=64 * EPS32, err_msg=k)
  assert float(loss) == float(metrics["loss"]) and int(metrics["track_rois"]) == 1


def test_detect_pair_on_constant_maps():
  """Per-RoI probabilities, de-normalized class-agnostic boxes, per-class NMS at 0.3 and the
  tracked boxes, from the proposals `detect` made (the proposals are tested in test_targets)."""
  rng = np.random.default_rng(6)
  det = dt_model.RFCN(**TINY)
  model = dt_model.DetectTrack(det)
  maps, cls, box = _constant_maps(rng, 2, 2)
  maps["rpn_logits"] = rng.normal(0, 1, maps["rpn_logits"].shape).astype(np.float32)
  maps["rpn_deltas"] = rng.normal(0, 0.5, maps["rpn_deltas"].shape).astype(np.float32)
  track = rng.normal(0, 0.3, 8)
  outputs = {"detector": maps,
             "track_maps": np.tile(np.repeat(track, 49), (1, 4, 6, 1)).astype(np.float32)}
  sizes = np.full((1, 2, 2), [HEIGHT, WIDTH])
  got = jax.jit(lambda o, s: dt_model.detect_pair(model, o, s))(outputs, sizes)
  got = jax.tree.map(np.asarray, got)
  assert got["boxes"].shape == (2, 1, 2, 16, 4) and got["tracked_boxes"].shape == (1, 16, 4)
  probs = _softmax_np(cls)
  deltas = box[4:] * np.asarray(targets.DT_BOX_STDS) + np.asarray(targets.DT_BOX_MEANS)
  upper = [WIDTH - 1, HEIGHT - 1, WIDTH - 1, HEIGHT - 1]
  for frame in range(2):
    rois, valid = got["rois"][frame, 0].astype(np.float64), got["roi_valid"][frame, 0]
    assert 0 < valid.sum() <= 16
    np.testing.assert_allclose(got["roi_probs"][frame, 0][valid], np.tile(probs, (valid.sum(), 1)),
                               rtol=8 * EPS32, atol=8 * EPS32)
    regressed = np.clip(_decode_np(rois, np.tile(deltas, (16, 1))), 0, upper)
    overlaps = np.array([[_iou_np(a, b) for b in regressed[valid]] for a in regressed[valid]])
    assert np.all(np.abs(overlaps - 0.3) > 1e-3)  # float32 cannot flip an NMS decision
    # Corner coordinates below 100: a few float32 roundings of relative size eps/2.
    np.testing.assert_allclose(got["roi_boxes"][frame, 0][valid], regressed[valid], rtol=0,
                               atol=16 * EPS32 * 100)
    for c in range(2):
      kept = _greedy_nms_np(regressed, np.full(16, probs[c + 1]), valid, 0.3)
      k = len(kept)
      assert 0 < k < valid.sum()  # NMS suppressed some
      np.testing.assert_array_equal(got["valid"][frame, 0, c], np.arange(16) < k)
      np.testing.assert_allclose(got["boxes"][frame, 0, c, :k], regressed[kept], rtol=0,
                                 atol=16 * EPS32 * 100)
      np.testing.assert_allclose(got["scores"][frame, 0, c, :k], probs[c + 1], rtol=8 * EPS32)
  valid = got["roi_valid"][0, 0]
  tracked = np.clip(_decode_np(got["roi_boxes"][0, 0].astype(np.float64),
                               np.tile(track[4:], (16, 1))), 0, upper)
  np.testing.assert_allclose(got["tracked_boxes"][0][valid], tracked[valid], rtol=0,
                             atol=16 * EPS32 * 100)
