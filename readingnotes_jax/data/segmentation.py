"""Shared parts of the semantic-segmentation builders (CamVid, ADE20K, ...).

Every segmentation data set is stored the same way, so trainers, evaluators and
figures treat them alike:

- `image`: the source JPEG/PNG bytes (re-encoded as PNG only when the file is
  not 8-bit RGB), decoded to uint8 HxWx3 RGB at read time (OpenCV, no
  TensorFlow).
- `label`: uint8 train ids `0..C-1`, with everything the data set ignores
  mapped to `IGNORE_LABEL` (255), as semseg expects (semseg FAQ "Dataset
  format"); stored as PNG (fast to write in parallel, unlike TFDS's zlib
  tensors) and read back as HxWx1 (`image_and_label` gives HxW).
- `file_name`: the image's path relative to the source folder.

Builds validate every pair: an unreadable file, an image/label size mismatch or
a label value outside the data set's id range is a `UserError` naming the file,
and TFDS removes the half-written build.
"""
from __future__ import annotations

import collections
import concurrent.futures
import io
import itertools
import os
import pathlib
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any, ClassVar, NamedTuple

import cv2
import numpy as np
import PIL.Image
import tensorflow_datasets as tfds

from readingnotes_jax.data import tfds_local
from readingnotes_jax.errors import UserError

IGNORE_LABEL = 255

_BUILD_WORKERS = min(8, os.cpu_count() or 1)
_BUILD_WINDOW = 64  # Examples decoded ahead of the TFDS writer.


def image_and_label(record: Mapping[str, Any]) -> tuple[np.ndarray, np.ndarray]:
  """(uint8 HxWx3 RGB image, uint8 HxW label) of a record read from a split."""
  return record["image"], record["label"][..., 0]


def label_lut(mapping: Mapping[int, int]) -> np.ndarray:
  """Lookup table raw id -> train id (int16, 256 entries, -1 = not allowed)."""
  lut = np.full(256, -1, np.int16)
  for raw, train_id in mapping.items():
    lut[raw] = train_id
  return lut


def map_labels(raw: np.ndarray, lut: np.ndarray, path: os.PathLike[str] | str) -> np.ndarray:
  """Maps raw label ids through `lut`; ids the table does not allow are a UserError."""
  raw = np.asarray(raw)
  if raw.ndim != 2:
    raise UserError(f"{path}: label has shape {raw.shape}, expected a single-channel "
                    "HxW map of class ids (not a color-coded image)")
  if raw.dtype.kind not in "biu" and not (np.isfinite(raw).all() and (raw == np.round(raw)).all()):
    raise UserError(f"{path}: label holds {raw.dtype} values that are not whole class ids: "
                    "fix or remove this file")
  if raw.size and (raw.min() < 0 or raw.max() >= len(lut)):
    bad = raw[(raw < 0) | (raw >= len(lut))]
    raise UserError(f"{path}: label value {int(bad[0])} outside the data set's ids "
                    f"{_allowed(lut)}: fix or remove this file")
  mapped = lut[raw.astype(np.intp)]
  if (mapped < 0).any():
    bad = np.unique(raw[mapped < 0])
    raise UserError(f"{path}: label values {bad.tolist()[:8]} outside the data set's "
                    f"ids {_allowed(lut)}: fix or remove this file")
  return mapped.astype(np.uint8)


def _allowed(lut: np.ndarray) -> str:
  """Human-readable allowed raw ids, e.g. '0-11' or '0-20, 255'."""
  ids = np.flatnonzero(lut >= 0).tolist()
  runs = []
  for _, group in itertools.groupby(enumerate(ids), lambda p: p[1] - p[0]):
    values = [v for _, v in group]
    runs.append(f"{values[0]}-{values[-1]}" if len(values) > 1 else str(values[0]))
  return ", ".join(runs)


def read_image(path: pathlib.Path) -> tuple[bytes, tuple[int, int]]:
  """Encoded RGB image bytes and (height, width); unreadable files are a UserError.

  JPEG/PNG files already 8-bit RGB are kept byte for byte; others are converted
  to RGB and stored as PNG.
  """
  data = read_bytes(path)
  try:
    with PIL.Image.open(io.BytesIO(data)) as image:
      image.load()
      if image.format not in ("JPEG", "PNG") or image.mode != "RGB":
        buffer = io.BytesIO()
        image.convert("RGB").save(buffer, format="PNG")
        data = buffer.getvalue()
      return data, (image.height, image.width)
  except (OSError, ValueError, PIL.Image.DecompressionBombError) as e:
    raise UserError(f"{path}: unreadable image ({e}): replace or remove the file") from e


def read_png_label(path: pathlib.Path) -> np.ndarray:
  """Raw class ids of a label image (palette PNGs give their palette indices)."""
  data = read_bytes(path)
  try:
    with PIL.Image.open(io.BytesIO(data)) as image:
      if image.mode in ("RGB", "RGBA"):
        raise UserError(f"{path}: label is a {image.mode} image, expected one channel "
                        "of class ids (grey or palette PNG)")
      return np.asarray(image)
  except (OSError, ValueError, PIL.Image.DecompressionBombError) as e:
    raise UserError(f"{path}: unreadable label ({e}): replace or remove the file") from e


def encode_png(label: np.ndarray) -> bytes:
  """PNG bytes of a uint8 HxW label map."""
  ok, encoded = cv2.imencode(".png", label)
  assert ok, "PNG encoding of a uint8 array cannot fail"
  return encoded.tobytes()


def read_bytes(path: pathlib.Path) -> bytes:
  """File contents; a missing or unreadable file is a UserError."""
  try:
    return path.read_bytes()
  except OSError as e:
    raise UserError(f"{path}: cannot read ({e.strerror or e}): check the data "
                    "folder") from e


def read_list(path: pathlib.Path) -> list[str]:
  """Non-empty, stripped lines of a list file; a missing file is a UserError."""
  if not path.is_file():
    raise UserError(f"list file {path} not found: pass the data set's folder "
                    "with its split lists")
  return [line.strip() for line in read_bytes(path).decode().splitlines() if line.strip()]


def require_dir(path: pathlib.Path, what: str) -> pathlib.Path:
  """`path` if it is a folder, else a UserError naming `what` it should hold."""
  if not path.is_dir():
    raise UserError(f"folder {path} not found: expected {what}")
  return path


def bit_palette(num_colors: int) -> np.ndarray:
  """PASCAL VOC's color map (bits of the index spread over R, G, B), (N, 3) uint8.

  Matches the `labelcolormap` of the VOC development kit (VOCdevkit/VOCcode);
  also used here for data sets without an official palette.
  """
  palette = np.zeros((num_colors, 3), np.uint8)
  for index in range(num_colors):
    value, color = index, [0, 0, 0]
    for shift in range(7, -1, -1):
      for channel in range(3):
        color[channel] |= ((value >> channel) & 1) << shift
      value >>= 3
    palette[index] = color
  return palette


class Pair(NamedTuple):
  """The files of one example."""
  image: pathlib.Path
  label: pathlib.Path


class SegmentationBuilder(tfds_local.LocalFilesBuilder):
  """Base of the segmentation builders: features, validation, parallel decoding.

  Subclasses set `CLASS_NAMES`, `PALETTE` ((C, 3) uint8 RGB per train id) and
  `LABEL_LUT` (raw id -> train id, see `label_lut`), list their examples as
  `Pair`s in `_split_generators` and, for labels that are not PNG class-id
  images, override `_read_raw_label`.
  """

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES: ClassVar[dict[str, str]] = {"1.0.0": "First version."}
  CLASS_NAMES: ClassVar[tuple[str, ...]]
  PALETTE: ClassVar[np.ndarray]
  LABEL_LUT: ClassVar[np.ndarray]

  @classmethod
  def num_classes(cls) -> int:
    return len(cls.CLASS_NAMES)

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds_local.LocalDatasetInfo(
        builder=self,
        description=(self.__doc__ or "").strip().splitlines()[0],
        features=tfds.features.FeaturesDict({
            "image": tfds.features.Image(shape=(None, None, 3)),
            "label": tfds.features.Image(shape=(None, None, 1), encoding_format="png"),
            "file_name": tfds.features.Text(),
        }),
        supervised_keys=("image", "label"),
        # Records in listing order (TFDS orders them by the integer key).
        disable_shuffling=True,
    )

  def _read_raw_label(self, path: pathlib.Path) -> np.ndarray:
    """Raw ids of one label file (default: a grey or palette PNG)."""
    return read_png_label(path)

  def _example(self, index: int, pair: Pair) -> tuple[int, dict[str, Any]]:
    image, (height, width) = read_image(pair.image)
    label = map_labels(self._read_raw_label(pair.label), self.LABEL_LUT, pair.label)
    if label.shape != (height, width):
      raise UserError(f"{pair.label}: label is {label.shape[0]}x{label.shape[1]} but "
                      f"image {pair.image} is {height}x{width}: fix the pair")
    return index, {"image": image, "label": encode_png(label),
                   "file_name": _relative(pair.image, self.source_dir)}

  def _generate_examples(self, pairs: Sequence[Pair]) -> Iterator[tuple[int, dict[str, Any]]]:
    if not pairs:
      raise UserError(f"no examples found in {self.source_dir}: check the folder layout")
    yield from ordered_map(lambda item: self._example(*item), enumerate(pairs))


def ordered_map(fn: Callable[[Any], Any], items: Iterable[Any], *,
                workers: int = _BUILD_WORKERS, window: int = _BUILD_WINDOW) -> Iterator[Any]:
  """`map(fn, items)` on a thread pool, in order, at most `window` results ahead."""
  with concurrent.futures.ThreadPoolExecutor(workers) as pool:
    items = iter(items)
    pending = collections.deque(
        pool.submit(fn, item) for item in itertools.islice(items, window))
    try:
      while pending:
        result = pending.popleft().result()
        pending.extend(pool.submit(fn, item) for item in itertools.islice(items, 1))
        yield result
    finally:
      for future in pending:
        future.cancel()


def _relative(path: pathlib.Path, root: pathlib.Path) -> str:
  try:
    return path.relative_to(root).as_posix()
  except ValueError:
    return path.as_posix()
