"""MS-SSIM against scikit-image and NumPy written from Wang et al.'s formula."""
import numpy as np
import pytest

from readingnotes_jax.errors import UserError
from readingnotes_jax.metrics import ms_ssim as metric

_WEIGHTS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)


def _fspecial(size: int, sigma: float) -> np.ndarray:
  """MATLAB fspecial('gaussian'): a size x size grid centred on the window, summing to 1."""
  centre = (size - 1) / 2.0
  y, x = np.mgrid[0:size, 0:size] - centre
  window = np.exp(-(x**2 + y**2) / (2.0 * sigma**2))
  return window / window.sum()


def _reference_ssim_cs(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """SSIM and cs per image: 2-D Gaussian window at every valid position, shrunk to the image."""
  size = min(11, a.shape[1], a.shape[2])
  window = _fspecial(size, 1.5 * size / 11)

  def local_mean(x):
    views = np.lib.stride_tricks.sliding_window_view(x, (size, size), axis=(1, 2))
    return np.einsum("nhwcyx,yx->nhwc", views, window)

  mu_a, mu_b = local_mean(a), local_mean(b)
  var_a = local_mean(a * a) - mu_a**2
  var_b = local_mean(b * b) - mu_b**2
  cov = local_mean(a * b) - mu_a * mu_b
  c1, c2 = (0.01 * 255)**2, (0.03 * 255)**2
  luminance = (2 * mu_a * mu_b + c1) / (mu_a**2 + mu_b**2 + c1)
  contrast_structure = (2 * cov + c2) / (var_a + var_b + c2)
  return ((luminance * contrast_structure).mean(axis=(1, 2, 3)),
          contrast_structure.mean(axis=(1, 2, 3)))


def _reference_ms_ssim(a: np.ndarray, b: np.ndarray) -> np.ndarray:
  a, b = a.astype(np.float64), b.astype(np.float64)
  score = np.ones(a.shape[0])
  for scale, weight in enumerate(_WEIGHTS):
    ssim, cs = _reference_ssim_cs(a, b)
    last = scale == len(_WEIGHTS) - 1
    score *= np.maximum(ssim if last else cs, 0.0)**weight
    if last:
      break
    n, h, w, c = a.shape
    a = a.reshape(n, h // 2, 2, w // 2, 2, c).mean(axis=(2, 4))
    b = b.reshape(n, h // 2, 2, w // 2, 2, c).mean(axis=(2, 4))
  return score


def _pairs(shape, noise, seed=0):
  rng = np.random.default_rng(seed)
  base = rng.integers(0, 256, shape).astype(np.float64)
  base = (base + np.roll(base, 1, axis=1) + np.roll(base, 1, axis=2)) / 3  # Some structure.
  other = base + rng.normal(0, noise, shape)
  return (np.clip(np.rint(base), 0, 255).astype(np.uint8),
          np.clip(np.rint(other), 0, 255).astype(np.uint8))


# All in float64 on both sides. Windows sum <= 121 taps of values <= 255^2 (~ 121 eps64 =
# 3e-14 relative), and the SSIM ratios amplify that by at most the ratio of those values to
# the stabilizers C1 = 6.5, C2 = 58.5: <= 3e-14 x 255^2 / 6.5 = 3e-10 < 1e-9 (measured 9e-15).
# Identical inputs give exactly 1 up to that rounding: 1e-12.


def test_gaussian_taps_are_fspecial_factors():
  for size, sigma in [(11, 1.5), (8, 8 * 1.5 / 11), (4, 4 * 1.5 / 11), (2, 2 * 1.5 / 11)]:
    taps = metric.gaussian_taps(size, sigma)
    np.testing.assert_allclose(np.outer(taps, taps), _fspecial(size, sigma), rtol=1e-12)


def test_identical_images_score_one():
  a, _ = _pairs((3, 32, 32, 3), 0)
  np.testing.assert_allclose(metric.ms_ssim(a, a), 1.0, rtol=1e-12)
  assert metric.ms_ssim_variation(np.repeat(a, 2, axis=0)) == pytest.approx(1.0, rel=1e-12)


def test_single_scale_matches_scikit_image():
  structural_similarity = pytest.importorskip("skimage.metrics").structural_similarity
  a, b = _pairs((3, 24, 40, 3), 30, seed=1)
  ssim, _ = metric.ssim_and_cs(a, b)
  expected = [structural_similarity(x, y, gaussian_weights=True, sigma=1.5, use_sample_covariance=False,
                                    data_range=255, channel_axis=-1) for x, y in zip(a, b)]
  np.testing.assert_allclose(ssim, expected, rtol=1e-9)


@pytest.mark.parametrize("shape", [(2, 32, 32, 1), (2, 16, 48, 3), (1, 64, 64, 3)])
def test_ms_ssim_matches_numpy_formula(shape):
  # 32 px runs windows 11, 11, 8, 4, 2; 16 px shrinks to 1 at its last scale.
  a, b = _pairs(shape, 40, seed=2)
  np.testing.assert_allclose(metric.ms_ssim(a, b), _reference_ms_ssim(a, b), rtol=1e-9)


def test_more_noise_lowers_the_score():
  scores = [float(metric.ms_ssim(*_pairs((4, 32, 32, 3), noise, seed=3)).mean())
            for noise in (2, 8, 20, 50, 100)]
  assert scores == sorted(scores, reverse=True), scores
  assert scores[0] > 0.95 and scores[-1] < 0.5


def test_variation_uses_consecutive_pairs_across_batches():
  a, b = _pairs((6, 32, 32, 1), 30, seed=4)
  interleaved = np.stack([a, b], axis=1).reshape(12, 32, 32, 1)  # a0 b0 a1 b1 ...
  expected = _reference_ms_ssim(a, b).mean()
  assert metric.ms_ssim_variation(interleaved) == pytest.approx(expected, rel=1e-9)
  odd_batches = (interleaved[i:i + 5] for i in range(0, 12, 5))  # Pairs span batches.
  assert metric.ms_ssim_variation(odd_batches) == pytest.approx(expected, rel=1e-9)
  with_extra = np.concatenate([interleaved, a[:1]])  # A last unpaired image is left out.
  assert metric.ms_ssim_variation(with_extra, batch_size=4) == pytest.approx(expected, rel=1e-9)


def test_float_images_in_drange():
  a, b = _pairs((2, 32, 32, 3), 20, seed=5)
  as_float = [x.astype(np.float32) / 127.5 - 1 for x in (a, b)]
  np.testing.assert_array_equal(metric.ms_ssim(*as_float), metric.ms_ssim(a, b))
  as_unit = [x.astype(np.float32) / 255 for x in (a, b)]
  np.testing.assert_array_equal(metric.ms_ssim(*as_unit, drange=(0.0, 1.0)), metric.ms_ssim(a, b))


def test_bad_input_raises():
  a, _ = _pairs((2, 32, 32, 1), 0)
  with pytest.raises(UserError, match="divisible by 16"):
    metric.ms_ssim(a[:, :28, :28], a[:, :28, :28])
  with pytest.raises(UserError, match="one shape"):
    metric.ms_ssim(a, a[:1])
  with pytest.raises(UserError, match="at least two"):
    metric.ms_ssim_variation(a[:1])
