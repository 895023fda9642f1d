"""PSPNet-50 on ADE20K (SceneParsing, 150 classes): semseg `config/ade20k/ade20k_pspnet50.yaml`.

Crop 473, batch 16, 100 epochs of the 20,210 training images (126,300 steps),
poly lr 0.01; test with base size 512, crop 473, flips; `:ms` adds the six
scales. semseg reports 41.89 / 42.84 mIoU (single / multi-scale, val) with an
ImageNet-pretrained backbone, its `initmodel/resnet50_v2.pth` (deep stem; semseg's
README links the Google Drive folder holding it), which `model.backbone_init` loads
before the first step. Without it the backbone starts from random weights, a run
semseg never made: expect a lower mIoU than those numbers. For a TPU or GPU machine:

  python -m experiments.train --config experiments/configs/pspnet/ade20k_pspnet50.py \
      --config.data.path /data/ADEChallengeData2016 \
      --config.model.backbone_init /path/to/initmodel/resnet50_v2.pth \
      --workdir runs/ade20k_pspnet50
  python -m experiments.evaluate --config experiments/configs/pspnet/ade20k_pspnet50.py:ms \
      --config.data.path /data/ADEChallengeData2016 --workdir runs/ade20k_pspnet50
  python -m experiments.summary --config experiments/configs/pspnet/ade20k_pspnet50.py
"""
from experiments.configs import variants
from experiments.configs.pspnet.common import VARIANTS, base_config


def get_config(arg: str = ""):
  c = base_config()
  c.data.source = "ade20k"
  c.model.layers = 50
  c.epochs = 100
  c.data.crop_size = 473
  c.eval.base_size = 512
  return variants.apply(c, arg, VARIANTS)
