"""PSPNet-50 on CamVid (SegNet copy: 11 classes, 367 train / 101 val, 480x360).

No official PSPNet config exists for CamVid; this one keeps semseg's recipe
(SGD 0.01, poly 0.9, 10x on the new modules, aux 0.4, batch 16, official
augmentation) with a crop of 353 and evaluation at the images' own size (base
size 480), flips, 100 epochs:

  python -m experiments.train --config experiments/configs/pspnet/camvid_pspnet50.py \
      --config.data.path /data/camvid --workdir runs/camvid_pspnet50

`:runlocal` trains on a 2-core CPU within 30 minutes and reports a real
validation mIoU: PSPNet-50's structure (deep-stem dilated ResNet-50 at output
stride 8, the (1, 2, 3, 6) pyramid, the aux head on stage 3) at half width
(`model.width` 32: 12.3M parameters, 79 GFLOP per step), computed in bfloat16
(float32 on CPUs without bfloat16 instructions), with semseg's recipe on CamVid
downscaled to 160x120 (`data.image_scale` 1/3): 97x97 crops, batch 8, 1500 steps
(33 epochs) from scratch, evaluated every 300 steps (first 20 images), then the
official test protocol (sliding 97x97 windows, without flips) at base size 160
scored against the full-resolution validation labels:

  READINGNOTES_DATA=../shared/data python -m experiments.train \
      --config experiments/configs/pspnet/camvid_pspnet50.py:runlocal --workdir runs/camvid_local

Measured (2026-12-02, from scratch, seed 0, tree of 42fca85, empty TFDS and
compilation caches): val mIoU 0.411, mAcc 0.498, aAcc 0.836 (periodic, 20
images: 0.228, 0.284, 0.350, 0.398 at steps 300-1200), on a 2-core Intel Xeon
with AVX-512 BF16 and AMX shared with other jobs (load average 4.8-14.2, median
9.5): 2,627 s of CPU time (user 2,178 + sys 449), an estimated 21 min 53 s of
wall time idle ((user + sys) / 2); 91 min 14 s under that load. The earlier
setting (width 64, float32, 160 steps) gave 0.185 in 7 min 19 s.
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
  """CamVid at 160x120 with 97x97 crops, width 32 in bfloat16, 1500 steps (see the docstring)."""
  c.data.image_scale = 1 / 3
  c.data.crop_size = 97
  c.model.width = 32
  c.model.dtype = "bfloat16"
  c.batch_size = 8
  c.max_steps = 1500
  c.log_every_steps = 50
  c.checkpoint_every_steps = 300
  c.eval.base_size = 160
  c.eval.flip = False
  c.eval.batch_size = 4          # the 2x2 windows of a 160x120 image.
  c.eval_every_steps = 300
  c.eval.periodic_images = 20
