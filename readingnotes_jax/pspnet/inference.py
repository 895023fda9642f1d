"""PSPNet inference: sliding windows, flip averaging, multi-scale, data-set evaluation.

Matches hszhao/semseg `tool/test.py`:
- `net_process`: softmax of the logits (upsampled to the crop size if needed),
  averaged with the softmax of the left-right mirrored crop, mirrored back;
- `scale_process`: pad the image with the mean (zeros once normalized) up to
  the crop size, half before and half after; windows of the crop size every
  `ceil(crop * 2/3)` pixels, the last window of a row/column flush with the
  border; probabilities averaged where windows overlap; the padding removed;
  the result resized (OpenCV bilinear) to the original image size;
- `test`: for each scale, the long side resized to `round(scale * base_size)`
  (the other side `round(long / H * W)`), probabilities summed over scales,
  then argmax. The paper's multi-scale set is `MULTI_SCALES`;
- `cal_acc`: scores from the data-set-level confusion matrix
  (`metrics.segmentation`).

The network runs on batches of same-size crops (one compile per crop size and
batch size); everything else is NumPy/OpenCV on the host, as in semseg.
"""
import dataclasses
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import cv2
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from readingnotes_jax.data import segmentation
from readingnotes_jax.data.segmentation_augment import normalize
from readingnotes_jax.errors import UserError
from readingnotes_jax.metrics.segmentation import confusion_matrix, segmentation_scores
from readingnotes_jax.nn.resize import resize_bilinear_align_corners
from readingnotes_jax.training import loop, mesh as mesh_lib

MULTI_SCALES = (0.5, 0.75, 1.0, 1.25, 1.5, 1.75)
STRIDE_RATE = 2 / 3

# crops [B, h, w, 3] normalized float32 -> class probabilities [B, h, w, C] float32.
ProbabilityFn = Callable[[np.ndarray], np.ndarray]


def make_probability_fn(model: nn.Module, *, flip: bool, mesh: jax.sharding.Mesh | None = None
                        ) -> Callable[[Mapping[str, Any], np.ndarray], np.ndarray]:
  """semseg `net_process` on a batch of crops: `fn(variables, crops) -> probabilities`.

  `model.apply(variables, crops, train=False)` gives logits; those not at the
  crop size are upsampled (align_corners=True) as semseg does, then softmax;
  with `flip`, averaged with the mirrored crops' probabilities mirrored back.
  Compiled once per crop shape; bind `variables` with `functools.partial` to
  get a `ProbabilityFn`. With a `mesh`, crops are split over its devices (the
  batch must divide evenly) and `variables` should be replicated on it; with a mesh
  over several processes, each passes the same crops.
  """
  def softmax_at_crop_size(variables, crops):
    logits = model.apply(variables, crops, train=False)
    if logits.shape[1:3] != crops.shape[1:3]:
      logits = resize_bilinear_align_corners(logits, crops.shape[1:3])
    return jax.nn.softmax(logits.astype(jnp.float32), axis=-1)

  def probabilities(variables, crops):
    probs = softmax_at_crop_size(variables, crops)
    if flip:
      mirrored = softmax_at_crop_size(variables, crops[:, :, ::-1])
      probs = (probs + mirrored[:, :, ::-1]) / 2
    return probs

  if mesh is None:
    compiled = jax.jit(probabilities)
    return lambda variables, crops: np.asarray(compiled(variables, crops))
  sharded = mesh_lib.batch_sharded(mesh)
  # Every process passes the same crops and gets all probabilities back (replicated output),
  # so evaluation also runs when the mesh spans several processes.
  compiled = jax.jit(probabilities, in_shardings=(mesh_lib.replicated(mesh), sharded),
                     out_shardings=mesh_lib.replicated(mesh))

  def run(variables, crops):
    crops = jax.make_array_from_callback(crops.shape, sharded, lambda index: crops[index])
    return np.asarray(compiled(variables, crops))
  return run


def window_starts(size: int, crop: int, stride: int) -> list[int]:
  """Start offsets of the windows along one axis (semseg `scale_process`).

  `ceil((size - crop) / stride) + 1` windows every `stride` pixels, each
  shifted back to end inside the image.
  """
  count = math.ceil((size - crop) / stride) + 1
  return [min(i * stride + crop, size) - crop for i in range(count)]


def sliding_window(probability_fn: ProbabilityFn, image: np.ndarray, *,
                   crop_size: tuple[int, int], num_classes: int, batch_size: int,
                   stride_rate: float = STRIDE_RATE) -> np.ndarray:
  """Class probabilities [H, W, C] of one normalized image [H, W, 3] by sliding windows.

  Crops go to `probability_fn` `batch_size` at a time (the last batch padded
  with zero crops), so the network compiles once.
  """
  crop_h, crop_w = crop_size
  height, width = image.shape[:2]
  pad_h, pad_w = max(crop_h - height, 0), max(crop_w - width, 0)
  top, left = pad_h // 2, pad_w // 2
  image = np.pad(image, ((top, pad_h - top), (left, pad_w - left), (0, 0)))
  padded_h, padded_w = image.shape[:2]
  stride_h, stride_w = math.ceil(crop_h * stride_rate), math.ceil(crop_w * stride_rate)
  windows = [(y, x) for y in window_starts(padded_h, crop_h, stride_h)
             for x in window_starts(padded_w, crop_w, stride_w)]
  total = np.zeros((padded_h, padded_w, num_classes), np.float32)
  count = np.zeros((padded_h, padded_w, 1), np.float32)
  for first in range(0, len(windows), batch_size):
    chunk = windows[first:first + batch_size]
    crops = np.zeros((batch_size, crop_h, crop_w, image.shape[2]), np.float32)
    for i, (y, x) in enumerate(chunk):
      crops[i] = image[y:y + crop_h, x:x + crop_w]
    probs = probability_fn(crops)
    if probs.shape[1:] != (crop_h, crop_w, num_classes):
      raise UserError(f"the network gives {probs.shape[1:]} per crop, expected "
                      f"{(crop_h, crop_w, num_classes)}: check num_classes and the crop size")
    for i, (y, x) in enumerate(chunk):
      total[y:y + crop_h, x:x + crop_w] += probs[i]
      count[y:y + crop_h, x:x + crop_w] += 1
  return (total / count)[top:top + height, left:left + width]


def scaled_size(height: int, width: int, long_side: int) -> tuple[int, int]:
  """(h, w) with the long side `long_side` and the aspect ratio kept (semseg `test`)."""
  if height > width:
    return long_side, round(long_side / height * width)
  return round(long_side / width * height), long_side


# Channels one cv2.resize call takes: CV_CN_MAX, 512 up to OpenCV 4, 128 in OpenCV 5 (more
# fail with "m->dims <= 2": ADE20K's 150 classes did).
_CV_MAX_CHANNELS = 128


def resize_probabilities(probs: np.ndarray, height: int, width: int) -> np.ndarray:
  """OpenCV bilinear resize of [h, w, C] (any C, in chunks of OpenCV's channel limit)."""
  if probs.shape[:2] == (height, width):
    return probs
  step = _CV_MAX_CHANNELS
  parts = [cv2.resize(probs[..., i:i + step], (width, height), interpolation=cv2.INTER_LINEAR)
           for i in range(0, probs.shape[-1], step)]
  parts = [p[..., None] if p.ndim == 2 else p for p in parts]
  return np.concatenate(parts, axis=-1)


@dataclasses.dataclass
class Predictor:
  """semseg `tool/test.py` prediction of whole images of any size.

  Attributes:
    probability_fn: crops -> probabilities (`make_probability_fn` with the
      variables bound).
    num_classes: C.
    crop_size: (h, w) of the network's windows.
    base_size: long side of the image at scale 1.0 (512 ADE20K / VOC, 2048
      Cityscapes); 0 keeps the image's own size at scale 1.0.
    scales: image scales averaged (`MULTI_SCALES` for the multi-scale score).
    batch_size: crops per network call.
    stride_rate: window stride as a fraction of the crop size.
  """
  probability_fn: ProbabilityFn
  num_classes: int
  crop_size: tuple[int, int]
  base_size: int
  scales: Sequence[float] = (1.0,)
  batch_size: int = 8
  stride_rate: float = STRIDE_RATE

  def probabilities(self, image: np.ndarray) -> np.ndarray:
    """Mean over scales of the class probabilities [H, W, C] of an RGB image [H, W, 3] (0..255)."""
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3 or min(image.shape[:2]) < 1:
      raise UserError(f"expected an RGB image [H, W, 3], got shape {image.shape}")
    height, width = image.shape[:2]
    image = image.astype(np.float32)
    total = np.zeros((height, width, self.num_classes), np.float32)
    for scale in self.scales:
      long_side = round(scale * (self.base_size or max(height, width)))
      new_h, new_w = scaled_size(height, width, long_side)
      scaled = cv2.resize(image, (new_w, new_h), interpolation=cv2.INTER_LINEAR)
      probs = sliding_window(self.probability_fn, normalize(scaled), crop_size=self.crop_size,
                             num_classes=self.num_classes, batch_size=self.batch_size,
                             stride_rate=self.stride_rate)
      total += resize_probabilities(probs, height, width)
    return total / len(self.scales)

  def __call__(self, image: np.ndarray) -> np.ndarray:
    """Label map [H, W] int32 of an RGB image [H, W, 3]."""
    return np.argmax(self.probabilities(image), axis=-1).astype(np.int32)


@dataclasses.dataclass
class Evaluation:
  """Scores (`miou`, `macc`, `aacc`, per-class lists), the summed confusion matrix and
  a few (image, label, prediction) triples for figures."""
  scores: dict[str, Any]
  confusion: np.ndarray
  examples: list[tuple[np.ndarray, np.ndarray, np.ndarray]]


def evaluate_source(predictor: Predictor, source: Sequence[Mapping[str, Any]], *,
                    num_images: int = 0, keep_examples: int = 0,
                    progress: bool = True) -> Evaluation:
  """Predicts the first `num_images` records of `source` (0: all) and scores them.

  Scores come from one confusion matrix summed over the data set (semseg
  `cal_acc`); labels equal to 255 are ignored. `keep_examples` triples are
  kept from records spread evenly over the evaluated ones (video data sets
  list neighbouring frames together).
  """
  count = len(source) if num_images <= 0 else min(num_images, len(source))
  if count == 0:
    raise UserError("the evaluation split is empty: check the data folder")
  confusion = np.zeros((predictor.num_classes, predictor.num_classes), np.int64)
  keep = set(np.linspace(0, count - 1, min(keep_examples, count)).round().astype(int).tolist())
  examples = []
  bar = loop.progress_bar(count, 0, unit="img") if progress else None
  for i in range(count):
    image, label = segmentation.image_and_label(source[i])
    prediction = predictor(image)
    confusion += confusion_matrix(prediction, label, predictor.num_classes)
    if i in keep:
      examples.append((image, label, prediction))
    if bar is not None:
      bar.update(1)
  if bar is not None:
    bar.close()
  return Evaluation(segmentation_scores(confusion), confusion, examples)

