"""Nearest 2x upsampling and 2x average pooling against NumPy loops."""
import chex
import jax.numpy as jnp
import numpy as np

from readingnotes_jax.errors import UserError
from readingnotes_jax.nn.resample import downsample_avg_2x, upsample_nearest_2x
from numerics_testlib import EPS32


class ResampleTest(chex.TestCase):

  @chex.variants(with_jit=True, without_jit=True)
  def test_upsample_nearest(self):
    x = np.random.default_rng(0).normal(size=(2, 3, 4, 5)).astype(np.float32)
    out = np.asarray(self.variant(upsample_nearest_2x)(x))
    chex.assert_shape(out, (2, 6, 8, 5))
    for i in range(6):
      for j in range(8):
        np.testing.assert_array_equal(out[:, i, j], x[:, i // 2, j // 2])

  @chex.variants(with_jit=True, without_jit=True)
  def test_downsample_average(self):
    x = np.random.default_rng(1).normal(size=(2, 4, 6, 3)).astype(np.float32)
    out = np.asarray(self.variant(downsample_avg_2x)(x))
    chex.assert_shape(out, (2, 2, 3, 3))
    for i in range(2):
      for j in range(3):
        ref = (x[:, 2 * i, 2 * j].astype(np.float64) + x[:, 2 * i + 1, 2 * j]
               + x[:, 2 * i, 2 * j + 1] + x[:, 2 * i + 1, 2 * j + 1]) / 4
        # Against float64: 3 float32 additions of partial sums <= 4 max |x|, each rounding by
        # <= eps32 / 2 of it, then / 4 (exact): <= 1.5 eps32 max |x|; a wrong tap is O(0.1).
        np.testing.assert_allclose(out[:, i, j], ref, rtol=0, atol=1.5 * EPS32 * np.abs(x).max())

  def test_downsample_inverts_upsample(self):
    x = jnp.arange(2 * 3 * 3 * 2, dtype=jnp.float32).reshape(2, 3, 3, 2)
    np.testing.assert_array_equal(downsample_avg_2x(upsample_nearest_2x(x)), x)

  def test_odd_size_is_a_user_error(self):
    with self.assertRaises(UserError):
      downsample_avg_2x(jnp.zeros((1, 3, 4, 1)))
