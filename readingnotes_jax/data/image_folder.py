"""Any folder of images (CelebA-HQ, an LSUN export, ...) as a TFDS builder.

Each image is center-cropped to a square (its shorter side) and resized with
Lanczos filtering to the requested resolution, as the official
`dataset_tool.py create_lsun` does (tkarras/progressive_growing_of_gans);
square images already at that resolution (CelebA-HQ at 1024) pass unchanged.
"""
from __future__ import annotations

import collections
import concurrent.futures
import os
import pathlib
from collections.abc import Iterator
from typing import Any

import numpy as np
import PIL.Image
import tensorflow_datasets as tfds

from readingnotes_jax.data import tfds_local
from readingnotes_jax.errors import UserError

IMAGE_EXTENSIONS = frozenset(
    {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff", ".ppm"})


def list_images(source_dir: pathlib.Path) -> list[pathlib.Path]:
  """Image files below `source_dir`, recursively, sorted by relative path."""
  return sorted(
      (p for p in source_dir.rglob("*")
       if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file()),
      key=lambda p: p.relative_to(source_dir).parts)


def load_square_image(path: pathlib.Path, resolution: int, num_channels: int) -> np.ndarray:
  """uint8 [resolution, resolution, num_channels]: center crop, then Lanczos resize.

  Raises:
    UserError: naming the file, if it cannot be decoded.
  """
  try:
    with PIL.Image.open(path) as image:
      image = image.convert("L" if num_channels == 1 else "RGB")
  except (OSError, ValueError, PIL.Image.DecompressionBombError) as e:
    raise UserError(f"cannot read image {path} ({e}): delete or replace it") from e
  width, height = image.size
  crop = min(width, height)
  left, top = (width - crop) // 2, (height - crop) // 2
  image = image.crop((left, top, left + crop, top + crop))
  if crop != resolution:
    image = image.resize((resolution, resolution), PIL.Image.Resampling.LANCZOS)
  array = np.asarray(image)
  return array[:, :, None] if num_channels == 1 else array


class ImageFolder(tfds_local.LocalFilesBuilder):
  """Images found recursively below `source_dir`, square at `resolution`.

  Split `train` only. Features: `image` uint8 [R, R, C]; with
  `labels=True`, also `label`, the index of the image's top-level sub-folder
  among the sorted sub-folder names (the class names). Records follow the
  sorted relative paths. Decoding runs on a thread pool.

  Usage: `tfds_local.load(ImageFolder(source_dir=d, resolution=1024), "train")`.
  """

  VERSION = tfds.core.Version("1.0.0")

  def __init__(self, *, source_dir: str | os.PathLike[str], resolution: int,
               num_channels: int = 3, labels: bool = False,
               data_dir: str | os.PathLike[str] | None = None,
               num_threads: int | None = None, **kwargs: Any) -> None:
    if resolution < 1:
      raise UserError(f"image resolution {resolution} must be positive")
    if num_channels not in (1, 3):
      raise UserError(f"num_channels={num_channels}: use 1 (grey) or 3 (RGB)")
    self.resolution = resolution
    self.num_channels = num_channels
    self.labels = labels
    self._num_threads = num_threads or min(8, os.cpu_count() or 1)
    source = pathlib.Path(source_dir).expanduser()
    self.class_names: tuple[str, ...] = ()
    if labels and source.is_dir():
      self.class_names = tuple(sorted(p.name for p in source.iterdir() if p.is_dir()))
      if not self.class_names:
        raise UserError(f"labels=True but {source} has no sub-folders: put each "
                        "class's images in a sub-folder named after the class")
    super().__init__(source_dir=source, data_dir=data_dir, **kwargs)

  def _cache_tag(self) -> str:
    return f"{self.resolution}px{self.num_channels}c{'-labels' if self.labels else ''}"

  def _info(self) -> tfds.core.DatasetInfo:
    features = {"image": tfds.features.Tensor(
        shape=(self.resolution, self.resolution, self.num_channels),
        dtype=np.uint8, encoding=tfds.features.Encoding.BYTES)}
    if self.labels:
      features["label"] = tfds.features.ClassLabel(names=self.class_names)
    return tfds_local.LocalDatasetInfo(
        builder=self,
        description="Images from a local folder, center-cropped and resized.",
        features=tfds.features.FeaturesDict(features),
        disable_shuffling=True,
    )

  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    del dl_manager  # Local files only.
    paths = list_images(self.source_dir)
    if not paths:
      raise UserError(f"no images ({', '.join(sorted(IMAGE_EXTENSIONS))}) below "
                      f"{self.source_dir}: point to the folder holding them")
    if self.labels:
      loose = [p for p in paths if p.parent == self.source_dir]
      if loose:
        raise UserError(f"labels=True but {loose[0]} is not inside a class "
                        "sub-folder: move it into one, or set labels=False")
    return {"train": self._generate_examples(paths)}

  def _generate_examples(self, paths: list[pathlib.Path]) -> Iterator[tuple[int, dict[str, Any]]]:
    label_of = {name: i for i, name in enumerate(self.class_names)}
    window = 4 * self._num_threads  # Images decoded ahead of the writer.
    with concurrent.futures.ThreadPoolExecutor(self._num_threads) as pool:
      submit = lambda path: pool.submit(
          load_square_image, path, self.resolution, self.num_channels)
      pending = collections.deque(submit(path) for path in paths[:window])
      for i, path in enumerate(paths):
        example = {"image": pending.popleft().result()}
        if i + window < len(paths):
          pending.append(submit(paths[i + window]))
        if self.labels:
          example["label"] = label_of[path.relative_to(self.source_dir).parts[0]]
        yield i, example
