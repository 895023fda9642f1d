"""D&T on a live stream: frame-by-frame detection and tracking from a training workdir.

The paper links tubes over a whole video (`linking.link_video`: Viterbi needs every frame);
a stream never has the future, so `OnlineTracker` keeps D&T's two parts and links greedily:
each new frame t + 1 goes through the network with frame t (`model.detect_pair`); its
detections (per-class NMS, score >= `min_score`) are the boxes shown; the RoI tracker moves
the tracks of frame t into frame t + 1 (`model.track_regression` at the tracks' boxes), and a
detection inherits the id of the moved track it overlaps most (IoU >= `match_iou`, each
track once, best overlaps first); the rest start new tracks.
"""
from __future__ import annotations

import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from readingnotes_jax.detect_track import data as dt_data
from readingnotes_jax.detect_track import model as dt_model
from readingnotes_jax.detect_track import train
from readingnotes_jax.metrics.detection import box_iou
from readingnotes_jax.training import runner

MAX_TRACKS = 32  # tracks carried between frames (a fixed shape: one compile).


class Tracked(NamedTuple):
  """One frame's tracks: ids [K], boxes [K, 4] (pixel-inclusive corners of the frame),
  scores [K]."""
  ids: np.ndarray
  boxes: np.ndarray
  scores: np.ndarray


def _step(variables, pair, sizes, previous, previous_valid, *, model):
  """Detections of frame t + 1 (every class, flattened) and `previous` boxes of frame t moved
  there."""
  outputs = model.apply(variables, pair, train=False)
  maps = outputs["detector"]
  second = {k: v[1:] for k, v in maps.items()}
  detections = dt_model.detect(model.detector, second, sizes[:, 1])
  moved = dt_model.track_regression(model, outputs["track_maps"], previous, previous_valid,
                                    sizes[:, 0])
  return {"boxes": detections["boxes"][0].reshape(-1, 4),
          "scores": detections["scores"][0].reshape(-1),
          "valid": detections["valid"][0].reshape(-1), "moved": moved[0]}


def match(moved: np.ndarray, boxes: np.ndarray, min_iou: float) -> dict[int, int]:
  """{detection index: track index}: pairs by decreasing IoU >= min_iou, each used once."""
  if not len(moved) or not len(boxes):
    return {}
  iou = box_iou(boxes, moved, inclusive=True)
  pairs = {}
  for flat in np.argsort(-iou, axis=None, kind="stable"):
    d, t = np.unravel_index(flat, iou.shape)
    if iou[d, t] < min_iou:
      break
    if d not in pairs and t not in pairs.values():
      pairs[int(d)] = int(t)
  return pairs


class OnlineTracker:
  """`update(frame) -> Tracked` for consecutive frames of one stream (see the module
  docstring). The first frame is paired with itself (no tracks yet)."""

  def __init__(self, config, variables, *, min_score: float = 0.5, match_iou: float = 0.5):
    self.config, self.variables = config, variables
    self.model = train.build_model(config)
    self.min_score, self.match_iou = min_score, match_iou
    self._step = jax.jit(functools.partial(_step, model=self.model))
    self._previous: dt_data.Prepared | None = None
    self._tracks = Tracked(np.zeros(0, np.int64), np.zeros((0, 4)), np.zeros(0))
    self._next_id = 1

  def update(self, frame: np.ndarray) -> Tracked:
    c = self.config
    current = dt_data.prepare(frame, np.zeros((0, 4)), scale=c.eval.scale,
                              max_size=c.data.max_size, canvas=tuple(c.data.image_size))
    previous = self._previous or current
    if previous.size != current.size:  # The stream changed resolution: start over.
      previous, self._tracks = current, self._tracks._replace(
          ids=np.zeros(0, np.int64), boxes=np.zeros((0, 4)), scores=np.zeros(0))
    k = min(len(self._tracks.ids), MAX_TRACKS)
    carried = np.zeros((1, MAX_TRACKS, 4), np.float32)
    carried[0, :k] = self._tracks.boxes[:k] * previous.factor
    valid = np.zeros((1, MAX_TRACKS), bool)
    valid[0, :k] = True
    pair = np.stack([previous.image, current.image])[None]
    sizes = np.array([[previous.size, current.size]], np.int32)
    out = jax.device_get(self._step(self.variables, pair, sizes, carried, valid))
    keep = out["valid"] & (out["scores"] >= self.min_score)
    boxes = np.asarray(out["boxes"][keep], np.float64) / current.factor
    scores = np.asarray(out["scores"][keep], np.float64)
    moved = np.asarray(out["moved"][:k], np.float64) / current.factor
    pairs = match(moved, boxes, self.match_iou)
    ids = np.zeros(len(boxes), np.int64)
    for d in range(len(boxes)):
      if d in pairs:
        ids[d] = self._tracks.ids[pairs[d]]
      else:
        ids[d], self._next_id = self._next_id, self._next_id + 1
    self._previous = current
    self._tracks = Tracked(ids, boxes, scores)
    return self._tracks


def load_tracker(workdir: str, **options: Any) -> OnlineTracker:
  """An `OnlineTracker` of the latest checkpoint and `config.json` of a D&T workdir
  (`options`: min_score, match_iou)."""
  config = runner.read_config(workdir, "detect_track")
  model = train.build_model(config)
  state, _ = runner.restore_latest(workdir, train.abstract_state(config, model))
  variables = {"params": state["params"], "batch_stats": state["batch_stats"]}
  return OnlineTracker(config, jax.tree.map(jnp.asarray, variables), **options)
