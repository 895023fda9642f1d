"""ProGAN inference from a training workdir: the EMA generator at its last stage."""
from collections.abc import Callable

import numpy as np

from readingnotes_jax.progan import train
from readingnotes_jax.training import runner


def load_generator(workdir: str) -> tuple[Callable[[np.ndarray], np.ndarray], int]:
  """(generate(latents [N, latent_size]) -> images NHWC float32 in [-1, 1], latent_size).

  Uses the latest checkpoint and `config.json` of a workdir written by
  experiments.train; images are at the final resolution (lower stages
  nearest-upsampled, as the official G outputs at lod > 0). Labels of a
  conditional model cycle through the classes.
  """
  config = runner.read_config(workdir, "progan")
  G, _ = train.build_models(config)
  state, meta = runner.restore_latest(workdir, train.abstract_state(config))
  stage = train.build_schedule(config, 1).stage(max(meta["position"] - 1, 0))
  generate = train.make_generate(G, config.model.resolution, chunk=8)
  label_size = config.model.label_size

  def generate_fn(latents):
    labels = None
    if label_size:
      labels = np.eye(label_size, dtype=np.float32)[np.arange(len(latents)) % label_size]
    return generate(state["g_ema"], np.asarray(latents, np.float32), labels, stage)
  return generate_fn, config.model.latent_size
