"""The filter loss of Interpretable CNNs, as the paper writes it and as its release trains it.

`filter_loss(x, positives, formulation=...)` on the feature maps x [B, H, W, C]
of an interpretable conv-layer (after its ReLU, before the mask):
- "paper": Loss_f = -MI(X; T) (CVPR 2018, section 3, the filter loss) summed over the
  filters, exactly and stably. p(x|T) = exp(tr(x . T)) / Z_T over the B images
  of the batch, p(x) = sum_T p(T) p(x|T). The scores tr(x . T) of all n^2 + 1
  templates are one einsum with the template bank ([B, C, n^2 + 1]); the rest
  is log-sum-exps over that array, so nothing overflows and memory is
  O(B C n^2), not the explicit ports' C B (n^2 + 1) n^2. The trace is taken as
  the elementwise inner product sum_ij x_ij t_ij: the literal tr(x T) pairs x
  with the transposed template, and transposing maps the bank onto itself with
  equal priors, so the loss is the same. Labels do not enter -MI(X; T): they
  only pick the target template (T_mu_hat for images of the filter's category,
  T^- for others) in the paper's approximate gradient, which is what the
  release implements.
- "release": the authors' MatConvNet code has no loss value; its backward
  (zqs1022/interpretableCNN, code/tool/main/our_vl_simplenn.m, `conv_mask`)
  adds a hand-made gradient to the feature maps and sets beta's gradient. Here
  that is a `jax.custom_vjp` whose value is 0 and whose gradients are those.
Filters are assigned to categories by `update_filter_assignment` (the release's
EMA of per-class maximum activations, our_cnn_train.m `sliceMag`).
"""
import jax
import jax.numpy as jnp
import numpy as np

from readingnotes_jax.errors import UserError
from readingnotes_jax.interpretable_cnn import templates

RELEASE_ALPHA = 0.5  # our_vl_simplenn.m: alpha=0.5
RELEASE_SCALE = 1e-5  # our_vl_simplenn.m: 0.00001 * w_pos / w_neg
RELEASE_MAG = 0.1  # vgg_vd_16.m, alexnet.m, vgg_m.m, vgg_s.m: mag=0.1
ASSIGNMENT_MOMENTUM = 0.9  # our_cnn_train.m: tmptmp=0.9
ASSIGNMENT_FLOOR = 0.1  # our_cnn_train.m: first value max(meantmp, 0.1)


def mutual_information_loss(x: jax.Array, beta: float = templates.PAPER_BETA,
                            tau: float | None = None) -> jax.Array:
  """-MI(X; T) per filter over the batch, [C] float32 (the paper's filter loss, section 3).

  -sum_T p(T) sum_x p(x|T) log(p(x|T) / p(x)) with the templates of
  `templates.template_bank` and the prior of `templates.template_log_prior`.
  Finite for any finite x, and accurate in float32 even when the MI is
  small: x is centred over the batch (p(x|T) is unchanged when every image's
  tr(x . T) moves by one constant); u = log(B p(x|T)) = s - log mean_x e^s and
  w = log(B p(x)) = logsumexp_T(log p(T) + u) hold no log B; and with
  d = log(p(x|T) / p(x)) = u - w, MI = sum_x p(x) sum_T p(T) psi(d), where
  psi(d) = d e^d - e^d + 1 >= 0 (the added terms sum to 0, since
  sum_T p(T) e^d = 1), so no large terms cancel.

  Args:
    x: [B, n, n, C] feature maps after ReLU.
    beta, tau: the templates' parameters, Python floats (paper: 4 and 0.5 / n).
  """
  if x.ndim != 4 or x.shape[1] != x.shape[2]:
    raise UserError(f"mutual_information_loss: the paper's templates need NHWC maps with "
                    f"H == W, got shape {x.shape}: crop to a square map or use "
                    f"formulation='release'")
  b, n, _, c = x.shape
  bank, log_prior = templates.bank_and_log_prior_np(n, beta, tau)
  x = x.reshape(b, n * n, c).astype(jnp.float32)
  x = x - jnp.mean(x, axis=0, keepdims=True)
  scores = jnp.einsum("bpc,kp->bck", x, bank.reshape(n * n + 1, n * n),
                      precision=jax.lax.Precision.HIGHEST)  # tr(x . T): [B, C, K]
  top = jax.lax.stop_gradient(jnp.max(scores, axis=0, keepdims=True))
  u = scores - top - jnp.log(jnp.mean(jnp.exp(scores - top), axis=0, keepdims=True))
  w = jax.nn.logsumexp(u + log_prior, axis=-1, keepdims=True)  # [B, C, 1]
  per_image = jnp.sum(np.exp(log_prior) * _psi(u - w), axis=-1)  # [B, C]
  mi = jnp.sum(jnp.exp(w[..., 0]) * per_image, axis=0) / b
  return -mi


def _psi(d):
  """d e^d - e^d + 1, with its series d^2/2 + d^3/3 + d^4/8 + d^5/30 + d^6/144 near 0."""
  small = jnp.clip(d, -0.1, 0.1)
  series = small * small * (1 / 2 + small * (1 / 3 + small * (1 / 8 + small * (
      1 / 30 + small / 144))))
  direct = d * jnp.exp(d) - jnp.expm1(d)
  return jnp.where(jnp.abs(d) < 0.1, series, direct)


def positive_mask(positives: jax.Array, num_filters: int,
                  filter_class: jax.Array | None = None) -> jax.Array:
  """Which images are positive for which filter, [B, C] bool.

  Args:
    positives: [B] (single category: the release's labels +1 / -1, or 0 / 1)
      or [B, K] multi-hot (multi-category); > 0 means positive.
    num_filters: C.
    filter_class: [C] int, each filter's category (`update_filter_assignment`);
      -1, or None for all, means "positive for any category" (the release's
      rule before the first assignment). Ignored for [B] positives.
  """
  pos = jnp.asarray(positives) > 0
  if pos.ndim == 1:
    return jnp.broadcast_to(pos[:, None], (pos.shape[0], num_filters))
  any_pos = jnp.any(pos, axis=1, keepdims=True)
  if filter_class is None:
    return jnp.broadcast_to(any_pos, (pos.shape[0], num_filters))
  filter_class = jnp.asarray(filter_class)
  return jnp.where(filter_class >= 0, pos[:, jnp.maximum(filter_class, 0)], any_pos)


def release_class_weights(num_classes: int, density: jax.Array | None = None,
                          ) -> tuple[jax.Array, jax.Array]:
  """The release's (w_pos, w_neg) per category, each [K] (our_vl_simplenn.m).

  One category: 1 and 1. K > 10 categories: 0.5 K and 0.5 / (1 - 1 / K).
  Otherwise 0.5 / density and 0.5 / (1 - density), density being each
  category's fraction of positive training images (our_cnn_train.m); without
  `density` it is taken as 1 / K.
  """
  if num_classes == 1:
    return jnp.ones((1,), jnp.float32), jnp.ones((1,), jnp.float32)
  if num_classes > 10 or density is None:
    density = jnp.full((num_classes,), 1.0 / num_classes, jnp.float32)
  density = jnp.asarray(density, jnp.float32)
  return 0.5 / density, 0.5 / (1.0 - density)


def _mean_hw(v):
  return jnp.mean(v, axis=(1, 2))


def _normalized_strength(logits, factor, selected):
  """exp(logits) factor / mean over the selected images of the same, [B, C].

  The release's `strength ./ mean(strength, 2)` with strength = exp(logits)
  factor; shifting the logits by their maximum over the selected images leaves
  the ratio unchanged and keeps exp from overflowing (the release patched its
  infs and NaNs instead). Zero where not selected or the mean is 0.
  """
  shifted = jnp.where(selected, logits, -jnp.inf)
  top = jnp.max(shifted, axis=0, keepdims=True)
  weight = jnp.exp(shifted - jnp.where(jnp.isfinite(top), top, 0.0)) * factor
  weight = jnp.where(selected, weight, 0.0)
  count = jnp.sum(selected, axis=0, keepdims=True)
  mean = jnp.sum(weight, axis=0, keepdims=True) / jnp.maximum(count, 1)
  return jnp.where(mean != 0, weight / jnp.where(mean != 0, mean, 1.0), 0.0)


def release_gradients(x: jax.Array, beta: jax.Array, positives: jax.Array, w_pos: jax.Array,
                      w_neg: jax.Array, part_filters: jax.Array, epoch: jax.Array | float,
                      mag: float = RELEASE_MAG) -> tuple[jax.Array, jax.Array]:
  """The release's added gradients: (d x [B, H, W, C], d beta [C]) float32.

  our_vl_simplenn.m, backward of `conv_mask`, with s = mean_ij(x . mask) and
  alpha = 0.5, for each part filter c:
  - positive images b: dx -= mask 1e-5 w_pos strength, strength =
    e^{s/alpha} (s - alpha log Z+ + alpha) normalized to mean 1 over the
    filter's positive images and divided by epoch / mag, where
    Z+ = mean_b exp(mean_ij(x . mask') / alpha) and mask' is the mask with
    both the batch and the channel order reversed (the release's
    `mask(:,:,end:-1:1,end:-1:1)`);
  - other images: dx += 1e-5 w_neg strength (uniform over the map), strength =
    e^{-m/alpha} (-m - alpha log Z- + alpha), m = mean_ij x,
    Z- = mean_b exp(-m / alpha), normalized likewise over those images;
  - d beta = -1e4 (target - beta) (`templates.release_beta_grad`).
  These are the release's values for a batch-summed task loss, before its
  solver divides parameter gradients by the batch size.

  Args:
    x: [B, H, W, C] feature maps after ReLU (the masked layer's input).
    beta: [C] the release's per-channel beta.
    positives: [B, C] bool, image b is positive for filter c (`positive_mask`).
    w_pos, w_neg: [C] per-filter class weights (`release_class_weights`).
    part_filters: [C] bool, the filters with a mask and this loss.
    epoch: the 1-based epoch (the release's `iter`).
    mag: the release's `l.mag` (0.1 in all its networks).
  """
  x = x.astype(jnp.float32)
  b = x.shape[0]
  part = jnp.asarray(part_filters, bool)
  pos = jnp.asarray(positives, bool)
  mask = templates.release_mask(x, beta, part)
  strength = _mean_hw(x * mask)  # the release's l.strength: [B, C]
  flipped = _mean_hw(x * mask[::-1, :, :, ::-1])
  log_b = jnp.log(jnp.float32(b))
  alpha = RELEASE_ALPHA
  logz_pos = alpha * (jax.nn.logsumexp(flipped / alpha, axis=0) - log_b)
  mean_x = _mean_hw(x)
  logz_neg = alpha * (jax.nn.logsumexp(-mean_x / alpha, axis=0) - log_b)
  decay = RELEASE_SCALE * mag / jnp.asarray(epoch, jnp.float32)
  pull = _normalized_strength(strength / alpha, strength - logz_pos + alpha, pos & part)
  push = _normalized_strength(-mean_x / alpha, -mean_x - logz_neg + alpha, ~pos & part)
  dx = decay * ((push * w_neg)[:, None, None, :] - mask * (pull * w_pos)[:, None, None, :])
  _, _, sigma = templates.release_centroid(x)
  target = templates.release_beta_target(strength, sigma, pos)
  d_beta = jnp.where(part, templates.release_beta_grad(beta, target), 0.0)
  return dx, d_beta


@jax.custom_vjp
def _release_loss(x, beta, positives, w_pos, w_neg, part_filters, epoch, scale):
  """0, with `release_gradients` (times `scale`) as the gradients of x and beta."""
  del x, beta, positives, w_pos, w_neg, part_filters, epoch, scale
  return jnp.zeros((), jnp.float32)


def _release_loss_fwd(x, beta, positives, w_pos, w_neg, part_filters, epoch, scale):
  residuals = (x, beta, positives, w_pos, w_neg, part_filters, epoch, scale)
  return jnp.zeros((), jnp.float32), residuals


def _release_loss_bwd(residuals, g):
  x, beta, positives, w_pos, w_neg, part_filters, epoch, scale = residuals
  dx, d_beta = release_gradients(x, beta, positives, w_pos, w_neg, part_filters, epoch)
  factor = g * scale
  return ((factor * dx).astype(x.dtype), (factor * d_beta).astype(beta.dtype),
          None, None, None, None, None, None)


_release_loss.defvjp(_release_loss_fwd, _release_loss_bwd)


def filter_loss(x: jax.Array, positives: jax.Array | None, formulation: str = "paper", *,
                filter_class: jax.Array | None = None, part_filters: jax.Array | None = None,
                beta: jax.Array | float | None = None, epoch: jax.Array | float = 1,
                class_density: jax.Array | None = None,
                task_loss_reduction: str = "mean") -> jax.Array:
  """The filter loss of one interpretable conv-layer, a float32 scalar.

  Args:
    x: [B, H, W, C] feature maps after ReLU, before the mask.
    positives: [B] (single category, > 0 positive) or [B, K] multi-hot
      labels; unused (may be None) by "paper".
    formulation: "paper": sum over the part filters of -MI(X; T)
      (`mutual_information_loss`; weight it with the paper's lambda).
      "release": value 0; gradients w.r.t. x and beta are the release's
      (`release_gradients`), already scaled: add it to the task loss with
      weight 1.
    filter_class: [C] int category of each filter, multi-category only
      (`update_filter_assignment`; -1 or None: positive for any category).
    part_filters: [C] bool, the filters that get the loss (default all).
    beta: "paper": the templates' beta (default 4). "release": the learned
      per-channel beta, [C] or scalar (default 2.0, the release's init); its
      gradient is the release's update rule.
    epoch: "release": the 1-based epoch; the added gradient decays as 1 / epoch.
    class_density: "release", K <= 10 categories: each category's fraction of
      positive training images (w_pos = 0.5 / density).
    task_loss_reduction: "release": "mean" if the task loss averages over the
      batch (the added gradients are then divided by B, which gives the
      release's parameter updates: it sums the loss and divides gradients by
      B in its solver), "sum" if it sums.
  """
  if x.ndim != 4:
    raise UserError(f"filter_loss wants NHWC feature maps, got shape {x.shape}")
  c = x.shape[-1]
  part = jnp.ones((c,), bool) if part_filters is None else jnp.asarray(part_filters, bool)
  if formulation == "paper":
    per_filter = mutual_information_loss(x, templates.PAPER_BETA if beta is None else beta)
    return jnp.sum(jnp.where(part, per_filter, 0.0))
  if formulation != "release":
    raise UserError(f"filter_loss: unknown formulation {formulation!r}: use 'paper' or 'release'")
  if positives is None:
    raise UserError("filter_loss: formulation='release' needs the images' labels (positives)")
  if task_loss_reduction not in ("mean", "sum"):
    raise UserError(f"filter_loss: task_loss_reduction must be 'mean' or 'sum', got "
                    f"{task_loss_reduction!r}")
  if isinstance(epoch, (int, float)) and epoch < 1:
    raise UserError(f"filter_loss: epoch is 1-based (the release's `iter`), got {epoch}")
  positives = jnp.asarray(positives)
  pos = positive_mask(positives, c, filter_class)
  num_classes = 1 if positives.ndim == 1 else positives.shape[1]
  w_pos, w_neg = release_class_weights(num_classes, class_density)
  if num_classes == 1 or filter_class is None:  # one group of filters: weights 1
    w_pos, w_neg = jnp.ones((c,), jnp.float32), jnp.ones((c,), jnp.float32)
  else:
    filter_class = jnp.asarray(filter_class)
    grouped = filter_class >= 0
    w_pos = jnp.where(grouped, w_pos[jnp.maximum(filter_class, 0)], 1.0)
    w_neg = jnp.where(grouped, w_neg[jnp.maximum(filter_class, 0)], 1.0)
  beta = templates.RELEASE_BETA_INIT if beta is None else beta
  beta = jnp.broadcast_to(jnp.asarray(beta, jnp.float32), (c,))
  scale = 1.0 / x.shape[0] if task_loss_reduction == "mean" else 1.0
  return _release_loss(x, beta, pos, w_pos, w_neg, part, jnp.asarray(epoch, jnp.float32),
                       jnp.float32(scale))


def update_filter_assignment(ema: jax.Array, activations_max: jax.Array, labels: jax.Array,
                             momentum: float = ASSIGNMENT_MOMENTUM,
                             ) -> tuple[jax.Array, jax.Array]:
  """One step of the per-filter, per-category EMA of maximum activations.

  our_cnn_train.m (`sliceMag`, after each training batch): for each category k
  with positive images in the batch, m = the mean over those images of each
  filter's maximum activation; the first time (column k all zero) the column
  becomes max(m, 0.1), afterwards momentum * ema + (1 - momentum) * m, where
  filters with m = 0 keep their value (the release indexes that fallback from
  column 1 for every k; here each category's own column). The filter's
  category is the argmax over k (the release's `max(sliceM, [], 2)`), used for
  the next batch's loss; -1 while a filter's row is all zero (the release's
  first batch, where every filter takes images of any category as positive).

  Args:
    ema: [C, K] float32 (zeros before the first update).
    activations_max: [B, C] each image's maximum activation per filter.
    labels: [B, K] multi-hot (> 0 positive), or [B] for one category.
    momentum: the EMA's decay (the release: 0.9).

  Returns:
    (new ema [C, K], filter_class [C] int32).
  """
  labels = jnp.asarray(labels)
  pos = (labels > 0).reshape(labels.shape[0], -1).astype(jnp.float32)  # [B, K]
  amax = jnp.asarray(activations_max, jnp.float32)
  count = jnp.sum(pos, axis=0)  # [K]
  mean = jnp.einsum("bc,bk->ck", amax, pos, precision=jax.lax.Precision.HIGHEST)
  mean = mean / jnp.maximum(count, 1.0)  # [C, K]
  first = jnp.maximum(mean, ASSIGNMENT_FLOOR)
  later = momentum * ema + (1.0 - momentum) * jnp.where(mean == 0, ema, mean)
  new = jnp.where(jnp.sum(ema, axis=0) == 0, first, later)
  new = jnp.where(count > 0, new, ema)
  filter_class = jnp.where(jnp.any(new != 0, axis=1), jnp.argmax(new, axis=1), -1)
  return new, filter_class.astype(jnp.int32)
