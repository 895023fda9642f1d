"""Where filters fire relative to object parts: the paper's location instability (Sec. 4.2).

Coordinates are continuous pixel positions, x = column + 0.5 at a pixel's
centre (`readingnotes_jax.interpretable_cnn.data.PartsSet`): a filter's peak
cell is mapped to the centre of its receptive field by `feature_to_image` with
the model's `feature_geometry()`.

The release computes the metric in code/tool/main/computeStability.m and
getDistSqrtVar.m (zqs1022/interpretableCNN); `location_instability` follows
them, with the differences named in its docstring.
"""
import math

import numpy as np

MIN_IMAGES_PER_PART = 2  # getDistSqrtVar.m: a variance needs two distances.


def peak_positions(features: np.ndarray) -> np.ndarray:
  """(x, y) cell of each filter's maximum: [N, h, w, C] -> int32 [N, C, 2].

  Ties go to the first cell in row-major order (the release's max over rows,
  then columns, takes the first column instead; ties do not occur in practice).
  """
  n, h, w, c = features.shape
  flat = np.argmax(features.reshape(n, h * w, c), axis=1)  # [N, C], row-major index.
  return np.stack([flat % w, flat // w], axis=-1).astype(np.int32)


def feature_to_image(cells: np.ndarray, stride: float, offset: float) -> np.ndarray:
  """Receptive-field centres `offset + stride * cell` in image coordinates (float32).

  x2p_.m writes the same map as `centerStart + (x - 1) * Stride` for 1-based
  cells; here cells are 0-based and `offset` is the centre of cell 0 in
  continuous coordinates (pixel centres at i + 0.5).
  """
  return (offset + stride * np.asarray(cells, np.float64)).astype(np.float32)


def _image_order(scores: np.ndarray) -> np.ndarray:
  """Per filter, image indices by descending score, ties by index: [N, C] -> [C, N]."""
  return np.argsort(-np.asarray(scores, np.float64).T, axis=1, kind="stable")


def location_instability(peaks: np.ndarray, scores: np.ndarray, parts: np.ndarray,
                         part_valid: np.ndarray, image_size: int,
                         top_k: int = 100) -> tuple[float, np.ndarray]:
  """The paper's location instability (Sec. 4.2; lower is better).

  For filter f and part k: the images where part k is annotated, ordered by f's
  maximum activation (`scores`), the first `top_k` of them; in each, the
  distance from the part to f's peak; D_fk = the standard deviation of these
  distances (N - 1 normalisation, MATLAB's `var` in getDistSqrtVar.m). A filter's
  instability is the mean of D_fk over parts, divided by the image diagonal
  (`norm([ih, iw])`, computeStability.m); the result is its mean over filters.

  As getDistSqrtVar.m, the top `top_k` are taken among the images where the part
  is valid (not the top `top_k` of all images), so negatives (no valid parts)
  never count. Parts valid in fewer than 2 images are left out of the average
  (the release would make every filter NaN; its part lists hold only annotated
  parts, so both agree whenever the release's value is finite).

  Args:
    peaks: [N, C, 2] each filter's peak in image coordinates.
    scores: [N, C] each filter's maximum activation in each image.
    parts: [N, P, 2] part positions in the same coordinates.
    part_valid: bool [N, P].
    image_size: side of the square input image (the diagonal is sqrt(2) x side).
    top_k: images per filter and part (the release's patchNumPerPattern = 100).

  Returns:
    (mean over filters, per-filter values [C]); NaN when no part is valid in 2
    images.
  """
  peaks, parts = np.asarray(peaks, np.float64), np.asarray(parts, np.float64)
  part_valid = np.asarray(part_valid, bool)
  used_parts = np.flatnonzero(part_valid.sum(axis=0) >= MIN_IMAGES_PER_PART)
  num_filters = peaks.shape[1]
  if used_parts.size == 0:
    return math.nan, np.full(num_filters, np.nan)
  order = _image_order(scores)  # [C, N]
  per_filter = np.zeros(num_filters)
  for k in used_parts:
    # Per filter, its first top_k images (in score order) where part k is valid.
    valid_in_order = part_valid[order, k]  # [C, N]
    selected = valid_in_order & (np.cumsum(valid_in_order, axis=1) <= top_k)
    images = order[selected].reshape(num_filters, -1)  # Same count for every filter.
    offsets = parts[images, k] - peaks[images, np.arange(num_filters)[:, None]]
    distances = np.linalg.norm(offsets, axis=-1)  # [C, M]
    per_filter += np.std(distances, axis=1, ddof=1)
  per_filter /= used_parts.size * math.sqrt(2.0) * image_size
  return float(per_filter.mean()), per_filter


def part_hit_fraction(peaks: np.ndarray, scores: np.ndarray, parts: np.ndarray,
                      part_valid: np.ndarray, image_size: int, radius_fraction: float,
                      top_k: int = 100) -> float:
  """Fraction of filters whose peak lands near a part in at least half of their top images.

  Per filter: its `top_k` images by score among those with at least one valid
  part; a hit is a peak within `radius_fraction` x the image diagonal of the
  nearest valid part (distance <= radius); the filter counts when
  2 x hits >= the number of its images. NaN when no image has a valid part.
  """
  peaks, parts = np.asarray(peaks, np.float64), np.asarray(parts, np.float64)
  part_valid = np.asarray(part_valid, bool)
  annotated = part_valid.any(axis=1)
  if not annotated.any():
    return math.nan
  nearest = np.full(peaks.shape[:2], np.inf)  # [N, C] distance to the nearest valid part.
  for k in range(parts.shape[1]):
    distances = np.linalg.norm(parts[:, None, k] - peaks, axis=-1)
    nearest = np.where(part_valid[:, k, None], np.minimum(nearest, distances), nearest)
  hits = nearest <= radius_fraction * math.sqrt(2.0) * image_size
  order = _image_order(scores)  # [C, N]
  num_filters = peaks.shape[1]
  valid_in_order = annotated[order]
  selected = valid_in_order & (np.cumsum(valid_in_order, axis=1) <= top_k)
  images = order[selected].reshape(num_filters, -1)
  filter_hits = hits[images, np.arange(num_filters)[:, None]].sum(axis=1)
  return float(np.mean(2 * filter_hits >= images.shape[1]))
