"""ProGAN on CelebA-HQ at 1024x1024, the paper's headline run (Section 6.3, Appendix A.1).

For a TPU or GPU machine. Data: any folder of CelebA-HQ images (an image-folder
build resized to 1024), mirror augmentation on, 600k + 600k images per
resolution, 12M images in total: the TF release's config.py `preset-v2-1gpu`
(minibatch 128 at 4-16 px, 64, 32, 16, 8 at 32-256 px, 4 at 512 and 1024 px;
lr 0.0015 at 1024). The paper's runs (`preset-v1-1gpu`) used minibatch 16 up
to 128 px, then 14, 6, 3 at 256, 512, 1024 px, 800k + 800k images per
resolution (19M images in all), lr 0.001 throughout and minibatch-stddev groups of 16:

  python -m experiments.train --config experiments/configs/progan/celeba_hq_1024.py \
      --config.data.path /data/celeba-hq-1024 --workdir runs/celebahq1024

`:runlocal` and `:test` shrink it like the Fashion-MNIST config's (3 channels kept).
"""
from experiments.configs import variants
from experiments.configs.progan.common import VARIANTS, base_config


def get_config(arg: str = ""):
  c = base_config()
  c.data.source = "image_folder"
  c.data.mirror = True
  c.model.resolution = 1024
  c.model.num_channels = 3
  c.schedule.total_kimg = 12000.0
  c.checkpoint_every_steps = 5000
  c.log_every_steps = 100
  return variants.apply(c, arg, VARIANTS)
