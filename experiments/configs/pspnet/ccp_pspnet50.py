"""PSPNet-50 on Clothing Co-Parsing (59 labels, photos 0801-0900 held out as `val`): the
segmenter of FashionGAN's edit command and stream processor (`--segmenter WORKDIR`, through
`readingnotes_jax.predictors`), whose 59 labels `ccp_fashion.fashion_labels` maps to
FashionGAN's 7.

No official PSPNet config exists for CCP; this one keeps semseg's recipe (SGD 0.01, poly
0.9, 10x on the new modules, aux 0.4, batch 16, official augmentation) with a crop of 473
and evaluation at base size 832 (the photos' long side), flips, 100 epochs:

  python -m experiments.train --config experiments/configs/pspnet/ccp_pspnet50.py \\
      --config.data.path /data/ccp --workdir runs/ccp_pspnet50

`:runlocal`, for a 2-core CPU, has camvid_pspnet50's `:runlocal` settings on photos
downscaled by 4 (138 x 208): width 32 in bfloat16, 97 x 97 crops, batch 8, 1500 steps,
sliding 97 x 97 windows at base size 208 without flips. It has not been timed or scored
here.
"""
from experiments.configs import variants
from experiments.configs.pspnet import camvid_pspnet50
from experiments.configs.pspnet.common import VARIANTS, base_config


def get_config(arg: str = ""):
  c = base_config()
  c.data.source = "ccp"
  c.model.layers = 50
  c.epochs = 100
  c.data.crop_size = 473
  c.eval.base_size = 832
  c.eval_every_steps = 500
  c.checkpoint_every_steps = 500
  return variants.apply(c, arg, {**VARIANTS, "runlocal": runlocal})


def runlocal(c) -> None:
  """camvid_pspnet50's `:runlocal` on photos downscaled by 4 (138 x 208)."""
  camvid_pspnet50.runlocal(c)
  c.data.image_scale = 1 / 4
  c.eval.base_size = 208
  c.eval.batch_size = 6          # the 2x3 windows of a 138 x 208 image.
