"""The networks of Interpretable CNNs (Zhang et al., CVPR 2018) and their ordinary counterparts.

As the authors' MatConvNet release builds them (zqs1022/interpretableCNN,
code/tool/nets/vgg_vd_16.m, alexnet.m, basic_net_functions/add_block_mask.m,
add_block.m, add_dropout.m, main/our_vl_simplenn.m `conv_mask`): the backbone's
conv layers up to the top one (relu5_3 of VGG-16, relu5 of AlexNet), then
- "conv6": a `conv_mask` layer, i.e. a mask on its input (the backbone's top
  maps), a 3x3 conv (512 -> 512, AlexNet 256 -> 256, padding 1) and a ReLU: its
  512 filters are the interpretable filters (the release's stability and figures
  read this layer: showResults.m `layerID` 14 / 6);
- a max pool (VGG-16 `pool5` 2x2/2, AlexNet `pool6` 3x3/2);
- "fc7": a `conv_mask` layer replacing fc6: a mask on the pooled conv6 maps, a
  conv as large as those maps (7x7 / 6x6 at 224 / 227 px, VALID) to 4096, ReLU,
  dropout 0.5;
- "fc8": 1x1 4096 -> 4096, ReLU, dropout 0.5; "fc9": 1x1 4096 -> classes.
The mask of a `conv_mask` layer multiplies its input x (after ReLU) and keeps
max(x . mask, 0) (`templates.masked`; no gradient through the mask). With
`formulation="release"` the mask is the release's (`templates.release_mask`,
centroid and a learned beta per channel, init 2.0: the layer's `weights{3}`, here
the parameter `beta` of module `mask6` / `mask7`); with "paper" the paper's
T_mu_hat at the argmax (`templates.paper_mask`, square maps only). The filter
loss on both masked inputs is the trainer's (`loss.filter_loss`).

`InterpretableResNet` puts the same two `conv_mask` layers (3x3, 1024 -> 1024 at
ResNet-50) between the shared `nn.resnet` ResNet's third and last stage, as the
PyTorch port does (ada-shen/ICNN model/resnet_50/resnet_50.py `mask1`, `mask2`),
then the last stage, global average pooling and a linear classifier.

`interpretable=False` gives the ordinary counterpart: the same layers and
parameters (less the masks' beta), no mask, and the trainer adds no filter loss.

Every module returns `(logits [N, classes], aux)` with aux:
- "filters": [N, h, w, C] conv6's maps after ReLU (before any mask), the filters
  `evaluation.location_instability` scores;
- "filter_stride": the stride of that map in input pixels;
- "mask_inputs": {"mask6": ..., "mask7": ...}, the inputs of the two masks (the
  maps the filter loss and the filter-to-category assignment read).
`feature_geometry()` gives (stride, offset) of the "filters" map: cell c (0-based)
is centred on pixel coordinate offset + stride * c, pixel i spanning [i, i + 1).
Parameters are float32; `dtype` is the compute dtype.
"""
from collections.abc import Sequence
import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from readingnotes_jax.errors import UserError
from readingnotes_jax.interpretable_cnn import templates
from readingnotes_jax.nn import resnet
from readingnotes_jax.nn.conv import conv2d
from readingnotes_jax.nn.pool import max_pool

FORMULATIONS = ("release", "paper")
# init_weight.m 'gaussian' (network_init.m's weightInitMethod): N(0, 0.01^2), biases 0.
# "he" (N(0, 2 / fan_in)) is for training the whole network from scratch.
INITS = ("gaussian", "he")
RELEASE_INIT_STD = 0.01
DROPOUT_RATE = 0.5  # add_dropout.m
# VGG-16's blocks: (convs, channels as a multiple of conv1's `width`), a 2x2/2 pool after
# each but the last.
VGG16_BLOCKS = ((2, 1), (2, 2), (3, 4), (3, 8), (3, 8))
# Caffe AlexNet (imagenet-caffe-alex.mat): (name, channels / 96 * width, kernel, stride,
# padding, groups); LRN and a 3x3/2 pool after conv1 and conv2.
ALEXNET_CONVS = (("conv1", 96, 11, 4, 0, 1), ("conv2", 256, 5, 1, 2, 2),
                 ("conv3", 384, 3, 1, 1, 1), ("conv4", 384, 3, 1, 1, 2),
                 ("conv5", 256, 3, 1, 1, 2))
LRN_SIZE, LRN_KAPPA, LRN_ALPHA, LRN_BETA = 5, 1.0, 1e-4, 0.75  # Caffe's norm1 / norm2.


def check_formulation(formulation: str) -> None:
  if formulation not in FORMULATIONS:
    raise UserError(f"unknown filter-loss formulation {formulation!r}: use one of "
                    f"{', '.join(FORMULATIONS)}")


def receptive_field_geometry(layers: Sequence[tuple[int, int, int]]) -> tuple[int, float]:
  """(stride, offset) of a chain of (kernel, stride, padding) layers: output cell c of the
  last layer is centred on input pixel coordinate offset + stride * c (pixel i spans
  [i, i + 1), so the centre of pixel 0 is 0.5)."""
  stride, offset = 1, 0.5
  for kernel, step, padding in layers:
    offset += stride * ((kernel - 1) / 2 - padding)
    stride *= step
  return stride, offset


def _kernel_init(init: str):
  if init not in INITS:
    raise UserError(f"unknown model.initializer {init!r}: use one of {', '.join(INITS)}")
  if init == "gaussian":
    return nn.initializers.normal(RELEASE_INIT_STD)
  return nn.initializers.variance_scaling(2.0, "fan_in", "normal")


class Conv(nn.Module):
  """Convolution with bias (MatConvNet `conv`: zero padding on each side, bias init 0),
  `groups` as Caffe's (the input and output channels split into equal groups)."""
  features: int
  kernel_size: tuple[int, int]
  stride: int = 1
  padding: int = 0
  groups: int = 1
  initializer: str = "gaussian"
  dtype: Any = jnp.float32
  lowering: str | None = None

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    cin = x.shape[-1]
    if cin % self.groups or self.features % self.groups:
      raise UserError(f"conv with {self.groups} groups needs channels divisible by it, got "
                      f"{cin} -> {self.features}")
    shape = (*self.kernel_size, cin // self.groups, self.features)
    kernel = self.param("kernel", _kernel_init(self.initializer), shape, jnp.float32)
    bias = self.param("bias", nn.initializers.zeros, (self.features,), jnp.float32)
    x = x.astype(self.dtype)
    step = self.features // self.groups
    parts = [conv2d(xg, kernel[..., g * step:(g + 1) * step], stride=self.stride,
                    padding=self.padding, lowering=self.lowering)
             for g, xg in enumerate(jnp.split(x, self.groups, axis=-1))]
    y = parts[0] if self.groups == 1 else jnp.concatenate(parts, axis=-1)
    return y + bias.astype(self.dtype)


class Mask(nn.Module):
  """The mask of a `conv_mask` layer on its input x [N, H, W, C]: max(x . mask, 0).

  "release": `templates.release_mask` with the learned per-channel `beta` (init
  2.0, add_block_mask.m `alphaInit`); "paper": `templates.paper_mask` (T_mu_hat).
  """
  formulation: str = "release"

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    check_formulation(self.formulation)
    if self.formulation == "release":
      beta = self.param("beta", nn.initializers.constant(templates.RELEASE_BETA_INIT),
                        (x.shape[-1],), jnp.float32)
      mask = templates.release_mask(x, beta)
    else:
      mask = templates.paper_mask(x)
    return templates.masked(x, mask)


def _lrn(x: jax.Array) -> jax.Array:
  """Caffe's cross-channel LRN (MatConvNet vl_nnnormalize [5 1 1e-4/5 0.75]):
  x / (1 + 1e-4 / 5 * sum of x^2 over 5 neighbouring channels)^0.75, in float32."""
  x32 = x.astype(jnp.float32)
  half = LRN_SIZE // 2
  squares = jnp.pad(jnp.square(x32), ((0, 0), (0, 0), (0, 0), (half, half)))
  window = sum(squares[..., i:i + x.shape[-1]] for i in range(LRN_SIZE))
  return (x32 / (LRN_KAPPA + LRN_ALPHA / LRN_SIZE * window) ** LRN_BETA).astype(x.dtype)


def _release_head(x: jax.Array, *, train: bool, num_classes: int, channels: int,
                  fc_channels: int, pool: tuple[int, int], interpretable: bool, formulation: str,
                  initializer: str, dropout: float, dtype: Any, lowering: str | None
                  ) -> tuple[jax.Array, dict[str, Any]]:
  """The release's head on the backbone's top maps x (after ReLU), built inside the calling
  module's `nn.compact`: conv6 (a `conv_mask` layer), `pool` (window, stride), fc7 (a
  `conv_mask` layer as large as the pooled maps), fc8, fc9."""
  conv = lambda *a, **k: Conv(*a, **k, initializer=initializer, dtype=dtype, lowering=lowering)
  mask = (lambda name: Mask(formulation, name=name)) if interpretable else (
      lambda name: lambda v: v)
  inputs = {"mask6": x}
  filters = nn.relu(conv(channels, (3, 3), padding=1, name="conv6")(mask("mask6")(x)))
  window, stride = pool
  if min(filters.shape[1:3]) < window:
    raise UserError(f"conv6 maps {filters.shape[1:3]} are smaller than the {window}x{window} "
                    "pool: use larger images")
  pooled = max_pool(filters, window, stride, 0)
  inputs["mask7"] = pooled
  y = conv(fc_channels, pooled.shape[1:3], name="fc7")(mask("mask7")(pooled))
  y = nn.Dropout(dropout, deterministic=not train)(nn.relu(y))
  y = nn.relu(conv(fc_channels, (1, 1), name="fc8")(y))
  y = nn.Dropout(dropout, deterministic=not train)(y)
  logits = conv(num_classes, (1, 1), name="fc9")(y)[:, 0, 0, :].astype(jnp.float32)
  return logits, {"filters": filters, "mask_inputs": inputs}


def _check_width(name: str, width: int, base: int, multiples: Sequence[int]) -> None:
  if width < 1 or any(m * width % base for m in multiples):
    raise UserError(f"{name} width={width}: every layer's channels ({', '.join(map(str, multiples))}"
                    f" x width / {base}) must be whole: use a multiple of {base // math.gcd(base, *multiples)}")


class VGG16(nn.Module):
  """VGG-16 with the release's head (vgg_vd_16.m); see the module docstring.

  Attributes:
    num_classes: 1 for one category against negatives (a logistic output), else K.
    width: channels of conv1_1 (64: VGG-16); every layer scales with it (conv6 8x,
      fc7/fc8 64x): a narrower VGG for CPU runs.
    interpretable: False gives the ordinary VGG-16 (no masks).
    formulation: the masks, "release" or "paper".
    initializer: "gaussian" (the release's N(0, 0.01)) or "he".
    input_scale: the input (RGB in [0, 255] minus the mean pixel, as the release's) is
      multiplied by it first: 1 as the release (ImageNet weights expect that range); about
      1 / 64 gives unit-variance inputs for He-initialised training from scratch.
    dropout: the rate of fc7's and fc8's dropout.
    dtype, lowering: compute dtype, `nn.conv.conv2d` lowering.
  """
  num_classes: int = 1
  width: int = 64
  interpretable: bool = True
  formulation: str = "release"
  initializer: str = "gaussian"
  input_scale: float = 1.0
  dropout: float = DROPOUT_RATE
  dtype: Any = jnp.float32
  lowering: str | None = None

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool) -> tuple[jax.Array, dict[str, Any]]:
    check_formulation(self.formulation)
    _check_width("VGG16", self.width, 1, (1,))
    if min(x.shape[1:3]) < 32:
      raise UserError(f"VGG16 needs images of at least 32x32 (five 2x2 pools), got {x.shape[1:3]}")
    x = (x * self.input_scale).astype(self.dtype)
    for block, (convs, multiple) in enumerate(VGG16_BLOCKS, start=1):
      for i in range(1, convs + 1):
        x = nn.relu(Conv(self.width * multiple, (3, 3), padding=1, initializer=self.initializer,
                         dtype=self.dtype, lowering=self.lowering,
                         name=f"conv{block}_{i}")(x))
      if block < len(VGG16_BLOCKS):
        x = max_pool(x, 2, 2, 0)
    logits, aux = _release_head(
        x, train=train, num_classes=self.num_classes, channels=8 * self.width,
        fc_channels=64 * self.width, pool=(2, 2), interpretable=self.interpretable,
        formulation=self.formulation, initializer=self.initializer, dropout=self.dropout,
        dtype=self.dtype, lowering=self.lowering)
    return logits, {**aux, "filter_stride": self.feature_geometry()[0]}

  def feature_geometry(self) -> tuple[int, float]:
    """(16, 8.0): thirteen 3x3 convs with padding 1, four 2x2/2 pools, conv6."""
    layers = []
    for block, (convs, _) in enumerate(VGG16_BLOCKS, start=1):
      layers += [(3, 1, 1)] * convs + ([(2, 2, 0)] if block < len(VGG16_BLOCKS) else [])
    return receptive_field_geometry(layers + [(3, 1, 1)])


class AlexNet(nn.Module):
  """Caffe's AlexNet (LRN, grouped conv2/4/5) with the release's head (alexnet.m).

  Attributes as `VGG16`; `width` is conv1's channels (96: AlexNet), a multiple of
  3 (the others are 256, 384, 384, 256 x width / 96; conv6 256, fc 4096 x width / 96).
  """
  num_classes: int = 1
  width: int = 96
  interpretable: bool = True
  formulation: str = "release"
  initializer: str = "gaussian"
  input_scale: float = 1.0
  dropout: float = DROPOUT_RATE
  dtype: Any = jnp.float32
  lowering: str | None = None

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool) -> tuple[jax.Array, dict[str, Any]]:
    check_formulation(self.formulation)
    _check_width("AlexNet", self.width, 96, (96, 256, 384, 4096))
    if min(x.shape[1:3]) < 67:
      raise UserError(f"AlexNet needs images of at least 67x67, got {x.shape[1:3]}")
    x = (x * self.input_scale).astype(self.dtype)
    for name, channels, kernel, stride, padding, groups in ALEXNET_CONVS:
      x = nn.relu(Conv(channels * self.width // 96, (kernel, kernel), stride=stride,
                       padding=padding, groups=groups, initializer=self.initializer, dtype=self.dtype,
                       lowering=self.lowering, name=name)(x))
      if name in ("conv1", "conv2"):
        x = max_pool(_lrn(x), 3, 2, 0)
    logits, aux = _release_head(
        x, train=train, num_classes=self.num_classes, channels=256 * self.width // 96,
        fc_channels=4096 * self.width // 96, pool=(3, 2), interpretable=self.interpretable,
        formulation=self.formulation, initializer=self.initializer, dropout=self.dropout,
        dtype=self.dtype, lowering=self.lowering)
    return logits, {**aux, "filter_stride": self.feature_geometry()[0]}

  def feature_geometry(self) -> tuple[int, float]:
    """(16, 17.5): conv1 11x11/4, pool 3x3/2, conv2 5x5 (pad 2), pool, conv3-5, conv6."""
    return receptive_field_geometry([(11, 4, 0), (3, 2, 0), (5, 1, 2), (3, 2, 0)]
                                    + [(3, 1, 1)] * 4)


class InterpretableResNet(nn.Module):
  """ResNet (`nn.resnet`, torchvision's 7x7 stem, stride on the 3x3) with two `conv_mask`
  layers before the last stage (ada-shen/ICNN resnet_50.py); see the module docstring.

  Attributes as `VGG16`; `layers` (50: ResNet-50) and `width` (64) as `nn.resnet.ResNet`.
  The masked convs keep layer3's channels (16 x width); BatchNorm statistics are the
  "batch_stats" collection.
  """
  num_classes: int = 1
  layers: int = 50
  width: int = 64
  interpretable: bool = True
  formulation: str = "release"
  dtype: Any = jnp.float32
  lowering: str | None = None

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool) -> tuple[jax.Array, dict[str, Any]]:
    check_formulation(self.formulation)
    if min(x.shape[1:3]) < 32:
      raise UserError(f"InterpretableResNet needs images of at least 32x32, got {x.shape[1:3]}")
    x = resnet.ResNet(layers=self.layers, width=self.width, deep_stem=False,
                      outputs=("layer3",), dtype=self.dtype, lowering=self.lowering,
                      name="backbone")(x, train=train)["layer3"]
    mask = (lambda name: Mask(self.formulation, name=name)) if self.interpretable else (
        lambda name: lambda v: v)
    conv = lambda name: resnet.Conv2D(x.shape[-1], 3, padding=1, use_bias=True,
                                      dtype=self.dtype, lowering=self.lowering,
                                      kernel_init=resnet.kaiming_normal_fan_out, name=name)
    inputs = {"mask6": x}
    filters = nn.relu(conv("conv6")(mask("mask6")(x)))
    inputs["mask7"] = filters
    y = nn.relu(conv("conv7")(mask("mask7")(filters)))
    y = resnet.Stage(8 * self.width, resnet.STAGE_BLOCKS[self.layers][3], stride=2,
                     dtype=self.dtype, lowering=self.lowering, name="layer4")(y, train=train)
    pooled = jnp.mean(y.astype(jnp.float32), axis=(1, 2))
    logits = nn.Dense(self.num_classes, name="fc")(pooled)
    return logits, {"filters": filters, "mask_inputs": inputs,
                    "filter_stride": self.feature_geometry()[0]}

  def feature_geometry(self) -> tuple[int, float]:
    """(16, 0.5): 7x7/2 stem (pad 3), 3x3/2 pool (pad 1), layer2's and layer3's 3x3/2."""
    return receptive_field_geometry([(7, 2, 3), (3, 2, 1), (3, 2, 1), (3, 2, 1), (3, 1, 1)])


ARCHITECTURES = {"vgg16": VGG16, "alexnet": AlexNet, "resnet": InterpretableResNet}
