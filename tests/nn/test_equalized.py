"""EqualizedDense / EqualizedConv against NumPy: y = x @ (w * gain / sqrt(fan_in)) + b."""
import math

import chex
import jax
import jax.numpy as jnp
import numpy as np

from readingnotes_jax.nn.equalized import EqualizedConv, EqualizedDense


def _conv_same_np(x, w):
  """Stride-1 'SAME' cross-correlation, odd kernel, as a loop over taps."""
  k = w.shape[0]
  p = k // 2
  xp = np.pad(x, ((0, 0), (p, p), (p, p), (0, 0)))
  h, wd = x.shape[1:3]
  out = np.zeros(x.shape[:3] + (w.shape[-1],))
  for i in range(k):
    for j in range(k):
      out += np.einsum("nhwc,cd->nhwd", xp[:, i:i + h, j:j + wd], w[i, j])
  return out


class EqualizedDenseTest(chex.TestCase):

  @chex.variants(with_jit=True, without_jit=True)
  def test_matches_numpy(self):
    x = np.random.default_rng(0).normal(size=(4, 10)).astype(np.float32)
    layer = EqualizedDense(7, gain=1.5)
    params = layer.init(jax.random.key(0), x)["params"]
    params = jax.tree.map(lambda p: p + 0.1, params)  # a nonzero bias
    out = self.variant(layer.apply)({"params": params}, x)
    w, b = np.asarray(params["kernel"]), np.asarray(params["bias"])
    # 10-term float32 dot products of O(1) terms on both sides: ~ 10 eps32 = 1.2e-6.
    np.testing.assert_allclose(out, x @ (w * 1.5 / math.sqrt(10)) + b, rtol=1e-5, atol=1e-5)

  def test_init_is_standard_normal_and_zero_bias(self):
    params = EqualizedDense(256).init(jax.random.key(1), jnp.zeros((1, 256)))["params"]
    kernel = np.asarray(params["kernel"])
    self.assertEqual(params["kernel"].dtype, jnp.float32)
    self.assertAlmostEqual(kernel.std(), 1.0, delta=0.01)
    self.assertAlmostEqual(kernel.mean(), 0.0, delta=0.01)
    np.testing.assert_array_equal(params["bias"], 0.0)

  def test_no_bias(self):
    params = EqualizedDense(3, use_bias=False).init(jax.random.key(0), jnp.zeros((1, 2)))
    self.assertEqual(set(params["params"]), {"kernel"})


class EqualizedConvTest(chex.TestCase):

  @chex.variants(with_jit=True, without_jit=True)
  def test_matches_numpy(self):
    x = np.random.default_rng(2).normal(size=(2, 6, 5, 3)).astype(np.float32)
    for k, gain, lowering in ((3, math.sqrt(2), "matmul"), (1, 1.0, "xla")):
      layer = EqualizedConv(4, kernel_size=k, gain=gain, lowering=lowering)
      params = layer.init(jax.random.key(k), x)["params"]
      params = {"kernel": params["kernel"], "bias": params["bias"] + 0.3}
      out = self.variant(layer.apply)({"params": params}, x)
      w = np.asarray(params["kernel"]) * gain / math.sqrt(k * k * 3)
      # <= 27-term float32 sums against float64: ~ 27 eps32 |terms| = 3e-6; a wrong gain or
      # fan-in changes outputs by O(10%).
      np.testing.assert_allclose(out, _conv_same_np(x, w) + 0.3, rtol=1e-4, atol=1e-4,
                                 err_msg=f"k={k} lowering={lowering}")

  def test_init_is_standard_normal_and_zero_bias(self):
    params = EqualizedConv(64).init(jax.random.key(3), jnp.zeros((1, 4, 4, 64)))["params"]
    self.assertEqual(params["kernel"].shape, (3, 3, 64, 64))
    self.assertAlmostEqual(float(np.std(params["kernel"])), 1.0, delta=0.02)
    np.testing.assert_array_equal(params["bias"], 0.0)

  def test_bfloat16_compute_float32_params(self):
    x = np.random.default_rng(4).normal(size=(2, 4, 4, 8)).astype(np.float32)
    layer = EqualizedConv(8, dtype=jnp.bfloat16)
    variables = layer.init(jax.random.key(4), x)
    chex.assert_trees_all_equal_dtypes(variables, jax.tree.map(
        lambda p: p.astype(jnp.float32), variables))
    out = layer.apply(variables, x)
    self.assertEqual(out.dtype, jnp.bfloat16)
    w = np.asarray(variables["params"]["kernel"]) * math.sqrt(2) / math.sqrt(72)
    ref = _conv_same_np(x, w)
    # x, the kernel and the output each rounded to bf16 (2^-8 relative; the 72 input and kernel
    # roundings add up like a random walk, ~ 2^-8 |y| together): ~ 3 x 2^-8 = 0.012 <= 0.05.
    np.testing.assert_allclose(np.asarray(out, np.float32), ref, atol=0.05 * np.abs(ref).max())
