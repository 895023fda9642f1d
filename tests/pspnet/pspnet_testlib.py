"""Shared by the PSPNet tests: a tiny CamVid-layout tree, a tiny PSPNet-shaped network, configs."""
import pathlib

import flax.linen as nn
import numpy as np
from PIL import Image

from experiments.configs import variants
from experiments.configs.pspnet import camvid_pspnet50
from readingnotes_jax.nn.batch_norm import BatchNorm
from readingnotes_jax.nn.resize import resize_bilinear_align_corners
from readingnotes_jax.nn.resnet import Conv2D
from readingnotes_jax.pspnet.model import PyramidPooling, SegmentationHead

NUM_CLASSES = 11
COLORS = np.array([[200, 40, 40], [40, 200, 40], [40, 40, 200]], np.uint8)


def write_camvid(root: pathlib.Path, n_train: int = 6, n_val: int = 3, height: int = 33,
                 width: int = 41, seed: int = 0) -> pathlib.Path:
  """SegNet-layout CamVid: `train.txt`/`val.txt` with absolute SegNet paths, PNG images and
  grey labels (sky 0 on top, road 3 / car 8 split by a random column, one void 11 pixel)."""
  root = pathlib.Path(root)
  rng = np.random.default_rng(seed)
  for split, n in (("train", n_train), ("val", n_val)):
    (root / split).mkdir(parents=True, exist_ok=True)
    (root / f"{split}annot").mkdir(exist_ok=True)
    lines = []
    for i in range(n):
      label = np.full((height, width), 3, np.uint8)
      label[:, rng.integers(width // 4, 3 * width // 4):] = 8
      label[:height // 3] = 0
      label[-1, -1] = 11
      image = COLORS[np.select([label == 0, label == 3], [0, 1], 2)]
      image = np.clip(image.astype(int) + rng.integers(-30, 30, image.shape), 0, 255)
      Image.fromarray(image.astype(np.uint8)).save(root / split / f"{i:03d}.png")
      Image.fromarray(label).save(root / f"{split}annot" / f"{i:03d}.png")
      lines.append(f"/SegNet/CamVid/{split}/{i:03d}.png /SegNet/CamVid/{split}annot/{i:03d}.png")
    (root / f"{split}.txt").write_text("\n".join(lines) + "\n")
  return root


class TinyBackbone(nn.Module):
  """Three strided 3x3 conv + BN + ReLU (output stride 8): `layer3` and `layer4` features."""

  @nn.compact
  def __call__(self, x, *, train):
    features = {}
    for i, width in enumerate((4, 6, 8)):
      x = Conv2D(width, 3, stride=2, padding=1, name=f"conv{i}")(x)
      x = nn.relu(BatchNorm(name=f"bn{i}")(x, use_running_average=not train))
      features[f"layer{i + 2}"] = x
    return features


class TinyPSPNet(nn.Module):
  """PSPNet's interface and parameter layout (backbone, ppm, cls, aux) with the real pyramid
  pooling and heads at a few channels: `__call__(images, *, train)` -> logits at the input
  size, and (logits, aux_logits) when training."""
  num_classes: int = NUM_CLASSES

  @nn.compact
  def __call__(self, images, *, train):
    size = images.shape[1:3]
    features = TinyBackbone(name="backbone")(images, train=train)
    x = PyramidPooling((1, 2, 3, 6), 2, name="ppm")(features["layer4"], train=train)
    logits = SegmentationHead(8, self.num_classes, name="cls")(x, train=train)
    logits = resize_bilinear_align_corners(logits, size)
    if not (train or self.is_initializing()):
      return logits
    aux = SegmentationHead(4, self.num_classes, name="aux")(features["layer3"], train=train)
    return logits, resize_bilinear_align_corners(aux, size)


def tiny_config(data_path: pathlib.Path, **overrides):
  """camvid_pspnet50:runlocal on the tiny tree: crop 25, batch 2, 6 steps, base size 41."""
  c = camvid_pspnet50.get_config("runlocal")
  c.data.path = str(data_path)
  c.data.image_scale = 1.0
  c.data.crop_size = 25
  c.batch_size = 2
  c.max_steps = 6
  c.log_every_steps = 1
  c.checkpoint_every_steps = 4
  c.eval.base_size = 41
  c.eval.crop_size = 25
  c.eval.flip = True
  c.eval.batch_size = 4
  c.eval_every_steps = 3
  c.eval.periodic_images = 2
  c.figures.num_examples = 2
  for key, value in overrides.items():
    variants.set_path(c, key, value)
  return c
