"""Interpretable VGG-16 on CUB-200-2011 birds (the paper's Sec. 4 setting), for a GPU/TPU machine.

The release's `cub200` setting (zqs1022/interpretableCNN network_init.m, vgg_vd_16.m): every
bird (box crops at 224 x 224) as one category against negatives (here square CamVid crops
without people), VGG-16 with the masked conv6 and fc7, logistic loss, batch 32, SGD
momentum 0.9, weight decay 5e-4, lr logspace(-4, -5) over 10 epochs then 1e-5, 50 epochs;
the ordinary VGG-16 trained next to it on the same batches; location instability over the
15 annotated parts (top 100 images per filter):

  python -m experiments.train --config experiments/configs/interpretable_cnn/cub_vgg16.py \
      --config.data.path /data/CUB_200_2011 --workdir runs/cub_vgg16

The release fine-tunes ImageNet's VGG-16, which is not loaded here: as is, the networks
start from the release's N(0, 0.01) initialisation at the release's rates, which suits
fine-tuning only; `:scratch` trains from scratch (He initialisation, unit-variance inputs,
100x the rates, as ccp_vgg16).
`:test` is the contract suite's tiny run (the same as ccp_vgg16's: the trainer does not
depend on the source; the CUB builder is tested in tests/data).
"""
from experiments.configs import variants
from experiments.configs.interpretable_cnn.common import VARIANTS, base_config, scratch


def get_config(arg: str = ""):
  c = base_config()
  c.data.source = "cub"
  c.data.category = ""             # every bird: the release's cub200.
  return variants.apply(c, arg, {**VARIANTS, "runlocal": runlocal})


def runlocal(c) -> None:
  """CPU-sized, as ccp_vgg16:runlocal: from scratch, a VGG-16 a quarter as wide at 96 px,
  15 epochs."""
  scratch(c)
  c.model.width = 16
  c.data.image_size = 96
  c.epochs = 15
  c.optimizer.lr_decay_epochs = 15
  c.log_every_steps = 10
  c.checkpoint_every_steps = 200
  c.eval.batch_size = 50
