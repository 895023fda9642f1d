"""What a person looks at after a segmentation run: prediction overlays, confusion matrix."""
import os
import pathlib
from collections.abc import Sequence

import numpy as np

from readingnotes_jax.data.segmentation import IGNORE_LABEL


def colorize(label: np.ndarray, palette: np.ndarray) -> np.ndarray:
  """RGB uint8 [H, W, 3] of a label map: `palette[class]`, black for 255 and out-of-range ids."""
  label = np.asarray(label)
  valid = (label >= 0) & (label < len(palette)) & (label != IGNORE_LABEL)
  colors = np.zeros(label.shape + (3,), np.uint8)
  colors[valid] = palette[label[valid]]
  return colors


def overlay(image: np.ndarray, label: np.ndarray, palette: np.ndarray,
            alpha: float = 0.6) -> np.ndarray:
  """The image with the label colors blended in at `alpha` (ignored pixels left as they are)."""
  image = np.asarray(image, np.float32)
  blended = image * (1 - alpha) + colorize(label, palette).astype(np.float32) * alpha
  keep = np.asarray(label) == IGNORE_LABEL
  blended[keep] = image[keep]
  return np.clip(np.rint(blended), 0, 255).astype(np.uint8)


def _pyplot():
  import matplotlib
  matplotlib.use("Agg")
  from matplotlib import pyplot as plt
  return plt


def _save(fig, path: str | os.PathLike) -> None:
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  tmp = path.with_name(path.name + ".tmp.png")
  fig.savefig(tmp)
  os.replace(tmp, path)


def save_prediction_overlays(examples: Sequence[tuple[np.ndarray, np.ndarray, np.ndarray]],
                             class_names: Sequence[str], palette: np.ndarray,
                             path: str | os.PathLike, title: str = "") -> None:
  """One row per (image, ground truth, prediction): the image, then each label map
  blended over it; a legend names the colors of the classes that appear."""
  plt = _pyplot()
  from matplotlib.patches import Patch
  rows = len(examples)
  height, width = examples[0][0].shape[:2]
  panel = 3.2
  fig, axes = plt.subplots(rows, 3, figsize=(3 * panel + 2.2, rows * panel * height / width + 0.6),
                           dpi=100, squeeze=False)
  shown = set()
  for row, (image, label, prediction) in enumerate(examples):
    panels = (("image", image), ("ground truth", overlay(image, label, palette)),
              ("prediction", overlay(image, prediction, palette)))
    for col, (name, picture) in enumerate(panels):
      ax = axes[row, col]
      ax.imshow(picture)
      ax.set_xticks([])
      ax.set_yticks([])
      if row == 0:
        ax.set_title(name)
    for values in (label, prediction):
      ids = np.unique(values)
      shown.update(int(i) for i in ids if 0 <= i < len(class_names))
  handles = [Patch(color=palette[i] / 255.0, label=class_names[i]) for i in sorted(shown)]
  fig.legend(handles=handles, loc="center right", fontsize=8, frameon=False)
  if title:
    fig.suptitle(title)
  fig.tight_layout(rect=(0, 0, 1 - 2.0 / fig.get_size_inches()[0], 1))
  _save(fig, path)
  plt.close(fig)


def normalized_confusion(confusion: np.ndarray) -> np.ndarray:
  """Rows (ground truth) divided by their sums: the share of each true class predicted as each
  class; rows of absent classes stay 0."""
  confusion = np.asarray(confusion, np.float64)
  totals = confusion.sum(axis=1, keepdims=True)
  return np.divide(confusion, totals, out=np.zeros_like(confusion), where=totals > 0)


def save_confusion_matrix(confusion: np.ndarray, class_names: Sequence[str],
                          path: str | os.PathLike, title: str = "") -> None:
  """The row-normalized confusion matrix as a heat map (class names when there are <= 40)."""
  plt = _pyplot()
  matrix = normalized_confusion(confusion)
  n = len(matrix)
  side = min(max(4.0, 0.35 * n + 2.0), 16.0)
  fig, ax = plt.subplots(figsize=(side + 1.0, side), dpi=100)
  im = ax.imshow(matrix, cmap="viridis", vmin=0.0, vmax=1.0)
  fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="share of the true class's pixels")
  if n <= 40:
    ax.set_xticks(range(n), class_names, rotation=90, fontsize=8)
    ax.set_yticks(range(n), class_names, fontsize=8)
    if n <= 20:
      for i in range(n):
        for j in range(n):
          if matrix[i, j] >= 0.01:
            ax.text(j, i, f"{matrix[i, j]:.2f}", ha="center", va="center", fontsize=6,
                    color="black" if matrix[i, j] > 0.6 else "white")
  ax.set_xlabel("predicted class")
  ax.set_ylabel("true class")
  ax.set_title(title or "normalized confusion matrix")
  fig.tight_layout()
  _save(fig, path)
  plt.close(fig)
