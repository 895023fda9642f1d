"""MOTChallenge sequences: lazy frames, ground truth for the person class, a TFDS builder.

A sequence folder (MOTChallenge layout) holds `seqinfo.ini` (section `[Sequence]`: name,
imDir, frameRate, seqLength, imWidth, imHeight, imExt; optional here), `gt/gt.txt`, and
its frames in `img1/000001.jpg`, ... or, instead, one video file (the shared copies of
PETS09-S2L1 and TUD-Stadtmitte are an .avi and an .mp4).

`gt.txt` has one box per line, `frame, id, bb_left, bb_top, bb_width, bb_height, conf,
...`, frames and pixels 1-based. MOT15 lines have 10 fields (then world x, y, z) and are
all people; MOT16/17/20 lines have 9 (class, visibility) and pedestrians are class 1.
Lines with conf 0 are ignored by the benchmark and left out here. Boxes come back as
continuous 0-based corners (x1, y1, x2, y2) = (left - 1, top - 1, left - 1 + width,
top - 1 + height) and frames 0-based.

Bad ground truth (unparsable fields, a frame outside the sequence, a box of non-positive
size or with no part inside the image, an id twice in a frame) is a UserError naming the
file and line.

    sequence = mot.open_sequence("/data/mot15/PETS09-S2L1")   # frames decoded on demand
    gt = sequence.ground_truth                                # frames, ids, boxes
    first = sequence.frame(0)                                 # uint8 [H, W, 3] RGB
    train = tfds_local.load(mot.MOTChallenge(source_dir="/data/mot15"), "train")
"""
from __future__ import annotations

import configparser
import pathlib
from collections.abc import Iterator
from typing import Any, ClassVar, NamedTuple

import cv2
import numpy as np
import tensorflow_datasets as tfds

from readingnotes_jax.data import segmentation
from readingnotes_jax.data import tfds_local
from readingnotes_jax.data import vid
from readingnotes_jax.errors import UserError

VIDEO_SUFFIXES = frozenset({".avi", ".mp4", ".mkv", ".mov", ".webm", ".mpg", ".mpeg", ".m4v"})
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png"})
PEDESTRIAN_CLASS = 1  # MOT16+ gt class of the evaluated people.
CLASS_NAMES = ("person",)
VIDEO_FRAME_JPEG_QUALITY = 95


class SequenceInfo(NamedTuple):
  """What `seqinfo.ini` says, or what the frames show when it is absent."""
  name: str
  num_frames: int
  width: int
  height: int
  frame_rate: float | None


class GroundTruth(NamedTuple):
  """A sequence's person boxes: one row per (frame, identity)."""
  frames: np.ndarray  # [N] int64, 0-based frame index
  ids: np.ndarray  # [N] int64 identity
  boxes: np.ndarray  # [N, 4] float64 corners (x1, y1, x2, y2), 0-based, continuous


def _number(value: str, path: pathlib.Path, key: str) -> float:
  try:
    return float(value)
  except ValueError as e:
    raise UserError(f"{path}: {key}={value!r} is not a number: fix seqinfo.ini") from e


def read_seqinfo(path: pathlib.Path) -> dict[str, Any]:
  """The `[Sequence]` entries of a seqinfo.ini (numbers converted), or {} when absent."""
  if not path.is_file():
    return {}
  parser = configparser.ConfigParser()
  try:
    parser.read_string(segmentation.read_bytes(path).decode(errors="replace"))
  except configparser.Error as e:
    raise UserError(f"{path}: unreadable ({' '.join(str(e).split())}): fix seqinfo.ini") from e
  if not parser.has_section("Sequence"):
    raise UserError(f"{path}: no [Sequence] section: fix seqinfo.ini")
  entries = dict(parser["Sequence"])
  for key in ("seqlength", "imwidth", "imheight", "framerate"):
    if key in entries:
      entries[key] = _number(entries[key], path, key)
  return entries


def read_ground_truth(path: pathlib.Path, *, num_frames: int, width: int,
                      height: int) -> GroundTruth:
  """The person boxes of a MOTChallenge gt.txt (see the module docstring).

  Raises:
    UserError: the file is missing or a line is bad; one line naming file and line.
  """
  frames, ids, boxes, seen = [], [], [], {}
  for number, line in enumerate(segmentation.read_bytes(path).decode().splitlines(), 1):
    if not line.strip():
      continue
    fields = line.replace(" ", "").split(",")
    try:
      values = [float(f) for f in fields]
    except ValueError as e:
      raise UserError(f"{path}:{number}: {line.strip()!r} is not comma-separated numbers: "
                      "fix the line") from e
    if not 7 <= len(values) <= 10:
      raise UserError(f"{path}:{number}: {len(values)} fields, expected 'frame, id, left, top, "
                      "width, height, conf' and up to 3 more: fix the line")
    frame, identity, left, top, box_width, box_height, conf = values[:7]
    if conf == 0 or (len(values) == 9 and values[7] != PEDESTRIAN_CLASS):
      continue
    if frame != int(frame) or not 1 <= frame <= num_frames:
      raise UserError(f"{path}:{number}: frame {frame:g} outside the sequence's frames "
                      f"1..{num_frames}: fix the line or seqinfo.ini")
    if box_width <= 0 or box_height <= 0:
      raise UserError(f"{path}:{number}: box width {box_width:g}, height {box_height:g}: a "
                      "box needs a positive size; fix or remove the line")
    x1, y1 = left - 1, top - 1
    if x1 + box_width <= 0 or y1 + box_height <= 0 or x1 >= width or y1 >= height:
      raise UserError(f"{path}:{number}: box (left {left:g}, top {top:g}, {box_width:g} x "
                      f"{box_height:g}) lies outside the {width}x{height} image: fix or "
                      "remove the line")
    key = (int(frame), identity)
    if key in seen:
      raise UserError(f"{path}:{number}: id {identity:g} already has a box in frame "
                      f"{frame:g} (line {seen[key]}): remove one of them")
    seen[key] = number
    frames.append(int(frame) - 1)
    ids.append(identity)
    boxes.append((x1, y1, x1 + box_width, y1 + box_height))
  return GroundTruth(np.asarray(frames, np.int64), np.asarray(ids, np.int64),
                     np.asarray(boxes, np.float64).reshape(-1, 4))


class _VideoFrames:
  """Random access to a video's frames: sequential reads, a seek for any other frame."""

  def __init__(self, path: pathlib.Path) -> None:
    self.path = path
    self._capture: cv2.VideoCapture | None = None
    self._next = 0

  def read(self, index: int) -> np.ndarray:
    if self._capture is None:
      self._capture, self._next = cv2.VideoCapture(str(self.path)), 0
    if index != self._next:
      self._capture.set(cv2.CAP_PROP_POS_FRAMES, index)
    ok, bgr = self._capture.read()
    if not ok:
      raise UserError(f"{self.path}: cannot decode frame {index + 1}: the video is shorter "
                      "than seqinfo.ini's seqLength, or damaged")
    self._next = index + 1
    return bgr

  def close(self) -> None:
    if self._capture is not None:
      self._capture.release()
      self._capture, self._next = None, 0


class MOTSequence:
  """One MOTChallenge sequence: its info, frames decoded on demand, ground truth.

  Use `open_sequence`. `frame(i)` (0-based) and iteration give uint8 [H, W, 3] RGB;
  `frame_bgr(i)` the OpenCV order. Not thread-safe (one video decoder per sequence).
  """

  def __init__(self, path: pathlib.Path, info: SequenceInfo, images: list[pathlib.Path] | None,
               video: pathlib.Path | None) -> None:
    self.path = path
    self.info = info
    self.images = images
    self.video = video
    self._video_frames = _VideoFrames(video) if video is not None else None
    self._ground_truth: GroundTruth | None = None

  @property
  def gt_path(self) -> pathlib.Path:
    return self.path / "gt" / "gt.txt"

  @property
  def ground_truth(self) -> GroundTruth:
    """Parsed on first use; a missing gt/gt.txt is a UserError."""
    if self._ground_truth is None:
      if not self.gt_path.is_file():
        raise UserError(f"sequence {self.path} has no gt/gt.txt: evaluation needs the ground "
                        "truth; pass a sequence folder with gt/gt.txt (a MOTChallenge train "
                        "sequence)")
      self._ground_truth = read_ground_truth(self.gt_path, num_frames=self.info.num_frames,
                                             width=self.info.width, height=self.info.height)
    return self._ground_truth

  def __len__(self) -> int:
    return self.info.num_frames

  def frame_bgr(self, index: int) -> np.ndarray:
    if not 0 <= index < self.info.num_frames:
      raise IndexError(f"frame {index} outside 0..{self.info.num_frames - 1}")
    if self._video_frames is not None:
      return self._video_frames.read(index)
    image = cv2.imread(str(self.images[index]), cv2.IMREAD_COLOR)
    if image is None:
      raise UserError(f"{self.images[index]}: unreadable image: replace the file")
    return image

  def frame(self, index: int) -> np.ndarray:
    return cv2.cvtColor(self.frame_bgr(index), cv2.COLOR_BGR2RGB)

  def __iter__(self) -> Iterator[np.ndarray]:
    return (self.frame(i) for i in range(len(self)))

  def close(self) -> None:
    if self._video_frames is not None:
      self._video_frames.close()


def _frame_files(path: pathlib.Path, seqinfo: dict[str, Any]
                 ) -> tuple[list[pathlib.Path] | None, pathlib.Path | None]:
  """(sorted image files, None) from imDir, else (None, the one video file)."""
  image_dir = path / seqinfo.get("imdir", "img1")
  if image_dir.is_dir():
    suffixes = {seqinfo["imext"].lower()} if "imext" in seqinfo else IMAGE_SUFFIXES
    images = sorted(p for p in image_dir.iterdir() if p.suffix.lower() in suffixes)
    if images:
      return images, None
  videos = sorted(p for p in path.iterdir() if p.suffix.lower() in VIDEO_SUFFIXES and p.is_file())
  if len(videos) > 1:
    raise UserError(f"sequence {path} has several videos ({', '.join(v.name for v in videos)})"
                    ": keep one, or put the frames in img1/")
  if not videos:
    raise UserError(f"sequence {path} has no frames: expected {image_dir.name}/ with images or "
                    f"one video file ({', '.join(sorted(VIDEO_SUFFIXES))})")
  return None, videos[0]


def open_sequence(path: str | pathlib.Path, *, require_ground_truth: bool = False) -> MOTSequence:
  """Opens a MOTChallenge sequence folder, decoding only its first frame.

  (A video without seqinfo.ini's seqLength is read to the end once, to count its frames.)

  Args:
    path: the sequence folder.
    require_ground_truth: check now that gt/gt.txt exists and parses (evaluation).

  Raises:
    UserError: not a sequence folder, no frames, a video OpenCV cannot read, seqinfo.ini
      disagreeing with the frames, or (when required) missing or bad ground truth.
  """
  path = pathlib.Path(path).expanduser().resolve()
  segmentation.require_dir(path, "a MOTChallenge sequence (seqinfo.ini, gt/gt.txt, img1/ "
                                 "or a video file)")
  seqinfo = read_seqinfo(path / "seqinfo.ini")
  images, video = _frame_files(path, seqinfo)
  frame_rate = seqinfo.get("framerate")
  if video is not None:
    capture = cv2.VideoCapture(str(video))
    try:
      ok, first = capture.read()
      if not ok:
        raise UserError(f"cannot read video {video}: OpenCV/FFmpeg does not decode it; "
                        "convert it, e.g. `ffmpeg -i IN -c:v libx264 OUT.mp4`")
      frame_rate = frame_rate or (capture.get(cv2.CAP_PROP_FPS) or None)
      if "seqlength" in seqinfo:
        num_frames = int(seqinfo["seqlength"])
      else:  # Decoded to the end: containers' frame counts can be estimates.
        num_frames = 1
        while capture.grab():
          num_frames += 1
    finally:
      capture.release()
  else:
    num_frames = int(seqinfo.get("seqlength", len(images)))
    if num_frames != len(images):
      raise UserError(f"{path / 'seqinfo.ini'}: seqLength={num_frames} but "
                      f"{images[0].parent} has {len(images)} frames: fix one of them")
    first = cv2.imread(str(images[0]), cv2.IMREAD_COLOR)
    if first is None:
      raise UserError(f"{images[0]}: unreadable image: replace the file")
  height, width = first.shape[:2]
  stated = (seqinfo.get("imwidth", width), seqinfo.get("imheight", height))
  if stated != (width, height):
    raise UserError(f"{path / 'seqinfo.ini'}: imWidth, imHeight = {stated[0]:g}, {stated[1]:g} "
                    f"but the frames are {width} x {height}: fix seqinfo.ini")
  info = SequenceInfo(str(seqinfo.get("name", path.name)), num_frames, width, height,
                      float(frame_rate) if frame_rate else None)
  sequence = MOTSequence(path, info, images, video)
  if require_ground_truth:
    _ = sequence.ground_truth  # Parsed and checked now.
  return sequence


def find_sequences(root: str | pathlib.Path) -> list[pathlib.Path]:
  """`root` if it is a sequence (has gt/ or seqinfo.ini), else its sub-folders that are."""
  root = pathlib.Path(root).expanduser().resolve()
  def is_sequence(folder: pathlib.Path) -> bool:
    return (folder / "gt").is_dir() or (folder / "seqinfo.ini").is_file()

  if is_sequence(root):
    return [root]
  if not root.is_dir():
    return []
  return sorted(p for p in root.iterdir() if p.is_dir() and is_sequence(p))


class MOTChallenge(tfds_local.LocalFilesBuilder):
  """MOTChallenge sequences with ground truth, person boxes per frame (split `train`).

  `source_dir` is one sequence folder or a folder of them (e.g. MOT17/train, or
  ../shared/data/mot15). Records have ImageNet VID's layout (`vid.frame_features`):
  `labels` all 0 (CLASS_NAMES), `track_ids` the gt identities, `boxes` float32 corners
  clipped to the image (see the module docstring), `video` the sequence name, and
  `occluded`/`generated` False. Frames from img1/ keep their file bytes; frames decoded
  from a video are stored as JPEG (quality 95).
  """

  name = "mot_challenge"
  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES: ClassVar[dict[str, str]] = {"1.0.0": "First version."}
  CLASS_NAMES = CLASS_NAMES

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds_local.LocalDatasetInfo(
        builder=self,
        description="MOTChallenge sequences: frames and person boxes with identities.",
        features=vid.frame_features(),
        disable_shuffling=True,
    )

  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    del dl_manager
    paths = find_sequences(self.source_dir)
    if not paths:
      raise UserError(f"no MOTChallenge sequence in {self.source_dir}: pass a sequence folder "
                      "(gt/gt.txt, img1/ or a video) or a folder of them")
    return {"train": self._generate_examples(
        [open_sequence(p, require_ground_truth=True) for p in paths])}

  def _generate_examples(self, sequences: list[MOTSequence]
                         ) -> Iterator[tuple[int, dict[str, Any]]]:
    index = 0
    for sequence in sequences:
      gt = sequence.ground_truth
      info = sequence.info
      if sequence.images is not None:
        encoded = segmentation.ordered_map(segmentation.read_image, sequence.images)
        names = [p.relative_to(self.source_dir).as_posix() for p in sequence.images]
      else:
        encoded = (_encode_jpeg(sequence.frame_bgr(i)) for i in range(len(sequence)))
        video_name = sequence.video.relative_to(self.source_dir).as_posix()
        names = [f"{video_name}#{i + 1:06d}" for i in range(len(sequence))]
      for frame, ((image, (height, width)), name) in enumerate(zip(encoded, names)):
        if (width, height) != (info.width, info.height):
          raise UserError(f"{name}: frame is {width}x{height}, the sequence's first frame "
                          f"{info.width}x{info.height}: fix the frames")
        rows = gt.frames == frame
        boxes = np.clip(gt.boxes[rows], 0, [width, height, width, height]).astype(np.float32)
        yield index, {
            "image": image,
            "boxes": boxes,
            "labels": np.zeros(len(boxes), np.int32),
            "track_ids": gt.ids[rows].astype(np.int32),
            "occluded": np.zeros(len(boxes), np.bool_),
            "generated": np.zeros(len(boxes), np.bool_),
            "video": info.name,
            "frame_index": frame,
            "num_frames": info.num_frames,
            "file_name": name,
        }
        index += 1
      sequence.close()


def _encode_jpeg(bgr: np.ndarray) -> tuple[bytes, tuple[int, int]]:
  """JPEG bytes of an OpenCV BGR frame and its (height, width)."""
  ok, encoded = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, VIDEO_FRAME_JPEG_QUALITY])
  assert ok, "JPEG encoding of a uint8 BGR frame cannot fail"
  return encoded.tobytes(), bgr.shape[:2]
