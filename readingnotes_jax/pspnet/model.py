"""PSPNet: dilated ResNet, pyramid pooling module, segmentation head, aux head, loss.

Matches hszhao/semseg `model/pspnet.py` (`PPM`, `PSPNet`), the PyTorch rewrite of
the authors' Caffe release (Zhao et al., "Pyramid Scene Parsing Network", CVPR
2017, Sec. 3.2-3.3 and Fig. 3):
- backbone: deep-stem ResNet-50/101/152 at output stride 8 (stage 3 dilation 2,
  stage 4 dilation 4, strides on the 3x3 convs);
- pyramid pooling on the 2048-channel stage-4 map: for each bin b in (1, 2, 3, 6)
  adaptive average pooling to b x b (torch `AdaptiveAvgPool2d` bin boundaries),
  1x1 conv 2048 -> 2048/len(bins) without bias, BN, ReLU, bilinear upsampling with
  align_corners=True; concatenated after the input (4096 channels);
- `cls` head: 3x3 conv -> 512, BN, ReLU, channel dropout (torch `Dropout2d`) 0.1,
  1x1 conv with bias -> classes; `aux` head on stage 3 (1024 -> 256 -> classes);
  by default the head's 3x3 conv reads the pyramid branches at their bin size
  (`conv_of_pyramid`: the same function, half of that conv's multiply-adds);
- logits upsampled (align_corners=True) to (H - 1) / 8 * zoom_factor + 1, i.e. to
  the input size for zoom_factor 8; inputs need (H - 1) % 8 == 0 (crops 473, 713);
- loss: cross entropy ignoring label 255, main + 0.4 * aux.
New layers (PPM, heads) keep torch's default Conv2d initialisation, as semseg.
"""
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from readingnotes_jax.errors import UserError
from readingnotes_jax.nn.batch_norm import BatchNorm
from readingnotes_jax.nn.conv import conv2d
from readingnotes_jax.nn.resize import align_corners_matrix, resize_bilinear_align_corners
from readingnotes_jax.nn.resnet import Conv2D, ResNet, torch_default_kernel_init


def adaptive_pool_matrix(in_size: int, bins: int) -> np.ndarray:
  """[bins, in_size] averaging weights of torch's AdaptiveAvgPool on one axis.

  Bin i averages [floor(i * in / bins), ceil((i + 1) * in / bins)); bins may
  overlap when in_size is not a multiple of bins.
  """
  matrix = np.zeros((bins, in_size), np.float32)
  for i in range(bins):
    start, end = (i * in_size) // bins, -((-(i + 1) * in_size) // bins)
    matrix[i, start:end] = 1.0 / (end - start)
  return matrix


def adaptive_avg_pool(x: jax.Array, bins: int) -> jax.Array:
  """NHWC adaptive average pooling to [N, bins, bins, C], computed in float32."""
  rows = jnp.asarray(adaptive_pool_matrix(x.shape[1], bins))
  cols = jnp.asarray(adaptive_pool_matrix(x.shape[2], bins))
  return jnp.einsum("ih,jw,nhwc->nijc", rows, cols, x.astype(jnp.float32),
                    precision=jax.lax.Precision.HIGHEST)


def _shifted_resize_matrices(in_size: int, out_size: int, kernel_size: int) -> np.ndarray:
  """[out_size, kernel_size * in_size]: tap i's block maps the resized axis, zero padded by
  kernel_size // 2 and shifted by i, to the conv's output rows (`conv_of_pyramid`)."""
  pad = kernel_size // 2
  padded = np.pad(align_corners_matrix(in_size, out_size), ((pad, pad), (0, 0)))
  return np.concatenate([padded[i:i + out_size] for i in range(kernel_size)], axis=1)


def conv_of_pyramid(x: jax.Array, branches: Sequence[jax.Array], kernel: jax.Array, *,
                    lowering: str | None = None) -> jax.Array:
  """Convolution of x and upsampled pyramid branches, computed at the branches' size.

  Equals `conv2d(concat([x, *(resize_bilinear_align_corners(y, (H, W)) for y in
  branches)]), kernel, padding=k // 2)` without making the upsampled branches.
  Resizing and convolution are linear, so the part W_y of the kernel that reads
  branch y [N, b, b', C] contributes
    out[n, p, q] = sum_ij sum_ac R_i[p, a] C_j[q, c] (y[n, a, c] @ W_y[i, j]),
  R_i (C_j) the align_corners resize matrix of the rows (columns), zero padded
  and shifted by tap i (j): a kh*kw-wide product at b x b' and two thin resizing
  products instead of a (kh*kw*C)-deep one at H x W. For PSPNet's 3x3 head on
  [2048 + 4 x 512] channels that halves the multiply-adds (the branches' share).
  Branch products accumulate in float32; the sum is cast to x's dtype. The
  kernel may be float32 with bfloat16 x and branches (as in `conv2d`).
  """
  kh, kw, _, features = kernel.shape
  if kh != kw or kh % 2 == 0:
    raise UserError(f"conv_of_pyramid needs an odd square kernel, got {kernel.shape[:2]}")
  n, height, width, channels = x.shape
  if channels + sum(y.shape[-1] for y in branches) != kernel.shape[2]:
    raise UserError(f"conv_of_pyramid: x and branches have {channels} + "
                    f"{[y.shape[-1] for y in branches]} channels, the kernel reads "
                    f"{kernel.shape[2]}")
  out = conv2d(x, kernel[:, :, :channels], padding=kh // 2, lowering=lowering).astype(jnp.float32)
  row_blocks, parts = [], []
  for y in branches:
    w_y = kernel[:, :, channels:channels + y.shape[-1]]
    channels += y.shape[-1]
    b_h, b_w = y.shape[1:3]
    z = jnp.einsum("nacx,ijxd->niajcd", y, w_y.astype(y.dtype),
                   preferred_element_type=jnp.float32)
    cols = jnp.asarray(_shifted_resize_matrices(b_w, width, kw))  # [W, kw * b_w]
    z = jnp.einsum("qm,niamd->niaqd", cols, z.reshape(n, kh, b_h, kw * b_w, features))
    parts.append(z.reshape(n, kh * b_h, width, features))
    row_blocks.append(_shifted_resize_matrices(b_h, height, kh))  # [H, kh * b_h]
  if parts:
    rows = jnp.asarray(np.concatenate(row_blocks, axis=1))
    out = out + jnp.einsum("pk,nkqd->npqd", rows, jnp.concatenate(parts, axis=1))
  return out.astype(x.dtype)


class PyramidPooling(nn.Module):
  """semseg `PPM`: [x, up(relu(bn(conv1x1(pool_b(x))))) for b in bins] on channels.

  With `upsample=False`, the list [x, relu(bn(conv1x1(pool_b(x)))) for b in bins]
  at bin size instead, for `conv_of_pyramid`. Submodules conv{k} / bn{k} for
  the k-th bin.
  """
  bins: Sequence[int] = (1, 2, 3, 6)
  features: int = 512
  upsample: bool = True
  dtype: Any = jnp.float32
  lowering: str | None = None

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool) -> jax.Array | list[jax.Array]:
    branches = [x.astype(self.dtype)]
    for k, b in enumerate(self.bins):
      y = Conv2D(self.features, 1, dtype=self.dtype, lowering=self.lowering,
                 name=f"conv{k}")(adaptive_avg_pool(x, b))
      y = nn.relu(BatchNorm(dtype=self.dtype, name=f"bn{k}")(y, use_running_average=not train))
      branches.append(resize_bilinear_align_corners(y, x.shape[1:3]) if self.upsample else y)
    return jnp.concatenate(branches, axis=-1) if self.upsample else branches


class PyramidConv2D(nn.Module):
  """`Conv2D` (no bias, padding kernel_size // 2) of a `PyramidPooling(upsample=False)`
  list, through `conv_of_pyramid`: the same `kernel` parameter and output as
  `Conv2D` on the upsampled concatenation."""
  features: int
  kernel_size: int = 3
  dtype: Any = jnp.float32
  lowering: str | None = None

  @nn.compact
  def __call__(self, pyramid: Sequence[jax.Array]) -> jax.Array:
    shape = (self.kernel_size, self.kernel_size, sum(p.shape[-1] for p in pyramid),
             self.features)
    kernel = self.param("kernel", torch_default_kernel_init, shape, jnp.float32)
    x, *branches = (p.astype(self.dtype) for p in pyramid)
    return conv_of_pyramid(x, branches, kernel, lowering=self.lowering)


class SegmentationHead(nn.Module):
  """semseg `cls` / `aux`: 3x3 conv (no bias), BN, ReLU, Dropout2d, 1x1 conv (bias).

  Input: a feature map, or a `PyramidPooling(upsample=False)` list (the 3x3 conv
  is then a `PyramidConv2D`). Submodules conv, bn, classifier.
  """
  features: int
  num_classes: int
  dropout: float = 0.1
  dtype: Any = jnp.float32
  lowering: str | None = None

  @nn.compact
  def __call__(self, x: jax.Array | Sequence[jax.Array], *, train: bool) -> jax.Array:
    if isinstance(x, (list, tuple)):
      x = PyramidConv2D(self.features, 3, dtype=self.dtype, lowering=self.lowering,
                        name="conv")(x)
    else:
      x = Conv2D(self.features, 3, padding=1, dtype=self.dtype, lowering=self.lowering,
                 name="conv")(x)
    x = nn.relu(BatchNorm(dtype=self.dtype, name="bn")(x, use_running_average=not train))
    # torch Dropout2d drops whole channels: one mask entry per (image, channel).
    x = nn.Dropout(self.dropout, broadcast_dims=(1, 2), deterministic=not train)(x)
    return Conv2D(self.num_classes, 1, use_bias=True, dtype=self.dtype, lowering=self.lowering,
                  name="classifier")(x)


class PSPNet(nn.Module):
  """Pyramid Scene Parsing Network (see the module docstring).

  Attributes:
    num_classes: output classes (150 ADE20K, 21 VOC, 19 Cityscapes).
    layers: backbone depth, 50, 101 or 152 (14 for quick runs).
    width: the backbone's base width (64 in semseg); the pyramid and heads scale with
      it (PPM input 32 * width, cls 8 * width, aux 4 * width channels).
    bins: pyramid pooling bin sizes; each branch has 2048 / len(bins) channels.
    dropout: channel-dropout rate in both heads.
    use_aux: build the auxiliary head on stage 3 (its parameters exist whatever
      the mode; it runs only in training).
    zoom_factor: 1, 2, 4 or 8; logits come out at (H - 1) / 8 * zoom_factor + 1.
    factorized_head: the cls head's 3x3 conv reads the pyramid branches at bin
      size (`conv_of_pyramid`; equal by linearity, half of its multiply-adds);
      False: semseg's order, upsample and concatenate, then convolve.
    dtype: compute dtype (float32 parameters and BN statistics; float32 logits).
    lowering: conv2d lowering, "xla", "matmul" or None (per platform).

  `__call__(images_nhwc, *, train)`: images [N, H, W, 3] with (H - 1) % 8 == 0 and
  (W - 1) % 8 == 0. Returns float32 logits [N, h, w, num_classes] when
  train=False; when train=True, a pair (logits, aux_logits) with aux_logits of
  the same shape, or None without the aux head. Training needs
  `rngs={"dropout": key}` and `mutable=["batch_stats"]`.
  Submodules: backbone (`ResNet`), ppm, cls, aux.
  """
  num_classes: int
  layers: int = 50
  width: int = 64
  bins: Sequence[int] = (1, 2, 3, 6)
  dropout: float = 0.1
  use_aux: bool = True
  zoom_factor: int = 8
  factorized_head: bool = True
  dtype: Any = jnp.float32
  lowering: str | None = None

  @nn.compact
  def __call__(self, images: jax.Array, *, train: bool):
    if images.ndim != 4 or (images.shape[1] - 1) % 8 or (images.shape[2] - 1) % 8:
      raise UserError(f"PSPNet wants NHWC images with (H - 1) % 8 == 0 and (W - 1) % 8 == 0 "
                      f"(e.g. 473x473, 713x713), got shape {images.shape}: crop or pad")
    channels = 32 * self.width  # layer4's output: 2048 at width 64.
    if self.zoom_factor not in (1, 2, 4, 8) or channels % len(self.bins):
      raise UserError(f"PSPNet zoom_factor must be 1, 2, 4 or 8 and len(bins) divide "
                      f"{channels}; got {self.zoom_factor} and {tuple(self.bins)}")
    size = tuple((s - 1) // 8 * self.zoom_factor + 1 for s in images.shape[1:3])
    features = ResNet(self.layers, width=self.width, output_stride=8, deep_stem=True, outputs=("layer3", "layer4"),
                      dtype=self.dtype, lowering=self.lowering, name="backbone")(
                          images, train=train)
    x = PyramidPooling(self.bins, channels // len(self.bins), upsample=not self.factorized_head,
                       dtype=self.dtype, lowering=self.lowering, name="ppm")(
                           features["layer4"], train=train)
    logits = SegmentationHead(8 * self.width, self.num_classes, self.dropout, dtype=self.dtype,
                              lowering=self.lowering, name="cls")(x, train=train)
    logits = resize_bilinear_align_corners(logits.astype(jnp.float32), size)
    aux_logits = None
    if self.use_aux and (train or self.is_initializing()):
      aux_logits = SegmentationHead(4 * self.width, self.num_classes, self.dropout, dtype=self.dtype,
                                    lowering=self.lowering, name="aux")(
                                        features["layer3"], train=train)
      aux_logits = resize_bilinear_align_corners(aux_logits.astype(jnp.float32), size)
    return (logits, aux_logits) if train else logits


def cross_entropy_ignore(logits: jax.Array, labels: jax.Array,
                         ignore_label: int = 255) -> jax.Array:
  """Mean softmax cross entropy over pixels whose label is not `ignore_label`.

  torch `nn.CrossEntropyLoss(ignore_index=255)` (mean over valid pixels); 0 when
  no pixel is valid (torch gives NaN). Labels must be in [0, C) or ignore_label.
  """
  if logits.shape[:-1] != labels.shape:
    raise UserError(f"logits {logits.shape} and labels {labels.shape} disagree: labels must "
                    f"be [N, H, W] at the logits' resolution")
  valid = labels != ignore_label
  log_probs = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
  picked = jnp.take_along_axis(log_probs, jnp.where(valid, labels, 0)[..., None], axis=-1)
  total = -jnp.sum(jnp.where(valid, picked[..., 0], 0.0))
  return total / jnp.maximum(jnp.sum(valid), 1)


def pspnet_loss(logits: jax.Array, aux_logits: jax.Array | None, labels: jax.Array,
                aux_weight: float = 0.4,
                ignore_label: int = 255) -> tuple[jax.Array, dict[str, jax.Array]]:
  """semseg `tool/train.py`: main_loss + aux_weight * aux_loss.

  Returns (loss, {"main_loss", "aux_loss"}) (aux_loss 0 without aux logits),
  ready for `jax.value_and_grad(..., has_aux=True)`.
  """
  main = cross_entropy_ignore(logits, labels, ignore_label)
  aux = (jnp.zeros((), jnp.float32) if aux_logits is None
         else cross_entropy_ignore(aux_logits, labels, ignore_label))
  return main + aux_weight * aux, {"main_loss": main, "aux_loss": aux}
