"""FashionGAN on the release's DeepFashion files, as the paper trains it, for an accelerator.

The release's data (zhusz/ICCV17-fashionGAN download.sh; G2.h5 after signing DeepFashion's
agreement) in one folder: benchmark/ind.mat, benchmark/language_original.mat,
supervision_signals/G1.h5, G2.h5 (see readingnotes_jax/fashiongan/data.py). 128 x 128, batch
4, 25k iterations of G_shape, G_image alike; the design coder as language/train_te.py
(batch 1, SGD 0.01 then 0.001). The release's G_image is the encoder-decoder; the demo's
U-Net: `model.image_generator=unet`.

  python -m experiments.train --config experiments/configs/fashiongan/deepfashion_fashiongan.py \\
      --config.data.path=/data/fashiongan_release --workdir runs/deepfashion_fashiongan
"""
from experiments.configs import variants
from experiments.configs.fashiongan.common import VARIANTS, base_config


def get_config(arg: str = ""):
  c = base_config()
  c.data.source = "deepfashion"
  return variants.apply(c, arg, VARIANTS)
