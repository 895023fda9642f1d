"""FashionGAN's G_shape / D_shape, G_image / D_image and the U-Net G_image / patch D_image in
PyTorch, the peer of benchmarks/fashiongan_step.py.

Written from the release's graphs (zhusz/ICCV17-fashionGAN sr1/net_graph_sr1.lua,
ih1/net_graph_ih1.lua and ih1_skip/net_graph_ih1.lua) as `readingnotes_jax.fashiongan.model` describes them, NCHW:
convolutions without bias, BatchNorm, ReLU in decoders and LeakyReLU 0.2 elsewhere, at
`size` 64 or 128 and width `f` (ngf = ndf). The benchmark checks that every network has
our parameter count.
"""
import torch
from torch import nn

LEAK = 0.2
NOISE, CODING, REDUCED = 80, 100, 20
LABELS, MERGED = 7, 4


def _block(cin, cout, kernel, stride, padding, *, transpose=False, bn=True, act="lrelu"):
  conv = (nn.ConvTranspose2d if transpose else nn.Conv2d)(cin, cout, kernel, stride, padding,
                                                         bias=False)
  layers = [conv] + ([nn.BatchNorm2d(cout)] if bn else [])
  if act == "lrelu":
    layers.append(nn.LeakyReLU(LEAK))
  elif act == "relu":
    layers.append(nn.ReLU())
  return nn.Sequential(*layers)


class ShapeGenerator(nn.Module):
  """(z, d, down m(S0) [B, 4, 8, 8]) -> 7-label logits [B, 7, S, S]."""

  def __init__(self, size=128, f=64):
    super().__init__()
    self.h1 = _block(CODING, REDUCED, 1, 1, 0, bn=False)
    self.g1 = _block(NOISE + REDUCED, 16 * f, 4, 1, 0, transpose=True, act="relu")
    self.g_extra = _block(16 * f, 8 * f, 4, 2, 1, transpose=True, act="relu")
    self.f1 = _block(MERGED, f, 3, 1, 1)
    self.f_extra = _block(f, 2 * f, 3, 1, 1)
    self.g2 = _block(10 * f, 4 * f, 4, 2, 1, transpose=True, act="relu")
    self.middle = nn.Sequential(_block(4 * f, 8 * f, 3, 1, 1), _block(8 * f, 8 * f, 3, 1, 1),
                                _block(8 * f, 4 * f, 3, 1, 1))
    up = [_block(4 * f, 2 * f, 4, 2, 1, transpose=True, act="relu")]
    if size == 128:
      up.append(_block(2 * f, f, 4, 2, 1, transpose=True, act="relu"))
    up.append(_block(f if size == 128 else 2 * f, LABELS, 4, 2, 1, transpose=True, bn=False,
                     act=None))
    self.up = nn.Sequential(*up)

  def forward(self, z, d, condition):
    x = torch.cat([z[:, :, None, None], self.h1(d[:, :, None, None])], 1)
    x = self.g_extra(self.g1(x))
    c = self.f_extra(self.f1(condition))
    x = self.g2(torch.cat([x, c], 1))
    return self.up(self.middle(x))


class _TextHead(nn.Module):
  """The text (1x1 conv, BN, LReLU) replicated over x's grid, joined, 1x1 conv, then conv4."""

  def __init__(self, channels, padding):
    super().__init__()
    self.b1 = _block(CODING, REDUCED, 1, 1, 0)
    self.join = _block(channels + REDUCED, channels, 1, 1, 0)
    self.out = nn.Conv2d(channels, 1, 4, 1, padding, bias=False)

  def forward(self, x, d):
    text = self.b1(d[:, :, None, None]).expand(-1, -1, x.shape[2], x.shape[3])
    return self.out(self.join(torch.cat([x, text], 1)))


class ShapeDiscriminator(nn.Module):
  """(segmentation [B, 7, S, S], d, down m(S0)) -> logits [B]."""

  def __init__(self, size=128, f=64):
    super().__init__()
    down = [_block(LABELS, f, 4, 2, 1, bn=False)]
    if size == 128:
      down.append(_block(f, 2 * f, 4, 2, 1))
    down += [_block(2 * f if size == 128 else f, 4 * f, 4, 2, 1),
             _block(4 * f, 8 * f, 3, 1, 1), _block(8 * f, 8 * f, 3, 1, 1),
             _block(8 * f, 4 * f, 3, 1, 1), _block(4 * f, 8 * f, 4, 2, 1)]
    self.down = nn.Sequential(*down)
    self.condition = nn.Sequential(_block(MERGED, f, 3, 1, 1, bn=False),
                                   _block(f, 2 * f, 3, 1, 1))
    self.d_extra = _block(10 * f, 8 * f, 4, 2, 1)
    self.head = _TextHead(8 * f, 0)

  def forward(self, segmentation, d, condition):
    x = self.down(torch.softmax(segmentation, 1))
    x = self.d_extra(torch.cat([x, self.condition(condition)], 1))
    return self.head(x, d)[:, 0, 0, 0]


class ImageGenerator(nn.Module):
  """ih1's encoder-decoder: (z, d, colour condition [B, 3, S, S]) -> image [B, 3, S, S]."""

  def __init__(self, size=128, f=64):
    super().__init__()
    self.h1 = _block(CODING, REDUCED, 1, 1, 0, bn=False)
    self.noise = nn.Sequential(
        _block(NOISE + REDUCED, 16 * f, 4, 1, 0, transpose=True, act="relu"),
        _block(16 * f, 8 * f, 4, 2, 1, transpose=True, act="relu"),
        _block(8 * f, 8 * f, 4, 2, 1, transpose=True, act="relu"))
    condition = [_block(3, f, 4, 2, 1)]
    if size == 128:
      condition.append(_block(f, 2 * f, 4, 2, 1))
    condition.append(_block(2 * f if size == 128 else f, 4 * f, 4, 2, 1))
    self.condition = nn.Sequential(*condition)
    layers = [_block(12 * f, 8 * f, 4, 2, 1, transpose=True, act="relu")]
    widths = [8, 8, 8, 8, 4, 2]
    layers += [_block(widths[k] * f, widths[k + 1] * f, 3, 1, 1) for k in range(5)]
    if size == 128:
      layers.append(_block(2 * f, f, 4, 2, 1, transpose=True, act="relu"))
    layers.append(nn.ConvTranspose2d(f if size == 128 else 2 * f, 3, 4, 2, 1, bias=False))
    self.decoder = nn.Sequential(*layers)

  def forward(self, z, d, condition):
    x = torch.cat([z[:, :, None, None], self.h1(d[:, :, None, None])], 1)
    x = torch.cat([self.noise(x), self.condition(condition)], 1)
    return torch.tanh(self.decoder(x))


class ImageDiscriminator(nn.Module):
  """ih1's D_image: (image, d, condition) -> logits [B]."""

  def __init__(self, size=128, f=64):
    super().__init__()

    def branch():
      layers = [_block(3, f, 4, 2, 1, bn=False)]
      if size == 128:
        layers.append(_block(f, 2 * f, 4, 2, 1))
      layers.append(_block(2 * f if size == 128 else f, 4 * f, 4, 2, 1))
      return nn.Sequential(*layers)

    self.image, self.condition = branch(), branch()
    self.middle = nn.Sequential(*[_block(8 * f, 8 * f, 3, 1, 1) for _ in range(5)],
                                _block(8 * f, 8 * f, 4, 2, 1), _block(8 * f, 16 * f, 4, 2, 1))
    self.head = _TextHead(16 * f, 0)

  def forward(self, image, d, condition):
    x = self.middle(torch.cat([self.image(image), self.condition(condition)], 1))
    return self.head(x, d)[:, 0, 0, 0]


class UNetImageGenerator(nn.Module):
  """(z, d, colour condition [B, 3, S, S]) -> image [B, 3, S, S] (tanh)."""

  def __init__(self, size=128, f=64, dropout=0.5):
    super().__init__()
    widths = [1] + ([2] if size == 128 else []) + [4, 8, 8, 8, 8]
    self.encoder = nn.ModuleList()
    cin = 3
    for k, w in enumerate(widths):
      bn = 0 < k < len(widths) - 1
      self.encoder.append(_block(cin, w * f, 4, 2, 1, bn=bn, act=None))
      cin = w * f
    self.h1 = _block(CODING, REDUCED, 1, 1, 0, bn=False)
    dec = [8, 8, 8, 4] + ([2] if size == 128 else []) + [1]
    skips = widths[-2::-1]
    self.decoder = nn.ModuleList()
    cin = NOISE + REDUCED + 8 * f
    for k, w in enumerate(dec):
      self.decoder.append(_block(cin, w * f, 4, 2, 1, transpose=True, act=None))
      cin = w * f + skips[k] * f
    self.dropout = nn.Dropout(dropout)
    self.out = nn.ConvTranspose2d(cin, 3, 4, 2, 1, bias=False)

  def forward(self, z, d, condition):
    skips, x = [], condition
    for k, layer in enumerate(self.encoder):
      x = layer(x if k == 0 else nn.functional.leaky_relu(x, LEAK))
      skips.append(x)
    x = torch.cat([z[:, :, None, None], self.h1(d[:, :, None, None]), skips.pop()], 1)
    for k, layer in enumerate(self.decoder):
      x = layer(torch.relu(x))
      if k < 3:
        x = self.dropout(x)
      x = torch.cat([x, skips.pop()], 1)
    return torch.tanh(self.out(torch.relu(x)))


class PatchImageDiscriminator(nn.Module):
  """(image [B, 3, S, S], d, condition [B, 3, S, S]) -> patch logits [B, 14, 14]."""

  def __init__(self, size=128, f=64):
    super().__init__()
    down = [_block(6, f, 4, 2, 1, bn=False)]
    if size == 128:
      down.append(_block(f, 2 * f, 4, 2, 1))
    down.append(_block(2 * f if size == 128 else f, 4 * f, 4, 2, 1))
    self.down = nn.Sequential(*down)
    self.b1 = _block(CODING, REDUCED, 1, 1, 0)
    self.x3 = _block(4 * f + REDUCED, 8 * f, 4, 1, 1)
    self.x4 = nn.Conv2d(8 * f, 1, 4, 1, 1, bias=False)

  def forward(self, image, d, condition):
    x = self.down(torch.cat([image, condition], 1))
    text = self.b1(d[:, :, None, None]).expand(-1, -1, x.shape[2], x.shape[3])
    return self.x4(self.x3(torch.cat([x, text], 1)))[:, 0]


def count(module: nn.Module) -> int:
  return sum(p.numel() for p in module.parameters())
