"""PNG figures every trainer writes under `workdir/figures/`: image grids and curves."""
import os
import pathlib
from collections.abc import Mapping, Sequence

import numpy as np
from PIL import Image


def to_uint8(images: np.ndarray, value_range: tuple[float, float] = (-1.0, 1.0)) -> np.ndarray:
  """Maps images from `value_range` to uint8 [0, 255] (rounded, clipped)."""
  lo, hi = value_range
  x = (np.asarray(images, np.float32) - lo) * (255.0 / (hi - lo))
  return np.clip(np.rint(x), 0, 255).astype(np.uint8)


def image_grid(images: np.ndarray, ncols: int, pad: int = 1) -> np.ndarray:
  """Tiles uint8 NHWC images into one HWC image, `ncols` per row, `pad` black pixels apart."""
  n, h, w, c = images.shape
  nrows = -(-n // ncols)
  grid = np.zeros((nrows * (h + pad) + pad, ncols * (w + pad) + pad, c), np.uint8)
  for i, img in enumerate(images):
    r, col = divmod(i, ncols)
    y, x = pad + r * (h + pad), pad + col * (w + pad)
    grid[y:y + h, x:x + w] = img
  return grid


def save_image(image: np.ndarray, path: str | os.PathLike, scale: int = 1) -> None:
  """Saves an HWC uint8 image (C = 1 or 3) as PNG, enlarged `scale` times (nearest)."""
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  img = Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image)
  if scale > 1:
    img = img.resize((img.width * scale, img.height * scale), Image.NEAREST)
  tmp = path.with_name(path.name + ".tmp.png")
  img.save(tmp)
  os.replace(tmp, path)


def save_image_grid(images: np.ndarray, path: str | os.PathLike, ncols: int,
                    value_range: tuple[float, float] = (-1.0, 1.0)) -> None:
  """Saves float NHWC images in `value_range` as one PNG grid (small images enlarged)."""
  grid = image_grid(to_uint8(images, value_range), ncols)
  save_image(grid, path, scale=max(1, 256 // images.shape[1]))


def save_curves(x: Sequence[float], curves: Mapping[str, Sequence[float]],
                path: str | os.PathLike, *, xlabel: str, ylabel: str, title: str = "",
                logy: bool = False) -> None:
  """Plots named curves over a shared x axis into one PNG."""
  import matplotlib
  matplotlib.use("Agg")
  from matplotlib import pyplot as plt
  fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
  for name, y in curves.items():
    ax.plot(x, y, marker="o", markersize=3, label=name)
  ax.set_xlabel(xlabel)
  ax.set_ylabel(ylabel)
  if logy:
    ax.set_yscale("log")
  if title:
    ax.set_title(title)
  ax.grid(alpha=0.3)
  if len(curves) > 1:
    ax.legend()
  fig.tight_layout()
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  fig.savefig(path)
  plt.close(fig)
