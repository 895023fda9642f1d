"""PASCAL VOC 2012 segmentation, with the SBD augmented training set.

Source folders:
- `source_dir`: `VOCdevkit/VOC2012/` with `JPEGImages/`, `SegmentationClass/`
  (palette PNGs: indices 0..20, 255 = object borders and difficult regions) and
  `ImageSets/Segmentation/{train,val}.txt` (1,464 / 1,449 images).
- `sbd_dir` (optional): SBD's `benchmark_RELEASE/dataset/` with `cls/<id>.mat`
  (struct `GTcls`, field `Segmentation`: class indices 0..20) and
  `{train,val}.txt`. Given it, the split `train_aug` (10,582 images) is
  (SBD train + SBD val + VOC train) minus VOC val, as in the DeepLab / semseg
  VOC experiments; images listed in VOC train keep VOC's own label (with its
  255 borders), the others take SBD's.

    builder = voc.VOC2012(source_dir="/data/VOCdevkit/VOC2012",
                          sbd_dir="/data/benchmark_RELEASE/dataset")
    train = tfds_local.load(builder, "train_aug")
"""
from __future__ import annotations

import hashlib
import os
import pathlib
from typing import Any

import numpy as np
import scipy.io
import tensorflow_datasets as tfds

from readingnotes_jax.data import segmentation
from readingnotes_jax.errors import UserError

CLASS_NAMES = ("background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus",
               "car", "cat", "chair", "cow", "diningtable", "dog", "horse", "motorbike",
               "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor")
# VOC's color map (the palette of its SegmentationClass PNGs).
PALETTE = segmentation.bit_palette(len(CLASS_NAMES))


class VOC2012(segmentation.SegmentationBuilder):
  """PASCAL VOC 2012 segmentation (+ SBD train_aug), 21 classes, 255 borders kept."""

  name = "voc2012"
  CLASS_NAMES = CLASS_NAMES
  PALETTE = PALETTE
  LABEL_LUT = segmentation.label_lut({**{i: i for i in range(len(CLASS_NAMES))},
                                      segmentation.IGNORE_LABEL: segmentation.IGNORE_LABEL})

  def __init__(self, *, source_dir: str | os.PathLike[str],
               sbd_dir: str | os.PathLike[str] | None = None, **kwargs: Any) -> None:
    self.sbd_dir = None
    if sbd_dir is not None:
      self.sbd_dir = segmentation.require_dir(
          pathlib.Path(sbd_dir).expanduser().resolve(),
          "SBD's benchmark_RELEASE/dataset folder (cls/*.mat, train.txt, val.txt)")
    super().__init__(source_dir=source_dir, **kwargs)

  def _cache_tag(self) -> str:
    if self.sbd_dir is None:
      return ""
    return "sbd-" + hashlib.sha1(str(self.sbd_dir).encode()).hexdigest()[:8]

  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    del dl_manager
    lists = self.source_dir / "ImageSets" / "Segmentation"
    voc = {split: segmentation.read_list(lists / f"{split}.txt") for split in ("train", "val")}
    ids = dict(voc)
    if self.sbd_dir is not None:
      sbd = set()
      for split in ("train", "val"):
        sbd.update(segmentation.read_list(self.sbd_dir / f"{split}.txt"))
      ids["train_aug"] = train_aug_ids(voc["train"], voc["val"], sbd)
    voc_labelled = set(voc["train"]) | set(voc["val"])
    return {split: self._generate_examples([self._pair(i, i in voc_labelled) for i in split_ids])
            for split, split_ids in ids.items()}

  def _pair(self, image_id: str, from_voc: bool) -> segmentation.Pair:
    image = self.source_dir / "JPEGImages" / f"{image_id}.jpg"
    if from_voc:
      return segmentation.Pair(image, self.source_dir / "SegmentationClass" / f"{image_id}.png")
    return segmentation.Pair(image, self.sbd_dir / "cls" / f"{image_id}.mat")

  def _read_raw_label(self, path: pathlib.Path) -> np.ndarray:
    if path.suffix == ".mat":
      return read_sbd_label(path)
    return segmentation.read_png_label(path)


def train_aug_ids(voc_train: list[str], voc_val: list[str], sbd: set[str]) -> list[str]:
  """Sorted ids of (SBD train + SBD val + VOC train) minus VOC val."""
  return sorted((set(sbd) | set(voc_train)) - set(voc_val))


def read_sbd_label(path: pathlib.Path) -> np.ndarray:
  """`GTcls.Segmentation` of one SBD `cls/<id>.mat` file."""
  if not path.is_file():
    raise UserError(f"{path}: SBD label not found: check sbd_dir (benchmark_RELEASE/dataset)")
  try:
    mat = scipy.io.loadmat(path, squeeze_me=True, struct_as_record=False)
    return np.asarray(mat["GTcls"].Segmentation)
  except (OSError, ValueError, KeyError, AttributeError, TypeError) as e:
    raise UserError(f"{path}: unreadable SBD label, expected struct GTcls with field "
                    f"Segmentation ({type(e).__name__}: {e})") from e
