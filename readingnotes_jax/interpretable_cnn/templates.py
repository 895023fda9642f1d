"""Part templates and feature-map masks of Interpretable CNNs (Zhang et al., CVPR 2018).

Two versions, NHWC, one filter per channel:
- the paper's (section 3): n^2 positive templates T_mu, one per location mu of
  an n x n map, t_ij = tau max(1 - beta ||[i, j] - mu||_1 / n, -1), and a
  negative template T^- = -tau, tau = 0.5 / n, beta = 4; the mask of a feature
  map is T_mu_hat at its argmax mu_hat;
- the authors' MatConvNet release (zqs1022/interpretableCNN, code/tool/main/
  getMu.m, getMask.m, our_vl_simplenn.m): mu_hat is the activation-weighted
  centroid (MATLAB-rounded), coordinates normalized to [-1, 1], the mask is
  max(1 - beta_c ||[i, j] - mu_hat||_1, -1) (no tau) with one learned beta per
  channel (init 2.0), pulled towards clip(3 / sigma, 1.5, 3).
In both the mask is a constant in back-propagation (`masked` stops its gradient).
Rows (H) are the first coordinate, as the release's `mu_x`.
"""
import math

import jax
import jax.numpy as jnp
import numpy as np

from readingnotes_jax.errors import UserError

PAPER_BETA = 4.0
RELEASE_BETA_INIT = 2.0  # add_block_mask.m: alphaInit
RELEASE_BETA_RANGE = (1.5, 3.0)  # our_vl_simplenn.m: max(min(beta ./ tmp, 3.0), 1.5)
RELEASE_BETA_NUMERATOR = 3.0  # our_vl_simplenn.m: beta=3 in the update of weights{3}
RELEASE_BETA_GRAD_SCALE = 1e4  # our_vl_simplenn.m: (tmp - weights{3}) .* (-10000)


def paper_tau(n: int) -> float:
  """The paper's template scale tau = 0.5 / n."""
  return 0.5 / n


def _positive_np(n, beta, tau):
  tau = paper_tau(n) if tau is None else tau
  i = np.arange(n, dtype=np.float64)
  rows = np.abs(i[:, None, None, None] - i[None, None, :, None])  # [mu_0, 1, i, 1]
  cols = np.abs(i[None, :, None, None] - i[None, None, None, :])  # [1, mu_1, 1, j]
  t = tau * np.maximum(1.0 - beta * (rows + cols) / n, -1.0)
  return t.reshape(n * n, n, n).astype(np.float32)


def _negative_np(n, tau):
  return np.full((n, n), -(paper_tau(n) if tau is None else tau), np.float32)


def _log_prior_np(n):
  alpha = n * n / (1.0 + n * n)
  return np.array([math.log(alpha / (n * n))] * (n * n) + [math.log(1.0 - alpha)], np.float32)


def bank_and_log_prior_np(n: int, beta: float = PAPER_BETA,
                          tau: float | None = None) -> tuple[np.ndarray, np.ndarray]:
  """NumPy constants (`template_bank`, `template_log_prior`) for use inside jit."""
  return np.concatenate([_positive_np(n, beta, tau), _negative_np(n, tau)[None]]), _log_prior_np(n)


def positive_templates(n: int, beta: float = PAPER_BETA, tau: float | None = None) -> jax.Array:
  """The paper's n^2 positive templates, [n * n, n, n] float32.

  Template k is T_mu for mu = (k // n, k % n) (row-major), with entries
  tau * max(1 - beta * (|i - mu_0| + |j - mu_1|) / n, -1); tau defaults to 0.5 / n.
  """
  return jnp.asarray(_positive_np(n, beta, tau))


def negative_template(n: int, tau: float | None = None) -> jax.Array:
  """The paper's negative template T^-: all -tau, [n, n] float32."""
  return jnp.asarray(_negative_np(n, tau))


def template_bank(n: int, beta: float = PAPER_BETA, tau: float | None = None) -> jax.Array:
  """[n * n + 1, n, n]: the positive templates (row-major mu), then T^-."""
  return jnp.asarray(bank_and_log_prior_np(n, beta, tau)[0])


def template_log_prior(n: int) -> jax.Array:
  """log p(T) for `template_bank(n)`: p(T_mu) = alpha / n^2, p(T^-) = 1 - alpha.

  alpha = n^2 / (1 + n^2) (paper section 3), so every template gets 1 / (1 + n^2).
  """
  return jnp.asarray(_log_prior_np(n))


def _square_side(x: jax.Array, who: str) -> int:
  if x.ndim != 4 or x.shape[1] != x.shape[2]:
    raise UserError(f"{who}: the paper's templates need NHWC feature maps with H == W, got "
                    f"shape {x.shape}: crop to a square map or use the release's mask")
  return x.shape[1]


def argmax_location(x: jax.Array) -> tuple[jax.Array, jax.Array]:
  """(row, col) of each map's maximum, [B, C] int32 each; ties go to the first (row-major)."""
  b, h, w, c = x.shape
  flat = jnp.argmax(jax.lax.stop_gradient(x).reshape(b, h * w, c), axis=1)
  return flat // w, flat % w


def paper_mask(x: jax.Array, beta: float = PAPER_BETA, tau: float | None = None) -> jax.Array:
  """T_mu_hat for every map of `x` [B, n, n, C], mu_hat its argmax; [B, n, n, C] float32.

  Paper section 3, x_masked = max(x . T_mu_hat, 0) (with `masked`). The mask
  carries no gradient. `tau=1.0` gives the release's unscaled range [-1, 1].
  """
  n = _square_side(x, "paper_mask")
  tau = paper_tau(n) if tau is None else tau
  mu_row, mu_col = argmax_location(x)
  i = jnp.arange(n)
  dist = (jnp.abs(i[None, :, None, None] - mu_row[:, None, None, :])
          + jnp.abs(i[None, None, :, None] - mu_col[:, None, None, :]))
  return tau * jnp.maximum(1.0 - beta * dist.astype(jnp.float32) / n, -1.0)


def masked(x: jax.Array, mask: jax.Array) -> jax.Array:
  """max(x * mask, 0) in the dtype of `x`, the mask a constant in back-propagation."""
  return jnp.maximum(x * jax.lax.stop_gradient(mask).astype(x.dtype), 0)


def _matlab_round(v):
  """MATLAB's round: halves away from zero (jnp.round rounds them to even)."""
  return jnp.sign(v) * jnp.floor(jnp.abs(v) + 0.5)


def _linspace(n: int) -> jax.Array:
  """MATLAB's linspace(-1, 1, n) (which is [1] for n = 1)."""
  return jnp.linspace(-1.0, 1.0, n) if n > 1 else jnp.ones((1,), jnp.float32)


def release_centroid(x: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
  """The release's part location and spread per map, as getMu.m (IsUseMax = false).

  With 1-based row/col indices r, c and S = max(sum x, 1e-9): the centroid
  r_hat = max(round(sum(r x) / S), 1) (MATLAB round), likewise c_hat, here also
  clipped to H, W (which only negative activations can exceed);
  sigma = sqrt((sum (r - r_hat)^2 x + sum (c - c_hat)^2 x) / S) in feature-map
  cells (clamped at 0 under the root). No gradient flows through.

  Args:
    x: [B, H, W, C] feature maps after ReLU (the masked layer's input).

  Returns:
    (mu_row, mu_col, sigma), each [B, C] float32: the centroid mapped to
    linspace(-1, 1, H)[r_hat] and linspace(-1, 1, W)[c_hat], and sigma.
  """
  x = jax.lax.stop_gradient(x).astype(jnp.float32)
  _, h, w, _ = x.shape
  rows = jnp.arange(1, h + 1, dtype=jnp.float32)[None, :, None, None]
  cols = jnp.arange(1, w + 1, dtype=jnp.float32)[None, None, :, None]
  total = jnp.maximum(jnp.sum(x, axis=(1, 2)), 1e-9)
  r_hat = jnp.clip(_matlab_round(jnp.sum(rows * x, axis=(1, 2)) / total), 1, h)
  c_hat = jnp.clip(_matlab_round(jnp.sum(cols * x, axis=(1, 2)) / total), 1, w)
  spread = (jnp.sum(jnp.square(rows - r_hat[:, None, None, :]) * x, axis=(1, 2))
            + jnp.sum(jnp.square(cols - c_hat[:, None, None, :]) * x, axis=(1, 2)))
  sigma = jnp.sqrt(jnp.maximum(spread / total, 0.0))
  mu_row = _linspace(h)[r_hat.astype(jnp.int32) - 1]
  mu_col = _linspace(w)[c_hat.astype(jnp.int32) - 1]
  return mu_row, mu_col, sigma


def release_mask(x: jax.Array, beta: jax.Array | float = RELEASE_BETA_INIT,
                 part_filters: jax.Array | None = None) -> jax.Array:
  """The release's mask, getMask.m: [B, H, W, C] float32 in [-1, 1], no gradient.

  max(1 - beta_c (|p_row - mu_row| + |p_col - mu_col|), -1) with p the cell's
  coordinates on linspace(-1, 1, H) x linspace(-1, 1, W) and mu from
  `release_centroid`; 1 for filters that are not part filters (the release's
  `l.filter ~= 1`). The forward pass uses `masked(x, mask)`, the release's
  max(x .* mask, 0); the release's filter gradient uses the unclamped mask.

  Args:
    x: [B, H, W, C] feature maps after ReLU.
    beta: the per-channel beta, [C] or a scalar (the release learns it: init 2.0).
    part_filters: [C] bool, the filters that get a mask (default: all, the
      release's partRate = 1).
  """
  _, h, w, c = x.shape
  mu_row, mu_col, _ = release_centroid(x)
  beta = jnp.broadcast_to(jax.lax.stop_gradient(jnp.asarray(beta, jnp.float32)), (c,))
  dist = (jnp.abs(_linspace(h)[None, :, None, None] - mu_row[:, None, None, :])
          + jnp.abs(_linspace(w)[None, None, :, None] - mu_col[:, None, None, :]))
  mask = jnp.maximum(1.0 - dist * beta, -1.0)
  if part_filters is not None:
    mask = jnp.where(jnp.asarray(part_filters, bool), mask, 1.0)
  return mask


def release_beta_target(strength: jax.Array, sigma: jax.Array,
                        positives: jax.Array) -> jax.Array:
  """Where the release pulls each beta: clip(3 / sigma_bar, 1.5, 3), [C] float32.

  our_vl_simplenn.m (backward of `conv_mask`): sigma_bar is the mean of sigma
  over the filter's positive images weighted by strength = mean_ij(x . mask),
  then `max(min(3 ./ sigma_bar, 3.0), 1.5)` with MATLAB's NaN-ignoring min/max:
  0 / 0 (no positive image, or zero total strength) gives 3.0, a zero sigma_bar
  3.0 (1.5 if the weights sum negative), an infinite one 1.5. Computed here
  without producing NaN or inf.

  Args:
    strength: [B, C] mean_ij(x . mask) (the unclamped release mask).
    sigma: [B, C] from `release_centroid`.
    positives: [B, C] bool, image b is positive for filter c.
  """
  pos = jnp.asarray(positives, jnp.float32)
  num = jnp.sum(pos * strength * sigma, axis=0)  # 3 / (num / den) = 3 den / num
  den = jnp.sum(pos * strength, axis=0)
  low, high = RELEASE_BETA_RANGE
  ratio = RELEASE_BETA_NUMERATOR * den / jnp.where(num == 0, 1.0, num)
  zero_num = jnp.where(den < 0, low, high)
  return jnp.where(num == 0, zero_num, jnp.clip(ratio, low, high))


def release_beta_grad(beta: jax.Array, target: jax.Array) -> jax.Array:
  """The release's hand-set beta gradient, -1e4 (target - beta), [C].

  our_vl_simplenn.m sets dzdw{3} to this; our_cnn_train.m then divides it by
  the batch size and takes an SGD-momentum step (momentum 0.9) with learning
  rate multiplier 0.05 and no weight decay (add_block_mask.m).
  """
  return -RELEASE_BETA_GRAD_SCALE * (target - beta)
