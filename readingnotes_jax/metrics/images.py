"""Image batches as the ProGAN metrics see them: uint8 NHWC in [0, 255].

The official evaluation (tkarras/progressive_growing_of_gans `util_scripts.py`
`evaluate_metrics`) feeds every metric uint8 images: the data set's own bytes for
real images, and for generated ones `Gs.run(..., out_mul=127.5, out_add=127.5,
out_dtype=np.uint8)`, i.e. round-half-to-even of `x * 127.5 + 127.5` saturated to
[0, 255] (`tfutil.py` `Network.run`). `to_uint8` does the same conversion for
any float range.
"""
from collections.abc import Iterable, Iterator

import numpy as np

from readingnotes_jax.errors import UserError


def to_uint8(images: np.ndarray, drange: tuple[float, float] = (-1.0, 1.0)) -> np.ndarray:
  """Returns NHWC `images` as uint8: uint8 passes through, floats map `drange` to [0, 255].

  Floats become `rint(x * scale + bias)` clipped to [0, 255], with `drange[0]` -> 0
  and `drange[1]` -> 255 (scale 127.5 and bias 127.5 for the default [-1, 1], in
  float32), as the official code converts generator outputs.
  """
  images = np.asarray(images)
  if images.ndim != 4:
    raise UserError(f"metrics want NHWC image batches; got an array of shape {images.shape}")
  if images.dtype == np.uint8:
    return images
  if not np.issubdtype(images.dtype, np.floating):
    raise UserError(
        f"metrics take uint8 images in [0, 255] or floats in drange={drange}; got dtype "
        f"{images.dtype}: convert to one of them")
  low, high = float(drange[0]), float(drange[1])
  if not high > low:
    raise UserError(f"drange must be (low, high) with high > low; got {drange}")
  scale = np.float32(255.0 / (high - low))
  bias = np.float32(-low * 255.0 / (high - low))
  scaled = images.astype(np.float32) * scale + bias
  return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)


def iterate_batches(images: np.ndarray | Iterable[np.ndarray],
                    batch_size: int) -> Iterator[np.ndarray]:
  """Yields NHWC batches: slices of one array, or the items of an iterable as given."""
  if isinstance(images, np.ndarray) or hasattr(images, "__array__"):
    images = np.asarray(images)
    if images.ndim != 4:
      raise UserError(f"metrics want NHWC image batches; got an array of shape {images.shape}")
    for start in range(0, images.shape[0], batch_size):
      yield images[start:start + batch_size]
  else:
    yield from images
