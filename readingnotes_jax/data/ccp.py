"""Clothing Co-Parsing (CCP, bearpaw/clothing-co-parsing): 59 labels, 550x832.

Source folder: `photos/NNNN.jpg` and, for the photos with pixel-level labels,
`annotations/pixel-level/NNNN.mat` (variable `groundtruth`, uint8 HxW with ids
0..58 named by `label_list.mat`; 0 = `null`, the background). All 59 ids are
classes (the background included, as human-parsing benchmarks count it);
nothing is ignored.

CCP defines no train/val split. Here photos 0801-0900 are `val` (100 images)
and every other pixel-labelled photo is `train` (0001-0800 in the 900-photo
copy; the full release's 0901-1004 also go to `train`), so `val` is the same
100 photos in either copy.

    builder = ccp.CCP(source_dir="/data/ccp")
    train = tfds_local.load(builder, "train")
"""
from __future__ import annotations

import pathlib

import numpy as np
import scipy.io
import tensorflow_datasets as tfds

from readingnotes_jax.data import segmentation
from readingnotes_jax.errors import UserError

CLASS_NAMES = (
    "null", "accessories", "bag", "belt", "blazer", "blouse", "bodysuit", "boots", "bra",
    "bracelet", "cape", "cardigan", "clogs", "coat", "dress", "earrings", "flats",
    "glasses", "gloves", "hair", "hat", "heels", "hoodie", "intimate", "jacket", "jeans",
    "jumper", "leggings", "loafers", "necklace", "panties", "pants", "pumps", "purse",
    "ring", "romper", "sandals", "scarf", "shirt", "shoes", "shorts", "skin", "skirt",
    "sneakers", "socks", "stockings", "suit", "sunglasses", "sweater", "sweatshirt",
    "swimwear", "t-shirt", "tie", "tights", "top", "vest", "wallet", "watch", "wedges",
)
# CCP ships no colors: VOC's bit color map (null = black).
PALETTE = segmentation.bit_palette(len(CLASS_NAMES))
VAL_IDS = range(801, 901)


class CCP(segmentation.SegmentationBuilder):
  """Clothing Co-Parsing pixel-level set, 59 classes (0 = null/background)."""

  name = "ccp"
  CLASS_NAMES = CLASS_NAMES
  PALETTE = PALETTE
  LABEL_LUT = segmentation.label_lut({i: i for i in range(len(CLASS_NAMES))})

  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    del dl_manager
    labels = segmentation.require_dir(self.source_dir / "annotations" / "pixel-level",
                                      "CCP's pixel-level labels (annotations/pixel-level/NNNN.mat)")
    photos = segmentation.require_dir(self.source_dir / "photos", "CCP's photos (photos/NNNN.jpg)")
    splits = {"train": [], "val": []}
    for label in sorted(labels.glob("*.mat")):
      if not label.stem.isdigit():
        raise UserError(f"{label}: expected a numbered label file NNNN.mat")
      split = "val" if int(label.stem) in VAL_IDS else "train"
      splits[split].append(segmentation.Pair(photos / f"{label.stem}.jpg", label))
    return {split: self._generate_examples(pairs) for split, pairs in splits.items()}

  def _read_raw_label(self, path: pathlib.Path) -> np.ndarray:
    return read_label(path)


def read_label(path: pathlib.Path) -> np.ndarray:
  """The `groundtruth` array (uint8 H x W, labels of label_list.mat) of a CCP label file."""
  try:
    return np.asarray(scipy.io.loadmat(path)["groundtruth"])
  except (OSError, ValueError, KeyError, TypeError, IndexError,
          scipy.io.matlab.MatReadError) as e:  # what scipy raises on truncated / garbage files
    raise UserError(f"{path}: unreadable CCP label, expected variable groundtruth "
                    f"({type(e).__name__}: {e})") from e

