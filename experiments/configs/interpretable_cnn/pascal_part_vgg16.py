"""Interpretable VGG-16 on PASCAL-Part animals (the paper's Sec. 4 setting), for a GPU/TPU machine.

The release's single-category setting (zqs1022/interpretableCNN network_init.m,
vgg_vd_16.m): one animal category (`data.category`: bird, cat, cow, dog, horse or sheep;
objects cropped to their masks' boxes at 224 x 224) against negatives (here square CamVid
crops without people), VGG-16 with the masked conv6 and fc7, logistic loss, batch 32, SGD
momentum 0.9, weight decay 5e-4, lr logspace(-4, -5) over 10 epochs then 1e-5, 50 epochs;
`:multiclass` is the release's multi-category setting (the six animals as classes, softmax,
filters assigned to categories by the EMA of their activations, lr logspace(-4, -5, 80) x 6,
80 epochs). The ordinary VGG-16 trains next to it on the same batches:

  python -m experiments.train --config experiments/configs/interpretable_cnn/pascal_part_vgg16.py \
      --config.data.path /data/VOCdevkit/VOC2010 --config.data.category=cat --workdir runs/voc_cat

The release fine-tunes ImageNet's VGG-16, which is not loaded here: as is, the networks
start from the release's N(0, 0.01) initialisation at the release's rates, which suits
fine-tuning only; `:scratch` trains from scratch (He initialisation, unit-variance inputs,
100x the rates, as ccp_vgg16).
`:test` is the contract suite's tiny run (the same as ccp_vgg16's: the trainer does not
depend on the source; the PASCAL-Part builder is tested in tests/data).
"""
from experiments.configs import variants
from experiments.configs.interpretable_cnn.common import VARIANTS, base_config, scratch


def get_config(arg: str = ""):
  c = base_config()
  c.data.source = "pascal_part"
  c.data.category = "bird"
  return variants.apply(c, arg, {**VARIANTS, "multiclass": multiclass, "runlocal": runlocal})


def multiclass(c) -> None:
  """The six animals as classes (network_init.m, labelNum > 1)."""
  c.data.category = ""
  c.model.num_classes = 6
  c.epochs = 80
  c.optimizer.lr_decay_epochs = 80
  c.optimizer.lr_scale = 6.0       # lrMag = 1 x labelNum for vgg-vd-16.


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
