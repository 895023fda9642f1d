"""Interpretable CNNs' data: square object images with part locations, and their batches.

`load_split(config.data, split)` reads one of the part data sets of
`readingnotes_jax.data.parts` (built once into the TFDS cache) into memory:

- `source="ccp"`: Clothing Co-Parsing people (photos 0701-0900 test, the rest
  train), parts from the pixel labels (`parts.CCP_PART_NAMES`);
- `source="cub"`: CUB-200-2011 birds cropped to their boxes, the 15 annotated
  parts (the data set's train/test split);
- `source="pascal_part"`: PASCAL-Part animals cropped to their masks' boxes
  (VOC2010 `ImageSets/Main` train = train, val = test).

`data.category` chooses the positives: CUB "" (every bird, the release's
`cub200`) or one class ("1", "001" or "001.Black_footed_Albatross");
PASCAL-Part one of `parts.PASCAL_PART_GROUPS` (bird, cat, cow, dog, horse,
sheep), or "" for the six as classes 0-5 (multi-class, no negatives); CCP
only "" (people). In the binary settings the positives (label 1) come with as
many negatives (label 0, no parts): square crops without people from CamVid
(`parts.CamVidNegatives`; CamVid train for train, val for test), evenly spaced
over the available crops, all of them when fewer. The release trains on 3
positives (with their mirror images) per negative image (getImdb.m).

Config keys read: `source`, `path` (default `$READINGNOTES_DATA/` + the
folder in `SOURCES`), `image_size`, `category`, `eval_dir` (a folder in the
source's layout whose every example is the `test` split), `negatives_path`
(default `$READINGNOTES_DATA/camvid`).
"""
import dataclasses
import os
import pathlib

import numpy as np

from readingnotes_jax.data import parts, pipeline, tfds_local
from readingnotes_jax.errors import UserError

SPLITS = ("train", "test")
NEGATIVE_SPLITS = {"train": "train", "test": "val"}  # CamVid's split per split.
NEGATIVES_FOLDER = "camvid"
# Source -> (builder, folder below $READINGNOTES_DATA, title).
SOURCES = {
    "ccp": (parts.CCPParts, "ccp", "Clothing Co-Parsing"),
    "cub": (parts.CUBParts, "CUB_200_2011", "CUB-200-2011"),
    "pascal_part": (parts.PascalParts, "VOCdevkit/VOC2010", "PASCAL-Part over VOC2010"),
}
# The mean RGB pixel of the ImageNet-trained VGG-16 (matconvnet imagenet-vgg-verydeep-16
# `meta.normalization.averageImage`, as Caffe's VGG mean). The release instead subtracts the
# mean image of its own training set (getImdb.m `dataMean`).
IMAGENET_MEAN_RGB = np.array([123.68, 116.779, 103.939], np.float32)


@dataclasses.dataclass(frozen=True)
class PartsSet:
  """One split in memory: positives first, then negatives (binary settings).

  Attributes:
    images: uint8 [N, S, S, 3] RGB.
    labels: int32 [N]: binary 1 = the category, 0 = negative; multi-class the class index.
    parts: float32 [N, P, 2] (x, y) in continuous pixel coordinates of the S x S
      image: x = column + 0.5 at a pixel's centre, so the image spans [0, S].
    part_valid: bool [N, P]; all False for negatives.
    part_names: P names.
  """
  images: np.ndarray
  labels: np.ndarray
  parts: np.ndarray
  part_valid: np.ndarray
  part_names: tuple[str, ...]


def _folder(path: str, default: str, title: str, key: str) -> pathlib.Path:
  if path:
    folder = pathlib.Path(path).expanduser()
    if not folder.is_dir():
      raise UserError(f"{key}={path} is not a folder: point it at the {title} files")
    return folder
  root = os.environ.get("READINGNOTES_DATA")
  if root and (pathlib.Path(root).expanduser() / default).is_dir():
    return pathlib.Path(root).expanduser() / default
  raise UserError(f"{title} not found: set --config.{key} to its folder, or READINGNOTES_DATA "
                  f"to a folder holding {default}/")


def _evenly_spaced(count: int, available: int) -> np.ndarray:
  """min(count, available) indices spread evenly over range(available), in order."""
  if count >= available:
    return np.arange(available)
  return np.round(np.linspace(0, available - 1, count)).astype(np.int64)


def load_split(data_config, split: str) -> PartsSet:
  """The `split` ("train" or "test") of `data_config.source`, in memory.

  Raises:
    UserError: unknown source, split, category or size; missing folders; bad files.
  """
  if split not in SPLITS:
    raise UserError(f"split {split!r}: use one of {', '.join(SPLITS)}")
  source = getattr(data_config, "source", None)
  if source not in SOURCES:
    raise UserError(f"data.source={source!r}: use one of {', '.join(SOURCES)}")
  builder_class, default_folder, title = SOURCES[source]
  image_size = int(data_config.image_size)
  eval_dir = getattr(data_config, "eval_dir", "") if split == "test" else ""
  if eval_dir:
    folder = _folder(eval_dir, default_folder, title, "data.eval_dir")
  else:
    folder = _folder(getattr(data_config, "path", ""), default_folder, title, "data.path")
  category = getattr(data_config, "category", "")
  if source == "ccp" and category:
    raise UserError(f"data.category={category!r}: CCP has one category (people): leave it empty")
  options = {} if source == "ccp" else {"category": category}
  builder = builder_class(source_dir=folder, image_size=image_size, all_test=bool(eval_dir),
                          **options)
  positives = pipeline.to_memory(tfds_local.load(builder, split)).arrays
  labels = positives["label"].astype(np.int32)
  if len(builder.class_names) > 1:  # Multi-class: the classes are the data.
    return PartsSet(positives["image"], labels, positives["parts"], positives["part_valid"],
                    builder.part_names)
  negatives_dir = _folder(getattr(data_config, "negatives_path", ""), NEGATIVES_FOLDER,
                          "CamVid (negatives)", "data.negatives_path")
  negative_source = tfds_local.load(
      parts.CamVidNegatives(source_dir=negatives_dir, image_size=image_size),
      NEGATIVE_SPLITS[split])
  chosen = _evenly_spaced(len(labels), len(negative_source))
  negatives = pipeline.to_memory(negative_source).take(chosen)
  num_parts = len(builder.part_names)
  return PartsSet(
      images=np.concatenate([positives["image"], negatives["image"]]),
      labels=np.concatenate([np.ones_like(labels), np.zeros(len(chosen), np.int32)]),
      parts=np.concatenate([positives["parts"], np.zeros((len(chosen), num_parts, 2),
                                                         np.float32)]),
      part_valid=np.concatenate([positives["part_valid"],
                                 np.zeros((len(chosen), num_parts), bool)]),
      part_names=builder.part_names)


def batch(parts_set: PartsSet, seed: int, index: int, batch_size: int,
          augment: bool) -> dict[str, np.ndarray]:
  """Batch `index` of the training stream: a pure function of (seed, index).

  Element i = index * batch_size + j of the stream is record perm_e[i mod N]
  with e = i // N and perm_e drawn from (seed, e) (`pipeline.epoch_permutation`);
  with `augment` it is mirrored left-right by a fair coin of (seed, i)
  (`pipeline.mirror_flags`), as getImdb.m adds mirrored copies of the positives.

  Returns:
    {"image": float32 [B, S, S, 3] RGB in [0, 255] minus `IMAGENET_MEAN_RGB`,
     "label": int32 [B]}.
  """
  num_records = len(parts_set.labels)
  positions = index * batch_size + np.arange(batch_size, dtype=np.int64)
  epochs, offsets = np.divmod(positions, num_records)
  records = np.empty_like(positions)
  for epoch in np.unique(epochs):
    in_epoch = epochs == epoch
    records[in_epoch] = pipeline.epoch_permutation(seed, int(epoch), num_records)[offsets[in_epoch]]
  images = parts_set.images[records]
  if augment:
    flips = pipeline.mirror_flags(seed, positions)
    images = np.where(flips[:, None, None, None], images[:, :, ::-1], images)
  return {"image": images.astype(np.float32) - IMAGENET_MEAN_RGB,
          "label": parts_set.labels[records]}
