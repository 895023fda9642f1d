"""Cityscapes fine annotations: 19 evaluation classes, 2,975 train / 500 val.

Source folder: the root holding `leftImg8bit/{train,val}/<city>/*_leftImg8bit.png`
and `gtFine/{train,val}/<city>/*_gtFine_labelIds.png`. Label ids become train
ids with the official table (cityscapesScripts `helpers/labels.py`, as used by
`preparation/createTrainIdLabelImgs.py`); ids without a train id become 255.

    builder = cityscapes.Cityscapes(source_dir="/data/cityscapes")
    train = tfds_local.load(builder, "train")
"""
from __future__ import annotations

import numpy as np
import tensorflow_datasets as tfds

from readingnotes_jax.data import segmentation

CLASS_NAMES = ("road", "sidewalk", "building", "wall", "fence", "pole", "traffic light",
               "traffic sign", "vegetation", "terrain", "sky", "person", "rider", "car",
               "truck", "bus", "train", "motorcycle", "bicycle")
# Official colors of the 19 train ids (cityscapesScripts labels.py).
PALETTE = np.array([
    (128, 64, 128), (244, 35, 232), (70, 70, 70), (102, 102, 156), (190, 153, 153),
    (153, 153, 153), (250, 170, 30), (220, 220, 0), (107, 142, 35), (152, 251, 152),
    (70, 130, 180), (220, 20, 60), (255, 0, 0), (0, 0, 142), (0, 0, 70), (0, 60, 100),
    (0, 80, 100), (0, 0, 230), (119, 11, 32)], np.uint8)
# labelId -> trainId for the ids 0..33 found in *_gtFine_labelIds.png; the ids
# not listed (unlabeled, ego vehicle, ..., caravan, trailer) are ignored.
LABEL_TO_TRAIN_ID = {7: 0, 8: 1, 11: 2, 12: 3, 13: 4, 17: 5, 19: 6, 20: 7, 21: 8, 22: 9,
                     23: 10, 24: 11, 25: 12, 26: 13, 27: 14, 28: 15, 31: 16, 32: 17, 33: 18}
NUM_LABEL_IDS = 34
_IMAGE_SUFFIX = "_leftImg8bit.png"
_LABEL_SUFFIX = "_gtFine_labelIds.png"


class Cityscapes(segmentation.SegmentationBuilder):
  """Cityscapes gtFine, labelIds -> the 19 trainIds, others 255."""

  name = "cityscapes"
  CLASS_NAMES = CLASS_NAMES
  PALETTE = PALETTE
  LABEL_LUT = segmentation.label_lut({
      label_id: LABEL_TO_TRAIN_ID.get(label_id, segmentation.IGNORE_LABEL)
      for label_id in range(NUM_LABEL_IDS)})

  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    del dl_manager
    return {split: self._generate_examples(self._pairs(split)) for split in ("train", "val")}

  def _pairs(self, split: str) -> list[segmentation.Pair]:
    images = segmentation.require_dir(
        self.source_dir / "leftImg8bit" / split,
        f"Cityscapes' {split} images (leftImg8bit/{split}/<city>/*{_IMAGE_SUFFIX})")
    labels = segmentation.require_dir(
        self.source_dir / "gtFine" / split,
        f"Cityscapes' {split} labels (gtFine/{split}/<city>/*{_LABEL_SUFFIX})")
    return [segmentation.Pair(
        image, labels / image.parent.name / (image.name[:-len(_IMAGE_SUFFIX)] + _LABEL_SUFFIX))
            for image in sorted(images.glob(f"*/*{_IMAGE_SUFFIX}"))]
