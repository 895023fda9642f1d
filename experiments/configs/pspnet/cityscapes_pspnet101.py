"""PSPNet-101 on Cityscapes (19 classes, fine): semseg `config/cityscapes/cityscapes_pspnet101.yaml`.

Crop 713, batch 16, 200 epochs of the 2,975 fine training images, poly lr
0.01; tests on val (500) with base size 2048 (full 2048x1024 images), crop 713,
flips; `:ms` for the six scales. semseg reports 78.63 / 79.29 mIoU (val) from
its ImageNet-pretrained `initmodel/resnet101_v2.pth`, which `model.backbone_init` loads
before the first step. Without it the backbone starts from random weights, a run
semseg never made: expect a lower mIoU than those numbers.

  python -m experiments.train --config experiments/configs/pspnet/cityscapes_pspnet101.py \
      --config.data.path /data/cityscapes \
      --config.model.backbone_init /path/to/initmodel/resnet101_v2.pth \
      --workdir runs/cityscapes_pspnet101
"""
from experiments.configs import variants
from experiments.configs.pspnet.common import VARIANTS, base_config


def get_config(arg: str = ""):
  c = base_config()
  c.data.source = "cityscapes"
  c.model.layers = 101
  c.epochs = 200
  c.data.crop_size = 713
  c.eval.base_size = 2048
  c.eval.batch_size = 4
  return variants.apply(c, arg, VARIANTS)
