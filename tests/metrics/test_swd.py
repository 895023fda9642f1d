"""Sliced Wasserstein distance against NumPy written from the official protocol, and known answers."""
import cv2  # Only to blur test images.
import numpy as np
import pytest
import scipy.ndimage

from readingnotes_jax.errors import UserError
from readingnotes_jax.metrics import swd
from readingnotes_jax.metrics.images import to_uint8

_KERNEL = np.outer([1, 4, 6, 4, 1], [1, 4, 6, 4, 1]).astype(np.float64) / 256.0
# cv2.pyrDown / pyrUp in float32: separable integer taps (1 4 6 4 1), about 5 roundings per
# pass, then a power-of-two scale (exact). On non-negative images every partial sum is <= the
# output's unscaled value, so each rounding is <= eps32 / 2 of the output: 10 x eps32 / 2
# relative, whatever the order or FMA use (measured 3.3 x eps32 / 2; the former atol=1e-4 at
# values up to 255 sat between the typical 3e-5 and this worst case, 1.5e-4).
PYR_RTOL = 10 * float(np.finfo(np.float32).eps) / 2


def _numpy_pyr_down(x: np.ndarray) -> np.ndarray:
  """Direct 5x5 correlation with reflect-101 borders at every second pixel, in float64."""
  n, h, w, c = x.shape
  padded = np.pad(x.astype(np.float64), ((0, 0), (2, 2), (2, 2), (0, 0)), mode="reflect")
  out = np.zeros((n, (h + 1) // 2, (w + 1) // 2, c))
  for i in range(out.shape[1]):
    for j in range(out.shape[2]):
      window = padded[:, 2 * i:2 * i + 5, 2 * j:2 * j + 5]
      out[:, i, j] = np.einsum("nyxc,yx->nc", window, _KERNEL)
  return out


def _random_field(rng: np.random.Generator, n: int, size: int = 32) -> np.ndarray:
  """A stationary distribution of uint8 textures: white noise blurred with sigma 1, 1 channel."""
  x = rng.normal(size=(n, size, size, 1))
  x = scipy.ndimage.gaussian_filter(x, (0, 1.0, 1.0, 0), mode="wrap")
  return np.clip(np.rint(x / x.std() * 25 + 128), 0, 255).astype(np.uint8)


def _blur(images: np.ndarray, sigma: float) -> np.ndarray:
  out = [cv2.GaussianBlur(img.astype(np.float32), (0, 0), sigma) for img in images[..., 0]]
  return np.clip(np.rint(np.stack(out)[..., None]), 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def image_sets():
  rng = np.random.default_rng(0)
  return _random_field(rng, 128), _random_field(rng, 128)


def _official_pyr_up(x: np.ndarray) -> np.ndarray:
  """The official pyr_up: zeros between pixels, then the 5x5 kernel x4 with mirror borders."""
  n, h, w, c = x.shape
  upsampled = np.zeros((n, 2 * h, 2 * w, c), np.float64)
  upsampled[:, ::2, ::2] = x
  return scipy.ndimage.convolve(upsampled, 4 * _KERNEL[None, :, :, None], mode="mirror")


@pytest.mark.parametrize("shape", [(2, 32, 32, 1), (3, 16, 16, 3), (1, 17, 23, 2), (1, 8, 8, 5)])
def test_pyr_down_matches_numpy_and_the_official_scipy_form(shape):
  x = np.random.default_rng(1).uniform(0, 255, shape).astype(np.float32)
  ours = swd.pyr_down(x)
  assert ours.shape == (shape[0], (shape[1] + 1) // 2, (shape[2] + 1) // 2, shape[3])
  np.testing.assert_allclose(ours, _numpy_pyr_down(x), rtol=PYR_RTOL)
  official = scipy.ndimage.convolve(x.astype(np.float64), _KERNEL[None, :, :, None],
                                    mode="mirror")[:, ::2, ::2]
  np.testing.assert_allclose(ours, official, rtol=PYR_RTOL)


@pytest.mark.parametrize("shape", [(2, 8, 16, 3), (1, 16, 16, 1)])
def test_pyr_up_matches_the_official_scipy_form(shape):
  x = np.random.default_rng(2).uniform(0, 255, shape).astype(np.float32)
  np.testing.assert_allclose(swd.pyr_up(x), _official_pyr_up(x), rtol=PYR_RTOL)


def test_laplacian_pyramid_levels_and_reconstruction():
  x = np.random.default_rng(3).integers(0, 256, (2, 64, 64, 3)).astype(np.uint8)
  pyramid = swd.laplacian_pyramid(x, 3)
  assert [level.shape for level in pyramid] == [(2, 64, 64, 3), (2, 32, 32, 3), (2, 16, 16, 3)]
  assert all(level.dtype == np.float32 for level in pyramid)
  gaussian1 = _numpy_pyr_down(x)
  gaussian2 = _numpy_pyr_down(gaussian1)
  # Each float32 pyr_down / pyr_up of values <= 255 is off by <= PYR_RTOL x 255 = 1.5e-4;
  # a level or the rebuild compounds <= 4 of them: <= 6e-4.
  np.testing.assert_allclose(pyramid[2], gaussian2, atol=1e-3)
  np.testing.assert_allclose(pyramid[1], gaussian1 - _official_pyr_up(gaussian2), atol=1e-3)
  np.testing.assert_allclose(pyramid[0], x - _official_pyr_up(gaussian1), atol=1e-3)
  rebuilt = pyramid[2]
  for level in pyramid[-2::-1]:
    rebuilt = _official_pyr_up(rebuilt) + level
  np.testing.assert_allclose(rebuilt, x, atol=1e-3)
  constant = swd.laplacian_pyramid(np.full((1, 32, 32, 1), 7, np.uint8), 2)
  # Exact in float32: integer multiples of 7 scaled by powers of 2 (measured 0).
  np.testing.assert_allclose(constant[0], 0, atol=1e-5)
  np.testing.assert_allclose(constant[1], 7, atol=1e-5)


def test_pyramid_resolutions():
  assert swd.pyramid_resolutions(1024) == [1024, 512, 256, 128, 64, 32, 16]
  assert swd.pyramid_resolutions(32) == [32, 16]
  assert swd.pyramid_resolutions(16) == [16]


def test_sample_patches_are_windows_at_valid_centres():
  n, size, per_image = 3, 16, 500
  # Each pixel holds its own (image, y, x) address.
  image, y, x = np.meshgrid(np.arange(n), np.arange(size), np.arange(size), indexing="ij")
  level = np.stack([image, y, x], axis=-1).astype(np.float32)
  patches = swd.sample_patches(level, np.random.default_rng(0), per_image, 7)
  # Official layout (channel, x, y): element [k, c, i, j] is pixel (y + j - 3, x + i - 3).
  assert patches.shape == (n * per_image, 3, 7, 7)
  centre_y, centre_x = patches[:, 1, 3, 3], patches[:, 2, 3, 3]
  offsets = np.arange(-3, 4)
  expected = np.stack(np.broadcast_arrays(
      np.repeat(np.arange(n), per_image)[:, None, None],
      centre_y[:, None, None] + offsets[None, None, :],
      centre_x[:, None, None] + offsets[None, :, None]), axis=1)
  np.testing.assert_array_equal(patches, expected)
  # Official randint(3, size - 3): every centre from 3 to size - 4, each drawn.
  assert set(centre_y.astype(int)) == set(range(3, size - 3))
  assert set(centre_x.astype(int)) == set(range(3, size - 3))


def test_normalize_descriptors_per_channel():
  rng = np.random.default_rng(4)
  patches = (rng.normal(size=(50, 2, 7, 7)) * 3.0 + 10.0).astype(np.float32)
  patches[:, 1] = 5.0  # A constant channel is only centred.
  out = swd.normalize_descriptors(patches)
  assert out.shape == (50, 98) and out.dtype == np.float32
  channel0 = patches[:, 0].astype(np.float64)
  expected0 = (channel0 - channel0.mean()) / channel0.std()
  # Float32 mean and std of 2450 values near 10 (std 3): pairwise sums round by
  # <= log2(2450) eps32 x 10 = 1.4e-5 of the mean, <= 5e-6 once divided by the std.
  np.testing.assert_allclose(out.reshape(50, 2, 7, 7)[:, 0], expected0, rtol=1e-5, atol=1e-5)
  np.testing.assert_array_equal(out.reshape(50, 2, 7, 7)[:, 1], 0.0)


def test_sliced_wasserstein_one_dimensional_known_answers():
  # In one dimension every unit direction is +-1 and the distance is the 1-D
  # Wasserstein-1 distance: mean |sorted a - sorted b|, whatever the order given.
  rng = np.random.default_rng(0)  # exact: unit directions in 1-D are +-1, values integers
  a = np.float32([[3], [0], [2], [1]])
  assert swd.sliced_wasserstein(a, a + 1, rng) == pytest.approx(1.0)
  b = np.float32([[4], [0], [0], [0]])  # sorted: 0 0 0 4 vs 0 1 2 3 -> (0+1+2+1)/4
  assert swd.sliced_wasserstein(a, b, rng) == pytest.approx(1.0)
  c = np.float32([[0], [0], [1], [1]])
  d = np.float32([[1], [1], [1], [1]])  # |0-1| + |0-1| + 0 + 0 over 4
  assert swd.sliced_wasserstein(c, d, rng, dir_repeats=2, dirs_per_repeat=3) == pytest.approx(0.5)


def test_sliced_wasserstein_matches_numpy_protocol():
  # Reference: the official loop written out, drawing the directions from the same
  # generator in the same order (per repeat, a (D, dirs) standard normal draw).
  rng = np.random.default_rng(5)
  a = rng.normal(size=(300, 6)).astype(np.float32)
  b = (rng.normal(size=(300, 6)) * 1.5 + 0.2).astype(np.float32)
  ref_rng = np.random.default_rng(11)
  repeats = []
  for _ in range(3):
    dirs = ref_rng.standard_normal((6, 16))
    dirs /= np.linalg.norm(dirs, axis=0, keepdims=True)
    proj_a = np.sort(a.astype(np.float64) @ dirs, axis=0)
    proj_b = np.sort(b.astype(np.float64) @ dirs, axis=0)
    repeats.append(np.abs(proj_a - proj_b).mean())
  ours = swd.sliced_wasserstein(a, b, np.random.default_rng(11), dir_repeats=3, dirs_per_repeat=16)
  # Float32 projections (6 terms, <= 6 eps32 / 2 x sum |a_i d_i| each) of |differences| that
  # average 0.47: <= 2e-6 relative even if all errors had one sign (measured 1.7e-9).
  assert ours == pytest.approx(np.mean(repeats), rel=1e-5)


def test_jax_backend_matches_numpy():
  rng = np.random.default_rng(8)
  a = rng.normal(size=(2000, 49)).astype(np.float32)
  b = (rng.normal(size=(2000, 49)) * 1.2).astype(np.float32)
  on_numpy = swd.sliced_wasserstein(a, b, np.random.default_rng(1), backend="numpy")
  on_jax = swd.sliced_wasserstein(a, b, np.random.default_rng(1), backend="jax")
  # 49-term float32 projections in two orders, ~ sqrt(49) eps32 each, averaged over 2000 x 512
  # of them (measured 1.4e-8 relative); other directions would change it by ~ 1%.
  assert on_jax == pytest.approx(on_numpy, rel=1e-5)
  with pytest.raises(UserError, match="backend"):
    swd.sliced_wasserstein(a, b, np.random.default_rng(1), backend="torch")


def test_sliced_wasserstein_of_a_translation():
  # Shifting every 2-D point by v shifts each projection by <v, u>: the distance is
  # the mean |<v, u>| over the directions, about |v| * 2 / pi.
  rng = np.random.default_rng(6)
  a = rng.normal(size=(400, 2)).astype(np.float32)
  v = np.float32([0.3, -0.4])
  ours = swd.sliced_wasserstein(a, a + v, np.random.default_rng(0))
  # Monte Carlo over 512 directions: |cos| has mean 2 / pi and std 0.31, so the estimate's
  # std is 0.31 / 0.64 / sqrt(512) = 2.1% (measured 1.5%; seeded); not a rounding bar.
  assert ours == pytest.approx(0.5 * 2 / np.pi, rel=0.05)


def test_identical_sets_and_same_distribution(image_sets):
  real, other = image_sets
  same = swd.swd_descriptors(real, seed=1)
  result = swd.swd_from_descriptors(same, same)
  assert set(result["swd_levels"]) == {"32", "16"}
  assert result["swd"] == 0.0  # Same patches: every sorted projection coincides.
  resampled = swd.sliced_wasserstein_distance(real, real, seed=0)["swd"]
  independent = swd.sliced_wasserstein_distance(real, other, seed=0)["swd"]
  blurred = swd.sliced_wasserstein_distance(real, _blur(real, 1.0), seed=0)["swd"]
  # Sampling noise of 128 images x 128 patches is about 15-20 (x1e3).
  assert 0 < resampled < 25 and 0 < independent < 25
  assert blurred > 2 * max(resampled, independent)


def test_more_blur_gives_more_distance(image_sets):
  real, other = image_sets
  reference = swd.swd_descriptors(real, seed=1)
  values = []
  for sigma in (0.6, 1.0, 1.5, 2.5):
    blurred = swd.swd_descriptors(_blur(other, sigma), seed=2)
    values.append(swd.swd_from_descriptors(reference, blurred, seed=3)["swd"])
  assert values == sorted(values), values
  assert values[-1] > 3 * values[0]


def test_intensity_changes(image_sets):
  real, other = image_sets
  reference = swd.swd_descriptors(real, seed=1)

  def distance(images):
    return swd.swd_from_descriptors(reference, swd.swd_descriptors(images, seed=2), seed=3)

  baseline = distance(other)
  # (Seeded. The rel bars allow for clipping at 0 and 255 and rounding to uint8, which break
  # the invariance slightly: measured 0.004%, 0.04%, 0.003%; mixed offsets change level 16 5x.)
  # Each set is normalized by its own mean and std, as in the official code: one
  # brightness offset or contrast gain for all images does not register (the
  # Laplacian levels cancel an offset, normalization takes out both)...
  brighter = np.clip(other.astype(int) + 20, 0, 255).astype(np.uint8)
  assert distance(brighter)["swd"] == pytest.approx(baseline["swd"], rel=0.02)
  stronger = np.clip(np.rint((other - 128.0) * 1.3 + 128), 0, 255).astype(np.uint8)
  assert distance(stronger)["swd"] == pytest.approx(baseline["swd"], rel=0.05)
  # ...but offsets that differ between images change the distribution.
  offsets = np.where(np.arange(len(other)) % 2, 40, -40)[:, None, None, None]
  mixed = distance(np.clip(other.astype(int) + offsets, 0, 255).astype(np.uint8))
  assert mixed["swd_levels"]["16"] > 5 * baseline["swd_levels"]["16"]
  assert mixed["swd_levels"]["32"] == pytest.approx(baseline["swd_levels"]["32"], rel=0.02)


def test_float_input_is_converted_like_the_official_generator_output(image_sets):
  real, _ = image_sets
  as_float = real.astype(np.float32) / 127.5 - 1.0
  np.testing.assert_array_equal(to_uint8(as_float), real)
  from_uint8 = swd.swd_descriptors(real, seed=4)
  from_float = swd.swd_descriptors(as_float, seed=4, drange=(-1.0, 1.0))
  for a, b in zip(from_uint8.levels, from_float.levels):
    np.testing.assert_array_equal(a, b)
  x = np.float32([-1.5, -1.0, -0.996, 0.0, 0.00392157, 1.0, 2.0]).reshape(1, 1, 7, 1)
  expected = np.clip(np.rint(x * np.float32(127.5) + np.float32(127.5)), 0, 255)
  np.testing.assert_array_equal(to_uint8(x), expected.astype(np.uint8))


def test_batched_stream_equals_one_array(image_sets):
  real, _ = image_sets
  whole = swd.swd_descriptors(real, seed=7, batch_size=32)
  streamed = swd.swd_descriptors((real[i:i + 32] for i in range(0, len(real), 32)), seed=7)
  for a, b in zip(whole.levels, streamed.levels):
    np.testing.assert_array_equal(a, b)
  assert whole.levels[0].shape == (len(real) * 128, 49)
  first = swd.sliced_wasserstein_distance(real[:64], real[64:], seed=3)
  again = swd.sliced_wasserstein_distance(real[:64], real[64:], seed=3)
  assert first == again


@pytest.mark.parametrize("bad, message", [
    (np.zeros((2, 32, 16, 1), np.uint8), "square"),
    (np.zeros((2, 8, 8, 1), np.uint8), "at least 16"),
    (np.zeros((2, 66, 66, 1), np.uint8), "halves evenly"),
    (np.zeros((2, 32, 32), np.uint8), "NHWC"),
    (np.zeros((2, 32, 32, 1), np.int32), "dtype"),
])
def test_bad_images_raise(bad, message):
  with pytest.raises(UserError, match=message):
    swd.swd_descriptors(bad)


def test_sets_of_different_sizes_raise(image_sets):
  real, _ = image_sets
  with pytest.raises(UserError, match="same number"):
    swd.sliced_wasserstein_distance(real[:10], real[:12])
