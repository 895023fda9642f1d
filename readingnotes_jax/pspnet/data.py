"""PSPNet's data sets, chosen by `config.data.source`, and where their files are.

Each source is a builder of `readingnotes_jax.data` over a local folder: the
config's `data.path`, else `$READINGNOTES_DATA/<folder>` with the folder named
in `DATASETS` (e.g. `camvid/`, `ADEChallengeData2016/`).
"""
import dataclasses
import os
import pathlib
import threading
from collections.abc import Mapping, Sequence
from typing import Any

import cv2
import numpy as np

from readingnotes_jax.data import ade20k, camvid, ccp, cityscapes, segmentation, tfds_local, voc
from readingnotes_jax.errors import UserError


@dataclasses.dataclass(frozen=True)
class DataSet:
  """A segmentation data set: its builder, default folder name and classes."""
  title: str
  builder: type[segmentation.SegmentationBuilder]
  folder: str
  class_names: tuple[str, ...]
  palette: np.ndarray


DATASETS = {
    "camvid": DataSet("CamVid", camvid.CamVid, "camvid", camvid.CLASS_NAMES, camvid.PALETTE),
    "ade20k": DataSet("ADE20K", ade20k.ADE20K, "ADEChallengeData2016", ade20k.CLASS_NAMES,
                      ade20k.PALETTE),
    "cityscapes": DataSet("Cityscapes", cityscapes.Cityscapes, "cityscapes",
                          cityscapes.CLASS_NAMES, cityscapes.PALETTE),
    "voc2012": DataSet("PASCAL VOC 2012", voc.VOC2012, "VOCdevkit/VOC2012", voc.CLASS_NAMES,
                       voc.PALETTE),
    "ccp": DataSet("Clothing Co-Parsing", ccp.CCP, "ccp", ccp.CLASS_NAMES, ccp.PALETTE),
}
SBD_FOLDER = "benchmark_RELEASE/dataset"


def dataset(config) -> DataSet:
  """The `DataSet` named by `config.data.source`."""
  if config.data.source not in DATASETS:
    raise UserError(f"data.source={config.data.source!r}: use one of {sorted(DATASETS)}")
  return DATASETS[config.data.source]


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


def builder(config) -> segmentation.SegmentationBuilder:
  """The builder of `config.data` over its local folder."""
  d, ds = config.data, dataset(config)
  source_dir = _folder(d.path, ds.folder, ds.title, "data.path")
  if d.source == "voc2012":
    sbd = _folder(d.sbd_path, SBD_FOLDER, "SBD", "data.sbd_path") if d.use_sbd else None
    return ds.builder(source_dir=source_dir, sbd_dir=sbd)
  return ds.builder(source_dir=source_dir)


class ScaledSource:
  """Records of a split resized by `factor` (image area-averaged, label nearest), cached.

  A lower-resolution copy of a data set, made on the fly, for runs on small
  machines (the `runlocal` configs); records keep the split's format.
  """

  def __init__(self, source: Sequence[Mapping[str, Any]], factor: float):
    self.source, self.factor = source, factor
    self._cache: dict[int, dict[str, Any]] = {}
    self._lock = threading.Lock()

  def __len__(self) -> int:
    return len(self.source)

  def __getitem__(self, index: int) -> dict[str, Any]:
    with self._lock:
      cached = self._cache.get(index)
    if cached is not None:
      return cached
    record = dict(self.source[index])
    image, label = segmentation.image_and_label(record)
    height, width = label.shape
    size = (max(round(width * self.factor), 1), max(round(height * self.factor), 1))
    record["image"] = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
    record["label"] = cv2.resize(label, size, interpolation=cv2.INTER_NEAREST)[..., None]
    with self._lock:
      self._cache[index] = record
    return record


def load_split(config, split: str, *, scaled: bool) -> Sequence[Mapping[str, Any]]:
  """Random-access records of `split` (built into the TFDS cache on first use).

  With `scaled` and `data.image_scale` != 1, records are resized by that factor.
  """
  source = tfds_local.load(builder(config), split)
  if scaled and config.data.image_scale != 1.0:
    if not 0 < config.data.image_scale < 1:
      raise UserError(f"data.image_scale={config.data.image_scale}: use a factor in (0, 1]")
    source = ScaledSource(source, config.data.image_scale)
  return source
