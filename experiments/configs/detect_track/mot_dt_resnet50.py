"""D&T (ResNet-50) on MOTChallenge: trained on PETS09-S2L1, evaluated on TUD-Stadtmitte.

The structure and solvers of the paper's ResNet-50 runs (vid_dt_resnet50.py) with one class,
person, on the MOT15 copies in ../shared/data/mot15:

  READINGNOTES_DATA=../shared/data python -m experiments.train \
      --config experiments/configs/detect_track/mot_dt_resnet50.py --workdir runs/mot_dt

`:runlocal` trains the detector and then D&T on a 2-core CPU (see `runlocal`).
"""
from experiments.configs import variants
from experiments.configs.detect_track.common import base_config, test


def get_config(arg: str = ""):
  c = base_config()
  c.model.layers = 50
  return variants.apply(c, arg, {"runlocal": runlocal, "test": test})


def runlocal(c) -> None:
  """ResNet-50's structure at width 16, from scratch (BatchNorm trained), 288 x 384 canvas
  with scale jitter (short side 192-432, cropped to the canvas), anchors 32-256 px; the
  detector for 2400 passes of 2 pairs, then D&T for 600 (see the README)."""
  c.model.width = 16
  c.model.head_features = 128
  c.model.anchor_scales = (2, 4, 8, 16)
  c.model.frozen_stages = 0
  c.model.frozen_bn = False
  c.model.rpn_min_size = 4.0
  c.model.num_rois = 100
  c.model.pre_nms_rois = 1000
  c.data.train_scales = (192, 240, 288, 336, 384, 432)
  c.data.max_size = 640
  c.data.image_size = (288, 384)
  c.data.max_boxes = 32
  c.eval.scale = 192
  c.eval.batch_size = 4
  c.batch_size = 2
  c.detector.update(base_lr=1e-2, step_size=1800, iterations=2400, iter_size=1)
  c.dt.update(base_lr=1e-3, step_size=450, iterations=600, iter_size=1)
  c.log_every_steps = 25
  c.checkpoint_every_steps = 600
