"""D&T figures: loss curves, a strip of frames with tracks, an MP4 of the evaluated sequence.

Each track keeps one colour (a fixed palette indexed by its id) in every frame and figure.
"""
from __future__ import annotations

import pathlib
from collections.abc import Mapping, Sequence
from typing import Any

import cv2
import numpy as np

from readingnotes_jax.training import figures

# Tableau-like colours (RGB), track id k gets PALETTE[k % len].
PALETTE = np.array([[31, 119, 180], [255, 127, 14], [44, 160, 44], [214, 39, 40],
                    [148, 103, 189], [140, 86, 75], [227, 119, 194], [127, 127, 127],
                    [188, 189, 34], [23, 190, 207]], np.uint8)


def track_colour(track_id: int) -> tuple[int, int, int]:
  return tuple(int(v) for v in PALETTE[track_id % len(PALETTE)])


def save_losses(x: Sequence[float], curves: Mapping[str, Sequence[float]], path: pathlib.Path,
                *, ylabel: str = "loss", logy: bool = True, title: str = "training losses"
                ) -> None:
  """Curves with at least one finite value (the detector phase has no track loss)."""
  shown = {k: v for k, v in curves.items() if np.isfinite(np.asarray(v, np.float64)).any()}
  if shown:
    figures.save_curves(x, shown, path, xlabel="step", ylabel=ylabel, title=title, logy=logy)


def draw_tracks(image: np.ndarray, boxes: Sequence[np.ndarray], ids: Sequence[int],
                gt_boxes: np.ndarray | None = None) -> np.ndarray:
  """RGB uint8 copy of `image` with ground truth (thin white) and tracks (id colour, label)."""
  out = np.ascontiguousarray(image.copy())
  thick = max(1, round(min(out.shape[:2]) / 240))
  for box in ([] if gt_boxes is None else gt_boxes):
    x1, y1, x2, y2 = (int(round(v)) for v in box)
    cv2.rectangle(out, (x1, y1), (x2, y2), (255, 255, 255), 1)
  for box, track_id in zip(boxes, ids):
    x1, y1, x2, y2 = (int(round(v)) for v in box)
    colour = track_colour(track_id)
    cv2.rectangle(out, (x1, y1), (x2, y2), colour, thick + 1)
    cv2.putText(out, str(track_id), (x1 + 2, max(y1 - 4, 12)), cv2.FONT_HERSHEY_SIMPLEX,
                0.4 * thick + 0.2, colour, thick, cv2.LINE_AA)
  return out


def frame_tracks(tracks, frame: int) -> tuple[list[np.ndarray], list[int]]:
  """Boxes and ids of the tracks present in `frame`."""
  boxes, ids = [], []
  for track_id, frames, track_boxes, _ in tracks:
    hit = np.flatnonzero(frames == frame)
    if hit.size:
      boxes.append(track_boxes[hit[0]])
      ids.append(track_id)
  return boxes, ids


def save_track_figures(result: Any, figdir: pathlib.Path, step: int,
                       config: Any) -> None:
  """figures/tracks.png (`config.strip_frames` evenly spaced frames with tracks and ground
  truth) and figures/tracks.mp4 (every evaluated frame, `config.video_fps`)."""
  frames, scores = result.frames, result.scores
  count = scores["eval_frames"]
  chosen = np.linspace(0, count - 1, min(config.strip_frames, count)).round().astype(int)
  panels = [draw_tracks(frames.image(t), *frame_tracks(result.tracks, t), frames.boxes[t])
            for t in chosen]
  height = min(p.shape[0] for p in panels)
  panels = [cv2.resize(p, (round(p.shape[1] * height / p.shape[0]), height)) for p in panels]
  strip = np.concatenate([np.pad(p, ((0, 0), (0, 4), (0, 0)), constant_values=255)
                          for p in panels], axis=1)
  mot = (f", MOTA {scores['mota']:.3f}, IDF1 {scores['idf1']:.3f}" if "mota" in scores else "")
  caption = (f"{result.folder.name}, step {step}: mAP detector {scores['map_detector']:.3f}, "
             f"linked {scores['map']:.3f}{mot}; frames {', '.join(str(t + 1) for t in chosen)}")
  bar = np.full((24, strip.shape[1], 3), 255, np.uint8)
  cv2.putText(bar, caption, (4, 17), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (0, 0, 0), 1, cv2.LINE_AA)
  figdir.mkdir(parents=True, exist_ok=True)
  figures.save_image(np.concatenate([bar, strip]), figdir / "tracks.png")
  first = frames.image(0)
  size = (first.shape[1] // 2 * 2, first.shape[0] // 2 * 2)
  writer = cv2.VideoWriter(str(figdir / "tracks.mp4"), cv2.VideoWriter_fourcc(*"mp4v"),
                           float(config.video_fps), size)
  try:
    for t in range(count):
      panel = draw_tracks(frames.image(t), *frame_tracks(result.tracks, t))
      writer.write(cv2.cvtColor(np.ascontiguousarray(panel[:size[1], :size[0]]),
                                cv2.COLOR_RGB2BGR))
  finally:
    writer.release()
