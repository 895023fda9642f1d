"""PSPNet-101 on ADE20K (150 classes): semseg `config/ade20k/ade20k_pspnet101.yaml`.

Crop 473, batch 16, 100 epochs, poly lr 0.01; test base size 512, crop 473,
flips; `:ms` for the six scales. semseg reports 43.10 / 44.15 mIoU (val) from
its ImageNet-pretrained `initmodel/resnet101_v2.pth`, which `model.backbone_init` loads
before the first step. Without it the backbone starts from random weights, a run
semseg never made: expect a lower mIoU than those numbers.

  python -m experiments.train --config experiments/configs/pspnet/ade20k_pspnet101.py \
      --config.data.path /data/ADEChallengeData2016 \
      --config.model.backbone_init /path/to/initmodel/resnet101_v2.pth \
      --workdir runs/ade20k_pspnet101
"""
from experiments.configs import variants
from experiments.configs.pspnet.common import VARIANTS, base_config


def get_config(arg: str = ""):
  c = base_config()
  c.data.source = "ade20k"
  c.model.layers = 101
  c.epochs = 100
  c.data.crop_size = 473
  c.eval.base_size = 512
  return variants.apply(c, arg, VARIANTS)
