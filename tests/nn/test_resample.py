"""Nearest 2x upsampling and 2x average pooling against NumPy loops."""
import chex
import jax.numpy as jnp
import numpy as np

from readingnotes_jax.errors import UserError
from readingnotes_jax.nn.resample import downsample_avg_2x, upsample_nearest_2x


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
        ref = (x[:, 2 * i, 2 * j] + x[:, 2 * i + 1, 2 * j] + x[:, 2 * i, 2 * j + 1]
               + x[:, 2 * i + 1, 2 * j + 1]) / 4
        np.testing.assert_allclose(out[:, i, j], ref, rtol=1e-6, atol=1e-6)

  def test_downsample_inverts_upsample(self):
    x = jnp.arange(2 * 3 * 3 * 2, dtype=jnp.float32).reshape(2, 3, 3, 2)
    np.testing.assert_array_equal(downsample_avg_2x(upsample_nearest_2x(x)), x)

  def test_odd_size_is_a_user_error(self):
    with self.assertRaises(UserError):
      downsample_avg_2x(jnp.zeros((1, 3, 4, 1)))
