"""FID, KID and Inception Score from InceptionV3 features, for ProGAN and FashionGAN.

- `frechet_distance`: Heusel et al. 2017, as mseitzer/pytorch-fid
  `src/pytorch_fid/fid_score.py` `calculate_frechet_distance`: float64,
  ||mu1 - mu2||^2 + tr(S1) + tr(S2) - 2 tr(sqrtm(S1 S2)); when the square root of
  a singular product is not finite, eps * I is added to both covariances; a
  complex root is accepted when its diagonal's imaginary part is within 1e-3
  of 0 (its real part is used).
- `kernel_inception_distance`: Binkowski et al. 2018, as torch-fidelity
  `torch_fidelity/metric_kid.py`: the unbiased MMD^2 with the kernel
  k(x, y) = (x.y / d + 1)^3 over random subsets (drawn without replacement,
  from `np.random.RandomState(seed)`, set 1 then set 2 per subset), mean and std.
- `inception_score`: Salimans et al. 2016, as openai/improved-gan
  `inception_score/model.py`: softmax of the logits in consecutive splits,
  exp(mean_x KL(p(y|x) || p(y))) per split, mean and std over splits (no shuffle).

`generative_scores` runs an extractor (`inception.inception_extractor`) over two
image sets in fixed-size batches and returns all five numbers. For periodic
evaluation against a fixed real set, keep `extract_features(real, ...)` and call
`scores_from_features`.
"""
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import numpy as np
import scipy.linalg
import scipy.special

from readingnotes_jax.errors import UserError
from readingnotes_jax.metrics.images import iterate_batches

Extractor = Callable[[np.ndarray], tuple[Any, Any]]


def feature_statistics(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """(mean, covariance) of [N, D] features in float64 (covariance with N - 1, as np.cov)."""
  features = np.asarray(features, np.float64)
  if features.ndim != 2 or features.shape[0] < 2:
    raise UserError(f"feature statistics need [N, D] features with N >= 2; got shape "
                    f"{features.shape}: evaluate on more images")
  return features.mean(axis=0), np.cov(features, rowvar=False)


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray,
                     eps: float = 1e-6) -> float:
  """Frechet distance of N(mu1, sigma1) and N(mu2, sigma2) (pytorch-fid's computation)."""
  mu1, mu2 = np.atleast_1d(np.asarray(mu1, np.float64)), np.atleast_1d(np.asarray(mu2, np.float64))
  sigma1 = np.atleast_2d(np.asarray(sigma1, np.float64))
  sigma2 = np.atleast_2d(np.asarray(sigma2, np.float64))
  d = mu1.shape[0]
  if mu1.shape != mu2.shape or sigma1.shape != (d, d) or sigma2.shape != (d, d):
    raise UserError(f"frechet_distance wants means [D] and covariances [D, D] of one D; got "
                    f"{mu1.shape}, {sigma1.shape}, {mu2.shape}, {sigma2.shape}")
  diff = mu1 - mu2
  covmean = scipy.linalg.sqrtm(sigma1 @ sigma2)
  if not np.isfinite(covmean).all():
    offset = np.eye(d) * eps
    covmean = scipy.linalg.sqrtm((sigma1 + offset) @ (sigma2 + offset))
  if np.iscomplexobj(covmean):
    if not np.allclose(np.diagonal(covmean).imag, 0, atol=1e-3):
      raise UserError(f"FID: sqrtm(sigma1 sigma2) has an imaginary component of "
                      f"{np.max(np.abs(covmean.imag)):.3g}: the covariances are degenerate, "
                      f"use more images than feature dimensions")
    covmean = covmean.real
  return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2 * np.trace(covmean))


def polynomial_kernel(x: np.ndarray, y: np.ndarray) -> np.ndarray:
  """[N, M] kernel (x.y / d + 1)^3 of [N, d] and [M, d] features (KID's kernel)."""
  return (x @ y.T / x.shape[1] + 1.0) ** 3


def mmd2_unbiased(x: np.ndarray, y: np.ndarray) -> float:
  """Unbiased MMD^2 of two [m, d] samples with `polynomial_kernel`.

  sum_{i != j} k(x_i, x_j) / (m (m - 1)) + the same for y - 2 sum_{i, j} k(x_i, y_j) / m^2.
  """
  m = x.shape[0]
  k_xx, k_yy, k_xy = polynomial_kernel(x, x), polynomial_kernel(y, y), polynomial_kernel(x, y)
  within = (k_xx.sum() - np.trace(k_xx) + k_yy.sum() - np.trace(k_yy)) / (m * (m - 1))
  return float(within - 2.0 * k_xy.sum() / (m * m))


def kernel_inception_distance(features1: np.ndarray, features2: np.ndarray,
                              num_subsets: int = 100, subset_size: int = 1000, *,
                              seed: int = 2020) -> tuple[float, float]:
  """(mean, std) of the unbiased MMD^2 over `num_subsets` random subset pairs (torch-fidelity)."""
  f1, f2 = np.asarray(features1, np.float64), np.asarray(features2, np.float64)
  if f1.ndim != 2 or f2.ndim != 2 or f1.shape[1] != f2.shape[1]:
    raise UserError(f"KID wants [N, D] features of one D; got {f1.shape} and {f2.shape}")
  if not 2 <= subset_size <= min(len(f1), len(f2)) or num_subsets < 1:
    raise UserError(f"KID subset_size must be in [2, {min(len(f1), len(f2))}] (the smaller "
                    f"set) and num_subsets >= 1; got {subset_size}, {num_subsets}: lower "
                    f"subset_size or use more images")
  rng = np.random.RandomState(seed)
  values = []
  for _ in range(num_subsets):
    x = f1[rng.choice(len(f1), subset_size, replace=False)]
    y = f2[rng.choice(len(f2), subset_size, replace=False)]
    values.append(mmd2_unbiased(x, y))
  return float(np.mean(values)), float(np.std(values))


def inception_score(logits: np.ndarray, splits: int = 10) -> tuple[float, float]:
  """(mean, std) over `splits` consecutive parts of exp(mean KL(p(y|x) || p(y))).

  p(y|x) = softmax(logits) in float64; p(y) is the mean of p(y|x) over the part;
  part k is rows [k N // splits, (k + 1) N // splits). Logits of -inf give p = 0,
  so log-probability tables can be passed as they are.
  """
  logits = np.asarray(logits, np.float64)
  if logits.ndim != 2 or not 1 <= splits <= logits.shape[0]:
    raise UserError(f"inception_score wants [N, classes] logits and 1 <= splits <= N; got "
                    f"shape {logits.shape}, splits={splits}")
  probs = scipy.special.softmax(logits, axis=1)
  n = logits.shape[0]
  scores = []
  for k in range(splits):
    part = probs[k * n // splits:(k + 1) * n // splits]
    marginal = part.mean(axis=0, keepdims=True)
    kl = scipy.special.rel_entr(part, marginal).sum(axis=1).mean()
    scores.append(np.exp(kl))
  return float(np.mean(scores)), float(np.std(scores))


def _as_rgb(images: np.ndarray) -> np.ndarray:
  """NHWC float32 in [-1, 1] with 3 channels: uint8 mapped by x / 127.5 - 1, gray repeated."""
  images = np.asarray(images)
  if images.ndim != 4 or images.shape[-1] not in (1, 3):
    raise UserError(f"generative metrics want NHWC images with 1 or 3 channels; got shape "
                    f"{images.shape}")
  if images.dtype == np.uint8:
    images = images.astype(np.float32) / np.float32(127.5) - 1
  elif not np.issubdtype(images.dtype, np.floating):
    raise UserError(f"generative metrics take float images in [-1, 1] or uint8; got dtype "
                    f"{images.dtype}")
  images = images.astype(np.float32)
  return np.repeat(images, 3, axis=-1) if images.shape[-1] == 1 else images


def fixed_size_batches(images: np.ndarray | Iterable[np.ndarray],
                       batch_size: int) -> Iterator[tuple[np.ndarray, int]]:
  """(batch of exactly `batch_size` RGB images, number of real ones): the last zero-padded."""
  if batch_size < 1:
    raise UserError(f"batch_size must be >= 1; got {batch_size}")
  pending, count = [], 0
  for chunk in iterate_batches(images, batch_size):
    chunk = _as_rgb(chunk)
    if pending and chunk.shape[1:] != pending[0].shape[1:]:
      raise UserError(f"all images of a set need one size; got {pending[0].shape[1:]} and "
                      f"{chunk.shape[1:]}: resize them first")
    pending.append(chunk)
    count += len(chunk)
    while count >= batch_size:
      joined = np.concatenate(pending)
      yield joined[:batch_size], batch_size
      pending, count = [joined[batch_size:]], count - batch_size
  if count:
    joined = np.concatenate(pending)
    padding = np.zeros((batch_size - count,) + joined.shape[1:], np.float32)
    yield np.concatenate([joined, padding]), count


def extract_features(images: np.ndarray | Iterable[np.ndarray], extractor: Extractor,
                     batch_size: int) -> tuple[np.ndarray, np.ndarray]:
  """(features [N, D], logits [N, K]) as float64 from `extractor` over fixed-size batches.

  `images`: NHWC float in [-1, 1] (or uint8), 1 or 3 channels, one array or an
  iterable of batches; every batch handed to `extractor` has `batch_size` images
  (the last one zero-padded, its padding dropped), so a jitted extractor compiles once.
  """
  features, logits = [], []
  for batch, count in fixed_size_batches(images, batch_size):
    batch_features, batch_logits = extractor(batch)
    features.append(np.asarray(batch_features, np.float64)[:count])
    logits.append(np.asarray(batch_logits, np.float64)[:count])
  if not features:
    raise UserError("generative metrics got an empty image set: give at least 2 images")
  return np.concatenate(features), np.concatenate(logits)


def scores_from_features(real_features: np.ndarray, fake_features: np.ndarray,
                         fake_logits: np.ndarray, *, kid_subsets: int = 100,
                         kid_subset_size: int = 1000, is_splits: int = 10,
                         seed: int = 2020) -> dict[str, float]:
  """{"fid", "kid", "kid_std", "is", "is_std"}; the KID subset size and IS splits shrink to fit."""
  fid = frechet_distance(*feature_statistics(real_features), *feature_statistics(fake_features))
  subset_size = min(kid_subset_size, len(real_features), len(fake_features))
  kid, kid_std = kernel_inception_distance(real_features, fake_features, kid_subsets,
                                           subset_size, seed=seed)
  score, score_std = inception_score(fake_logits, min(is_splits, len(fake_logits)))
  return {"fid": fid, "kid": kid, "kid_std": kid_std, "is": score, "is_std": score_std}


def generative_scores(real_images: np.ndarray | Iterable[np.ndarray],
                      fake_images: np.ndarray | Iterable[np.ndarray], extractor: Extractor,
                      batch_size: int = 50, **kwargs) -> dict[str, float]:
  """FID, KID (mean, std) and IS (of the fakes; mean, std) of two image sets.

  Args:
    real_images, fake_images: NHWC float in [-1, 1] (or uint8), any size, 1 or 3
      channels (gray is repeated to RGB); arrays or iterables of batches.
    extractor: batch [B, H, W, 3] in [-1, 1] -> (features [B, D], logits [B, K]),
      e.g. `inception.inception_extractor(*inception.load_fid_inception(path))`.
    batch_size: images per extractor call (fixed; the last batch is padded).
    **kwargs: kid_subsets, kid_subset_size, is_splits, seed of `scores_from_features`.

  Returns:
    {"fid", "kid", "kid_std", "is", "is_std"} as floats.
  """
  real_features, _ = extract_features(real_images, extractor, batch_size)
  fake_features, fake_logits = extract_features(fake_images, extractor, batch_size)
  return scores_from_features(real_features, fake_features, fake_logits, **kwargs)
