"""Templates and masks against NumPy written from the paper's formulas and the release's getMu.m / getMask.m."""
import chex
import jax
import jax.numpy as jnp
import numpy as np

from readingnotes_jax.errors import UserError
from readingnotes_jax.interpretable_cnn import templates

# Whole functions under jit: one compile each instead of one per eager op.
_centroid = jax.jit(templates.release_centroid)
_paper_mask = jax.jit(templates.paper_mask, static_argnums=(1, 2))


def _bank_np(n, beta=4.0, tau=None):
  """t_ij = tau max(1 - beta ||[i, j] - mu||_1 / n, -1) for mu row-major, then T^- = -tau."""
  tau = 0.5 / n if tau is None else tau
  bank = np.empty((n * n + 1, n, n))
  for mu_i in range(n):
    for mu_j in range(n):
      for i in range(n):
        for j in range(n):
          dist = abs(i - mu_i) + abs(j - mu_j)
          bank[mu_i * n + mu_j, i, j] = tau * max(1 - beta * dist / n, -1)
  bank[-1] = -tau
  return bank


def _matlab_round(v):
  return np.sign(v) * np.floor(np.abs(v) + 0.5)


def _get_mu_np(x):
  """getMu.m in MATLAB's [h, w, depth, batch] layout with 1-based indices."""
  h, w, depth, bs = x.shape
  xr = x.reshape(h * w, depth, bs, order="F")
  tmp_x = np.tile(np.arange(1, h + 1), w)[:, None, None]  # row of linear index p
  tmp_y = np.repeat(np.arange(1, w + 1), h)[:, None, None]
  sum_x = np.maximum(xr.sum(0), 1e-9)
  mu_x = np.maximum(_matlab_round((tmp_x * xr).sum(0) / sum_x), 1)
  mu_y = np.maximum(_matlab_round((tmp_y * xr).sum(0) / sum_x), 1)
  sqrtvar = np.sqrt((((tmp_x - mu_x) ** 2 * xr).sum(0) + ((tmp_y - mu_y) ** 2 * xr).sum(0))
                    / sum_x)
  lin_h, lin_w = np.linspace(-1, 1, h), np.linspace(-1, 1, w)
  return lin_h[mu_x.astype(int) - 1], lin_w[mu_y.astype(int) - 1], sqrtvar  # [depth, bs]


def _get_mask_np(x, beta, filter_type):
  """getMask.m: max(1 - beta (|posX - mu_x| + |posY - mu_y|), -1); 1 where filter ~= 1."""
  h, w, depth, bs = x.shape
  mu_x, mu_y, _ = _get_mu_np(x)
  pos_x = np.linspace(-1, 1, h)[:, None, None, None]
  pos_y = np.linspace(-1, 1, w)[None, :, None, None]
  mask = np.abs(pos_x - mu_x[None, None]) + np.abs(pos_y - mu_y[None, None])
  mask = np.maximum(1 - mask * beta[None, None, :, None], -1)
  mask[:, :, filter_type != 1, :] = 1
  return mask


def _to_matlab(x_nhwc):
  return np.asarray(x_nhwc, np.float64).transpose(1, 2, 3, 0)


class PaperTemplatesTest(chex.TestCase):

  def test_bank_matches_formula(self):
    for n, beta, tau in ((1, 4.0, None), (4, 4.0, None), (7, 4.0, None), (5, 2.5, 0.3)):
      np.testing.assert_allclose(templates.template_bank(n, beta, tau), _bank_np(n, beta, tau),
                                 rtol=1e-6, atol=1e-7, err_msg=f"n={n}")
    np.testing.assert_allclose(templates.positive_templates(3), _bank_np(3)[:-1], rtol=1e-6)
    np.testing.assert_allclose(templates.negative_template(3), np.full((3, 3), -0.5 / 3))

  def test_prior(self):
    n = 6
    alpha = n * n / (1 + n * n)
    p = np.exp(np.asarray(templates.template_log_prior(n), np.float64))
    np.testing.assert_allclose(p[:-1], alpha / n ** 2, rtol=1e-6)
    np.testing.assert_allclose(p[-1], 1 - alpha, rtol=1e-6)
    np.testing.assert_allclose(p.sum(), 1.0, rtol=1e-6)

  def test_paper_mask_is_template_at_argmax(self):
    rng = np.random.default_rng(0)
    x = rng.random((3, 5, 5, 4)).astype(np.float32)
    x[1, :, :, 2] = 0.0  # ties: the first (row-major) maximum, mu = (0, 0)
    x[2, 4, 1, 0] = 7.0
    mask = _paper_mask(x, 4.0, None)
    bank = _bank_np(5)
    for b in range(3):
      for c in range(4):
        k = int(np.argmax(x[b, :, :, c]))
        np.testing.assert_allclose(mask[b, :, :, c], bank[k], rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(mask[2, :, :, 0], bank[4 * 5 + 1], rtol=1e-6)
    unscaled = _paper_mask(x, 4.0, 1.0)
    np.testing.assert_allclose(unscaled, mask * 10.0, rtol=1e-6, atol=1e-6)  # tau = 0.5 / 5

  def test_masked_forward_and_constant_mask_gradient(self):
    rng = np.random.default_rng(1)
    x = rng.random((2, 4, 4, 3)).astype(np.float32)
    weight = rng.normal(size=x.shape).astype(np.float32)
    mask = np.asarray(_paper_mask(x), np.float64)
    out = jax.jit(templates.masked)(x, mask)
    np.testing.assert_allclose(out, np.maximum(x * mask, 0), rtol=1e-6, atol=1e-8)
    loss = lambda v: jnp.sum(weight * templates.masked(v, templates.paper_mask(v)))
    grad = jax.jit(jax.grad(loss))(x)
    np.testing.assert_allclose(grad, weight * mask * (x * mask > 0), rtol=1e-6, atol=1e-8)

  def test_non_square_is_a_user_error(self):
    with self.assertRaises(UserError):
      templates.paper_mask(jnp.zeros((1, 4, 5, 2)))


class ReleaseMaskTest(chex.TestCase):

  def test_centroid_matches_get_mu(self):
    rng = np.random.default_rng(2)
    x = np.maximum(rng.normal(size=(3, 6, 5, 4)), 0).astype(np.float32) ** 3
    mu_row, mu_col, sigma = _centroid(x)
    ref_row, ref_col, ref_sigma = _get_mu_np(_to_matlab(x))
    np.testing.assert_allclose(mu_row, ref_row.T, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(mu_col, ref_col.T, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(sigma, ref_sigma.T, rtol=1e-5)

  def test_centroid_rounds_halves_up_and_zero_maps_go_to_the_corner(self):
    x = np.zeros((2, 4, 4, 1), np.float32)
    x[0, 1, 0, 0] = x[0, 2, 0, 0] = 1.0  # rows 2 and 3 (1-based): 2.5 rounds to 3, not 2
    mu_row, mu_col, sigma = _centroid(x)
    np.testing.assert_allclose(mu_row[:, 0], [1 / 3, -1.0], rtol=1e-6)
    np.testing.assert_allclose(mu_col[:, 0], [-1.0, -1.0])
    np.testing.assert_allclose(sigma[:, 0], [np.sqrt(0.5), 0.0], rtol=1e-6)

  def test_mask_matches_get_mask(self):
    rng = np.random.default_rng(3)
    x = np.maximum(rng.normal(size=(2, 7, 6, 5)), 0).astype(np.float32)
    beta = np.array([2.0, 1.5, 3.0, 2.2, 0.7])
    filter_type = np.array([1, 1, 0, 1, 0])
    mask = jax.jit(templates.release_mask)(x, beta, filter_type == 1)
    ref = _get_mask_np(_to_matlab(x), beta, filter_type)
    np.testing.assert_allclose(mask, ref.transpose(3, 0, 1, 2), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(jax.jit(templates.release_mask)(x), _get_mask_np(
        _to_matlab(x), np.full(5, 2.0), np.ones(5)).transpose(3, 0, 1, 2), rtol=1e-6, atol=1e-6)

  def test_beta_target_matlab_semantics(self):
    # MATLAB: max(min(3 ./ (sum(s .* sigma) ./ sum(s)), 3.0), 1.5), NaN-ignoring min/max.
    rng = np.random.default_rng(4)
    strength = rng.random((5, 6)) - 0.2
    sigma = rng.random((5, 6)) * 3
    positives = rng.random((5, 6)) > 0.4
    strength[:, 3] = 0.0  # 0 / 0 -> 3
    positives[:, 4] = False  # no positive image -> 3
    strength[:, 5], sigma[:, 5], positives[:, 5] = -1.0, 0.0, True  # -0 -> -inf -> 1.5
    with np.errstate(divide="ignore", invalid="ignore"):
      num = (positives * strength * sigma).sum(0)
      den = (positives * strength).sum(0)
      ref = np.fmax(np.fmin(3.0 / (num / den), 3.0), 1.5)
    out = jax.jit(templates.release_beta_target)(strength.astype(np.float32),
                                                 sigma.astype(np.float32), positives)
    np.testing.assert_allclose(out, ref, rtol=1e-5)
    np.testing.assert_allclose(out[3:], [3.0, 3.0, 1.5])
    np.testing.assert_allclose(templates.release_beta_grad(jnp.full(6, 2.0), out),
                               -1e4 * (ref - 2.0), rtol=1e-5)
