"""PSPNet's data augmentation and a resumable, parallel segmentation stream.

The training augmentation is semseg's (hszhao/semseg `tool/train.py`, ops in
`util/transform.py`), in its order and with its OpenCV calls, on a float32 RGB
image as semseg's `SemData` gives:

1. `RandScale([0.5, 2.0])`: one factor for both sides; image bilinear, label
   nearest (`cv2.resize(fx=s, fy=s)`).
2. `RandRotate([-10, 10], p=0.5)`: about the center `(w/2, h/2)`, same size;
   image bilinear with the mean as border, label nearest with 255.
3. `RandomGaussianBlur(5)`, p=0.5: `cv2.GaussianBlur(k=(5, 5), sigma=0)` on the
   image, which is OpenCV's fixed binomial kernel [1, 4, 6, 4, 1] / 16 per axis.
4. `RandomHorizontalFlip`, p=0.5.
5. `Crop(crop_type='rand')`: pad (half before, half after) with the mean / 255
   up to the crop size, then a uniformly random window.
6. `ToTensor` + `Normalize`: `(x - 255 * mean) / (255 * std)` with ImageNet's
   mean/std.

Validation (semseg's `val_transform`): center crop with the same padding, then
normalization.

Given the same random draws, `augment` returned exactly semseg's arrays
(checked on 60 CamVid images against semseg's `transform.py` before
`ToTensor`, with the normalization in float32 as torch does it).

Randomness comes from a NumPy generator that the caller derives from
(seed, global sample index), so a resumed run reproduces every sample.
"""
from __future__ import annotations

import concurrent.futures
import os
import threading
from collections.abc import Mapping, Sequence
from typing import Any

import cv2
import numpy as np

from readingnotes_jax.data import pipeline, segmentation
from readingnotes_jax.errors import UserError

# semseg's `mean` and `std` with value_scale 255, float32 as torch applies them.
IMAGENET_MEAN = np.float32([0.485, 0.456, 0.406]) * np.float32(255)
IMAGENET_STD = np.float32([0.229, 0.224, 0.225]) * np.float32(255)
IGNORE_LABEL = segmentation.IGNORE_LABEL
_PAD = tuple(float(v) for v in IMAGENET_MEAN)


def scale(image: np.ndarray, label: np.ndarray, factor: float) -> tuple[np.ndarray, np.ndarray]:
  """Resizes both sides by `factor`: image bilinear, label nearest (semseg `RandScale`).

  The output size is OpenCV's: `round(h * factor) x round(w * factor)`.
  """
  image = cv2.resize(image, None, fx=factor, fy=factor, interpolation=cv2.INTER_LINEAR)
  label = cv2.resize(label, None, fx=factor, fy=factor, interpolation=cv2.INTER_NEAREST)
  return image, label


def rotate(image: np.ndarray, label: np.ndarray, angle: float) -> tuple[np.ndarray, np.ndarray]:
  """Rotates by `angle` degrees (counter-clockwise) about (w/2, h/2) (semseg `RandRotate`).

  Keeps the size; image bilinear with the mean outside, label nearest with 255.
  """
  h, w = label.shape
  matrix = cv2.getRotationMatrix2D((w / 2, h / 2), angle, 1)
  image = cv2.warpAffine(image, matrix, (w, h), flags=cv2.INTER_LINEAR,
                         borderMode=cv2.BORDER_CONSTANT, borderValue=_PAD)
  label = cv2.warpAffine(label, matrix, (w, h), flags=cv2.INTER_NEAREST,
                         borderMode=cv2.BORDER_CONSTANT, borderValue=IGNORE_LABEL)
  return image, label


def gaussian_blur(image: np.ndarray) -> np.ndarray:
  """5x5 Gaussian blur with sigma 0 (semseg `RandomGaussianBlur`): [1,4,6,4,1]/16 per axis."""
  return cv2.GaussianBlur(image, (5, 5), 0)


def hflip(image: np.ndarray, label: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Mirrors left-right."""
  return cv2.flip(image, 1), cv2.flip(label, 1)


def pad_to(image: np.ndarray, label: np.ndarray,
           size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
  """Pads to at least `size` (h, w), half before and half after, with the mean / 255.

  As semseg `Crop`: the top gets `pad // 2` rows, the bottom the rest.
  """
  h, w = label.shape
  pad_h, pad_w = max(size[0] - h, 0), max(size[1] - w, 0)
  if pad_h == 0 and pad_w == 0:
    return image, label
  borders = (pad_h // 2, pad_h - pad_h // 2, pad_w // 2, pad_w - pad_w // 2)
  image = cv2.copyMakeBorder(image, *borders, cv2.BORDER_CONSTANT, value=_PAD)
  label = cv2.copyMakeBorder(label, *borders, cv2.BORDER_CONSTANT, value=IGNORE_LABEL)
  return image, label


def normalize(image: np.ndarray) -> np.ndarray:
  """`(image - 255 * mean) / (255 * std)` per RGB channel, float32 (semseg `Normalize`)."""
  return (np.asarray(image, np.float32) - IMAGENET_MEAN) / IMAGENET_STD


def crop_size_hw(crop_size: int | Sequence[int]) -> tuple[int, int]:
  """(h, w) from an int or a pair."""
  if isinstance(crop_size, (int, np.integer)):
    crop_size = (crop_size, crop_size)
  h, w = (int(v) for v in crop_size)
  if h <= 0 or w <= 0:
    raise UserError(f"crop size {crop_size} must be positive")
  return h, w


def augment(image: np.ndarray, label: np.ndarray, *, crop_size: int | Sequence[int],
            rng: np.random.Generator, scale_range: tuple[float, float] = (0.5, 2.0),
            rotate_range: tuple[float, float] = (-10.0, 10.0),
            rotate_p: float = 0.5, blur_p: float = 0.5,
            flip_p: float = 0.5) -> tuple[np.ndarray, np.ndarray]:
  """semseg's training transform: (uint8 HxWx3, uint8 HxW) -> (float32 normalized, int32).

  Draws from `rng` in semseg's order (scale; rotate? angle; blur?; flip?; crop
  offsets), so one generator state gives one sample.
  """
  crop_h, crop_w = crop_size_hw(crop_size)
  image = np.asarray(image, np.float32)
  factor = scale_range[0] + (scale_range[1] - scale_range[0]) * rng.random()
  image, label = scale(image, label, factor)
  if rng.random() < rotate_p:
    angle = rotate_range[0] + (rotate_range[1] - rotate_range[0]) * rng.random()
    image, label = rotate(image, label, angle)
  if rng.random() < blur_p:
    image = gaussian_blur(image)
  if rng.random() < flip_p:
    image, label = hflip(image, label)
  image, label = pad_to(image, label, (crop_h, crop_w))
  h, w = label.shape
  top = int(rng.integers(0, h - crop_h, endpoint=True))
  left = int(rng.integers(0, w - crop_w, endpoint=True))
  image = image[top:top + crop_h, left:left + crop_w]
  label = label[top:top + crop_h, left:left + crop_w]
  return normalize(image), label.astype(np.int32)


def preprocess_eval(image: np.ndarray, label: np.ndarray, *,
                    crop_size: int | Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
  """semseg's validation transform: center crop (padded as in training), normalize."""
  crop_h, crop_w = crop_size_hw(crop_size)
  image, label = pad_to(np.asarray(image, np.float32), label, (crop_h, crop_w))
  h, w = label.shape
  top, left = (h - crop_h) // 2, (w - crop_w) // 2
  image = image[top:top + crop_h, left:left + crop_w]
  label = label[top:top + crop_h, left:left + crop_w]
  return normalize(image), label.astype(np.int32)


def sample_rng(seed: int, index: int) -> np.random.Generator:
  """Augmentation generator of global sample `index`.

  Seeded with `SeedSequence([seed, index, 1])`, apart from the epoch orders'
  `[seed, epoch]` (`pipeline.epoch_permutation`).
  """
  return np.random.default_rng([seed, index, 1])


class SegmentationStream:
  """Processed examples of a split, addressed by global sample index.

  Training (`train=True`): element `i` is record `perm_e[i % n]` with
  `e = i // n` and `perm_e = pipeline.epoch_permutation(seed, e, n)` (the
  ProGAN image stream's order), augmented with `sample_rng(seed, i)`: an
  infinite stream that a resumed run re-enters at any index, whatever the
  batch size or number of processes. Evaluation (`train=False`): element
  `i < n` is record `i`, center cropped; elements past the end are padding
  (zero image, all-255 label, which losses and metrics ignore), so every batch
  has the same shape.

  Records are read (`source[i]`, decoded with OpenCV) and processed on a
  thread pool (OpenCV releases the GIL), and the next batch of the same size
  is prepared in the background while the caller trains on this one.
  """

  def __init__(self, source: Sequence[Mapping[str, Any]], *, crop_size: int | Sequence[int],
               seed: int = 0, train: bool = True, num_threads: int | None = None) -> None:
    if len(source) == 0:
      raise UserError("the segmentation split is empty: check the data folder")
    self.source = source
    self.crop_size = crop_size_hw(crop_size)
    self.seed = seed
    self.train = train
    self._workers = concurrent.futures.ThreadPoolExecutor(num_threads or os.cpu_count() or 1)
    self._prefetcher = concurrent.futures.ThreadPoolExecutor(1)
    self._prefetched: tuple[tuple[int, int], concurrent.futures.Future] | None = None
    self._permutations: dict[int, np.ndarray] = {}
    self._lock = threading.Lock()

  def __len__(self) -> int:
    return len(self.source)

  def record_index(self, index: int) -> int | None:
    """Record behind global sample `index`; None for evaluation padding."""
    n = len(self.source)
    if not self.train:
      return index if index < n else None
    epoch, position = divmod(index, n)
    with self._lock:  # The prefetch thread reads too.
      if epoch not in self._permutations:
        # Keep this epoch's order and the previous one's (batches straddle them).
        self._permutations = {e: p for e, p in self._permutations.items() if e == epoch - 1}
        self._permutations[epoch] = pipeline.epoch_permutation(self.seed, epoch, n)
      return int(self._permutations[epoch][position])

  def example(self, index: int) -> tuple[np.ndarray, np.ndarray]:
    """(float32 HxWx3 normalized image, int32 HxW label) of global sample `index`."""
    record = self.record_index(index)
    if record is None:
      crop_h, crop_w = self.crop_size
      return (np.zeros((crop_h, crop_w, 3), np.float32),
              np.full((crop_h, crop_w), IGNORE_LABEL, np.int32))
    image, label = segmentation.image_and_label(self.source[record])
    if self.train:
      return augment(image, label, crop_size=self.crop_size, rng=sample_rng(self.seed, index))
    return preprocess_eval(image, label, crop_size=self.crop_size)

  def _load(self, first: int, count: int) -> dict[str, np.ndarray]:
    examples = list(self._workers.map(self.example, range(first, first + count)))
    return {"image": np.stack([e[0] for e in examples]),
            "label": np.stack([e[1] for e in examples])}

  def batch(self, start: int, size: int, process_index: int = 0,
            process_count: int = 1) -> dict[str, np.ndarray]:
    """This process's share of the global batch of samples `start .. start + size - 1`.

    Process `p` of `P` gets the `size / P` consecutive samples from
    `start + p * size / P`, so the processes' shares tile the global batch.

    Returns:
      dict(image=float32 [size / P, H, W, 3] normalized, label=int32 [size / P, H, W]).
    """
    if size % process_count or not 0 <= process_index < process_count or start < 0:
      raise UserError(f"batch of {size} at {start} cannot be split for process "
                      f"{process_index} of {process_count}: make the batch size a "
                      "multiple of the number of processes")
    local = size // process_count
    first = start + process_index * local
    if self._prefetched is not None and self._prefetched[0] == (first, local):
      result = self._prefetched[1].result()
    else:
      result = self._load(first, local)
    self._prefetched = ((first + size, local),
                        self._prefetcher.submit(self._load, first + size, local))
    return result

  def close(self) -> None:
    """Stops the background threads (a pending prefetch finishes first)."""
    self._prefetcher.shutdown(wait=True)
    self._workers.shutdown(wait=True)

  def __enter__(self) -> SegmentationStream:
    return self

  def __exit__(self, *exc_info: Any) -> None:
    self.close()
