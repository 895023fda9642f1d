"""PSPNet and its dilated ResNet in plain PyTorch: a peer for tests and benchmarks.

Written for this project from the description of hszhao/semseg `model/pspnet.py`
and `model/resnet.py`, with the same module names, so its `state_dict()` has
semseg's keys (`layer0.K`, `layer1..4.B.conv1/bn1/.../downsample.0/1`,
`ppm.features.K.1/2`, `cls.0/1/4`, `aux.0/1/4`). Also builds the variants that
`readingnotes_jax.nn.resnet.ResNet` offers (7x7 stem, output stride 16/32,
stride on the first 1x1) so the backbone can be checked against it.
"""
import torch
from torch import nn
import torch.nn.functional as F

STAGE_BLOCKS = {50: (3, 4, 6, 3), 101: (3, 4, 23, 3), 152: (3, 8, 36, 3)}
STRIDES_DILATIONS = {32: ((1, 2, 2, 2), (1, 1, 1, 1)),
                     16: ((1, 2, 2, 1), (1, 1, 1, 2)),
                     8: ((1, 2, 1, 1), (1, 1, 2, 4))}


class Bottleneck(nn.Module):
  """1x1, 3x3 (dilated), 1x1 x4, with a projection shortcut `downsample` if needed."""

  def __init__(self, in_channels, planes, stride=1, dilation=1, stride_in_1x1=False):
    super().__init__()
    stride_1x1, stride_3x3 = (stride, 1) if stride_in_1x1 else (1, stride)
    self.conv1 = nn.Conv2d(in_channels, planes, 1, stride=stride_1x1, bias=False)
    self.bn1 = nn.BatchNorm2d(planes)
    self.conv2 = nn.Conv2d(planes, planes, 3, stride=stride_3x3, padding=dilation,
                           dilation=dilation, bias=False)
    self.bn2 = nn.BatchNorm2d(planes)
    self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=False)
    self.bn3 = nn.BatchNorm2d(planes * 4)
    self.downsample = None
    if stride != 1 or in_channels != planes * 4:
      self.downsample = nn.Sequential(
          nn.Conv2d(in_channels, planes * 4, 1, stride=stride, bias=False),
          nn.BatchNorm2d(planes * 4))

  def forward(self, x):
    y = F.relu(self.bn1(self.conv1(x)))
    y = F.relu(self.bn2(self.conv2(y)))
    y = self.bn3(self.conv3(y))
    return F.relu(y + (x if self.downsample is None else self.downsample(x)))


class ResNet(nn.Module):
  """`layer0` (stem + max-pool) and `layer1..layer4`; forward gives all five outputs."""

  def __init__(self, layers=50, output_stride=8, deep_stem=True, stride_in_1x1=False):
    super().__init__()
    if deep_stem:
      stem = [nn.Conv2d(3, 64, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(64),
              nn.ReLU(), nn.Conv2d(64, 64, 3, padding=1, bias=False), nn.BatchNorm2d(64),
              nn.ReLU(), nn.Conv2d(64, 128, 3, padding=1, bias=False), nn.BatchNorm2d(128),
              nn.ReLU()]
    else:
      stem = [nn.Conv2d(3, 64, 7, stride=2, padding=3, bias=False), nn.BatchNorm2d(64),
              nn.ReLU()]
    self.layer0 = nn.Sequential(*stem, nn.MaxPool2d(3, stride=2, padding=1))
    in_channels = 128 if deep_stem else 64
    strides, dilations = STRIDES_DILATIONS[output_stride]
    for stage, blocks in enumerate(STAGE_BLOCKS[layers]):
      planes = 64 * 2 ** stage
      modules = []
      for i in range(blocks):
        modules.append(Bottleneck(in_channels, planes, strides[stage] if i == 0 else 1,
                                  dilations[stage], stride_in_1x1))
        in_channels = planes * 4
      setattr(self, f"layer{stage + 1}", nn.Sequential(*modules))
    for m in self.modules():
      if isinstance(m, nn.Conv2d):
        nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

  def forward(self, x):
    outputs = {"stem": self.layer0(x)}
    for stage in range(1, 5):
      outputs[f"layer{stage}"] = getattr(self, f"layer{stage}")(outputs[list(outputs)[-1]])
    return outputs


class PPM(nn.Module):
  """Pyramid pooling: per bin, adaptive average pool, 1x1 conv, BN, ReLU, upsample."""

  def __init__(self, in_channels, reduction, bins):
    super().__init__()
    self.features = nn.ModuleList(
        nn.Sequential(nn.AdaptiveAvgPool2d(b), nn.Conv2d(in_channels, reduction, 1, bias=False),
                      nn.BatchNorm2d(reduction), nn.ReLU())
        for b in bins)

  def forward(self, x):
    size = x.shape[2:]
    return torch.cat([x] + [F.interpolate(f(x), size, mode="bilinear", align_corners=True)
                            for f in self.features], 1)


def _head(in_channels, mid_channels, classes, dropout):
  return nn.Sequential(nn.Conv2d(in_channels, mid_channels, 3, padding=1, bias=False),
                       nn.BatchNorm2d(mid_channels), nn.ReLU(), nn.Dropout2d(dropout),
                       nn.Conv2d(mid_channels, classes, 1))


class PSPNet(ResNet):
  """Output stride 8 deep-stem ResNet, PPM, `cls` head and (optional) `aux` head.

  forward(x) gives the logits upsampled to (H - 1) / 8 * zoom_factor + 1, and in
  training mode with an aux head also the aux logits.
  """

  def __init__(self, layers=50, bins=(1, 2, 3, 6), dropout=0.1, classes=150, use_aux=True,
               zoom_factor=8):
    super().__init__(layers, output_stride=8, deep_stem=True)
    self.zoom_factor = zoom_factor
    self.ppm = PPM(2048, 2048 // len(bins), bins)
    self.cls = _head(4096, 512, classes, dropout)
    self.aux = _head(1024, 256, classes, dropout) if use_aux else None

  def forward(self, x):
    h = (x.shape[2] - 1) // 8 * self.zoom_factor + 1
    w = (x.shape[3] - 1) // 8 * self.zoom_factor + 1
    x = self.layer2(self.layer1(self.layer0(x)))
    stage3 = self.layer3(x)
    logits = F.interpolate(self.cls(self.ppm(self.layer4(stage3))), (h, w), mode="bilinear",
                           align_corners=True)
    if not (self.training and self.aux is not None):
      return logits
    aux = F.interpolate(self.aux(stage3), (h, w), mode="bilinear", align_corners=True)
    return logits, aux
