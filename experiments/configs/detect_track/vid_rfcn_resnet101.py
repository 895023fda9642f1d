"""R-FCN (ResNet-101) on ImageNet VID: the detector stage of D&T.

feichtenhofer/Detect-Track's run for a GPU/TPU machine: frames at 600 px (long side <=
1000), horizontal flips, one frame pair (t, t + 1) a pass, solver_120k160k_lr1_3.prototxt:
SGD lr 1e-3, x0.1 at 120k, 160k iterations of 2 passes; conv1, res2 and BatchNorm frozen,
ImageNet weights loaded into the backbone (`--config.model.backbone_init=resnet101.pth
--config.model.stride_in_1x1=False` for torchvision's files; D&T's MSRA Caffe ResNets stride
in the 1x1 convs). Official mAP (README): 74.1. Every other pass reads two
DET train images of the 30 classes (up to 2000 per class, `imdb_sample_cls.m`), as the
official detector stage alternates its VID and DET lists; its VID pairs start at 30 evenly
spaced frames of each video (`imdb_sample_frames.m`).

  python -m experiments.train --config experiments/configs/detect_track/vid_rfcn_resnet101.py \\
      --config.data.path /data/ILSVRC2015 --workdir runs/vid_rfcn_resnet101
"""
from experiments.configs import variants
from experiments.configs.detect_track.common import base_config, test, vid


def get_config(arg: str = ""):
  c = base_config()
  vid(c, 101, "detector")
  return variants.apply(c, arg, {"test": test})
