"""FashionGAN's conditions, compositional mapping and demo post-processing against NumPy/scipy/PIL.

References are written here from the release's code (ih1/train.lua `cb`, `H` and
`image.convolve(u, H, 'same')`; demo_full.lua), MATLAB's imresize.m `contributions` and
torch's image.gaussian, or taken from a peer (PIL's antialiased bicubic, scipy's
convolve2d).
"""
import jax
import jax.numpy as jnp
import numpy as np
import PIL.Image
import pytest
import scipy.signal

from readingnotes_jax.errors import UserError
from readingnotes_jax.fashiongan import compose
from numerics_testlib import EPS32

_RNG = np.random.default_rng(0)
# ih1/train.lua: cb (rows: condition channels 1-3; columns: k = 1..7, label k mod 7) and H.
_CB = [[3, 2, 1, 1, 2, 3, 2], [2, 3, 3, 2, 1, 1, 2], [1, 1, 2, 3, 3, 2, 2]]
_H = np.array([0.0030, 0.0133, 0.0219, 0.0133, 0.0030, 0.0133, 0.0596, 0.0983, 0.0596, 0.0133,
               0.0219, 0.0983, 0.1621, 0.0983, 0.0219, 0.0133, 0.0596, 0.0983, 0.0596, 0.0133,
               0.0030, 0.0133, 0.0219, 0.0133, 0.0030]).reshape(5, 5)


def _matlab_weights(in_size, out_size):
  """imresize.m `contributions` for cubic, antialiasing on, written as explicit loops."""
  scale = out_size / in_size

  def cubic(x):
    a = abs(x)
    if a <= 1:
      return 1.5 * a**3 - 2.5 * a**2 + 1
    if a <= 2:
      return -0.5 * a**3 + 2.5 * a**2 - 4 * a + 2
    return 0.0

  h = (lambda x: scale * cubic(scale * x)) if scale < 1 else cubic
  width = 4 / scale if scale < 1 else 4
  aux = list(range(1, in_size + 1)) + list(range(in_size, 0, -1))
  matrix = np.zeros((out_size, in_size))
  for i in range(1, out_size + 1):
    u = i / scale + 0.5 * (1 - 1 / scale)
    left = int(np.floor(u - width / 2))
    indices = [left + p for p in range(int(np.ceil(width)) + 2)]
    weights = np.array([h(u - j) for j in indices])
    weights /= weights.sum()
    for j, w in zip(indices, weights):
      matrix[i - 1, aux[(j - 1) % len(aux)] - 1] += w
  return matrix


@pytest.mark.parametrize("in_size, out_size", [(128, 8), (64, 8), (20, 7), (5, 9)])
def test_imresize_matrix_matches_matlab_contributions(in_size, out_size):
  np.testing.assert_allclose(compose.imresize_matrix(in_size, out_size),
                             _matlab_weights(in_size, out_size), rtol=0, atol=1e-12)


def test_imresize_matrix_interior_rows_match_pil_bicubic():
  """PIL's BICUBIC (a = -0.5, antialiased when shrinking, float32 mode "F") equals MATLAB's
  away from the borders, where PIL clips the window instead of mirroring."""
  image = _RNG.random((128, 128)).astype(np.float32)
  pil = np.asarray(PIL.Image.fromarray(image, "F").resize((8, 8), PIL.Image.BICUBIC))
  matrix = compose.imresize_matrix(128, 8)
  ours = matrix @ image.astype(np.float64) @ matrix.T
  interior = slice(2, 6)  # Output centres 40..88 +- 32 stay inside 0..128.
  # PIL stores its horizontal pass in float32: a few float32 roundings of values <= 1.
  np.testing.assert_allclose(ours[interior, interior], pil[interior, interior], atol=8 * EPS32)
  assert np.abs(ours[0] - pil[0]).max() > 1e-3  # The borders differ: the test can fail.


def test_spatial_constraint_against_numpy():
  labels = _RNG.integers(0, 7, (2, 64, 64))
  labels[0, :, :20] = 0
  got = compose.spatial_constraint(labels)
  merged_of = {0: 0, 1: 1, 2: 2, 3: 3, 4: 3, 5: 3, 6: 3}  # background, hair, face, body.
  matrix = _matlab_weights(64, 8)
  want = np.zeros((2, 8, 8, 4))
  for b in range(2):
    merged = np.vectorize(merged_of.get)(labels[b])
    for c in range(4):
      want[b, :, :, c] = matrix @ (merged == c).astype(np.float64) @ matrix.T
  assert got.shape == (2, 8, 8, 4) and got.dtype == np.float32
  np.testing.assert_allclose(got, want, rtol=0, atol=EPS32)  # One float32 rounding of <= 1.1.
  np.testing.assert_allclose(got.sum(-1), 1, atol=4 * EPS32)  # Rows of weights sum to 1.


def test_spatial_constraint_of_uniform_map_and_bad_labels():
  np.testing.assert_allclose(compose.spatial_constraint(np.full((32, 32), 4))[..., 3], 1,
                             atol=4 * EPS32)
  with pytest.raises(UserError, match="values 0..6"):
    compose.spatial_constraint(np.full((8, 8), 7))


def test_colour_condition_against_scipy_convolution():
  labels = _RNG.integers(0, 7, (2, 20, 24))
  got = np.asarray(jax.jit(compose.colour_condition)(jnp.asarray(labels)))
  want = np.zeros((2, 20, 24, 3))
  for b in range(2):
    for j in range(3):
      u = np.zeros((20, 24))
      for k in range(1, 8):
        u[labels[b] == k % 7] = _CB[j][k - 1] * 0.25
      want[b, :, :, j] = scipy.signal.convolve2d(u, _H, mode="same") - 0.5
  # A 25-term sum of products totalling <= 0.75: (25 - 1) eps/2 x 0.75 = 9 eps worst case,
  # plus eps/2 x 0.75 each for the products and for H's float32 values, eps/2 for - 0.5.
  np.testing.assert_allclose(got, want, rtol=0, atol=16 * EPS32)
  assert got.shape == (2, 20, 24, 3) and got.dtype == np.float32


def test_region_composition_keeps_each_region_to_its_own_rendering():
  labels = _RNG.integers(0, 7, (2, 6, 5))
  masks = compose.region_masks(jnp.asarray(labels))
  renderings = jnp.asarray(_RNG.standard_normal((2, 6, 5, 7, 3)), jnp.float32)
  out = np.asarray(compose.compose_regions(renderings, masks))
  np.testing.assert_array_equal(out, np.take_along_axis(
      np.asarray(renderings), labels[..., None, None], axis=3)[..., 0, :])
  perturbed = np.asarray(compose.compose_regions(renderings.at[:, :, :, 4].add(10.0), masks))
  changed = np.any(perturbed != out, axis=-1)
  np.testing.assert_array_equal(changed, labels == 4)


def test_composition_with_one_region_is_that_rendering_and_soft_masks_blend():
  renderings = jnp.asarray(_RNG.standard_normal((1, 3, 4, 7, 3)), jnp.float32)
  one = compose.region_masks(jnp.full((1, 3, 4), 2))
  np.testing.assert_array_equal(compose.compose_regions(renderings, one), renderings[:, :, :, 2])
  soft = jax.nn.softmax(jnp.asarray(_RNG.standard_normal((1, 3, 4, 7)), jnp.float32))
  want = np.einsum("bhwlc,bhwl->bhwc", np.asarray(renderings, np.float64),
                   np.asarray(soft, np.float64))
  np.testing.assert_allclose(compose.compose_regions(renderings, soft), want, atol=8 * EPS32)
  with pytest.raises(UserError, match="disagree"):
    compose.compose_regions(renderings, soft[..., :3])


def test_demo_segmentation_against_scipy():
  """demo_full.lua: image.convolve(out1[c], image.gaussian(5, 3), 'same'), torch.max over c."""
  logits = _RNG.standard_normal((1, 12, 10, 7)).astype(np.float32)
  offsets = np.arange(1, 6) - (0.5 * 5 + 0.5)  # torch's u + 1 - mean_u, mean_u = 0.5 size + 0.5
  kernel = np.exp(-0.5 * ((offsets[:, None] / 15) ** 2 + (offsets[None, :] / 15) ** 2))
  smoothed = np.stack([scipy.signal.convolve2d(logits[0, :, :, c].astype(np.float64), kernel,
                                               mode="same") for c in range(7)], axis=-1)
  got = np.asarray(compose.demo_segmentation(jnp.asarray(logits)))[0]
  top2 = np.sort(smoothed, axis=-1)[..., -2:]
  clear = top2[..., 1] - top2[..., 0] > 1e-4  # Float32 ties aside (none expected).
  np.testing.assert_array_equal(got[clear], np.argmax(smoothed, axis=-1)[clear])
  assert clear.mean() > 0.95


def test_demo_postprocess_known_answer():
  """2 x 3 image: hair and face copied; legs averaged with the photo's lower median."""
  photo = np.array([[[0.1, 0.2, 0.3], [0.4, 0.5, 0.6], [0.9, 0.8, 0.7]],
                    [[0.2, 0.2, 0.2], [0.6, 0.4, 0.1], [0.3, 0.3, 0.3]]], np.float32)
  photo_labels = np.array([[1, 2, 5], [5, 5, 5]])  # legs: 0.9/0.2/0.6/0.3 per channel 0.
  generated_labels = np.array([[5, 0, 0], [6, 5, 0]])  # arms in no photo pixel: untouched.
  generated = np.full((2, 3, 3), 0.5, np.float32)
  out = compose.demo_postprocess(generated, photo, photo_labels, generated_labels)
  # Lower medians over the photo's legs pixels (0.9, 0.2, 0.6, 0.3), (0.8, 0.2, 0.4, 0.3),
  # (0.7, 0.2, 0.1, 0.3): 0.3, 0.3, 0.2.
  legs = (np.array([0.5, 0.5, 0.5]) + [0.3, 0.3, 0.2]) / 2
  want = np.full((2, 3, 3), 0.5)
  want[0, 0] = (photo[0, 0] + [0.3, 0.3, 0.2]) / 2  # Hair copied first, then legs averaged.
  want[0, 1] = photo[0, 1]
  want[1, 1] = legs
  np.testing.assert_allclose(out, want, atol=2 * EPS32)
  with pytest.raises(UserError, match="share H x W"):
    compose.demo_postprocess(generated, photo, photo_labels[:1], generated_labels)
