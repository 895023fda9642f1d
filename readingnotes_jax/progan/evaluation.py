"""ProGAN's metrics on a generator: SWD against real images and MS-SSIM between generated pairs.

Protocols of tkarras/progressive_growing_of_gans `metrics/sliced_wasserstein.py`
and `metrics/ms_ssim.py` (see readingnotes_jax.metrics); sizes from
`config.eval` (official: 16,384 images for SWD, 10,000 pairs for MS-SSIM).
"""
from collections.abc import Callable
from typing import Any

import numpy as np

from readingnotes_jax.metrics import ms_ssim, swd


class Evaluator:
  """Holds the real set's SWD descriptors (computed once) and scores generators."""

  def __init__(self, config, data):
    self.config = config
    self.num_images = config.eval.num_images
    self.real = swd.swd_descriptors(data.eval_reals(self.num_images), seed=config.seed)

  def _generate(self, generate: Callable, count: int, seed: int) -> np.ndarray:
    """`count` images from `generate(latents, labels)` in batches of `config.eval.batch_size`."""
    m = self.config.model
    rng = np.random.default_rng([self.config.seed, seed])
    out = []
    for start in range(0, count, self.config.eval.batch_size):
      n = min(self.config.eval.batch_size, count - start)
      latents = rng.standard_normal((n, m.latent_size)).astype(np.float32)
      labels = None
      if m.label_size:
        labels = np.eye(m.label_size, dtype=np.float32)[rng.integers(0, m.label_size, n)]
      out.append(np.asarray(generate(latents, labels)))
    return np.concatenate(out)

  def run(self, generate: Callable) -> dict[str, Any]:
    """`{"swd", "swd_levels", "ms_ssim"}` of `generate(latents, labels) -> images in [-1, 1]`."""
    fakes = self._generate(generate, self.num_images, seed=3)
    scores = swd.swd_from_descriptors(self.real, swd.swd_descriptors(fakes, seed=self.config.seed + 1),
                                      seed=self.config.seed + 2)
    pairs = self._generate(generate, 2 * self.config.eval.ms_ssim_pairs, seed=4)
    scores["ms_ssim"] = ms_ssim.ms_ssim_variation(pairs)
    return scores
