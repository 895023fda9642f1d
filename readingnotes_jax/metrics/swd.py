"""Sliced Wasserstein distance (SWD) between two image sets, ProGAN's protocol.

Matches `metrics/sliced_wasserstein.py` of tkarras/progressive_growing_of_gans
(ProGAN paper, Section 5):

1. Each image is split into a Laplacian pyramid from full resolution down to
   16 px with cv2.pyrDown / cv2.pyrUp (5x5 binomial filter, reflect-101 borders),
   which the official scipy versions reproduce. The last level is the 16 px
   Gaussian level itself.
2. From every level of every image, 128 random 7x7xC neighbourhoods are taken
   (centres uniform over the positions where the patch fits).
3. The descriptors of a whole set are normalized per channel (mean and standard
   deviation over all its descriptors and patch pixels), each set on its own.
4. Per level, 4 repeats x 128 random unit directions: both sets are projected,
   each projection sorted, and the distance is the mean absolute difference of
   the sorted projections (the 1-D Wasserstein-1 distance), averaged over
   directions and repeats; reported x1e3, per level and averaged over levels.

Input: NHWC images, uint8 in [0, 255] (as the official code feeds its data set
and its generator's outputs) or floats in `drange`, converted to uint8 exactly
as the official `Gs.run(out_mul=127.5, out_add=127.5, out_dtype=np.uint8)` does.
The official code wants 3 channels (it tiles grayscale to RGB); here any channel
count works, and 1-channel images give descriptors of 1x7x7 (tiling them to RGB
first, as the official evaluation does, moves the value by less than its
seed-to-seed spread).

Randomness comes from NumPy generators seeded by the caller, so a result is
deterministic given its seeds. The official code's one undefined case, a set whose
descriptors are constant in a channel (standard deviation 0, NaN there), gives
descriptors of 0 in that channel here.

For periodic evaluation against a fixed real set, compute
`real = swd_descriptors(real_images, seed=...)` once and call
`swd_from_descriptors(real, swd_descriptors(fakes, seed=...), seed=...)`.

Cost: the pyramid and patches are cheap; the distance sorts 2 x 4 x 128
projections of 128 x (number of images) points per level, on all CPU cores with
NumPy, or on the accelerator with JAX when there is one (`backend`).
"""
import concurrent.futures
import dataclasses
import os
from collections.abc import Iterable

import cv2
import jax
import jax.numpy as jnp
import numpy as np

from readingnotes_jax.errors import UserError
from readingnotes_jax.metrics.images import iterate_batches, to_uint8

MIN_RESOLUTION = 16


def _per_image(fn, images: np.ndarray) -> np.ndarray:
  """Applies an OpenCV HxWxC -> H'xW'xC function to each image of an NHWC float32 batch."""
  images = np.ascontiguousarray(images, np.float32)
  out = np.stack([fn(image) for image in images])
  return out.reshape(out.shape[:3] + (images.shape[3],))  # OpenCV drops a lone channel axis.


def pyr_down(images: np.ndarray) -> np.ndarray:
  """cv2.pyrDown of each NHWC image, as float32: 5x5 binomial blur, every 2nd pixel.

  Borders reflect-101, as the official `pyr_down` (scipy `convolve`, mode "mirror").
  """
  return _per_image(cv2.pyrDown, images)


def pyr_up(images: np.ndarray) -> np.ndarray:
  """cv2.pyrUp of each NHWC image, as float32: zeros between pixels, binomial blur x4.

  Equals the official `pyr_up` (zero insertion, then scipy `convolve`, mode "mirror").
  """
  return _per_image(cv2.pyrUp, images)


def laplacian_pyramid(images: np.ndarray, num_levels: int) -> list[np.ndarray]:
  """Laplacian pyramid of NHWC `images` as float32, finest level first.

  Level i < num_levels - 1 is G_i - pyr_up(G_{i+1}) with G_0 the images and
  G_{i+1} = pyr_down(G_i); the last level is the Gaussian level itself
  (official `generate_laplacian_pyramid`).
  """
  gaussian = np.asarray(images, np.float32)
  pyramid = []
  for _ in range(num_levels - 1):
    smaller = pyr_down(gaussian)
    pyramid.append(gaussian - pyr_up(smaller))
    gaussian = smaller
  pyramid.append(gaussian)
  return pyramid


def pyramid_resolutions(resolution: int) -> list[int]:
  """Level resolutions of the official protocol: halving from `resolution` while >= 16."""
  resolutions = []
  while resolution >= MIN_RESOLUTION:
    resolutions.append(resolution)
    resolution //= 2
  return resolutions


def sample_patches(level: np.ndarray, rng: np.random.Generator, patches_per_image: int = 128,
                   patch_size: int = 7) -> np.ndarray:
  """Random neighbourhoods of each NHWC image: (N * patches, C, p, p), laid out (c, x, y).

  Centres are uniform over [p//2, size - p//2) on each axis, drawn x first, then y.
  The layout is the official `get_descriptors_for_minibatch`'s: its `ogrid` puts
  the column offset on axis 2 and the row offset on axis 3, so each patch is
  transposed (harmless for SWD, kept so that equal random draws give equal
  descriptors).
  """
  n, h, w, _ = level.shape
  half = patch_size // 2
  count = n * patches_per_image
  image = np.repeat(np.arange(n), patches_per_image)
  x = rng.integers(half, w - half, size=count)
  y = rng.integers(half, h - half, size=count)
  # (n, h - p + 1, w - p + 1, C, p, p) view of every window, indexed by its corner.
  windows = np.lib.stride_tricks.sliding_window_view(level, (patch_size, patch_size), axis=(1, 2))
  return windows[image, y - half, x - half].transpose(0, 1, 3, 2)


def normalize_descriptors(patches: np.ndarray) -> np.ndarray:
  """Per-channel standardized patches (M, C, p, p), flattened to (M, C * p * p) float32.

  Mean and standard deviation (float32, as the official code) are over all
  patches and pixels of each channel (official `finalize_descriptors`); a channel
  with standard deviation 0 is only centred.
  """
  patches = np.asarray(patches, np.float32)
  channels = np.ascontiguousarray(np.moveaxis(patches, 1, 0)).reshape(patches.shape[1], -1)
  mean = channels.mean(axis=1)[:, None, None]
  std = channels.std(axis=1)[:, None, None]
  normalized = patches - mean
  normalized /= np.where(std > 0, std, np.float32(1))
  return normalized.reshape(patches.shape[0], -1)


@dataclasses.dataclass(frozen=True)
class SWDDescriptors:
  """Normalized descriptors of one image set, one (M, C * p * p) array per pyramid level."""
  resolutions: tuple[int, ...]
  levels: tuple[np.ndarray, ...]


def swd_descriptors(images: np.ndarray | Iterable[np.ndarray], *, seed: int = 0,
                    drange: tuple[float, float] = (-1.0, 1.0), batch_size: int = 256,
                    patches_per_image: int = 128, patch_size: int = 7) -> SWDDescriptors:
  """Descriptors of an image set: its pyramid levels' random patches, normalized.

  Args:
    images: square NHWC images, uint8 in [0, 255] or floats in `drange`; one array
      or an iterable of batches (e.g. generated on the fly).
    seed: seeds the patch positions.
    drange: value range of float images (the generator's [-1, 1] by default).
    batch_size: images per pyramid computation when `images` is one array.
    patches_per_image: neighbourhoods per image and level (official 128).
    patch_size: neighbourhood side (official 7).

  Returns:
    The set's `SWDDescriptors` (levels from full resolution down to 16 px).
  """
  rng = np.random.default_rng(seed)
  resolutions = None
  per_level = None
  shape = None
  for batch in iterate_batches(images, batch_size):
    batch = to_uint8(batch, drange)
    if not batch.shape[0]:
      continue
    if shape is None:
      shape = batch.shape[1:]
      resolutions = _check_shape(shape)
      per_level = [[] for _ in resolutions]
    elif batch.shape[1:] != shape:
      raise UserError(f"SWD batches differ in shape: {shape} then {batch.shape[1:]}; "
                      "give images of one size")
    for lod, level in enumerate(laplacian_pyramid(batch, len(resolutions))):
      per_level[lod].append(sample_patches(level, rng, patches_per_image, patch_size))
  if shape is None:
    raise UserError("SWD got no images: give at least one batch")
  levels = tuple(normalize_descriptors(np.concatenate(p)) for p in per_level)
  return SWDDescriptors(resolutions=tuple(resolutions), levels=levels)


def _check_shape(shape: tuple[int, ...]) -> list[int]:
  height, width, _ = shape
  resolutions = pyramid_resolutions(height)
  if height != width or not resolutions or height % 2 ** (len(resolutions) - 1):
    raise UserError(
        f"SWD wants square images of at least {MIN_RESOLUTION} px whose side halves evenly "
        f"down to the 16-31 px level (e.g. a power of two); got {height}x{width}: pad or "
        "resize them")
  return resolutions


def _random_directions(rng: np.random.Generator, dims: int, count: int) -> np.ndarray:
  """(dims, count) Gaussian directions normalized to unit length, as float32."""
  dirs = rng.standard_normal((dims, count))
  dirs /= np.sqrt(np.sum(np.square(dirs), axis=0, keepdims=True))
  return dirs.astype(np.float32)


@jax.jit
def _projected_distance(desc_a: jax.Array, desc_b: jax.Array, dirs: jax.Array) -> jax.Array:
  """Mean |sorted A.dirs - sorted B.dirs| on the default JAX device (float32 matmul)."""
  proj_a = jnp.matmul(desc_a, dirs, precision=jax.lax.Precision.HIGHEST)
  proj_b = jnp.matmul(desc_b, dirs, precision=jax.lax.Precision.HIGHEST)
  return jnp.mean(jnp.abs(jnp.sort(proj_a, axis=0) - jnp.sort(proj_b, axis=0)))


def _projected_distance_numpy(desc_a: np.ndarray, desc_b: np.ndarray, dirs: np.ndarray,
                              pool: concurrent.futures.Executor, workers: int) -> float:
  proj_a = dirs.T @ desc_a.T  # (direction, point): contiguous rows to sort.
  proj_b = dirs.T @ desc_b.T
  # NumPy's sort releases the GIL: sort row blocks of both sets on all cores.
  blocks = np.array_split(proj_a, workers) + np.array_split(proj_b, workers)  # Views.
  list(pool.map(lambda block: block.sort(axis=1), blocks))
  proj_a -= proj_b
  return float(np.mean(np.abs(proj_a, out=proj_a), dtype=np.float64))


def sliced_wasserstein(desc_a: np.ndarray, desc_b: np.ndarray, rng: np.random.Generator,
                       dir_repeats: int = 4, dirs_per_repeat: int = 128,
                       backend: str | None = None) -> float:
  """Mean 1-D Wasserstein-1 distance of (M, D) descriptor sets over random unit directions.

  Official `sliced_wasserstein`: per repeat, `dirs_per_repeat` Gaussian directions
  normalized to unit length; both sets projected, sorted per direction, and the
  mean |sorted A - sorted B| taken over points and directions; then the mean over
  repeats. Not scaled by 1e3. The sorts dominate the cost: `backend` "numpy"
  sorts on all CPU cores (XLA's CPU sort is several times slower), "jax" on the
  default JAX device; None picks "jax" when that device is an accelerator. The
  directions come from `rng` either way.
  """
  if desc_a.ndim != 2 or desc_a.shape != desc_b.shape:
    raise UserError(f"SWD compares descriptor sets of one shape; got {desc_a.shape} and "
                    f"{desc_b.shape}: use the same number and size of images in both sets")
  if backend is None:
    backend = "numpy" if jax.default_backend() == "cpu" else "jax"
  if backend not in ("numpy", "jax"):
    raise UserError(f"SWD backend must be 'numpy' or 'jax'; got {backend!r}")
  dirs = [_random_directions(rng, desc_a.shape[1], dirs_per_repeat) for _ in range(dir_repeats)]
  if backend == "jax":
    a, b = jnp.asarray(desc_a), jnp.asarray(desc_b)
    results = [float(_projected_distance(a, b, jnp.asarray(d))) for d in dirs]
  else:
    workers = max(1, min(os.cpu_count() or 1, dirs_per_repeat))
    with concurrent.futures.ThreadPoolExecutor(workers) as pool:
      results = [_projected_distance_numpy(desc_a, desc_b, d, pool, workers) for d in dirs]
  return float(np.mean(results))


def swd_from_descriptors(desc_a: SWDDescriptors, desc_b: SWDDescriptors, *, seed: int = 0,
                         dir_repeats: int = 4, dirs_per_repeat: int = 128,
                         backend: str | None = None) -> dict:
  """SWD x1e3 of two descriptor sets: `{"swd": average, "swd_levels": {"<res>": value}}`.

  `seed` seeds the random directions (new ones for every level and repeat, as the
  official code draws them); `backend` as in `sliced_wasserstein`.
  """
  if desc_a.resolutions != desc_b.resolutions:
    raise UserError(f"SWD compares sets of one image size; got pyramid levels "
                    f"{desc_a.resolutions} and {desc_b.resolutions}")
  rng = np.random.default_rng(seed)
  per_level = {}
  for res, a, b in zip(desc_a.resolutions, desc_a.levels, desc_b.levels):
    per_level[str(res)] = 1e3 * sliced_wasserstein(a, b, rng, dir_repeats, dirs_per_repeat,
                                                   backend)
  return {"swd": float(np.mean(list(per_level.values()))), "swd_levels": per_level}


def sliced_wasserstein_distance(images_a: np.ndarray | Iterable[np.ndarray],
                                images_b: np.ndarray | Iterable[np.ndarray], *, seed: int = 0,
                                drange: tuple[float, float] = (-1.0, 1.0),
                                batch_size: int = 256, backend: str | None = None) -> dict:
  """SWD x1e3 between two image sets with the official protocol (see module docstring).

  Patch positions of A and B and the directions use three independent streams
  derived from `seed`. Returns `{"swd": average over levels, "swd_levels":
  {"<resolution>": value, ...}}`, finest level first.
  """
  seed_a, seed_b, seed_dirs = np.random.SeedSequence(seed).generate_state(3)
  desc_a = swd_descriptors(images_a, seed=seed_a, drange=drange, batch_size=batch_size)
  desc_b = swd_descriptors(images_b, seed=seed_b, drange=drange, batch_size=batch_size)
  return swd_from_descriptors(desc_a, desc_b, seed=seed_dirs, backend=backend)
