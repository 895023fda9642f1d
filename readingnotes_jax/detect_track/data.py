"""D&T's training pairs and evaluation frames: MOTChallenge sequences (person) or ImageNet VID.

Frames come from the TFDS copy of the sequences (`data.mot.MOTChallenge`) or of ILSVRC2015
(`data.vid.ImageNetVID`, splits train / val), read with `tfds.data_source`. Every image is resized as R-FCN's `prep_im_for_blob` (py-R-FCN
`lib/utils/blob.py`): its short side to a target scale, its long side at most `max_size`,
then placed at the top left of a fixed canvas (`data.image_size`, multiples of 16, so the
step compiles once) with zeros (the mean pixel) around it; `image_sizes` gives the part
that is image. The target scale of a training pair is drawn from `data.train_scales`
(py-R-FCN's `cfg.TRAIN.SCALES`: one of them per image at random); a training image larger
than the canvas is cropped to it at a random place (an addition for CPU-sized canvases: the
official canvas holds the whole image). Both frames of a pair share scale, crop and
horizontal flip (`rfcn_get_minibatch.m` flips a whole pair).

Pairs are (t, t + tau) of one sequence (D&T trains with tau = 1); pair `k` of the stream,
its scale and its flip are functions of (seed, k) only, so a resumed run reads exactly
what an uninterrupted one would. Boxes are 0-based pixel-inclusive corners (Caffe's, as
`detect_track.targets` expects): a MOT box (left, top, width, height), 1-based, becomes
(left - 1, top - 1, left + width - 2, top + height - 2); labels are the data set's class
index + 1 (MOT: 1, person), 0 pads.

The detector stage also reads ImageNet DET images of the 30 VID classes (`data.det_split`,
e.g. "det_train" of `data.vid.ImageNetVID`): `DetStream` samples them per class as
`imdb/imdb_sample_cls.m` does (`data.det_per_class`, the official 2000) and gives two
images a draw (the detector solver's `ims_per_batch = 2`); the trainer takes every other
pass from it, as `rfcn_train.m` alternates its two imdbs. With
`data.detector_frames_per_video` (the official 30, `imdb_sample_frames.m`) the detector
stage's VID pairs start at that many evenly spaced frames of each video (the official
stage reads those frames alone; here each comes with its next frame).
"""
from __future__ import annotations

import os
import pathlib
from typing import Any, NamedTuple

import cv2
import ml_collections
import numpy as np

from readingnotes_jax.data import mot, tfds_local, vid
from readingnotes_jax.errors import UserError

# Caffe ResNet's mean pixel (D&T `rfcn_config.m` image_means, BGR 102.98 115.95 122.77), in RGB;
# the scale divides by a typical pixel standard deviation so the inputs have unit size.
PIXEL_MEAN = np.array([122.77, 115.95, 102.98], np.float32)
PIXEL_SCALE = 1.0 / 58.0
DEFAULT_FOLDER = "mot15"


SOURCES = ("mot", "imagenet_vid")


def data_root(config: ml_collections.ConfigDict) -> pathlib.Path:
  """`data.path`, else `$READINGNOTES_DATA/mot15` (MOT; ImageNet VID needs data.path)."""
  if config.data.path:
    return pathlib.Path(config.data.path).expanduser()
  env = os.environ.get("READINGNOTES_DATA")
  if not env or config.data.source != "mot":
    raise UserError("no data folder: set data.path (the ILSVRC2015 folder for imagenet_vid, "
                    "a folder of MOTChallenge sequences for mot) or, for mot, "
                    "READINGNOTES_DATA (its mot15/ folder is used)")
  return pathlib.Path(env).expanduser() / DEFAULT_FOLDER


def sequence_dir(config: ml_collections.ConfigDict, name: str) -> pathlib.Path:
  """The folder of sequence `name` below `data_root`, checked to exist."""
  path = data_root(config) / name
  if not path.is_dir():
    raise UserError(f"sequence folder {path} does not exist: set data.path to the folder that "
                    f"holds {name}/ (seqinfo.ini, gt/gt.txt, img1/ or a video)")
  return path


def train_frames(config: ml_collections.ConfigDict) -> list["Frames"]:
  """The training frames: each of `data.train_sequences` (mot) or `data.train_split` (VID)."""
  if config.data.source not in SOURCES:
    raise UserError(f"data.source={config.data.source!r}: use one of {', '.join(SOURCES)}")
  if config.data.source == "imagenet_vid":
    return [Frames(data_root(config), split=config.data.train_split, source="imagenet_vid")]
  if not config.data.train_sequences:
    raise UserError("data.train_sequences is empty: name the training sequences")
  return [Frames(sequence_dir(config, name)) for name in config.data.train_sequences]


def eval_frames(config: ml_collections.ConfigDict) -> "Frames":
  """`data.eval_dir` (a MOTChallenge sequence folder, or a folder of them), else
  `data.eval_sequence` below the root (mot) or `data.eval_split` (VID)."""
  if config.data.eval_dir:
    path = pathlib.Path(config.data.eval_dir).expanduser()
    if not path.is_dir():
      raise UserError(f"data.eval_dir={path} does not exist: name a MOTChallenge sequence folder")
    return Frames(path)
  if config.data.source == "imagenet_vid":
    return Frames(data_root(config), split=config.data.eval_split, source="imagenet_vid")
  return Frames(sequence_dir(config, config.data.eval_sequence))


class Frames:
  """The frames of one or more videos (TFDS records) with their boxes, labels and ids, in
  order: MOTChallenge sequences (`source` "mot", split "train") or an ImageNet VID split."""

  def __init__(self, folder: pathlib.Path, *, split: str = "train", source: str = "mot"):
    if source == "mot":
      if not mot.find_sequences(folder):
        raise UserError(f"{folder} is not a MOTChallenge sequence (no seqinfo.ini or gt/): pass "
                        "a sequence folder")
      builder = mot.MOTChallenge(source_dir=folder)
    else:
      builder = vid.ImageNetVID(source_dir=folder)
    self.folder = pathlib.Path(folder)
    self.source = tfds_local.load(builder, split)
    meta = [self.source[i] for i in range(len(self.source))]
    self.videos = np.array([_text(m["video"]) for m in meta])
    self.frame_index = np.array([int(m["frame_index"]) for m in meta])
    # MOT boxes are continuous corners, VID's (the XML's) already pixel-inclusive.
    convert = mot_to_inclusive if source == "mot" else lambda b: np.asarray(b, np.float32)
    self.boxes = [convert(m["boxes"]).reshape(-1, 4) for m in meta]
    self.labels = [np.asarray(m["labels"], np.int64) for m in meta]
    self.track_ids = [np.asarray(m["track_ids"], np.int64) for m in meta]
    self.names = [_text(m["file_name"]) for m in meta]

  def __len__(self) -> int:
    return len(self.source)

  def image(self, i: int) -> np.ndarray:
    """uint8 [H, W, 3] RGB of record `i`."""
    return np.asarray(self.source[i]["image"])

  def pairs(self, tau: int) -> np.ndarray:
    """[P, 2] record indices (t, t + tau) within one video."""
    later = np.arange(len(self)) + tau
    ok = later < len(self)
    ok[ok] &= (self.videos[later[ok]] == self.videos[ok]) & (
        self.frame_index[later[ok]] == self.frame_index[ok] + tau)
    return np.stack([np.flatnonzero(ok), later[ok]], axis=1)


def _text(value: Any) -> str:
  return value.decode() if isinstance(value, bytes) else str(value)


def mot_to_inclusive(boxes: np.ndarray) -> np.ndarray:
  """Continuous 0-based corners (data.mot) -> pixel-inclusive corners (x2, y2 minus 1)."""
  boxes = np.asarray(boxes, np.float32).reshape(-1, 4).copy()
  boxes[:, 2:] -= 1.0
  return boxes


def resize_factor(height: int, width: int, scale: int, max_size: int,
                  canvas: tuple[int, int] | None = None) -> float:
  """`prep_im_for_blob`'s factor (short side -> scale, long side <= max_size), also kept
  inside `canvas` when given."""
  factor = min(scale / min(height, width), max_size / max(height, width))
  return factor if canvas is None else min(factor, canvas[0] / height, canvas[1] / width)


class Prepared(NamedTuple):
  image: np.ndarray  # float32 [H, W, 3] normalized, on the canvas
  boxes: np.ndarray  # float32 [G, 4] scaled (and flipped) inclusive corners
  size: tuple[int, int]  # (height, width) of the image part
  factor: float
  keep: np.ndarray  # [G] bool: the boxes left after cropping (all without a crop)


def prepare(image: np.ndarray, boxes: np.ndarray, *, scale: int, max_size: int,
            canvas: tuple[int, int], flip: bool = False,
            crop: tuple[float, float] | None = None) -> Prepared:
  """Resize (bilinear), flip, normalize and pad one frame; its boxes likewise.

  Without `crop` the image is made to fit the canvas. With `crop` = (u, v) in [0, 1) an image
  larger than the canvas keeps its scale and the canvas-sized window at (u, v) of the
  room left (scale jitter beyond the canvas, for training); boxes are clipped to the window
  and `keep` drops those with less than half their area inside.
  """
  h, w = image.shape[:2]
  factor = resize_factor(h, w, scale, max_size, None if crop else canvas)
  nh, nw = max(1, round(h * factor)), max(1, round(w * factor))
  resized = cv2.resize(image, (nw, nh), interpolation=cv2.INTER_LINEAR)
  boxes = np.asarray(boxes, np.float32).reshape(-1, 4) * np.float32(factor)
  if flip:
    resized = resized[:, ::-1]
    boxes = np.stack([nw - 1 - boxes[:, 2], boxes[:, 1], nw - 1 - boxes[:, 0], boxes[:, 3]], 1)
  top = left = 0
  if crop:
    top, left = round(crop[0] * max(0, nh - canvas[0])), round(crop[1] * max(0, nw - canvas[1]))
    resized = resized[top:top + canvas[0], left:left + canvas[1]]
    boxes = boxes - np.float32([left, top, left, top])
  ch, cw = resized.shape[:2]
  clipped = np.clip(boxes, 0, [cw - 1, ch - 1, cw - 1, ch - 1]).astype(np.float32)
  area = lambda b: np.maximum(b[:, 2] - b[:, 0] + 1, 0) * np.maximum(b[:, 3] - b[:, 1] + 1, 0)
  keep = area(clipped) >= 0.5 * area(boxes) if crop else np.ones(len(boxes), bool)
  out = np.zeros((*canvas, 3), np.float32)
  out[:ch, :cw] = (resized.astype(np.float32) - PIXEL_MEAN) * PIXEL_SCALE
  return Prepared(out, clipped, (ch, cw), factor, keep)


def _padded(values: np.ndarray, count: int, fill: float = 0) -> np.ndarray:
  out = np.full((count, *values.shape[1:]), fill, values.dtype)
  out[:min(count, len(values))] = values[:count]
  return out


def det_frames(config: ml_collections.ConfigDict) -> Frames:
  """The DET images of `data.det_split` below the ILSVRC2015 folder (source imagenet_vid)."""
  if config.data.source != "imagenet_vid":
    raise UserError(f"data.det_split={config.data.det_split!r} needs data.source=imagenet_vid "
                    "(DET images live in the ILSVRC2015 folder): clear data.det_split")
  return Frames(data_root(config), split=config.data.det_split, source="imagenet_vid")


def det_sample(labels: list[np.ndarray], per_class: int, num_classes: int) -> np.ndarray:
  """Record indices `imdb_sample_cls.m` keeps: for each class in turn, of the n images holding
  it, min(n, per_class) evenly spaced ones (MATLAB's round(linspace(1, n, m)), here 0-based);
  an image with several classes is kept once for each class that picks it."""
  having = [[] for _ in range(num_classes)]
  for i, image_labels in enumerate(labels):  # one pass over the boxes, not one per class
    for k in np.unique(image_labels):
      having[k].append(i)
  picked = [np.zeros(0, np.int64)]
  for images in having:
    if images:
      spaced = np.linspace(1, len(images), min(len(images), per_class))
      picked.append(np.asarray(images)[np.floor(spaced + 0.5).astype(np.int64) - 1])  # half away from 0
  return np.concatenate(picked)


class _Stream:
  """Training pairs as functions of (seed, position): `batch(start, n, ...)` gives pairs
  start .. start + n - 1 of the stream (this process's share of them); each subclass's
  `choose(rng)` picks the two records of a draw."""

  def __init__(self, frames: Frames, config: ml_collections.ConfigDict):
    self.frames, self.config = frames, config

  def pair(self, k: int) -> dict[str, np.ndarray]:
    d = self.config.data
    rng = np.random.default_rng([self.config.seed, k])
    first, second = self.choose(rng)
    scale = int(d.train_scales[rng.integers(len(d.train_scales))])
    flip = bool(d.flip and rng.random() < 0.5)
    crop = (float(rng.random()), float(rng.random()))
    out = {k: [] for k in ("frames", "gt_boxes", "gt_labels", "gt_ids", "image_sizes",
                           "image_scales")}
    for i in (first, second):
      p = prepare(self.frames.image(i), self.frames.boxes[i], scale=scale,
                  max_size=d.max_size, canvas=tuple(d.image_size), flip=flip, crop=crop)
      keep = p.keep & (p.boxes[:, 2] > p.boxes[:, 0]) & (p.boxes[:, 3] > p.boxes[:, 1])
      out["frames"].append(p.image)
      out["gt_boxes"].append(_padded(p.boxes[keep], d.max_boxes))
      out["gt_labels"].append(_padded(self.frames.labels[i][keep].astype(np.int32) + 1,
                                      d.max_boxes))
      out["gt_ids"].append(_padded(self.frames.track_ids[i][keep].astype(np.int32),
                                   d.max_boxes, -1))
      out["image_sizes"].append(np.array(p.size, np.int32))
      out["image_scales"].append(np.float32(p.factor))
    return {k: np.stack(v) for k, v in out.items()}

  def batch(self, start: int, n: int, process_index: int = 0, process_count: int = 1
            ) -> dict[str, np.ndarray]:
    """Pairs start + process_index * n / process_count ... of the global batch of n."""
    share = n // process_count
    first = start + process_index * share
    pairs = [self.pair(k) for k in range(first, first + share)]
    return {k: np.stack([p[k] for p in pairs]) for k in pairs[0]}


def spaced_frames(videos: np.ndarray, per_video: int) -> np.ndarray:
  """Record indices `imdb_sample_frames.m` keeps: of each video's n frames (consecutive
  records), min(n, per_video) evenly spaced ones (round(linspace(1, n, m)), 0-based)."""
  starts = np.flatnonzero(np.r_[True, videos[1:] != videos[:-1]])
  counts = np.diff(np.r_[starts, len(videos)])
  return np.concatenate([start + np.floor(np.linspace(1, n, min(n, per_video)) + 0.5)
                         .astype(np.int64) - 1 for start, n in zip(starts, counts)])


class PairStream(_Stream):
  """Frames (t, t + tau) of one video, drawn uniformly from all such pairs, or, with
  `frames_per_video` > 0, from those whose t is one of `spaced_frames`."""

  def __init__(self, frames: Frames, config: ml_collections.ConfigDict,
               frames_per_video: int = 0):
    super().__init__(frames, config)
    self.pairs = frames.pairs(config.data.tau)
    if frames_per_video:
      self.pairs = self.pairs[np.isin(self.pairs[:, 0],
                                      spaced_frames(frames.videos, frames_per_video))]
    if not len(self.pairs):
      raise UserError(f"{frames.folder}: no frame pair (t, t + {config.data.tau}) in one "
                      "sequence: use a smaller data.tau or longer sequences")

  def choose(self, rng: np.random.Generator) -> tuple[int, int]:
    return tuple(self.pairs[rng.integers(len(self.pairs))])


class DetStream(_Stream):
  """DET images for the detector stage, two independent draws from `det_sample`'s list a
  "pair" (no track ids: -1); scale, flip and crop as `PairStream`."""

  def __init__(self, frames: Frames, config: ml_collections.ConfigDict):
    super().__init__(frames, config)
    self.images = det_sample(frames.labels, config.data.det_per_class, len(vid.CLASS_NAMES))
    if not len(self.images):
      raise UserError(f"{frames.folder}: no DET image of a VID class in split "
                      f"{config.data.det_split!r}: check Annotations/DET or clear data.det_split")

  def choose(self, rng: np.random.Generator) -> tuple[int, int]:
    return tuple(self.images[rng.integers(len(self.images), size=2)])
