"""The filter loss against float64 NumPy: the paper's -MI written out explicitly, the release's backward transcribed."""
import chex
import jax
import jax.numpy as jnp
import numpy as np

from readingnotes_jax.errors import UserError
from readingnotes_jax.interpretable_cnn import loss


def _bank_np(n):
  tau = 0.5 / n
  bank = np.empty((n * n + 1, n, n))
  for k in range(n * n):
    mu = np.array(divmod(k, n))
    for i in range(n):
      for j in range(n):
        bank[k, i, j] = tau * max(1 - 4.0 * np.abs(np.array([i, j]) - mu).sum() / n, -1)
  bank[-1] = -tau
  return bank


def _neg_mi_np(x):
  """-MI(X; T) per filter as eq. 1, explicitly, with the literal trace tr(x T) (matrix product)."""
  x = np.asarray(x, np.float64)
  b, n, _, c = x.shape
  bank = _bank_np(n)
  alpha = n * n / (1 + n * n)
  prior = np.array([alpha / (n * n)] * (n * n) + [1 - alpha])
  out = np.empty(c)
  for f in range(c):
    tr = np.array([[np.trace(x[i, :, :, f] @ t) for t in bank] for i in range(b)])  # [B, K]
    p_x_t = np.exp(tr) / np.exp(tr).sum(axis=0)  # p(x|T), normalized over the images
    p_x = (prior * p_x_t).sum(axis=1)  # p(x) = sum_T p(T) p(x|T)
    out[f] = -np.sum(prior * np.sum(p_x_t * np.log(p_x_t / p_x[:, None]), axis=0))
  return out


def _matlab_round(v):
  return np.sign(v) * np.floor(np.abs(v) + 0.5)


def _patch(v):
  """The release's `v(isinf(v)) = max(v(~isinf(v)))`, `v(isnan(v)) = 0`."""
  v = v.copy()
  finite = v[~np.isinf(v)]
  if np.isinf(v).any() and finite.size:
    v[np.isinf(v)] = np.nanmax(finite)
  v[np.isnan(v)] = 0
  return v


def _release_backward_np(x_nhwc, beta, labels, filter_type, epoch, slice_mag=None,
                         density=None, mag=0.1):
  """our_vl_simplenn.m, backward of `conv_mask`: the gradients it adds.

  MATLAB's layout [h, w, depth, batch]; labels [K, batch] of +1 / -1 (the
  release's `class`). Returns (added dzdx as [B, H, W, C], dzdw{3} [C]).
  """
  x = np.asarray(x_nhwc, np.float64).transpose(1, 2, 3, 0)
  h, w, depth, bs = x.shape
  # getMu.m
  xr = x.reshape(h * w, depth, bs, order="F")
  tmp_x = np.tile(np.arange(1, h + 1), w)[:, None, None]
  tmp_y = np.repeat(np.arange(1, w + 1), h)[:, None, None]
  sum_x = np.maximum(xr.sum(0), 1e-9)
  mu_x = np.maximum(_matlab_round((tmp_x * xr).sum(0) / sum_x), 1)
  mu_y = np.maximum(_matlab_round((tmp_y * xr).sum(0) / sum_x), 1)
  sqrtvar = np.sqrt((((tmp_x - mu_x) ** 2 * xr).sum(0) + ((tmp_y - mu_y) ** 2 * xr).sum(0))
                    / sum_x)
  mu_x = np.linspace(-1, 1, h)[mu_x.astype(int) - 1]
  mu_y = np.linspace(-1, 1, w)[mu_y.astype(int) - 1]
  # getMask.m
  mask = (np.abs(np.linspace(-1, 1, h)[:, None, None, None] - mu_x)
          + np.abs(np.linspace(-1, 1, w)[None, :, None, None] - mu_y))
  mask = np.maximum(1 - mask * beta[None, None, :, None], -1)
  mask[:, :, filter_type != 1, :] = 1
  # the groups Div
  depth_list = np.flatnonzero(filter_type > 0)
  label_num = labels.shape[0]
  if label_num == 1:
    div = [(depth_list, np.flatnonzero(labels[0] == 1))]
  elif slice_mag is None:
    div = [(depth_list, np.flatnonzero(labels.max(0) == 1))]
  else:
    idx = np.argmax(slice_mag[depth_list], axis=1)
    div = [(np.sort(depth_list[idx == lab]), np.flatnonzero(labels[lab] == 1))
           for lab in range(label_num)]
  alpha = 0.5
  mean_hw = lambda v: v.mean(axis=(0, 1))  # -> [depth, batch]
  dzdx = np.zeros_like(x)
  strength_all = mean_hw(x * mask)
  logz_pos = _patch(np.log(np.mean(np.exp(mean_hw(x * mask[:, :, ::-1, ::-1]) / alpha), 1)) * alpha)
  logz_neg = _patch(np.log(np.mean(np.exp(mean_hw(-x) / alpha), 1)) * alpha)
  for lab, (d_list, pos_list) in enumerate(div):
    if len(div) == 1:
      w_pos = w_neg = 1.0
    elif label_num > 10:
      w_pos, w_neg = 0.5 / (1 / label_num), 0.5 / (1 - 1 / label_num)
    else:
      w_pos, w_neg = 0.5 / density[lab], 0.5 / (1 - density[lab])
    mag_m = np.ones((depth, bs)) / (1 / epoch) / mag
    d_list = d_list[filter_type[d_list] == 1]
    if not d_list.size:
      continue
    if pos_list.size:
      ix = (d_list[:, None], pos_list[None, :])
      s = strength_all[ix]
      st = _patch(np.exp(s / alpha) * (s - logz_pos[d_list, None] + alpha))
      st = _patch(st / (st.mean(1, keepdims=True) * mag_m[ix]))
      dzdx[:, :, ix[0], ix[1]] -= mask[:, :, ix[0], ix[1]] * st * (1e-5 * w_pos)
    neg_list = np.setdiff1d(np.arange(bs), pos_list)
    if neg_list.size:
      ix = (d_list[:, None], neg_list[None, :])
      s = mean_hw(x[:, :, ix[0], ix[1]])
      st = _patch(np.exp(-s / alpha) * (-s - logz_neg[d_list, None] + alpha))
      st = _patch(st / (st.mean(1, keepdims=True) * mag_m[ix]))
      dzdx[:, :, ix[0], ix[1]] += st * (1e-5 * w_neg)
  dzdw3 = np.zeros(depth)
  for d_list, pos_list in div:
    if not d_list.size:
      continue
    ix = (d_list[:, None], pos_list[None, :])
    with np.errstate(divide="ignore", invalid="ignore"):
      tmp = (strength_all[ix] * sqrtvar[ix]).sum(1) / strength_all[ix].sum(1)
      tmp = np.fmax(np.fmin(3.0 / tmp, 3.0), 1.5)  # MATLAB's min / max skip NaN
    dzdw3[d_list] = (tmp - beta[d_list]) * -10000
  return dzdx.transpose(3, 0, 1, 2), dzdw3


@jax.jit
def _release_grads(x, beta, positives, filter_class, part, epoch, density):
  """The gradients of x and beta for a batch-summed and a batch-averaged task loss."""
  def grads(reduction):
    fn = lambda x, beta: loss.filter_loss(
        x, positives, "release", filter_class=filter_class, part_filters=part, beta=beta,
        epoch=epoch, class_density=density, task_loss_reduction=reduction)
    return jax.value_and_grad(fn, argnums=(0, 1))(x, beta)
  return grads("sum"), grads("mean")


_neg_mi = jax.jit(loss.mutual_information_loss)


def _features(rng, shape, scale=2.0):
  return (np.maximum(rng.normal(size=shape), 0) * scale).astype(np.float32)


def _largest_intermediate(jaxpr):
  """The most elements of any value a jaxpr (or its sub-jaxprs) computes."""
  largest = 0
  for eqn in jaxpr.eqns:
    for v in eqn.outvars:
      largest = max(largest, int(np.prod(v.aval.shape)))
    for p in eqn.params.values():
      sub = getattr(p, "jaxpr", p)
      if hasattr(sub, "eqns"):
        largest = max(largest, _largest_intermediate(sub))
  return largest


class PaperLossTest(chex.TestCase):

  def test_matches_explicit_numpy(self):
    rng = np.random.default_rng(0)
    for b, n, c, scale in ((6, 4, 3, 3.0), (3, 3, 2, 8.0), (5, 5, 2, 1.0)):
      x = _features(rng, (b, n, n, c), scale)
      out = np.asarray(_neg_mi(x), np.float64)
      ref = _neg_mi_np(x)
      self.assertTrue(np.all(np.abs(ref) > 1e-3), ref)  # not a vanishing MI
      np.testing.assert_allclose(out, ref, rtol=1e-5, err_msg=f"{(b, n, c)}")

  def test_gradient_matches_finite_differences(self):
    x = _features(np.random.default_rng(1), (3, 3, 3, 2), 4.0).astype(np.float64)
    grad = jax.jit(jax.grad(lambda v: jnp.sum(loss.mutual_information_loss(v))))(
        x.astype(np.float32))
    eps = 1e-5
    ref = np.zeros_like(x)
    for idx in np.ndindex(x.shape):
      step = np.zeros_like(x)
      step[idx] = eps
      ref[idx] = (_neg_mi_np(x + step).sum() - _neg_mi_np(x - step).sum()) / (2 * eps)
    np.testing.assert_allclose(grad, ref, rtol=2e-3, atol=2e-4 * np.abs(ref).max())

  def test_filter_loss_sums_part_filters(self):
    x = _features(np.random.default_rng(2), (4, 4, 4, 3))
    part = np.array([True, False, True])
    total = jax.jit(lambda v: loss.filter_loss(v, None, part_filters=part))(x)
    np.testing.assert_allclose(total, _neg_mi_np(x)[part].sum(), rtol=1e-5)

  def test_finite_everywhere(self):
    rng = np.random.default_rng(3)
    value_and_grad = jax.jit(jax.value_and_grad(lambda v: loss.filter_loss(v, None)))
    cases = {"zeros": np.zeros((4, 5, 5, 3), np.float32),
             "1e4 random": _features(rng, (4, 5, 5, 3), 1e4),
             "1e4 constant": np.full((4, 5, 5, 3), 1e4, np.float32),
             "one hot 1e4": np.pad(np.full((4, 1, 1, 3), 1e4, np.float32),
                                   ((0, 0), (2, 2), (2, 2), (0, 0)))}
    for name, x in cases.items():
      value, grad = value_and_grad(x)
      self.assertTrue(np.isfinite(value) and np.all(np.isfinite(grad)), name)
    np.testing.assert_allclose(value_and_grad(cases["zeros"])[0], 0.0, atol=1e-5)
    with np.errstate(over="ignore", invalid="ignore"):  # what the explicit float ports hit
      self.assertFalse(np.all(np.isfinite(_neg_mi_np(cases["1e4 random"]))))
    value, grad = value_and_grad(jnp.asarray(cases["1e4 random"], jnp.bfloat16))
    self.assertEqual(grad.dtype, jnp.bfloat16)
    self.assertTrue(np.isfinite(value) and np.all(np.isfinite(np.asarray(grad, np.float32))))

  def test_memory_is_linear_in_the_templates(self):
    b, n, c = 8, 14, 16
    k = n * n + 1
    x = jax.ShapeDtypeStruct((b, n, n, c), jnp.float32)
    jaxpr = jax.make_jaxpr(jax.grad(lambda v: loss.filter_loss(v, None)))(x).jaxpr
    largest = _largest_intermediate(jaxpr)
    self.assertLessEqual(largest, max(b * c * k, k * n * n))  # [B, C, K] or the bank
    self.assertLess(largest * 100, c * b * k * n * n)  # the explicit ports' tensor

  def test_bad_input_is_a_user_error(self):
    x = jnp.zeros((2, 4, 4, 3))
    with self.assertRaises(UserError):
      loss.filter_loss(x, None, "explicit")
    with self.assertRaises(UserError):
      loss.filter_loss(jnp.zeros((2, 4, 5, 3)), None, "paper")
    with self.assertRaises(UserError):
      loss.filter_loss(x, None, "release")
    with self.assertRaises(UserError):
      loss.filter_loss(x, jnp.ones(2), "release", epoch=0)


class ReleaseLossTest(chex.TestCase):

  def _check(self, x, beta, labels_matlab, filter_type, epoch, positives, filter_class,
             slice_mag=None, density=np.ones(1)):
    (value, (dx, d_beta)), (_, (dx_mean, d_beta_mean)) = _release_grads(
        x, beta.astype(np.float32), positives, filter_class, filter_type == 1, epoch,
        density.astype(np.float32))
    ref_dx, ref_beta = _release_backward_np(x, beta, labels_matlab, filter_type, epoch,
                                            slice_mag, density)
    self.assertEqual(float(value), 0.0)
    self.assertGreater(np.abs(ref_dx).max(), 0)
    np.testing.assert_allclose(dx, ref_dx, rtol=1e-4, atol=1e-5 * np.abs(ref_dx).max())
    np.testing.assert_allclose(d_beta, ref_beta, rtol=1e-4, atol=1e-2)
    b = x.shape[0]  # a batch-mean task loss: the release's updates need 1 / B
    np.testing.assert_allclose(dx_mean, dx / b, rtol=1e-6, atol=1e-12)
    np.testing.assert_allclose(d_beta_mean, d_beta / b, rtol=1e-6)
    return dx, d_beta

  def test_single_category_matches_transcription(self):
    rng = np.random.default_rng(4)
    x = _features(rng, (6, 5, 4, 5))  # a rectangular map, as the release allows
    beta = np.array([2.0, 1.7, 2.0, 2.6, 1.5])
    filter_type = np.array([1, 1, 0, 1, 1])
    labels = np.array([1, -1, 1, 1, -1, -1])
    dx, d_beta = self._check(x, beta, labels[None], filter_type, 3.0, labels, np.zeros(5, int))
    self.assertEqual(float(d_beta[2]), 0.0)
    np.testing.assert_allclose(dx[:, :, :, 2], 0.0)

  def test_multi_category_matches_transcription(self):
    rng = np.random.default_rng(5)
    b, c, k = 6, 5, 3
    x = _features(rng, (b, 5, 4, c))
    beta = np.full(c, 2.0) + rng.random(c) * 0.5
    filter_type = np.array([1, 1, 0, 1, 1])
    labels = -np.ones((k, b))
    labels[[0, 1, 2, 0, 1], np.arange(b - 1)] = 1
    labels[1, 0] = 1  # two categories in one image
    density = np.array([0.3, 0.25, 0.2])  # image b - 1 is of no category
    slice_mag = rng.random((c, k))
    self._check(x, beta, labels, filter_type, 2.0, labels.T, np.argmax(slice_mag, 1),
                slice_mag, density)
    # Before the first assignment: one group, positive for any category, weights 1.
    self._check(x, beta, labels, filter_type, 1.0, labels.T, np.full(c, -1), None, density)

  def test_many_categories_and_empty_groups(self):
    rng = np.random.default_rng(6)
    b, c, k = 6, 5, 12
    x = _features(rng, (b, 5, 4, c))
    beta = np.full(c, 2.0)
    filter_type = np.ones(c, int)
    labels = -np.ones((k, b))
    labels[[0, 0, 1, 1, 2, 3], np.arange(b)] = 1
    slice_mag = np.zeros((c, k))
    slice_mag[np.arange(c), [0, 1, 1, 5, 9]] = 1.0  # filters of categories 5, 9: no positives
    _, d_beta = self._check(x, beta, labels, filter_type, 4.0, labels.T,
                            np.argmax(slice_mag, 1), slice_mag)
    np.testing.assert_allclose(d_beta[3:], -1e4 * (3.0 - 2.0), rtol=1e-6)

  def test_finite_for_huge_activations(self):
    rng = np.random.default_rng(7)
    labels = np.array([1, -1, 1, -1, 1, -1])
    for x in (_features(rng, (6, 5, 4, 5), 1e4), np.zeros((6, 5, 4, 5), np.float32)):
      (_, (dx, d_beta)), _ = _release_grads(x, np.full(5, 2.0, np.float32), labels,
                                            np.zeros(5, int), np.ones(5, bool), 1.0,
                                            np.ones(1, np.float32))
      self.assertTrue(np.all(np.isfinite(dx)) and np.all(np.isfinite(d_beta)))
      self.assertGreater(np.abs(dx).max(), 0)


class AssignmentTest(chex.TestCase):

  @staticmethod
  def _slice_mag_np(slice_mag, x_max, labels):
    """our_cnn_train.m's sliceMag update; labels [K, batch] of +1 / -1, x_max [depth, batch]."""
    slice_mag = slice_mag.copy()
    for lab in range(labels.shape[0]):
      sel = labels[lab] == 1
      if sel.any():
        meantmp = x_max[:, sel].mean(1)
        if slice_mag[:, lab].sum() == 0:
          slice_mag[:, lab] = np.maximum(meantmp, 0.1)
        else:
          meantmp[meantmp == 0] = slice_mag[meantmp == 0, lab]
          slice_mag[:, lab] = slice_mag[:, lab] * 0.9 + meantmp * 0.1
    return slice_mag

  def test_matches_release_over_batches(self):
    rng = np.random.default_rng(8)
    c, k, b = 5, 3, 6
    update = jax.jit(loss.update_filter_assignment)
    ema, ref = np.zeros((c, k), np.float32), np.zeros((c, k))
    labels = -np.ones((k, b))
    _, filter_class = update(ema, np.ones((b, c), np.float32), labels.T)
    np.testing.assert_array_equal(filter_class, -1)  # nothing seen yet
    for step in range(4):
      labels = np.where(rng.random((k, b)) < 0.4, 1.0, -1.0)
      if step == 0:
        labels[2] = -1  # category 2 absent: its column stays 0
      x_max = (np.maximum(rng.normal(size=(b, c)), 0) * 3).astype(np.float32)
      x_max[:, 1] = 0.0 if step == 2 else x_max[:, 1]  # a silent filter keeps its values
      ema, filter_class = update(ema, x_max, labels.T)
      ref = self._slice_mag_np(ref, x_max.T.astype(np.float64), labels)
      np.testing.assert_allclose(ema, ref, rtol=1e-5, err_msg=f"step {step}")
      np.testing.assert_array_equal(filter_class, np.argmax(ref, 1))
      if step == 0:
        np.testing.assert_array_equal(ema[:, 2], 0.0)

  def test_positive_mask(self):
    labels = np.array([[1, -1, -1], [-1, 1, 1], [-1, -1, -1]])
    positive_mask = jax.jit(loss.positive_mask, static_argnums=1)
    pos = positive_mask(labels, 4, np.array([0, 2, -1, 1]))
    np.testing.assert_array_equal(pos, [[1, 0, 1, 0], [0, 1, 1, 1], [0, 0, 0, 0]])
    np.testing.assert_array_equal(positive_mask(np.array([1, -1]), 2), [[1, 1], [0, 0]])
    np.testing.assert_array_equal(positive_mask(labels, 2), [[1, 1], [1, 1], [0, 0]])
