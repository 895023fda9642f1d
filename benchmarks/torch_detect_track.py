"""D&T's network in plain PyTorch: the peer of benchmarks/dt_step.py.

Written for this project from the description of feichtenhofer/Detect-Track's
`ResNet-101L_ILSVRCvid_corr/train_val_track.prototxt` (ResNet-50 variant): the MSRA ResNet
(7x7 stem, stride on the first 1x1, res5 at stride 16 with dilation 2; conv1 and res2 frozen,
BatchNorm frozen: eval mode), `rpn_conv/3x3` + `rpn_cls_score` + `rpn_bbox_pred` on res4,
`conv_new_1` (3x3, dilation 6) + `rfcn_cls` + `rfcn_bbox` on res5, the correlation of res5,
res3 (strides 2/2) and res4 (d = 8) as a plain shift-multiply-mean loop, `rfcn_disp` (1x1,
1443 -> 392) and position-sensitive RoI pooling (7 x 7 bins averaged, from a summed-area
table; torchvision's `ps_roi_pool` is not a dependency here).

`dt_loss` takes given RoIs and targets (the benchmark samples them once): RPN softmax +
smooth L1 on sampled anchors, R-FCN softmax + smooth L1 at the RoIs of both frames, the track
smooth L1 at frame t's RoIs. It does not generate proposals, run NMS or OHEM (our step does):
the peer's step is a little less work than ours.
"""
import torch
import torch.nn.functional as F
from torch import nn

from benchmarks.torch_pspnet import ResNet

GROUP = 7


def correlation(a: torch.Tensor, b: torch.Tensor, d: int, stride: int) -> torch.Tensor:
  """[N, C, H, W] x2 -> [N, K^2, H', W']: mean over C of a(i, j) b(i + p, j + q), p and q in
  -d..d step `stride`, outputs every `stride` positions, zero padding d (dy major)."""
  n, c, h, w = a.shape
  padded = F.pad(b, (d, d, d, d))
  centre = a[:, :, ::stride, ::stride]
  maps = []
  for dy in range(-d, d + 1, stride):
    for dx in range(-d, d + 1, stride):
      shifted = padded[:, :, d + dy:d + dy + h:stride, d + dx:d + dx + w:stride]
      maps.append((centre * shifted).mean(dim=1))
  return torch.stack(maps, dim=1)


def ps_roi_pool(maps: torch.Tensor, rois: torch.Tensor, output_dim: int,
                scale: float = 1 / 16) -> torch.Tensor:
  """R-FCN's PS-RoI pooling then the bin average: maps [N, output_dim * 49, h, w], rois
  [N, R, 4] pixels -> [N, R, output_dim]. Bin bounds as the Caffe kernel (rounded RoI,
  floor/ceil bins, clipped); sums from a summed-area table."""
  n, channels, h, w = maps.shape
  table = F.pad(maps.cumsum(2).cumsum(3), (1, 0, 1, 0))  # [N, C, h+1, w+1]
  r = torch.round(rois) * scale
  x1, y1 = r[..., 0], r[..., 1]
  bw = (torch.round(rois[..., 2]) + 1) * scale - x1
  bh = (torch.round(rois[..., 3]) + 1) * scale - y1
  bw, bh = bw.clamp(min=0.1) / GROUP, bh.clamp(min=0.1) / GROUP
  k = torch.arange(GROUP, dtype=rois.dtype, device=rois.device)
  ys = (y1[..., None] + k * bh[..., None]).floor().clamp(0, h).long()
  ye = (y1[..., None] + (k + 1) * bh[..., None]).ceil().clamp(0, h).long()
  xs = (x1[..., None] + k * bw[..., None]).floor().clamp(0, w).long()
  xe = (x1[..., None] + (k + 1) * bw[..., None]).ceil().clamp(0, w).long()
  # [N, R, 7, 7] corners; channel of bin (i, j) for output o: o * 49 + i * 7 + j.
  y0, y1_, x0, x1_ = ys[..., :, None], ye[..., :, None], xs[..., None, :], xe[..., None, :]
  area = ((y1_ - y0) * (x1_ - x0)).clamp(min=0)
  flat = table.reshape(n, channels, -1)
  rr = rois.shape[1]
  arange = lambda k: torch.arange(k, device=maps.device)
  bins = arange(GROUP)[:, None] * GROUP + arange(GROUP)[None, :]
  channel = (arange(output_dim)[:, None, None] * GROUP * GROUP + bins)  # [O, 7, 7]

  def corner(yy, xx):
    index = (yy * (w + 1) + xx)  # [N, R, 7, 7]
    index = index[:, :, None].expand(n, rr, output_dim, GROUP, GROUP)
    chan = channel.expand(n, rr, output_dim, GROUP, GROUP)
    gathered = flat[arange(n)[:, None, None, None, None], chan, index]
    return gathered

  total = corner(y1_, x1_) - corner(y0, x1_) - corner(y1_, x0) + corner(y0, x0)
  pooled = torch.where(area[:, :, None] > 0, total / area[:, :, None].clamp(min=1), 0.0)
  return pooled.mean(dim=(-1, -2))


def smooth_l1(x: torch.Tensor, sigma: float = 1.0) -> torch.Tensor:
  s2 = sigma * sigma
  return torch.where(x.abs() < 1 / s2, 0.5 * s2 * x * x, x.abs() - 0.5 / s2)


class DetectTrack(nn.Module):
  def __init__(self, num_classes=30, layers=50, anchors=9):
    super().__init__()
    self.backbone = ResNet(layers, output_stride=16, deep_stem=False, stride_in_1x1=True)
    self.rpn_conv = nn.Conv2d(1024, 512, 3, padding=1)
    self.rpn_cls = nn.Conv2d(512, 2 * anchors, 1)
    self.rpn_bbox = nn.Conv2d(512, 4 * anchors, 1)
    self.conv_new_1 = nn.Conv2d(2048, 512, 3, padding=6, dilation=6)
    self.rfcn_cls = nn.Conv2d(512, (num_classes + 1) * GROUP * GROUP, 1)
    self.rfcn_bbox = nn.Conv2d(512, 8 * GROUP * GROUP, 1)
    self.rfcn_disp = nn.Conv2d(1443, 8 * GROUP * GROUP, 1)
    self.num_classes = num_classes
    for p in list(self.backbone.layer0.parameters()) + list(self.backbone.layer1.parameters()):
      p.requires_grad_(False)
    for m in self.backbone.modules():
      if isinstance(m, nn.BatchNorm2d):
        for p in m.parameters():
          p.requires_grad_(False)

  def train(self, mode=True):  # Frozen BatchNorm: always running statistics.
    super().train(mode)
    for m in self.backbone.modules():
      if isinstance(m, nn.BatchNorm2d):
        m.eval()
    return self

  def forward(self, frames: torch.Tensor) -> dict:
    """frames [N, 2, 3, H, W] -> maps of the 2N images (frames t first) and track maps."""
    n = frames.shape[0]
    x = torch.cat([frames[:, 0], frames[:, 1]])
    x = self.backbone.layer0(x)
    res2 = self.backbone.layer1(x)
    res3 = self.backbone.layer2(res2)
    res4 = self.backbone.layer3(res3)
    res5 = self.backbone.layer4(res4)
    rpn = F.relu(self.rpn_conv(res4))
    head = F.relu(self.conv_new_1(res5))
    box_maps = self.rfcn_bbox(head)
    corr = [correlation(res5[:n], res5[n:], 8, 1), correlation(res3[:n], res3[n:], 8, 2),
            correlation(res4[:n], res4[n:], 8, 1)]
    track = self.rfcn_disp(torch.cat([box_maps[:n], box_maps[n:], *corr], dim=1))
    return {"rpn_cls": self.rpn_cls(rpn), "rpn_bbox": self.rpn_bbox(rpn),
            "cls_maps": self.rfcn_cls(head), "box_maps": box_maps, "track_maps": track}


def dt_loss(model: DetectTrack, out: dict, t: dict) -> torch.Tensor:
  """The D&T loss at given targets `t` (see the module docstring)."""
  n2, a2, h, w = out["rpn_cls"].shape
  logits = out["rpn_cls"].reshape(n2, 2, a2 // 2, h, w).permute(0, 3, 4, 2, 1).reshape(n2, -1, 2)
  deltas = out["rpn_bbox"].reshape(n2, a2 // 2, 4, h, w).permute(0, 3, 4, 1, 2).reshape(n2, -1, 4)
  sampled = t["rpn_labels"] >= 0
  rpn_cls = F.cross_entropy(logits[sampled], t["rpn_labels"][sampled])
  rpn_box = (smooth_l1(deltas - t["rpn_targets"], 3.0).sum(-1) * (t["rpn_labels"] == 1)).sum() / n2
  cls = ps_roi_pool(out["cls_maps"], t["rois"], model.num_classes + 1)
  box = ps_roi_pool(out["box_maps"], t["rois"], 8)[..., 4:]
  cls_loss = F.cross_entropy(cls.reshape(-1, model.num_classes + 1), t["roi_labels"].reshape(-1))
  box_loss = (smooth_l1(box - t["roi_targets"]).sum(-1) * (t["roi_labels"] > 0)).sum() / (128 * n2)
  n = out["track_maps"].shape[0]
  track = ps_roi_pool(out["track_maps"], t["rois"][:n], 8)[..., 4:]
  track_loss = smooth_l1(track - t["track_targets"]).sum(-1).mean()
  return rpn_cls + rpn_box + cls_loss + box_loss + track_loss
