"""PSPNet-101 on PASCAL VOC 2012 (21 classes): semseg `config/voc2012/voc2012_pspnet101.yaml`.

Trains on `train_aug` (VOC train + SBD, 10,582 images), crop 473, batch 16, 50
epochs, poly lr 0.01; tests on VOC val (1,449) with base size 512, crop 473,
flips; `:ms` for the six scales. semseg reports 79.07 / 79.63 mIoU (val) from
its ImageNet-pretrained `initmodel/resnet101_v2.pth`, which `model.backbone_init` loads
before the first step. Without it the backbone starts from random weights, a run
semseg never made: expect a lower mIoU than those numbers.

  python -m experiments.train --config experiments/configs/pspnet/voc2012_pspnet101.py \
      --config.data.path /data/VOCdevkit/VOC2012 \
      --config.data.sbd_path /data/benchmark_RELEASE/dataset \
      --config.model.backbone_init /path/to/initmodel/resnet101_v2.pth \
      --workdir runs/voc2012_pspnet101
"""
from experiments.configs import variants
from experiments.configs.pspnet.common import VARIANTS, base_config


def get_config(arg: str = ""):
  c = base_config()
  c.data.source = "voc2012"
  c.data.use_sbd = True
  c.data.train_split = "train_aug"
  c.model.layers = 101
  c.epochs = 50
  c.data.crop_size = 473
  c.eval.base_size = 512
  return variants.apply(c, arg, VARIANTS)
