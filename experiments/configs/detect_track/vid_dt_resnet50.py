"""D&T (ResNet-50) on ImageNet VID, from the R-FCN stage.

feichtenhofer/Detect-Track's run for a GPU/TPU machine: frames at 600 px (long side <=
1000), horizontal flips, one frame pair (t, t + 1) a pass, solver_160k240k_lr1_4.prototxt:
SGD lr 1e-4, x0.1 at 160k, 240k iterations of 4 passes, starting from the detector's weights
(`init_from`); conv1, res2 and BatchNorm frozen, the detector run's model settings (the same
model.stride_in_1x1). Official mAP (README): 76.5. This stage reads VID pairs only:
the official D&T script keeps its DET list too, but how its two-frame net takes a single
DET image is in the Caffe data path, not in the MATLAB code read here.

  python -m experiments.train --config experiments/configs/detect_track/vid_dt_resnet50.py \\
      --config.data.path /data/ILSVRC2015 \\
      --config.init_from=runs/vid_rfcn_resnet50 --workdir runs/vid_dt_resnet50
"""
from experiments.configs import variants
from experiments.configs.detect_track.common import base_config, test, vid


def get_config(arg: str = ""):
  c = base_config()
  vid(c, 50, "dt")
  return variants.apply(c, arg, {"test": test})
