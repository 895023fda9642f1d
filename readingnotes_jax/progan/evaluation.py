"""ProGAN's evaluators, chosen by name in `config.evals`: "swd" against real images,
"ms_ssim" between generated pairs, "fid" (FID, KID and Inception Score).

Protocols of tkarras/progressive_growing_of_gans `metrics/sliced_wasserstein.py`,
`metrics/ms_ssim.py` and `metrics/frechet_inception_distance.py` (see
readingnotes_jax.metrics); sizes from `config.eval` (official: 16,384 images for
SWD, 10,000 pairs for MS-SSIM, 50,000 images for FID).
"""
from collections.abc import Callable
from typing import Any

from absl import logging
import numpy as np

from readingnotes_jax.metrics import fid, inception, ms_ssim, swd


def sample_images(config, generate: Callable, count: int, seed: int) -> np.ndarray:
  """`count` images from `generate(latents, labels)` in batches of `config.eval.batch_size`,
  latents and labels drawn from (config.seed, seed)."""
  m = config.model
  rng = np.random.default_rng([config.seed, seed])
  out = []
  for start in range(0, count, config.eval.batch_size):
    n = min(config.eval.batch_size, count - start)
    latents = rng.standard_normal((n, m.latent_size)).astype(np.float32)
    labels = None
    if m.label_size:
      labels = np.eye(m.label_size, dtype=np.float32)[rng.integers(0, m.label_size, n)]
    out.append(np.asarray(generate(latents, labels)))
  return np.concatenate(out)


class SWD:
  """`swd` (x1e3, mean over levels) and `swd_levels` of `config.eval.num_images` generated
  images against as many real ones (descriptors of the real set computed once)."""

  def __init__(self, config, data, generator: Callable):
    self.config, self.data, self.generator = config, data, generator
    self.real = None

  def run(self, state, *, step: int, position: int, final: bool) -> dict[str, Any]:
    del step, final
    c = self.config
    if self.real is None:
      self.real = swd.swd_descriptors(self.data.eval_reals(c.eval.num_images), seed=c.seed)
    fakes = sample_images(c, self.generator(state, position), c.eval.num_images, seed=3)
    return swd.swd_from_descriptors(self.real, swd.swd_descriptors(fakes, seed=c.seed + 1),
                                    seed=c.seed + 2)


class MSSSIM:
  """`ms_ssim`: mean MS-SSIM of `config.eval.ms_ssim_pairs` pairs of generated images
  (lower is more varied)."""

  def __init__(self, config, data, generator: Callable):
    del data
    self.config, self.generator = config, generator

  def run(self, state, *, step: int, position: int, final: bool) -> dict[str, Any]:
    del step, final
    pairs = sample_images(self.config, self.generator(state, position),
                          2 * self.config.eval.ms_ssim_pairs, seed=4)
    return {"ms_ssim": ms_ssim.ms_ssim_variation(pairs)}


class FID:
  """`fid`, `kid`, `kid_std`, `is`, `is_std` of `config.eval.fid_images` generated images
  against as many real ones, with the standard FID Inception weights named by
  `config.fid_weights` or $READINGNOTES_FID_WEIGHTS (pytorch-fid's .pth or its .npz).
  Without weights it says so once in the log and returns nothing (SWD goes on)."""

  def __init__(self, config, data, generator: Callable):
    self.config, self.data, self.generator = config, data, generator
    self.path = inception.fid_weights_path(config)
    self.extractor, self.real = None, None
    if self.path is None:
      logging.warning("FID skipped: no Inception weights (set config.fid_weights or %s to "
                      "pytorch-fid's %s); SWD and MS-SSIM are reported", inception.WEIGHTS_ENV,
                      inception.WEIGHTS_FILE)

  def run(self, state, *, step: int, position: int, final: bool) -> dict[str, Any]:
    del step, final
    if self.path is None:
      return {}
    c = self.config
    if self.extractor is None:
      self.extractor = inception.inception_extractor(*inception.load_fid_inception(self.path))
      self.real, _ = fid.extract_features(self.data.eval_reals(c.eval.fid_images),
                                          self.extractor, c.eval.fid_batch_size)
    fakes = sample_images(c, self.generator(state, position), c.eval.fid_images, seed=5)
    features, logits = fid.extract_features(fakes, self.extractor, c.eval.fid_batch_size)
    return fid.scores_from_features(self.real, features, logits)


EVALUATORS = {"swd": SWD, "ms_ssim": MSSSIM, "fid": FID}
