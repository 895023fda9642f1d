"""MNIST-format IDX files (MNIST, Fashion-MNIST) as a TFDS builder.

IDX layout (http://yann.lecun.com/exdb/mnist/): two zero bytes, a type code,
the number of dimensions, one big-endian uint32 per dimension, then the
values in C order (big-endian for multi-byte types). Files may be gzipped.
"""
from __future__ import annotations

import gzip
import os
import pathlib
import struct
import zlib
from collections.abc import Iterator
from typing import Any

import numpy as np
import tensorflow_datasets as tfds

from readingnotes_jax.data import tfds_local
from readingnotes_jax.errors import UserError

FASHION_MNIST_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                         "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")

# Split name -> (images file, labels file), as distributed (without `.gz` too).
SPLIT_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}

_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4",
           0x0E: ">f8"}


def _open(path: pathlib.Path):
  return gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb")


def _parse_header(path: pathlib.Path, head: bytes) -> tuple[np.dtype, tuple[int, ...]]:
  """(dtype, shape) from the first bytes of an IDX file (more may follow)."""
  if len(head) < 4 or head[:2] != b"\0\0" or head[2] not in _DTYPES:
    raise UserError(f"{path} is not an IDX file (bad magic number "
                    f"{head[:4].hex() or 'empty'}): replace it with an intact copy")
  ndim = head[3]
  if len(head) < 4 + 4 * ndim:
    raise UserError(f"{path} is truncated inside its header: replace it with an "
                    "intact copy")
  shape = struct.unpack(f">{ndim}I", head[4:4 + 4 * ndim])
  return np.dtype(_DTYPES[head[2]]), shape


def read_idx_header(path: str | os.PathLike[str]) -> tuple[np.dtype, tuple[int, ...]]:
  """(dtype, shape) from the header of an IDX file (gzipped or not)."""
  path = pathlib.Path(path)
  try:
    with _open(path) as f:
      head = f.read(4)
      if len(head) == 4:
        head += f.read(4 * head[3])
  except (OSError, EOFError, zlib.error) as e:
    raise UserError(f"cannot read {path} ({e}): replace it with an intact copy") from e
  return _parse_header(path, head)


def read_idx(path: str | os.PathLike[str]) -> np.ndarray:
  """Whole IDX file as an array with the file's shape, in native byte order.

  Raises:
    UserError: naming the file, if it is not IDX, truncated, too long or its
      gzip stream is corrupt.
  """
  path = pathlib.Path(path)
  try:
    with _open(path) as f:
      data = f.read()
  except (OSError, EOFError, zlib.error) as e:
    raise UserError(f"cannot read {path} ({e}): replace it with an intact copy") from e
  dtype, shape = _parse_header(path, data)
  offset = 4 + 4 * len(shape)
  expected = int(np.prod(shape)) * dtype.itemsize
  if len(data) - offset != expected:
    raise UserError(
        f"{path} holds {len(data) - offset} bytes of values but its header "
        f"{shape} needs {expected} (truncated or corrupt): replace it with an "
        "intact copy")
  return np.frombuffer(data, dtype, offset=offset).reshape(shape).astype(dtype.newbyteorder("="))


def find_split_files(source_dir: pathlib.Path, split: str) -> tuple[pathlib.Path, pathlib.Path] | None:
  """(images, labels) paths of `split` in `source_dir`, `.gz` or not; None if absent.

  Raises:
    UserError: the images file is there but its labels file is not.
  """
  found = []
  for stem in SPLIT_FILES[split]:
    candidates = [source_dir / (stem + ext) for ext in (".gz", "")]
    found.append(next((p for p in candidates if p.is_file()), None))
  images, labels = found
  if images is None:
    return None
  if labels is None:
    raise UserError(f"{images} has no labels file {SPLIT_FILES[split][1]}.gz next "
                    "to it: copy the complete set of IDX files")
  return images, labels


class MnistIdx(tfds_local.LocalFilesBuilder):
  """MNIST-format data set from a folder of IDX files (MNIST, Fashion-MNIST).

  Splits `train` and `test`, each present when its images file is
  (`train-images-idx3-ubyte[.gz]`, `t10k-images-idx3-ubyte[.gz]`). Features:
  `image` uint8 [H, W, 1] and `label` (10 classes), records in file order.

  Usage: `tfds_local.load(MnistIdx(source_dir=folder), "train")`.
  """

  VERSION = tfds.core.Version("1.0.0")

  def __init__(self, *, source_dir: str | os.PathLike[str],
               data_dir: str | os.PathLike[str] | None = None, **kwargs: Any) -> None:
    source = pathlib.Path(source_dir).expanduser()
    self._split_paths = {}
    if source.is_dir():
      for split in SPLIT_FILES:
        if (paths := find_split_files(source, split)) is not None:
          self._split_paths[split] = paths
      if not self._split_paths:
        raise UserError(
            f"no MNIST-format files in {source} (expected "
            f"{SPLIT_FILES['train'][0]}.gz and/or {SPLIT_FILES['test'][0]}.gz): "
            "point to the folder holding them")
    super().__init__(source_dir=source, data_dir=data_dir, **kwargs)

  def _info(self) -> tfds.core.DatasetInfo:
    images_path = next(iter(self._split_paths.values()))[0]
    dtype, shape = read_idx_header(images_path)
    if dtype != np.uint8 or len(shape) != 3:
      raise UserError(f"{images_path} holds {dtype} {shape}, not uint8 [N, H, W] "
                      "images: point to MNIST-format image files")
    return tfds_local.LocalDatasetInfo(
        builder=self,
        description="MNIST-format IDX images and labels read from local files.",
        features=tfds.features.FeaturesDict({
            "image": tfds.features.Tensor(
                shape=(*shape[1:], 1), dtype=np.uint8,
                encoding=tfds.features.Encoding.BYTES),
            "label": tfds.features.ClassLabel(num_classes=10),
        }),
        supervised_keys=("image", "label"),
        disable_shuffling=True,
    )

  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    del dl_manager  # Local files only.
    return {split: self._generate_examples(*paths)
            for split, paths in self._split_paths.items()}

  def _generate_examples(self, images_path: pathlib.Path,
                         labels_path: pathlib.Path) -> Iterator[tuple[int, dict[str, Any]]]:
    images = read_idx(images_path)
    labels = read_idx(labels_path)
    if labels.ndim != 1 or len(labels) != len(images):
      raise UserError(f"{labels_path} holds labels of shape {labels.shape} for "
                      f"{len(images)} images in {images_path}: use matching files")
    if images.shape[1:] != self.info.features["image"].shape[:2]:
      raise UserError(f"{images_path} holds {images.shape[1:]} images, unlike the "
                      "other split: use files of one data set")
    if labels.size and not 0 <= labels.min() <= labels.max() <= 9:
      raise UserError(f"{labels_path} holds labels outside 0..9: use MNIST-format "
                      "label files")
    for i in range(len(images)):
      yield i, {"image": images[i, :, :, None], "label": int(labels[i])}
