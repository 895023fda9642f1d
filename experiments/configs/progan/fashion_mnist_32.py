"""ProGAN on Fashion-MNIST, growing 4x4 -> 32x32 (28x28 images padded to 32).

Paper settings (networks, loss, Adam, EMA, schedule of 600k + 600k images per
resolution) at 32x32, for an accelerator:

  python -m experiments.train --config experiments/configs/progan/fashion_mnist_32.py --workdir runs/fmnist32

`:runlocal` keeps everything but shrinks widths and the schedule so all seven
phases (4 stable, 8 fade/stable, 16 fade/stable, 32 fade/stable) run on a
2-core CPU in minutes:

  python -m experiments.train --config experiments/configs/progan/fashion_mnist_32.py:runlocal --workdir runs/fmnist32_local

`:test` runs in seconds (the contract suite). Variants and key=value overrides
combine: `:runlocal,model.dtype=bfloat16` (experiments/configs/variants.py).
"""
from experiments.configs import variants
from experiments.configs.progan.common import VARIANTS, base_config


def get_config(arg: str = ""):
  c = base_config()
  c.model.resolution = 32
  c.model.num_channels = 1
  c.schedule.total_kimg = 6000.0
  return variants.apply(c, arg, VARIANTS)
