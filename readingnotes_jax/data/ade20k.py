"""ADE20K SceneParsing (MIT Scene Parsing Benchmark): 150 classes, 20,210 / 2,000.

Source folder: `ADEChallengeData2016/` with `images/{training,validation}/*.jpg`
and `annotations/{training,validation}/*.png` (grey PNGs: 0 = other/void,
1..150 = classes). Labels become 0..149 and void 255, the "reduce zero label"
mapping semseg's FAQ ("Dataset format") asks for.

    builder = ade20k.ADE20K(source_dir="/data/ADEChallengeData2016")
    val = tfds_local.load(builder, "val")
"""
from __future__ import annotations

import tensorflow_datasets as tfds

from readingnotes_jax.data import segmentation

# objectInfo150 short names, in id order (as semseg's data/ade20k/ade20k_names.txt).
CLASS_NAMES = (
    "wall", "building", "sky", "floor", "tree", "ceiling", "road", "bed", "windowpane",
    "grass", "cabinet", "sidewalk", "person", "earth", "door", "table", "mountain",
    "plant", "curtain", "chair", "car", "water", "painting", "sofa", "shelf", "house",
    "sea", "mirror", "rug", "field", "armchair", "seat", "fence", "desk", "rock",
    "wardrobe", "lamp", "bathtub", "railing", "cushion", "base", "box", "column",
    "signboard", "chest of drawers", "counter", "sand", "sink", "skyscraper",
    "fireplace", "refrigerator", "grandstand", "path", "stairs", "runway", "case",
    "pool table", "pillow", "screen door", "stairway", "river", "bridge", "bookcase",
    "blind", "coffee table", "toilet", "flower", "book", "hill", "bench", "countertop",
    "stove", "palm", "kitchen island", "computer", "swivel chair", "boat", "bar",
    "arcade machine", "hovel", "bus", "towel", "light", "truck", "tower", "chandelier",
    "awning", "streetlight", "booth", "television receiver", "airplane", "dirt track",
    "apparel", "pole", "land", "bannister", "escalator", "ottoman", "bottle", "buffet",
    "poster", "stage", "van", "ship", "fountain", "conveyer belt", "canopy", "washer",
    "plaything", "swimming pool", "stool", "barrel", "basket", "waterfall", "tent",
    "bag", "minibike", "cradle", "oven", "ball", "food", "step", "tank", "trade name",
    "microwave", "pot", "animal", "bicycle", "lake", "dishwasher", "screen", "blanket",
    "sculpture", "hood", "sconce", "vase", "traffic light", "tray", "ashcan", "fan",
    "pier", "crt screen", "plate", "monitor", "bulletin board", "shower", "radiator",
    "glass", "clock", "flag",
)
# No palette ships with the benchmark's files: VOC's bit color map, one per class.
PALETTE = segmentation.bit_palette(len(CLASS_NAMES))
_SPLIT_FOLDERS = {"train": "training", "val": "validation"}


class ADE20K(segmentation.SegmentationBuilder):
  """ADE20K SceneParsing, 150 classes, label 0 (other) -> 255, k -> k - 1."""

  name = "ade20k"
  CLASS_NAMES = CLASS_NAMES
  PALETTE = PALETTE
  LABEL_LUT = segmentation.label_lut({0: segmentation.IGNORE_LABEL,
                                      **{k: k - 1 for k in range(1, len(CLASS_NAMES) + 1)}})

  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    del dl_manager
    return {split: self._generate_examples(self._pairs(folder))
            for split, folder in _SPLIT_FOLDERS.items()}

  def _pairs(self, folder: str) -> list[segmentation.Pair]:
    images = segmentation.require_dir(self.source_dir / "images" / folder,
                                      f"ADE20K's {folder} JPEGs (images/{folder}/*.jpg)")
    labels = segmentation.require_dir(self.source_dir / "annotations" / folder,
                                      f"ADE20K's {folder} label PNGs (annotations/{folder}/*.png)")
    return [segmentation.Pair(image, labels / f"{image.stem}.png")
            for image in sorted(images.glob("*.jpg"))]
