"""ProGAN on Fashion-MNIST, growing 4x4 -> 32x32 (28x28 images padded to 32).

Paper settings (networks, loss, Adam, EMA, schedule of 600k + 600k images per
resolution) at 32x32, for an accelerator:

  python -m experiments.train --config experiments/configs/progan/fashion_mnist_32.py --workdir runs/fmnist32

`:runlocal` keeps everything but shrinks widths and the schedule so all seven
phases (4 stable, 8 fade/stable, 16 fade/stable, 32 fade/stable) run on a
2-core CPU in minutes:

  python -m experiments.train --config experiments/configs/progan/fashion_mnist_32.py:runlocal --workdir runs/fmnist32_local
"""
from experiments.configs.progan.common import base_config


def get_config(arg: str = ""):
  c = base_config()
  c.model.resolution = 32
  c.model.num_channels = 1
  c.schedule.total_kimg = 6000.0
  if arg == "runlocal":
    c.model.latent_size = 64      # nf(0), as the paper's latent is nf(0) = 512.
    c.model.fmap_base = 256       # widths 64, 64, 32, 16 at 4, 8, 16, 32 px.
    c.model.fmap_max = 64
    c.schedule.training_kimg = 8.0
    c.schedule.transition_kimg = 8.0
    c.schedule.total_kimg = 64.0    # 8k images per phase, 16k in the last (stable 32 px).
    c.schedule.minibatch_base = 32
    c.schedule.minibatch = ""
    # The paper's EMA beta (0.999, a ~700-step half-life) would average over a third of
    # this 2,000-step run; 0.99 keeps the EMA's horizon (~70 steps) short of a phase.
    c.g_ema_beta = 0.99
    c.log_every_steps = 20
    c.checkpoint_every_steps = 200
    c.eval.num_images = 1024
    c.eval.ms_ssim_pairs = 500
  elif arg:
    raise ValueError(f"unknown config variant {arg!r}: use '' or 'runlocal'")
  return c
