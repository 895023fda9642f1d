"""What a person looks at after an Interpretable CNN run (as the paper's Figures 1 and 5).

- `save_top_images`: for chosen filters, their top-scoring test images with each
  peak's cell (stride x stride pixels around the peak's receptive-field centre)
  and the annotated parts; the release draws empirical receptive fields found by
  occlusion (step_drawRF.m), here the peak's cell;
- `save_activation_maps`: one filter's maps on fixed images, upsampled over them,
  before and after training;
- `save_instability_bars`: location instability of every filter, per network.
"""
import os
import pathlib
from collections.abc import Mapping, Sequence

import numpy as np


def _pyplot():
  import matplotlib
  matplotlib.use("Agg")
  from matplotlib import pyplot as plt
  return plt


def _save(fig, path: str | os.PathLike) -> None:
  plt = _pyplot()
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  tmp = path.with_name(path.name + ".tmp.png")
  fig.savefig(tmp)
  plt.close(fig)
  os.replace(tmp, path)


def chosen_filters(num_filters: int, count: int) -> list[int]:
  """`count` filters evenly spaced from filter 0 (the release draws 1:50:depth)."""
  step = max(num_filters // max(count, 1), 1)
  return list(range(0, num_filters, step))[:count]


def save_top_images(parts_set, result, filters: Sequence[int], num_images: int, stride: int,
                    path: str | os.PathLike, title: str = "") -> None:
  """Rows: `filters`; columns: their `num_images` top-scoring images among those with
  annotated parts, the peak's cell drawn in red, the valid parts as white dots.

  Args:
    parts_set: the evaluated `data.PartsSet`.
    result: its `train.NetworkEvaluation` (`peaks` [N, C, 2], `scores` [N, C]).
  """
  plt = _pyplot()
  from matplotlib.patches import Rectangle
  annotated = np.flatnonzero(parts_set.part_valid.any(axis=1))
  cols = min(num_images, len(annotated))
  fig, axes = plt.subplots(len(filters), cols, figsize=(1.6 * cols, 1.7 * len(filters) + 0.5),
                           dpi=100, squeeze=False)
  for row, f in zip(axes, filters):
    order = annotated[np.argsort(-result.scores[annotated, f], kind="stable")][:cols]
    for ax, i in zip(row, order):
      ax.imshow(parts_set.images[i], extent=(0, parts_set.images.shape[2],
                                             parts_set.images.shape[1], 0))
      x, y = result.peaks[i, f]
      ax.add_patch(Rectangle((x - stride / 2, y - stride / 2), stride, stride, fill=False,
                             edgecolor="red", linewidth=1.5))
      valid = parts_set.part_valid[i]
      ax.scatter(parts_set.parts[i, valid, 0], parts_set.parts[i, valid, 1], s=6, c="white",
                 edgecolors="black", linewidths=0.3)
      ax.set_xticks([])
      ax.set_yticks([])
    row[0].set_ylabel(f"filter {f}", fontsize=8)
  if title:
    fig.suptitle(title, fontsize=9)
  fig.tight_layout()
  _save(fig, path)


def save_activation_maps(images: np.ndarray, maps: Mapping[str, np.ndarray],
                         path: str | os.PathLike, title: str = "") -> None:
  """Rows: `images` (uint8 [N, S, S, 3]); columns: the image, then each named set of maps
  ([N, h, w], one filter) upsampled (nearest) over it, each map scaled to its own maximum."""
  plt = _pyplot()
  n, size = len(images), images.shape[1]
  cols = 1 + len(maps)
  fig, axes = plt.subplots(n, cols, figsize=(1.9 * cols, 1.9 * n + 0.5), dpi=100,
                           squeeze=False)
  for i in range(n):
    axes[i, 0].imshow(images[i])
    if i == 0:
      axes[i, 0].set_title("image", fontsize=8)
    for ax, (name, m) in zip(axes[i, 1:], maps.items()):
      ax.imshow(images[i], extent=(0, size, size, 0))
      ax.imshow(m[i] / max(float(m[i].max()), 1e-12), extent=(0, size, size, 0), cmap="jet",
                alpha=0.55, vmin=0, vmax=1, interpolation="nearest")
      if i == 0:
        ax.set_title(name, fontsize=8)
  for ax in axes.ravel():
    ax.set_xticks([])
    ax.set_yticks([])
  if title:
    fig.suptitle(title, fontsize=9)
  fig.tight_layout()
  _save(fig, path)


def save_instability_bars(per_filter: Mapping[str, np.ndarray], path: str | os.PathLike,
                          title: str = "") -> None:
  """Each network's per-filter location instability, sorted, as bars; the dashed line is
  the network's mean (the paper's number)."""
  plt = _pyplot()
  fig, ax = plt.subplots(figsize=(7, 3.6), dpi=100)
  colors = ("tab:blue", "tab:orange", "tab:green")
  for color, (name, values) in zip(colors, per_filter.items()):
    values = np.sort(np.asarray(values, np.float64)[np.isfinite(values)])
    ax.bar(np.arange(len(values)), values, width=1.0, alpha=0.55, color=color,
           label=f"{name} (mean {values.mean():.4f})" if len(values) else name)
    if len(values):
      ax.axhline(values.mean(), color=color, linestyle="--", linewidth=1)
  ax.set_xlabel("filters, sorted by instability")
  ax.set_ylabel("location instability")
  ax.legend(fontsize=8)
  ax.grid(alpha=0.3)
  if title:
    ax.set_title(title, fontsize=9)
  fig.tight_layout()
  _save(fig, path)
