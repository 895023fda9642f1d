"""FashionGAN on Clothing Co-Parsing (the stand-in for DeepFashion here: labels mapped to the
7 classes, a sentence per photo from its garments and their measured colours; photos
0801-0900 held out), both stages and the design coder.

  python -m experiments.train --config experiments/configs/fashiongan/ccp_fashiongan.py \\
      --workdir runs/ccp_fashiongan
  python -m experiments.evaluate --config experiments/configs/fashiongan/ccp_fashiongan.py \\
      --workdir runs/ccp_fashiongan [--config.data.eval_dir=/other/ccp_like_folder]
  python -m readingnotes_jax.fashiongan.edit --workdir runs/ccp_fashiongan --photo P.jpg \\
      --labels P.mat --text "a woman in a red dress" --out out.png

`:runlocal` trains all three on a 2-core CPU within 30 minutes (see `runlocal`).
"""
from experiments.configs import variants
from experiments.configs.fashiongan.common import VARIANTS, base_config


def get_config(arg: str = ""):
  c = base_config()
  c.data.source = "ccp"
  c.model.compositional = True
  c.model.compare_plain = True
  return variants.apply(c, arg, {**VARIANTS, "runlocal": runlocal})


def runlocal(c) -> None:
  """64 x 64, networks at a quarter width (ngf = ndf = 16), the demo's U-Net G_image with the
  patch D (the release's encoder-decoder costs 5.5x as much per step here: its five 3 x 3
  convolutions at 32 x 32), batch 16: the coder 3000 steps of 32 sentences (SGD 0.1, 0.01 from
  step 2500), then 800 steps of G_shape and 800 of G_image (compositional and plain side by
  side); everything else as the release."""
  c.data.image_size = 64
  c.model.features = 16
  c.model.image_generator = "unet"
  c.batch_size = 16
  c.coder.batch_size = 32
  c.coder.learning_rate = 0.1
  c.coder.decay_step = 2500
  c.steps.design_coding = 3000
  c.steps.shape = 800
  c.steps.image = 800
  c.log_every_steps = 20
  c.checkpoint_every_steps = 200
