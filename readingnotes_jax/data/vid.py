"""ImageNet VID 2015 (plus the DET train images of its 30 classes) as a TFDS builder.

Source folder: the ILSVRC2015 release root, as D&T's `imdb/imdb_from_ilsvrc15vid.m` and
`imdb/imdb_from_ilsvrc15.m` read it:

    Data/VID/{train,val}/<video>/<frame>.JPEG, Annotations/VID/{train,val}/<video>/<frame>.xml
    ImageSets/VID/train_<k>.txt  (`<video> <label>`, k = 1..30; their videos' union is train)
    ImageSets/VID/val.txt        (`<video>/<frame> <id>`)
    Data/DET/train/<path>.JPEG, Annotations/DET/train/<path>.xml, ImageSets/DET/train.txt

Splits, each present when its list is (`train`, `val`, `det_train`):
- `train`: every frame of the listed train videos; `val`: the listed val frames. Videos
  and frames in sorted order, as the official `unique` leaves them, so a video's frames
  are consecutive records: record i - frame_index is its first frame, and frame t + tau
  of the same video is record i + tau when frame_index + tau < num_frames (D&T's frame
  pairs).
- `det_train`: the DET train images with an object of a VID class, other objects dropped
  (`imdb/imdb_remove_cls.m`); listed images without an annotation file are skipped, as
  the official code treats them as empty. (D&T's `imdb_sample_cls.m` and
  `imdb_sample_frames.m` then subsample DET images per class and 30 frames per video:
  a pipeline's job.)

Records: `image` (the JPEG bytes, decoded to uint8 RGB at read time; CMYK or grey files
converted), `boxes` float32 [N, 4] inclusive pixel corners (xmin, ymin, xmax, ymax) as in
the XML, `labels` int32 [N] (index into CLASS_NAMES), `track_ids` int32 [N] (-1 in DET),
`occluded` and `generated` bool [N] (VID's flags; False in DET), `video`, `frame_index`,
`num_frames` (1 for DET), `file_name` (image path relative to the source folder).

Annotations are checked against the decoded image's size (the XML's `<size>` is not
used): a box with non-positive size or with no pixel inside the image is a UserError naming the XML file and line; boxes reaching past the border are clipped
to [0, width - 1] x [0, height - 1], as msracver/Flow-Guided-Feature-Aggregation
`lib/dataset/imagenet_vid.py` (`load_vid_annotation`) does.

    builder = vid.ImageNetVID(source_dir="/data/ILSVRC2015")
    val = tfds_local.load(builder, "val")
"""
from __future__ import annotations

import itertools
import pathlib
import xml.parsers.expat
from collections.abc import Iterator, Sequence
from typing import Any, ClassVar, NamedTuple

import numpy as np
import tensorflow_datasets as tfds

from readingnotes_jax.data import segmentation
from readingnotes_jax.data import tfds_local
from readingnotes_jax.errors import UserError

CLASS_NAMES = (
    "airplane", "antelope", "bear", "bicycle", "bird", "bus", "car", "cattle", "dog",
    "domestic_cat", "elephant", "fox", "giant_panda", "hamster", "horse", "lion", "lizard",
    "monkey", "motorcycle", "rabbit", "red_panda", "sheep", "snake", "squirrel", "tiger",
    "train", "turtle", "watercraft", "whale", "zebra")
# WordNet ids of CLASS_NAMES: the `<name>` of VID and DET annotations (devkit meta_vid.mat).
CLASS_WNIDS = (
    "n02691156", "n02419796", "n02131653", "n02834778", "n01503061", "n02924116",
    "n02958343", "n02402425", "n02084071", "n02121808", "n02503517", "n02118333",
    "n02510455", "n02342885", "n02374451", "n02129165", "n01674464", "n02484322",
    "n03790512", "n02324045", "n02509815", "n02411705", "n01726692", "n02355227",
    "n02129604", "n04468005", "n01662784", "n04530566", "n02062744", "n02391049")
LABEL_OF_WNID = {wnid: label for label, wnid in enumerate(CLASS_WNIDS)}
IMAGE_SUFFIX = ".JPEG"


class AnnotatedObject(NamedTuple):
  """One `<object>` of a VID/DET XML file, with the lines errors point to."""
  wnid: str
  name_line: int
  box: tuple[float, float, float, float]
  box_line: int
  track_id: int
  occluded: bool
  generated: bool


def frame_features() -> tfds.features.FeaturesDict:
  """Record layout of a video frame with tracked boxes (shared by ImageNet VID and MOT)."""
  return tfds.features.FeaturesDict({
      "image": tfds.features.Image(shape=(None, None, 3)),
      "boxes": tfds.features.Tensor(shape=(None, 4), dtype=np.float32),
      "labels": tfds.features.Tensor(shape=(None,), dtype=np.int32),
      "track_ids": tfds.features.Tensor(shape=(None,), dtype=np.int32),
      "occluded": tfds.features.Tensor(shape=(None,), dtype=np.bool_),
      "generated": tfds.features.Tensor(shape=(None,), dtype=np.bool_),
      "video": tfds.features.Text(),
      "frame_index": tfds.features.Scalar(dtype=np.int32),
      "num_frames": tfds.features.Scalar(dtype=np.int32),
      "file_name": tfds.features.Text(),
  })


def read_annotation(path: pathlib.Path) -> list[AnnotatedObject]:
  """The objects of one ImageNet VID/DET annotation file (PASCAL-style XML).

  Raises:
    UserError: the file is missing, malformed or an object lacks a field; one line
      naming the file and line.
  """
  parser = xml.parsers.expat.ParserCreate()
  texts: list[list[str]] = []
  tags: list[str] = []
  objects: list[dict[str, Any]] = []

  def start(tag: str, attributes: dict[str, str]) -> None:
    del attributes
    tags.append(tag)
    texts.append([])
    if tag == "object":
      objects.append({"line": parser.CurrentLineNumber})
    elif objects and "object" in tags[:-1]:
      objects[-1][f"{tag}_line"] = parser.CurrentLineNumber

  def end(tag: str) -> None:
    text = "".join(texts.pop()).strip()
    tags.pop()
    if objects and "object" in tags:
      objects[-1][tag] = text

  def characters(data: str) -> None:
    if texts:
      texts[-1].append(data)

  parser.StartElementHandler = start
  parser.EndElementHandler = end
  parser.CharacterDataHandler = characters
  try:
    parser.Parse(segmentation.read_bytes(path), True)
  except xml.parsers.expat.ExpatError as e:
    reason = xml.parsers.expat.errors.messages[e.code]
    raise UserError(f"{path}:{e.lineno}: malformed XML ({reason}): replace the annotation "
                    "file") from e
  return [_annotated_object(path, fields) for fields in objects]


def _annotated_object(path: pathlib.Path, fields: dict[str, Any]) -> AnnotatedObject:
  line = fields["line"]
  box_line = fields.get("bndbox_line", line)
  try:
    box = tuple(float(fields[key]) for key in ("xmin", "ymin", "xmax", "ymax"))
  except (KeyError, ValueError) as e:
    raise UserError(f"{path}:{box_line}: object without a numeric bndbox xmin/ymin/xmax/"
                    f"ymax ({type(e).__name__}: {e}): fix or remove this object") from e
  if "name" not in fields:
    raise UserError(f"{path}:{line}: object without a <name>: fix or remove this object")
  try:
    track_id = int(fields.get("trackid", -1))
    occluded, generated = (bool(int(fields.get(key, 0))) for key in ("occluded", "generated"))
  except ValueError as e:
    raise UserError(f"{path}:{line}: trackid/occluded/generated not integers ({e}): fix this "
                    "object") from e
  return AnnotatedObject(fields["name"], fields.get("name_line", line), box, box_line,
                         track_id, occluded, generated)


def checked_boxes(path: pathlib.Path, objects: Sequence[AnnotatedObject], width: int,
                  height: int) -> np.ndarray:
  """[N, 4] float32 boxes clipped to a width x height image; bad boxes are a UserError."""
  boxes = np.zeros((len(objects), 4), np.float32)
  for i, obj in enumerate(objects):
    x1, y1, x2, y2 = obj.box
    if x2 < x1 or y2 < y1:
      raise UserError(f"{path}:{obj.box_line}: box (xmin, ymin, xmax, ymax) = {obj.box} has "
                      "non-positive size: fix or remove this object")
    if x2 < 0 or y2 < 0 or x1 > width - 1 or y1 > height - 1:
      raise UserError(f"{path}:{obj.box_line}: box (xmin, ymin, xmax, ymax) = {obj.box} lies "
                      f"outside the {width}x{height} image: fix the box or the image")
    boxes[i] = (max(x1, 0), max(y1, 0), min(x2, width - 1), min(y2, height - 1))
  return boxes


class _Frame(NamedTuple):
  """One record to write: image and annotation files, and its place in its video."""
  image: pathlib.Path
  annotation: pathlib.Path
  video: str
  frame_index: int
  num_frames: int


class ImageNetVID(tfds_local.LocalFilesBuilder):
  """ImageNet VID 2015 frames and DET train images of the 30 VID classes."""

  name = "imagenet_vid"
  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES: ClassVar[dict[str, str]] = {"1.0.0": "First version."}
  CLASS_NAMES = CLASS_NAMES

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds_local.LocalDatasetInfo(
        builder=self,
        description="ImageNet VID 2015 frames (and DET images of its 30 classes), boxes "
                    "with track ids.",
        features=frame_features(),
        disable_shuffling=True,
    )

  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    del dl_manager
    lists = self.source_dir / "ImageSets"
    splits = {}
    train_lists = sorted((lists / "VID").glob("train_*.txt"))
    if train_lists:
      videos = sorted({line.split()[0] for path in train_lists
                       for line in segmentation.read_list(path)})
      splits["train"] = self._generate_examples(self._video_frames("train", videos), det=False)
    if (lists / "VID" / "val.txt").is_file():
      listed = sorted({line.split()[0] for line in segmentation.read_list(
          lists / "VID" / "val.txt")})
      splits["val"] = self._generate_examples(self._listed_frames("val", listed), det=False)
    if (lists / "DET" / "train.txt").is_file():
      images = [line.split()[0] for line in segmentation.read_list(lists / "DET" / "train.txt")]
      splits["det_train"] = self._generate_examples(self._det_images(images), det=True)
    if not splits:
      raise UserError(f"{self.source_dir} has none of ImageSets/VID/train_*.txt, "
                      "ImageSets/VID/val.txt, ImageSets/DET/train.txt: pass the ILSVRC2015 "
                      "folder (the one holding Data/, Annotations/ and ImageSets/)")
    return splits

  def _video_frames(self, split: str, videos: Sequence[str]) -> list[_Frame]:
    """All frames found in each video's folder, in name order."""
    frames = []
    for video in videos:
      folder = segmentation.require_dir(self.source_dir / "Data" / "VID" / split / video,
                                        f"the JPEG frames of VID video {video}")
      images = sorted(folder.glob(f"*{IMAGE_SUFFIX}"))
      if not images:
        raise UserError(f"folder {folder} has no *{IMAGE_SUFFIX} frames: check the VID copy")
      frames += [self._vid_frame(split, video, image.stem, i, len(images))
                 for i, image in enumerate(images)]
    return frames

  def _listed_frames(self, split: str, listed: Sequence[str]) -> list[_Frame]:
    """The frames a list names (`video/frame`), sorted, grouped by video."""
    frames = []
    for video, group in itertools.groupby(listed, key=lambda f: f.rpartition("/")[0]):
      names = [f.rpartition("/")[2] for f in group]
      frames += [self._vid_frame(split, video, name, i, len(names))
                 for i, name in enumerate(names)]
    return frames

  def _vid_frame(self, split: str, video: str, name: str, index: int, count: int) -> _Frame:
    return _Frame(self.source_dir / "Data" / "VID" / split / video / f"{name}{IMAGE_SUFFIX}",
                  self.source_dir / "Annotations" / "VID" / split / video / f"{name}.xml",
                  video, index, count)

  def _det_images(self, images: Sequence[str]) -> list[_Frame]:
    return [_Frame(self.source_dir / "Data" / "DET" / "train" / f"{image}{IMAGE_SUFFIX}",
                   self.source_dir / "Annotations" / "DET" / "train" / f"{image}.xml", "", 0, 1)
            for image in images]

  def _example(self, frame: _Frame, det: bool) -> dict[str, Any] | None:
    if det:
      if not frame.annotation.is_file():
        return None
      objects = [o for o in read_annotation(frame.annotation) if o.wnid in LABEL_OF_WNID]
      if not objects:
        return None
    else:
      objects = read_annotation(frame.annotation)
      for obj in objects:
        if obj.wnid not in LABEL_OF_WNID:
          raise UserError(f"{frame.annotation}:{obj.name_line}: class {obj.wnid!r} is not one "
                          "of the 30 VID classes: fix the annotation")
    image, (height, width) = segmentation.read_image(frame.image)
    return {
        "image": image,
        "boxes": checked_boxes(frame.annotation, objects, width, height),
        "labels": np.array([LABEL_OF_WNID[o.wnid] for o in objects], np.int32),
        "track_ids": np.array([-1 if det else o.track_id for o in objects], np.int32),
        "occluded": np.array([o.occluded for o in objects], np.bool_),
        "generated": np.array([o.generated for o in objects], np.bool_),
        "video": frame.video,
        "frame_index": frame.frame_index,
        "num_frames": frame.num_frames,
        "file_name": frame.image.relative_to(self.source_dir).as_posix(),
    }

  def _generate_examples(self, frames: Sequence[_Frame], det: bool
                         ) -> Iterator[tuple[int, dict[str, Any]]]:
    if not frames:
      raise UserError(f"no frames listed under {self.source_dir / 'ImageSets'}: check the lists")
    examples = segmentation.ordered_map(lambda frame: self._example(frame, det), frames)
    kept = 0
    for index, example in enumerate(examples):
      if example is not None:
        kept += 1
        yield index, example
    if det and not kept:
      raise UserError(f"none of the {len(frames)} DET images listed in {self.source_dir} has "
                      "an annotated object of a VID class: check Annotations/DET/train")
