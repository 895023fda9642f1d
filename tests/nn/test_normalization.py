"""pixel_norm and minibatch_stddev against NumPy written from the formulas."""
import chex
import jax.numpy as jnp
import numpy as np

from readingnotes_jax.errors import UserError
from readingnotes_jax.nn.normalization import minibatch_stddev, pixel_norm


def _pixel_norm_np(x, eps):
  return x / np.sqrt(np.mean(x.astype(np.float64) ** 2, axis=-1, keepdims=True) + eps)


def _minibatch_stddev_np(x, group_size):
  """Group m holds samples m, m + M, m + 2M, ... (M = N / G), as the official reshape."""
  n = x.shape[0]
  g = min(group_size, n)
  m = n // g
  x = x.astype(np.float64)
  stat = np.empty(n)
  for i in range(m):
    members = x[i::m]  # [G, H, W, C]
    std = np.sqrt(np.mean((members - members.mean(axis=0)) ** 2, axis=0) + 1e-8)
    stat[i::m] = std.mean()
  feature = np.broadcast_to(stat[:, None, None, None], x.shape[:3] + (1,))
  return np.concatenate([x, feature], axis=-1)


class PixelNormTest(chex.TestCase):

  @chex.variants(with_jit=True, without_jit=True)
  def test_matches_numpy(self):
    x = np.random.default_rng(0).normal(size=(3, 4, 5, 6)).astype(np.float32) * 3.0
    out = self.variant(pixel_norm)(x)
    # A mean of 6 squares, rsqrt and a product in float32: ~ 3 eps32 = 4e-7 relative.
    np.testing.assert_allclose(out, _pixel_norm_np(x, 1e-8), rtol=1e-5, atol=1e-6)

  def test_latents_and_epsilon(self):
    x = np.random.default_rng(1).normal(size=(4, 7)).astype(np.float32) * 1e-3
    out = pixel_norm(x, epsilon=1e-4)
    np.testing.assert_allclose(out, _pixel_norm_np(x, 1e-4), rtol=1e-5)  # as above: ~ 3 eps32

  def test_bfloat16_keeps_dtype(self):
    x = np.random.default_rng(2).normal(size=(2, 3, 3, 8)).astype(np.float32)
    out = pixel_norm(jnp.asarray(x, jnp.bfloat16))
    self.assertEqual(out.dtype, jnp.bfloat16)
    # Input, output and at most the statistic rounded to bf16 (2^-8 each, half of it through
    # the rsqrt): <= 2.5 x 2^-8 = 0.0098 relative, |out| < 3.
    np.testing.assert_allclose(np.asarray(out, np.float32), _pixel_norm_np(x, 1e-8),
                               rtol=2e-2, atol=2e-2)


class MinibatchStddevTest(chex.TestCase):

  @chex.variants(with_jit=True, without_jit=True)
  def test_matches_numpy(self):
    x = np.random.default_rng(3).normal(size=(8, 4, 4, 5)).astype(np.float32)
    x[::2] *= 3.0  # groups differ, so a wrong grouping changes the result
    for group_size in (1, 2, 4, 8, 16):
      out = self.variant(minibatch_stddev, static_argnums=1)(x, group_size)
      chex.assert_shape(out, (8, 4, 4, 6))
      # Float32 std over <= 8 members, then a mean of 80: ~ eps32 (8 + sqrt(80)) = 2e-6
      # relative; a wrong grouping changes the statistic by O(1) (x[::2] is 3x larger).
      np.testing.assert_allclose(out, _minibatch_stddev_np(x, group_size), rtol=1e-5,
                                 atol=1e-5, err_msg=f"group_size={group_size}")

  def test_grouping_is_strided(self):
    # Samples 0, 2 form one group and 1, 3 the other: only 1 and 3 differ.
    x = np.zeros((4, 1, 1, 1), np.float32)
    x[1], x[3] = 1.0, -1.0
    out = np.asarray(minibatch_stddev(x, group_size=2))[:, 0, 0, 1]
    np.testing.assert_allclose(out, [1e-4, 1.0, 1e-4, 1.0], rtol=1e-5)  # sqrt(var + 1e-8): ~2 eps32

  def test_indivisible_batch_is_a_user_error(self):
    with self.assertRaises(UserError):
      minibatch_stddev(jnp.zeros((6, 2, 2, 3)), group_size=4)

  def test_bfloat16_statistics_in_float32(self):
    x = np.random.default_rng(4).normal(size=(4, 2, 2, 3)).astype(np.float32) + 100.0
    out = minibatch_stddev(jnp.asarray(x, jnp.bfloat16))
    self.assertEqual(out.dtype, jnp.bfloat16)
    ref = _minibatch_stddev_np(np.asarray(jnp.asarray(x, jnp.bfloat16), np.float32), 4)
    # Float32 statistics of the bf16 numbers, rounded once to bf16: 2^-8 <= 1e-2. In bf16 the
    # mean of values near 100 (ulp 0.5) would be off by ~0.25 of a std of ~1.
    np.testing.assert_allclose(np.asarray(out, np.float32)[..., -1], ref[..., -1], rtol=1e-2)
