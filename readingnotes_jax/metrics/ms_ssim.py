"""Multi-scale SSIM (MS-SSIM) and ProGAN's variation score.

Matches `metrics/ms_ssim.py` of tkarras/progressive_growing_of_gans (itself the
TensorFlow models `msssim.py`, after Wang, Simoncelli and Bovik 2003):

- 5 scales with weights (0.0448, 0.2856, 0.3001, 0.2363, 0.1333); between scales
  a 2x2 box average ("HoxDownsample").
- At each scale SSIM and contrast-structure (cs) maps from an 11x11 Gaussian
  window with sigma 1.5, "valid" filtering (no padding), K1 0.01, K2 0.03,
  dynamic range 255, each averaged over the pixels and channels of an image.
  An image smaller than the window shrinks it: size = min(11, height, width),
  sigma = size * 1.5 / 11 (a 32 px image runs windows 11, 11, 8, 4, 2 at its
  scales 32, 16, 8, 4, 2); an even size centres the grid on half pixels, as
  MATLAB's `fspecial`.
- Per-scale means clipped at 0, then MS-SSIM = prod_{j<5} cs_j^w_j * ssim_5^w_5.

The variation score (ProGAN paper, Table 1, after Odena et al.; official
`API.feed`) is the mean MS-SSIM of consecutive pairs (0, 1), (2, 3), ... of
generated images: low means varied samples. Inputs are NHWC, uint8 in [0, 255] or floats in `drange`,
converted to uint8 as the official code does (see `metrics.images.to_uint8`).
Computed in float64 with the separable form of the Gaussian window. The official
code's FFT convolution transforms the float32 images in single precision; the two
agree to about 1e-5 (checked at 32 to 128 px).
"""
from collections.abc import Iterable, Sequence

import numpy as np

from readingnotes_jax.errors import UserError
from readingnotes_jax.metrics.images import iterate_batches, to_uint8

WEIGHTS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)


def gaussian_taps(size: int, sigma: float) -> np.ndarray:
  """1-D factor of MATLAB's `fspecial('gaussian', size, sigma)`, normalized to sum 1.

  The 2-D window of the official `_FSpecialGauss` is the outer product of these
  taps with themselves; an even `size` samples at half-integer offsets.
  """
  offset = 0.5 if size % 2 == 0 else 0.0
  x = np.arange(size, dtype=np.float64) - size // 2 + offset
  taps = np.exp(-x**2 / (2.0 * sigma**2))
  return taps / taps.sum()


def _filter_valid(x: np.ndarray, taps: np.ndarray) -> np.ndarray:
  """'Valid' correlation of NHWC `x` with `taps` along height, then width."""
  size = len(taps)
  out_h = x.shape[1] - size + 1
  rows = sum(tap * x[:, k:k + out_h] for k, tap in enumerate(taps))
  out_w = x.shape[2] - size + 1
  return sum(tap * rows[:, :, k:k + out_w] for k, tap in enumerate(taps))


def ssim_and_cs(images_a: np.ndarray, images_b: np.ndarray, *, max_val: float = 255.0,
                filter_size: int = 11, filter_sigma: float = 1.5, k1: float = 0.01,
                k2: float = 0.03) -> tuple[np.ndarray, np.ndarray]:
  """Per-image mean SSIM and mean contrast-structure term at one scale, each (N,).

  Official `_SSIMForMultiScale`: the window shrinks to the image size with sigma
  scaled alike; local statistics are population (biased) moments.
  """
  a = np.asarray(images_a, np.float64)
  b = np.asarray(images_b, np.float64)
  size = min(filter_size, a.shape[1], a.shape[2])
  taps = gaussian_taps(size, size * filter_sigma / filter_size)
  mu_a, mu_b = _filter_valid(a, taps), _filter_valid(b, taps)
  var_a = _filter_valid(a * a, taps) - mu_a * mu_a
  var_b = _filter_valid(b * b, taps) - mu_b * mu_b
  cov = _filter_valid(a * b, taps) - mu_a * mu_b
  c1 = (k1 * max_val)**2
  c2 = (k2 * max_val)**2
  cs_map = (2.0 * cov + c2) / (var_a + var_b + c2)
  ssim_map = (2.0 * mu_a * mu_b + c1) / (mu_a * mu_a + mu_b * mu_b + c1) * cs_map
  return ssim_map.mean(axis=(1, 2, 3)), cs_map.mean(axis=(1, 2, 3))


def _box_downsample(x: np.ndarray) -> np.ndarray:
  return (x[:, 0::2, 0::2] + x[:, 1::2, 0::2] + x[:, 0::2, 1::2] + x[:, 1::2, 1::2]) * 0.25


def ms_ssim(images_a: np.ndarray, images_b: np.ndarray, *,
            drange: tuple[float, float] = (-1.0, 1.0), max_val: float = 255.0,
            filter_size: int = 11, filter_sigma: float = 1.5, k1: float = 0.01, k2: float = 0.03,
            weights: Sequence[float] = WEIGHTS) -> np.ndarray:
  """MS-SSIM of each pair (images_a[i], images_b[i]): an (N,) float64 array.

  Args:
    images_a, images_b: NHWC batches of one shape, uint8 or floats in `drange`;
      height and width must halve evenly len(weights) - 1 times.
    drange: value range of float images.
    max_val, filter_size, filter_sigma, k1, k2: the official defaults.
    weights: exponent per scale (official: the paper's five).
  """
  a = to_uint8(images_a, drange)
  b = to_uint8(images_b, drange)
  if a.shape != b.shape:
    raise UserError(f"MS-SSIM compares images of one shape; got {a.shape} and {b.shape}")
  downsamples = len(weights) - 1
  if a.shape[1] % 2**downsamples or a.shape[2] % 2**downsamples:
    raise UserError(
        f"MS-SSIM with {len(weights)} scales needs height and width divisible by "
        f"{2**downsamples}; got {a.shape[1]}x{a.shape[2]}: pad or resize the images")
  a, b = a.astype(np.float64), b.astype(np.float64)
  ssims, css = [], []
  for _ in weights:
    ssim, cs = ssim_and_cs(a, b, max_val=max_val, filter_size=filter_size,
                           filter_sigma=filter_sigma, k1=k1, k2=k2)
    ssims.append(ssim)
    css.append(cs)
    a, b = _box_downsample(a), _box_downsample(b)
  ssims = np.clip(np.stack(ssims), 0.0, None)  # Clipped at 0, as the official code.
  css = np.clip(np.stack(css), 0.0, None)
  w = np.asarray(weights, np.float64)[:, None]
  return np.prod(css[:-1]**w[:-1], axis=0) * ssims[-1]**w[-1, 0]


def ms_ssim_variation(images: np.ndarray | Iterable[np.ndarray], *,
                      drange: tuple[float, float] = (-1.0, 1.0), batch_size: int = 256) -> float:
  """Mean MS-SSIM over consecutive pairs (0, 1), (2, 3), ... of a stream of images.

  `images` is one NHWC array or an iterable of batches; pairs run across batch
  boundaries, and a last unpaired image is left out. ProGAN reports this over
  10,000 pairs of generated images.
  """
  total, count = 0.0, 0
  carry = None
  for batch in iterate_batches(images, batch_size):
    batch = to_uint8(batch, drange)
    if carry is not None:
      batch = np.concatenate([carry, batch])
    usable = batch.shape[0] // 2 * 2
    carry = batch[usable:] if usable < batch.shape[0] else None
    if usable:
      scores = ms_ssim(batch[0:usable:2], batch[1:usable:2])
      total += float(scores.sum())
      count += scores.shape[0]
  if not count:
    raise UserError("MS-SSIM variation needs at least two images")
  return total / count
