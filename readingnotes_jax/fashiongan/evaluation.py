"""FashionGAN's evaluation measures (NumPy, host side), on generated segmentations and images.

The release and the paper report a user study; papers/fashiongan.md suggests what a
reimplementation can measure instead, and these are those measures:
- `shape_iou`: shape retention, the IoU between down m(S0) of the photo and down m of the
  generated segmentation (`compose.spatial_constraint`, 8 x 8 x 4, each cell taking the
  merged class of its largest value), averaged over the merged classes present in either;
- `garment_colours` / colour accuracy: the requested colour of each garment the sentence
  names against `ccp_fashion.colour_name` of the per-channel median of the generated image
  over the generated segmentation's region of that garment (upper clothes 3, lower clothes
  4), as the CCP sentences were made from the photos; a garment whose region is empty
  counts as wrong;
- `CategoryClassifier` / category accuracy: what a 7-class segmentation can tell of the
  garments' category is the lower garment's kind (`LOWER_GROUPS`: none, dress, short,
  long); a nearest-centroid classifier of the segmentation's label fractions on a 8 x 8
  grid, fitted to the training split's real segmentations, reads it from the generated
  segmentation, and its accuracy on the real held-out segmentations is the ceiling.
"""
import numpy as np

from readingnotes_jax.data import ccp_fashion
from readingnotes_jax.errors import UserError
from readingnotes_jax.fashiongan import compose

GARMENT_LABELS = {"upper": ccp_fashion.UPPER, "lower": ccp_fashion.LOWER}
# The kind of lower garment a segmentation shows (`ccp_fashion.LOWER_GARMENTS` order, after
# "none"): dress; short (romper, shorts, skirt: legs show); long (jeans, leggings, pants).
LOWER_GROUPS = ("none", "dress", "short", "long")
_GROUP_OF_LOWER = {"dress": 1, "romper": 2, "shorts": 2, "skirt": 2, "jeans": 3, "leggings": 3,
                   "pants": 3}
GROUP_OF_LOWER_ATTRIBUTE = np.array(
    [0] + [_GROUP_OF_LOWER[g] for g in ccp_fashion.LOWER_GARMENTS], np.int32)
GRID = 8  # Cells per side of the classifier's label fractions.


def merged_cells(labels: np.ndarray) -> np.ndarray:
  """int [..., 8, 8]: the merged class (`compose.MERGED_CLASS_NAMES`) of each cell of down m."""
  return np.argmax(compose.spatial_constraint(labels), axis=-1)


def shape_iou(labels_a: np.ndarray, labels_b: np.ndarray) -> np.ndarray:
  """float64 [N]: per pair, the mean over merged classes present in either of the IoU of
  `merged_cells` of label maps [N, H, W] (7 classes) `labels_a` and `labels_b`."""
  a, b = merged_cells(labels_a), merged_cells(labels_b)
  classes = np.arange(len(compose.MERGED_CLASS_NAMES))
  a, b = a[..., None] == classes, b[..., None] == classes
  intersection = (a & b).sum(axis=(1, 2))
  union = (a | b).sum(axis=(1, 2))
  present = union > 0
  return np.where(present, intersection / np.maximum(union, 1), 0).sum(1) / present.sum(1)


def requested_colours(attributes: np.ndarray) -> dict[str, np.ndarray]:
  """{"upper", "lower": int [N] colour index into `ccp_fashion.COLOURS`, -1 when the sentence
  names no such garment} from CCP attribute vectors [N, 4] (`ccp_fashion.ATTRIBUTES`)."""
  names = [name for name, _ in ccp_fashion.ATTRIBUTES]
  return {garment: attributes[:, names.index(f"{garment}_colour")].astype(np.int64) - 1
          for garment in GARMENT_LABELS}


def garment_colours(images: np.ndarray, labels: np.ndarray) -> dict[str, np.ndarray]:
  """{"upper", "lower": int [N] colour index of the median pixel of that garment's region, -1
  when the region is empty} for uint8 RGB images [N, H, W, 3] and their labels [N, H, W]."""
  out = {}
  for garment, label in GARMENT_LABELS.items():
    colours = np.full(len(images), -1, np.int64)
    for i, (image, mask) in enumerate(zip(images, labels == label)):
      if mask.any():
        name = ccp_fashion.colour_name(np.median(image[mask], axis=0))
        colours[i] = ccp_fashion.COLOURS.index(name)
    out[garment] = colours
  return out


def colour_hits(requested: dict[str, np.ndarray], measured: dict[str, np.ndarray]
                ) -> tuple[int, int]:
  """(garments whose measured colour is the requested one, garments requested)."""
  hits = total = 0
  for garment, want in requested.items():
    named = want >= 0
    hits += int(np.sum(measured[garment][named] == want[named]))
    total += int(named.sum())
  return hits, total


def lower_group(attributes: np.ndarray) -> np.ndarray:
  """int [N] index into `LOWER_GROUPS` of CCP attribute vectors [N, 4]."""
  names = [name for name, _ in ccp_fashion.ATTRIBUTES]
  return GROUP_OF_LOWER_ATTRIBUTE[attributes[:, names.index("lower")]]


def label_fractions(labels: np.ndarray) -> np.ndarray:
  """float64 [N, 8 * 8 * 7]: each label's fraction of each cell of an 8 x 8 grid."""
  n, h, w = labels.shape
  if h % GRID or w % GRID:
    raise UserError(f"label maps {h}x{w}: the category classifier needs sides that are "
                    f"multiples of {GRID}")
  one_hot = labels[..., None] == np.arange(compose.NUM_LABELS)
  cells = one_hot.reshape(n, GRID, h // GRID, GRID, w // GRID, compose.NUM_LABELS)
  return cells.mean(axis=(2, 4)).reshape(n, -1)


class CategoryClassifier:
  """Nearest centroid (Euclidean, over `label_fractions`) of the lower garment's kind."""

  def __init__(self, labels: np.ndarray, groups: np.ndarray):
    features = label_fractions(labels)
    self.groups = np.unique(groups)
    self.centroids = np.stack([features[groups == g].mean(axis=0) for g in self.groups])

  def predict(self, labels: np.ndarray) -> np.ndarray:
    features = label_fractions(labels)
    distances = ((features[:, None, :] - self.centroids[None]) ** 2).sum(-1)
    return self.groups[np.argmin(distances, axis=1)]
