"""D&T training and evaluation on the shared trainer: the detector stage, then D&T from it.

One run has two phases (`training.runner` phases, as ProGAN's stages):
- phase 0, the detector (R-FCN + its jointly trained RPN): `model.detector_loss` on both
  frames of each pair (`Detect-Track`'s detector solver sees 2 images a pass), SGD of
  `config.detector` (D&T `solver_120k160k_lr1_3.prototxt`: lr 1e-3, x0.1 at 120k, 160k
  iterations, iter_size 2); the RoI-tracking layer `rfcn_disp` is not updated;
- phase 1, D&T (`model.dt_loss`: detection on both frames + the RoI-tracking loss), SGD of
  `config.dt` (`solver_160k240k_lr1_4.prototxt`: lr 1e-4, x0.1 at 160k, 240k iterations,
  iter_size 4) started afresh from the detector's weights (zero momentum), as the official
  D&T stage starts from the trained detector.
A phase of 0 iterations is skipped; `init_from` starts a run from another workdir's weights
(the paper's D&T run from its detector run), `model.backbone_init` from ImageNet ResNet
weights (`nn.resnet_weights`). Positions count forward/backward passes
(`iterations * iter_size` per phase); the solver averages `iter_size` passes per update
(`model.make_optimizer`).

With `data.det_split` (ImageNet VID runs), every other detector pass reads two DET images
per pair slot instead (`data.DetStream`), and `data.detector_frames_per_video` limits the
detector's VID pairs to evenly spaced frames of each video. Resume is exact: pair `k` of a
stream is a function of (seed, k) (`data.PairStream`, `data.DetStream`) and
the anchor-sampling key of pass `s` is `fold_in(key(seed), s)`.

Evaluator "tracking" (`Tracking`): the official test protocol on one MOTChallenge sequence
(`data.eval_sequence` below `data.path`, or `data.eval_dir`): every frame t with t + 1
through `model.detect_pair`, `map_detector` from the frame detections alone (per-class NMS
at 0.3), then `linking.link_video` with the RoI tracks (`rfcn_test_vid.m`) and `map` from
the rescored tubes; each run of a tube's boxes with detection score >= `eval.track_score`
whose consecutive boxes overlap at IoU >= `eval.track_iou` is a track scored by
`metrics.mot` (mota, idf1, id_switches). AP uses the VID devkit's per-object
IoU threshold min(0.5, wh / ((w + 10)(h + 10))).
"""
from __future__ import annotations

import functools
import pathlib
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from readingnotes_jax.detect_track import data as dt_data
from readingnotes_jax.detect_track import figures as dt_figures
from readingnotes_jax.detect_track import linking
from readingnotes_jax.detect_track import model as dt_model
from readingnotes_jax.errors import UserError
from readingnotes_jax.metrics import detection, mot as mot_metrics
from readingnotes_jax.metrics.detection import box_iou
from readingnotes_jax.nn import precision, resnet_weights
from readingnotes_jax.training import mesh as mesh_lib, runner
from readingnotes_jax.training.checkpoint import Checkpointer

DETECTOR, DT = 0, 1
PHASE_NAMES = ("detector", "dt")
# XLA's RngBitGenerator keys (as the other trainers): fast to compile on XLA:CPU and the same
# numbers for any sharding of the batch.
PRNG_IMPL = "rbg"


def build_model(config: ml_collections.ConfigDict) -> dt_model.DetectTrack:
  m = config.model
  detector = dt_model.RFCN(
      num_classes=m.num_classes, layers=m.layers, width=m.width,
      head_features=m.head_features or None, anchor_scales=tuple(m.anchor_scales),
      anchor_ratios=tuple(m.anchor_ratios), num_rois=m.num_rois, pre_nms_rois=m.pre_nms_rois,
      rpn_min_size=m.rpn_min_size, rpn_batch_size=m.rpn_batch_size, ohem_rois=m.ohem_rois,
      test_nms_iou=m.test_nms_iou, max_detections_per_class=m.max_detections_per_class or None,
      frozen_stages=m.frozen_stages, stride_in_1x1=m.stride_in_1x1, frozen_bn=m.frozen_bn,
      dtype=precision.compute_dtype(m.dtype), lowering=m.lowering or None)
  return dt_model.DetectTrack(detector, max_displacement=m.max_displacement,
                              correlation_method=m.correlation_method or None)


def schedule(config: ml_collections.ConfigDict, phase: int) -> dt_model.SolverSchedule:
  s = config[PHASE_NAMES[phase]]
  return dt_model.SolverSchedule(base_lr=s.base_lr, step_size=s.step_size, max_iter=s.iterations,
                                 iter_size=s.iter_size, momentum=config.optimizer.momentum,
                                 weight_decay=config.optimizer.weight_decay)


def phase_passes(config: ml_collections.ConfigDict) -> tuple[int, int]:
  """Forward/backward passes of the detector and D&T phases."""
  return tuple(config[n].iterations * config[n].iter_size for n in PHASE_NAMES)


def learning_rate(s: dt_model.SolverSchedule, iteration: int) -> float:
  return s.base_lr * s.gamma ** (iteration // s.step_size)


def _check_config(config: ml_collections.ConfigDict, num_devices: int) -> None:
  """UserError for settings that cannot work, before anything is read or written."""
  for name in PHASE_NAMES:
    s = config[name]
    if s.iterations < 0 or s.iter_size < 1 or s.step_size < 1:
      raise UserError(f"{name}: iterations={s.iterations}, iter_size={s.iter_size}, "
                      f"step_size={s.step_size}: give iterations >= 0, iter_size and "
                      "step_size >= 1")
  if sum(phase_passes(config)) < 1:
    raise UserError("detector.iterations and dt.iterations are both 0: nothing to train")
  if config.batch_size < 1 or config.batch_size % num_devices:
    raise UserError(f"batch_size={config.batch_size} does not split over {num_devices} "
                    "devices: use a positive multiple of the device count")
  h, w = config.data.image_size
  if h < 32 or w < 32 or h % 16 or w % 16:
    raise UserError(f"data.image_size={tuple(config.data.image_size)}: give (height, width), "
                    "multiples of 16 (the feature stride), at least 32")
  if not config.data.train_scales or config.eval.scale < 1:
    raise UserError("data.train_scales is empty or eval.scale < 1: give short-side scales in "
                    "pixels, e.g. (600,)")
  if config.data.tau < 1:
    raise UserError(f"data.tau={config.data.tau}: give the frame distance of a pair, >= 1")


def create_train_state(model: dt_model.DetectTrack, tx: optax.GradientTransformation,
                       key: jax.Array) -> dict[str, Any]:
  variables = model.init(key, jnp.zeros((1, 2, 64, 64, 3), jnp.float32), train=False)
  return {"params": variables["params"], "batch_stats": variables["batch_stats"],
          "opt_state": tx.init(variables["params"])}


def _detector_maps(module: dt_model.DetectTrack, images: jax.Array, train: bool):
  return module.detector(images, train=train)


def train_step(state: dict[str, Any], batch: dict[str, jax.Array], key: jax.Array, *,
               model: dt_model.DetectTrack, tx: optax.GradientTransformation, phase: int
               ) -> tuple[dict[str, Any], dict[str, jax.Array]]:
  """One pass of `phase` on a batch of pairs ("frames" [N, 2, H, W, 3], boxes, labels,
  ids, image sizes and scales per pair and frame, as `data.PairStream`)."""
  mutable = [] if model.detector.frozen_bn else ["batch_stats"]

  def loss_fn(params):
    variables = {"params": params, "batch_stats": state["batch_stats"]}
    if phase == DETECTOR:
      frames = {k: dt_model.frame_major(batch[k])
                for k in ("gt_boxes", "gt_labels", "image_sizes", "image_scales")}
      maps, updated = model.apply(variables, dt_model.frame_major(batch["frames"]),
                                  train=True, method=_detector_maps, mutable=mutable)
      loss, metrics = dt_model.detector_loss(model.detector, maps, frames, key)
    else:
      outputs, updated = model.apply(variables, batch["frames"], train=True, mutable=mutable)
      loss, metrics = dt_model.dt_loss(model, outputs, batch, key)
    return loss, (metrics, updated.get("batch_stats", state["batch_stats"]))

  (_, (metrics, batch_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state["params"])
  updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
  if phase == DETECTOR:  # The detector stage has no RoI-tracking layer.
    updates = {**updates, "rfcn_disp": jax.tree.map(jnp.zeros_like, updates["rfcn_disp"])}
  params = optax.apply_updates(state["params"], updates)
  return {"params": params, "batch_stats": batch_stats, "opt_state": opt_state}, metrics


def predict_pairs(variables: dict[str, Any], frames: jax.Array, image_sizes: jax.Array, *,
                  model: dt_model.DetectTrack) -> dict[str, jax.Array]:
  """`detect_pair` outputs of frame t of each pair (and its RoIs moved into t + 1)."""
  outputs = model.apply(variables, frames, train=False)
  out = dt_model.detect_pair(model, outputs, image_sizes)
  first = {k: out[k][0] for k in ("boxes", "scores", "valid", "roi_boxes", "roi_valid",
                                   "roi_probs")}
  return {**first, "tracked_boxes": out["tracked_boxes"]}


class SequenceResult(NamedTuple):
  """What the evaluator keeps of its last sequence for figures."""
  folder: pathlib.Path
  frames: dt_data.Frames
  factors: np.ndarray  # [T] resize factor of each frame
  tracks: list[tuple[int, np.ndarray, np.ndarray, np.ndarray]]  # (id, frames, boxes, scores)
  scores: dict[str, Any]


def tube_tracks(tubes: list[linking.Tube], min_score: float, min_iou: float
                ) -> list[tuple[int, np.ndarray, np.ndarray, np.ndarray]]:
  """MOT tracks from tubes: a tube is cut where its detection score drops below `min_score`
  and where two consecutive boxes overlap less than `min_iou` (a Viterbi tube passes every
  frame: there it has left its object); each piece is one track (id, frames, boxes, scores),
  ids counting from 1 in linking order."""
  out = []
  for tube in tubes:
    keep = tube.scores >= min_score
    steps = np.diagonal(box_iou(tube.boxes[:-1], tube.boxes[1:], inclusive=True))
    starts = keep & ~np.concatenate([[False], keep[:-1] & (steps >= min_iou)])
    pieces = np.cumsum(starts)
    for piece in np.unique(pieces[keep]):
      members = keep & (pieces == piece)
      out.append((len(out) + 1, tube.frames[members], tube.boxes[members], tube.scores[members]))
  return out


class Tracking:
  """Evaluator "tracking": detections, linked tubes and MOT tracks on one sequence."""

  def __init__(self, task: "Task"):
    self.task = task
    self.config = task.config
    self.frames = dt_data.eval_frames(self.config)
    self.folder = self.frames.folder
    self.last: SequenceResult | None = None
    mesh = task.mesh
    self.batch = -(-self.config.eval.batch_size // mesh.size) * mesh.size
    self._predict = jax.jit(functools.partial(predict_pairs, model=task.model),
                            in_shardings=(mesh_lib.replicated(mesh), mesh_lib.batch_sharded(mesh),
                                          mesh_lib.batch_sharded(mesh)),
                            out_shardings=mesh_lib.replicated(mesh))

  def _inputs(self, count: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """All pairs (t, t + 1) of the first `count` frames (the last frame with itself)."""
    c = self.config
    prepared = [dt_data.prepare(self.frames.image(i), self.frames.boxes[i], scale=c.eval.scale,
                                max_size=c.data.max_size, canvas=tuple(c.data.image_size))
                for i in range(count)]
    images = np.stack([p.image for p in prepared])
    later = np.minimum(np.arange(count) + 1, count - 1)
    same = self.frames.videos[later] == self.frames.videos[:count]
    later = np.where(same, later, np.arange(count))
    pairs = np.stack([images, images[later]], axis=1)
    sizes = np.array([p.size for p in prepared], np.int32)
    return pairs, np.stack([sizes, sizes[later]], axis=1), np.array([p.factor for p in prepared])

  def run(self, state, *, step: int, position: int, final: bool) -> dict[str, Any]:
    del step, position
    c = self.config
    count = len(self.frames) if final or not c.eval.periodic_frames else min(
        c.eval.periodic_frames, len(self.frames))
    pairs, sizes, factors = self._inputs(count)
    variables = {"params": state["params"], "batch_stats": state["batch_stats"]}
    outputs = []
    share = self.batch // jax.process_count()
    mine = slice(jax.process_index() * share, (jax.process_index() + 1) * share)
    for start in range(0, count, self.batch):
      index = np.minimum(np.arange(start, start + self.batch), count - 1)[mine]
      inputs = mesh_lib.shard_batch((pairs[index], sizes[index]), self.task.mesh)
      out = jax.device_get(self._predict(variables, *inputs))
      outputs.append({k: v[:min(self.batch, count - start)] for k, v in out.items()})
    out = {k: np.concatenate([o[k] for o in outputs]) for k in outputs[0]}
    scores, tracks = score_sequence(out, factors, self.frames, count, c)
    if final:
      self.last = SequenceResult(self.folder, self.frames, factors, tracks, scores)
    return scores


def score_sequence(out: dict[str, np.ndarray], factors: np.ndarray, frames: dt_data.Frames,
                   count: int, config: ml_collections.ConfigDict):
  """(scores, person tracks) of the first `count` frames' `predict_pairs` outputs, boxes in
  original pixels. Linking runs per video; the MOT scores (one-class data only) sum the
  per-video counts, as MOTChallenge's overall scores do."""
  num_classes = config.model.num_classes
  scale = lambda boxes, t: np.asarray(boxes, np.float64) / factors[t]
  gt_boxes = [frames.boxes[t] for t in range(count)]
  gt_labels = [frames.labels[t] for t in range(count)]
  det_boxes, det_scores, det_labels = [], [], []
  roi_boxes, roi_scores, tracks = [], [], []
  for t in range(count):
    valid = out["valid"][t]
    labels = np.broadcast_to(np.arange(num_classes)[:, None], valid.shape)
    det_boxes.append(scale(out["boxes"][t][valid], t))
    det_scores.append(out["scores"][t][valid])
    det_labels.append(labels[valid])
    rois = out["roi_valid"][t]
    roi_boxes.append(scale(out["roi_boxes"][t][rois], t))
    roi_scores.append(out["roi_probs"][t][rois][:, 1:])
    if t + 1 < count and frames.videos[t + 1] == frames.videos[t]:
      moved = np.asarray(out["tracked_boxes"][t][rois], np.float64) / factors[t + 1]
      tracks.append(linking.tracklets(roi_boxes[-1], moved, roi_scores[-1]))
    else:
      tracks.append(None)
  detector_ap = detection.vid_average_precision(det_boxes, det_scores, det_labels, gt_boxes,
                                                gt_labels, num_classes)
  linked = [[None] * count for _ in range(3)]
  person_tracks, counts = [], {}
  for video in dict.fromkeys(frames.videos[:count]):
    index = np.flatnonzero(frames.videos[:count] == video)
    tubes = linking.link_video([roi_boxes[t] for t in index], [roi_scores[t] for t in index],
                               [tracks[t] for t in index])
    for part, values in zip(linked, linking.tubes_to_detections(tubes, len(index))):
      for t, v in zip(index, values):
        part[t] = v
    if num_classes == 1:
      video_tracks = [(len(person_tracks) + k, index[f], b, s) for k, f, b, s in
                      tube_tracks(tubes[0], config.eval.track_score, config.eval.track_iou)]
      person_tracks += video_tracks
      for key, value in _mot_counts(frames, index, video_tracks).items():
        counts[key] = counts.get(key, 0) + value
  linked_ap = detection.vid_average_precision(*linked, gt_boxes, gt_labels, num_classes)
  scores = {"map_detector": detector_ap["map"], "map": linked_ap["map"], "eval_frames": count}
  if num_classes == 1:
    objects = max(counts["num_objects"], 1)
    scores.update(
        mota=1 - (counts["num_false_positives"] + counts["num_misses"]
                  + counts["num_switches"]) / objects,
        idf1=2 * counts["idtp"] / max(2 * counts["idtp"] + counts["idfp"] + counts["idfn"], 1),
        id_switches=int(counts["num_switches"]), num_tracks=len(person_tracks))
  return scores, person_tracks


def _mot_counts(frames: dt_data.Frames, index: np.ndarray, tracks) -> dict[str, int]:
  """`metrics.mot` counts of one video's tracks against its ground truth."""
  continuous = lambda b: np.asarray(b, np.float64).reshape(-1, 4) + [0, 0, 1, 1]
  gt = [(t, i, b) for t in index for i, b in zip(frames.track_ids[t], frames.boxes[t])]
  rows = [(f, k, b) for k, fs, bs, _ in tracks for f, b in zip(fs, bs)]
  result = mot_metrics.mot_metrics(
      np.array([r[0] for r in gt]), np.array([r[1] for r in gt]), continuous([r[2] for r in gt]),
      np.array([r[0] for r in rows]), np.array([r[1] for r in rows]),
      continuous([r[2] for r in rows]))
  return {k: result[k] for k in ("num_objects", "num_false_positives", "num_misses",
                                 "num_switches", "idtp", "idfp", "idfn")}


EVALUATORS = {"tracking": Tracking}


def save_curves(rows: list[dict[str, Any]], figdir: pathlib.Path) -> None:
  """figures/loss.png (the losses of both phases) and figures/map.png (evaluations)."""
  train_rows = [r for r in rows if "loss" in r]
  if train_rows:
    names = ("loss", "rpn_cls_loss", "rpn_box_loss", "cls_loss", "box_loss", "track_loss")
    curves = {k: [r.get(k, np.nan) for r in train_rows] for k in names}
    dt_figures.save_losses([r["step"] for r in train_rows], curves, figdir / "loss.png")
  eval_rows = [r for r in rows if "map" in r]
  if eval_rows:
    dt_figures.save_losses([r["step"] for r in eval_rows],
                           {k: [r.get(k, np.nan) for r in eval_rows]
                            for k in ("map_detector", "map", "mota", "idf1")},
                           figdir / "scores.png", ylabel="score", logy=False,
                           title="evaluation sequence")


class Task:
  """D&T for `training.runner`: positions are forward/backward passes; phases detector, D&T."""
  unit = "pass"

  def __init__(self, config: ml_collections.ConfigDict, mesh: jax.sharding.Mesh):
    _check_config(config, mesh.size)
    if config.model.frozen_bn and not (config.model.backbone_init or config.init_from):
      raise UserError("model.frozen_bn=True keeps every BatchNorm at its initial statistics: "
                      "give trained weights (model.backbone_init or init_from), or train from "
                      "scratch with model.frozen_bn=False")
    self.config, self.mesh = config, mesh
    self.model = build_model(config)
    self.passes = phase_passes(config)
    self.total = sum(self.passes)
    # Data first: a bad file stops the run before the workdir is touched.
    self.train_frames = dt_data.train_frames(config)
    det = dt_data.det_frames(config) if config.data.det_split else None
    sources = self.train_frames + ([] if det is None else [det])
    most = max(len(b) for f in sources for b in f.boxes)
    if most > config.data.max_boxes:
      raise UserError(f"a training frame has {most} boxes but data.max_boxes="
                      f"{config.data.max_boxes}: raise data.max_boxes")
    self.streams = [dt_data.PairStream(f, config) for f in self.train_frames]
    spaced = config.data.detector_frames_per_video
    self.detector_streams = ([dt_data.PairStream(f, config, spaced) for f in self.train_frames]
                             if spaced else self.streams)
    self.det_stream = None if det is None else dt_data.DetStream(det, config)
    self.txs = [self._optimizer(phase) for phase in (DETECTOR, DT)]
    self._init_key, self.key = jax.random.split(jax.random.key(config.seed, impl=PRNG_IMPL))
    self._steps: dict[int, Any] = {}
    self._evaluators: dict[str, Any] = {}

  def _optimizer(self, phase: int) -> optax.GradientTransformation:
    params = jax.eval_shape(lambda: self.model.init(
        jax.random.key(0), jnp.zeros((1, 2, 64, 64, 3)), train=False)["params"])
    m = self.config.model
    return dt_model.make_optimizer(params, schedule(self.config, phase), m.frozen_stages,
                                   m.frozen_bn)

  def identity(self) -> dict[str, Any]:
    return {"seed": self.config.seed, "train_sequences": list(self.config.data.train_sequences),
            "num_classes": self.config.model.num_classes, "passes": list(self.passes),
            **({"det_split": self.config.data.det_split} if self.det_stream is not None else {})}

  def init_key(self) -> jax.Array:
    return self._init_key

  def init_state(self, key: jax.Array) -> dict[str, Any]:
    return create_train_state(self.model, self.txs[self.phase(0)], key)

  def phase(self, position: int) -> int:
    return DETECTOR if position < self.passes[DETECTOR] else DT

  def start_phase(self, state, phase: int):
    """D&T starts from the detector's weights with a fresh solver (zero momentum)."""
    init = jax.jit(self.txs[phase].init, out_shardings=mesh_lib.replicated(self.mesh))
    return {**state, "opt_state": init(state["params"])}

  def _step_fn(self, phase: int):
    if phase not in self._steps:
      replicated = mesh_lib.replicated(self.mesh)
      step = functools.partial(train_step, model=self.model, tx=self.txs[phase], phase=phase)
      self._steps[phase] = jax.jit(
          step, in_shardings=(replicated, mesh_lib.batch_sharded(self.mesh), replicated),
          out_shardings=(replicated, replicated), donate_argnums=(0,))
    return self._steps[phase]

  def train_step(self, state, step: int, position: int):
    if step == 0 and self.config.model.backbone_init:  # a fresh run: resumes start later
      state = with_backbone_init(state, self.config.model.backbone_init, self.mesh)
    if step == 0 and self.config.init_from:
      state = with_weights_from(state, self.config.init_from, self)
    phase = self.phase(position)
    n = self.config.batch_size
    streams = self.detector_streams if phase == DETECTOR else self.streams
    stream = streams[step % len(streams)]
    if phase == DETECTOR and self.det_stream is not None and position % 2:  # rfcn_train.m: imdbs alternate
      stream = self.det_stream
    batch = stream.batch(position * n, n, jax.process_index(), jax.process_count())
    state, metrics = self._step_fn(phase)(state, mesh_lib.shard_batch(batch, self.mesh),
                                          jax.random.fold_in(self.key, position))
    s = schedule(self.config, phase)
    start = 0 if phase == DETECTOR else self.passes[DETECTOR]
    lr = learning_rate(s, (position - start) // s.iter_size)
    return state, metrics, {"lr": lr, "phase": phase}, position + 1

  def evaluators(self) -> dict[str, Any]:
    self._evaluators = runner.build_evaluators(self.config.evals, EVALUATORS, self)
    return self._evaluators

  def figures(self, state, figdir: pathlib.Path, step: int, position: int, rows, scores,
              final: bool) -> None:
    """Loss and score curves; at the end, frames with tracks and an MP4 of the sequence."""
    del state, position
    save_curves(rows, figdir)
    tracking = self._evaluators.get("tracking")
    if final and scores and tracking is not None and tracking.last is not None:
      dt_figures.save_track_figures(tracking.last, figdir, step, self.config.figures)

  def close(self) -> None:
    """Nothing to release: the TFDS sources are plain files read on demand."""


def with_backbone_init(state: dict[str, Any], path: str,
                       mesh: jax.sharding.Mesh) -> dict[str, Any]:
  """`state` with the backbone's parameters and BatchNorm statistics from an ImageNet ResNet
  (`nn.resnet_weights`: a torchvision-layout `.pth` / `.npz` or a `save_resnet_checkpoint`
  directory); its `fc.*` and unused stages are left out. The official D&T starts from the
  MSRA ImageNet ResNets (Caffe); torchvision's files need `model.stride_in_1x1=False`."""
  backbone = lambda tree: tree["detector"]["backbone"]
  target = {"params": backbone(state["params"]), "batch_stats": backbone(state["batch_stats"])}
  try:
    loaded, _ = resnet_weights.load_resnet_weights(path, target)
  except UserError as e:
    raise UserError(f"model.backbone_init: {e}") from e
  loaded = mesh_lib.replicate(loaded, mesh)
  with_backbone = lambda tree, new: {**tree, "detector": {**tree["detector"], "backbone": new}}
  return {**state, "params": with_backbone(state["params"], loaded["params"]),
          "batch_stats": with_backbone(state["batch_stats"], loaded["batch_stats"])}


def with_weights_from(state: dict[str, Any], workdir: str, task: Task) -> dict[str, Any]:
  """`state` with the parameters and BatchNorm statistics of `workdir`'s latest checkpoint
  (a run of the same model, e.g. the detector stage); the optimizer state stays fresh."""
  ckpt = Checkpointer(pathlib.Path(workdir).expanduser() / "checkpoints")
  try:
    if ckpt.latest_step() is None:
      raise UserError(f"init_from={workdir}: no checkpoint there; train the detector first")
    loaded, meta = ckpt.restore(runner.abstract_state(task, task.mesh))  # UserError if another model
  finally:
    ckpt.close()
  if meta.get("num_classes") != task.config.model.num_classes:
    raise UserError(f"init_from={workdir} has num_classes={meta.get('num_classes')}, this "
                    f"config {task.config.model.num_classes}: use a run with the same classes")
  return {**state, "params": loaded["params"], "batch_stats": loaded["batch_stats"]}


def make_task(config: ml_collections.ConfigDict, mesh: jax.sharding.Mesh) -> Task:
  return Task(config, mesh)


def abstract_state(config: ml_collections.ConfigDict,
                   model: dt_model.DetectTrack | None = None) -> dict[str, Any]:
  """Shapes and dtypes of the train state (no data read, nothing computed)."""
  model = model or build_model(config)
  params = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 2, 64, 64, 3)),
                                             train=False)["params"])
  tx = dt_model.make_optimizer(params, schedule(config, DT), config.model.frozen_stages,
                               config.model.frozen_bn)
  return jax.eval_shape(functools.partial(create_train_state, model, tx),
                        jax.random.key(0, impl=PRNG_IMPL))


def summary(config: ml_collections.ConfigDict) -> dict[str, Any]:
  """Parameter counts and the FLOPs of one D&T pass at the config's batch and canvas."""
  _check_config(config, 1)
  model = build_model(config)
  abstract = abstract_state(config, model)
  tx = dt_model.make_optimizer(abstract["params"], schedule(config, DT),
                               config.model.frozen_stages, config.model.frozen_bn)
  n, (h, w), g = config.batch_size, config.data.image_size, config.data.max_boxes
  batch = {"frames": jax.ShapeDtypeStruct((n, 2, h, w, 3), jnp.float32),
           "gt_boxes": jax.ShapeDtypeStruct((n, 2, g, 4), jnp.float32),
           "gt_labels": jax.ShapeDtypeStruct((n, 2, g), jnp.int32),
           "gt_ids": jax.ShapeDtypeStruct((n, 2, g), jnp.int32),
           "image_sizes": jax.ShapeDtypeStruct((n, 2, 2), jnp.int32),
           "image_scales": jax.ShapeDtypeStruct((n, 2), jnp.float32)}
  flops = runner.step_flops(train_step, abstract, batch,
                            jax.eval_shape(lambda: jax.random.key(0, impl=PRNG_IMPL)),
                            model=model, tx=tx, phase=DT)
  params = abstract["params"]
  return {"params": {"model": runner.count_params(params),
                     "detector": runner.count_params(params["detector"]),
                     "backbone": runner.count_params(params["detector"]["backbone"]),
                     "rfcn_disp": runner.count_params(params["rfcn_disp"])},
          "flops_per_pass": flops, "batch_size": n, "image_size": [h, w],
          "layers": config.model.layers}
