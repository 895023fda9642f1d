"""PSPNet-50 on CamVid (SegNet copy: 11 classes, 367 train / 101 val, 480x360).

No official PSPNet config exists for CamVid; this one keeps semseg's recipe
(SGD 0.01, poly 0.9, 10x on the new modules, aux 0.4, batch 16, official
augmentation) with a crop of 353 and evaluation at the images' own size (base
size 480), flips, 100 epochs:

  python -m experiments.train --config experiments/configs/pspnet/camvid_pspnet50.py \
      --config.data.path /data/camvid --workdir runs/camvid_pspnet50

`:runlocal` trains on a 2-core CPU within 30 minutes and reports a real
validation mIoU: the same network and recipe on CamVid downscaled to 160x120
(`data.image_scale` 1/3) with 97x97 crops, batch 8, 160 steps (3.5 epochs) from scratch, and the
official test protocol (sliding 97x97 windows, without flips) at base size 160 scored
against the full-resolution validation labels:

  READINGNOTES_DATA=../shared/data python -m experiments.train \
      --config experiments/configs/pspnet/camvid_pspnet50.py:runlocal --workdir runs/camvid_local

Measured (2026-11-26, from scratch, seed 0, commit aae9a29): val mIoU 0.185, mAcc 0.288,
aAcc 0.597; 7 min 19 s wall on an idle 2-core AMD EPYC from a fresh clone with empty
caches (826 s of CPU time).
"""
from experiments.configs import variants
from experiments.configs.pspnet.common import VARIANTS, base_config


def get_config(arg: str = ""):
  c = base_config()
  c.data.source = "camvid"
  c.model.layers = 50
  c.epochs = 100
  c.data.crop_size = 353
  c.eval.base_size = 480
  c.eval_every_steps = 500
  c.checkpoint_every_steps = 500
  return variants.apply(c, arg, {**VARIANTS, "runlocal": runlocal})


def runlocal(c) -> None:
  """CamVid at 160x120 with 97x97 crops, 160 steps from scratch (see the docstring)."""
  c.data.image_scale = 1 / 3
  c.data.crop_size = 97
  c.batch_size = 8
  c.max_steps = 160
  c.log_every_steps = 10
  c.checkpoint_every_steps = 40
  c.eval.base_size = 160
  c.eval.flip = False
  c.eval.batch_size = 4          # the 2x2 windows of a 160x120 image.
  c.eval_every_steps = 40
  c.eval.periodic_images = 20
