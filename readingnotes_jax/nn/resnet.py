"""ResNet-50/101/152 backbones for dense prediction: dilated, deep stem, frozen stages.

Matches hszhao/semseg `model/resnet.py` (`ResNet(Bottleneck, ..., deep_base=True)`)
with the dilation surgery of `model/pspnet.py`, and the Caffe PSPNet release
(hszhao/PSPNet `evaluation/prototxt/pspnet50_ADE20K_473.prototxt`) when
`stride_in_1x1=True`:
- stem: three 3x3 convs (64 stride 2, 64, 128; `deep_stem=True`) or one 7x7/2 conv
  (64), each with BN and ReLU, then a 3x3/2 max-pool with padding 1;
- four stages of Bottleneck blocks (1x1, 3x3, 1x1 with expansion 4), the first
  block of each with a 1x1 projection shortcut;
- output stride 8 / 16 / 32: the last two / last one / no stage(s) keep stride 1
  (3x3 conv and projection alike) and dilate every 3x3 conv of the stage
  (2 for stage 3, 4 for stage 4 at output stride 8; 2 for stage 4 at 16);
- convolutions without bias, initialised as torch's `kaiming_normal_(mode='fan_out',
  nonlinearity='relu')`; BatchNorm as torch (eps 1e-5, momentum 0.1).

Parameters are float32; `dtype` is the compute dtype (e.g. bfloat16).
"""
from collections.abc import Sequence
import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from readingnotes_jax.errors import UserError
from readingnotes_jax.nn.batch_norm import BatchNorm
from readingnotes_jax.nn.conv import conv2d
from readingnotes_jax.nn.pool import max_pool

# 14: one bottleneck per stage (timm's `resnet14t` depth), for tests and notebooks.
STAGE_BLOCKS = {14: (1, 1, 1, 1), 50: (3, 4, 6, 3), 101: (3, 4, 23, 3), 152: (3, 8, 36, 3)}
STAGE_NAMES = ("stem", "layer1", "layer2", "layer3", "layer4")
EXPANSION = 4

# torch.nn.init.kaiming_normal_(mode="fan_out", nonlinearity="relu"): N(0, 2 / fan_out).
kaiming_normal_fan_out = nn.initializers.variance_scaling(2.0, "fan_out", "normal")


def torch_default_kernel_init(key, shape, dtype=jnp.float32):
  """torch's Conv2d default, kaiming_uniform_(a=sqrt(5)): U(+-1/sqrt(fan_in))."""
  bound = 1.0 / math.sqrt(math.prod(shape[:-1]))
  return jax.random.uniform(key, shape, dtype, -bound, bound)


def stage_strides_and_dilations(output_stride: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
  """Strides and dilations of layer1..layer4 for an output stride of 8, 16 or 32."""
  table = {32: ((1, 2, 2, 2), (1, 1, 1, 1)),
           16: ((1, 2, 2, 1), (1, 1, 1, 2)),
           8: ((1, 2, 1, 1), (1, 1, 2, 4))}
  if output_stride not in table:
    raise UserError(f"ResNet output_stride must be 8, 16 or 32, got {output_stride}")
  return table[output_stride]


class Conv2D(nn.Module):
  """Convolution with a float32 HWIO `kernel` (and `bias`), computed in `dtype`.

  The kernel goes to `conv2d` in float32 (cast there), so in bfloat16 its
  gradient is float32, not rounded to bfloat16 and back.

  `padding` is the number of zeros on each side, as torch's Conv2d `padding`.
  `kernel_init` defaults to torch's Conv2d default; the bias is always torch's
  default, U(+-1/sqrt(fan_in)).
  """
  features: int
  kernel_size: int
  stride: int = 1
  dilation: int = 1
  padding: int = 0
  use_bias: bool = False
  dtype: Any = jnp.float32
  lowering: str | None = None
  kernel_init: Any = torch_default_kernel_init

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    shape = (self.kernel_size, self.kernel_size, x.shape[-1], self.features)
    kernel = self.param("kernel", self.kernel_init, shape, jnp.float32)
    y = conv2d(x.astype(self.dtype), kernel, stride=self.stride,
               dilation=self.dilation, padding=self.padding, lowering=self.lowering)
    if self.use_bias:
      bound = 1.0 / math.sqrt(math.prod(shape[:-1]))
      bias = self.param("bias", lambda k, s: jax.random.uniform(k, s, jnp.float32, -bound, bound),
                        (self.features,))
      y = y + bias.astype(self.dtype)
    return y


class Bottleneck(nn.Module):
  """1x1 -> 3x3 (dilated) -> 1x1 (x4 channels) with a projection shortcut if needed.

  semseg `model/resnet.py` `Bottleneck` puts the stride on the 3x3 conv
  (`stride_in_1x1=False`); the Caffe release on the first 1x1 (`True`).
  Submodules conv1/bn1, conv2/bn2, conv3/bn3, downsample_conv/downsample_bn.
  """
  planes: int
  stride: int = 1
  dilation: int = 1
  stride_in_1x1: bool = False
  frozen_bn: bool = False
  dtype: Any = jnp.float32
  lowering: str | None = None

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
    running = self.frozen_bn or not train
    conv = lambda *a, **k: Conv2D(*a, **k, dtype=self.dtype, lowering=self.lowering,
                                  kernel_init=kaiming_normal_fan_out)
    norm = lambda name: BatchNorm(dtype=self.dtype, name=name)
    stride_1x1, stride_3x3 = (self.stride, 1) if self.stride_in_1x1 else (1, self.stride)
    y = conv(self.planes, 1, stride=stride_1x1, name="conv1")(x)
    y = nn.relu(norm("bn1")(y, use_running_average=running))
    y = conv(self.planes, 3, stride=stride_3x3, dilation=self.dilation, padding=self.dilation,
             name="conv2")(y)
    y = nn.relu(norm("bn2")(y, use_running_average=running))
    y = conv(self.planes * EXPANSION, 1, name="conv3")(y)
    y = norm("bn3")(y, use_running_average=running)
    shortcut = x.astype(self.dtype)
    if self.stride != 1 or x.shape[-1] != self.planes * EXPANSION:
      shortcut = conv(self.planes * EXPANSION, 1, stride=self.stride, name="downsample_conv")(x)
      shortcut = norm("downsample_bn")(shortcut, use_running_average=running)
    return nn.relu(y + shortcut)


class Stem(nn.Module):
  """Deep stem (3x3/2 64, 3x3 64, 3x3 128) or classic 7x7/2 64; then 3x3/2 max-pool.

  Submodules conv1/bn1 (and conv2/bn2, conv3/bn3 for the deep stem).
  """
  deep: bool = True
  width: int = 64
  frozen_bn: bool = False
  dtype: Any = jnp.float32
  lowering: str | None = None

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
    running = self.frozen_bn or not train
    w = self.width
    layers = ([(w, 3, 2), (w, 3, 1), (2 * w, 3, 1)] if self.deep else [(w, 7, 2)])
    for i, (features, size, stride) in enumerate(layers, start=1):
      x = Conv2D(features, size, stride=stride, padding=size // 2, dtype=self.dtype,
                 lowering=self.lowering, kernel_init=kaiming_normal_fan_out,
                 name=f"conv{i}")(x)
      x = nn.relu(BatchNorm(dtype=self.dtype, name=f"bn{i}")(x, use_running_average=running))
    return max_pool(x, 3, 2, 1)


class Stage(nn.Module):
  """`blocks` Bottlenecks; the first has the stride, all have the dilation."""
  planes: int
  blocks: int
  stride: int = 1
  dilation: int = 1
  stride_in_1x1: bool = False
  frozen_bn: bool = False
  dtype: Any = jnp.float32
  lowering: str | None = None

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
    for i in range(self.blocks):
      x = Bottleneck(self.planes, stride=self.stride if i == 0 else 1, dilation=self.dilation,
                     stride_in_1x1=self.stride_in_1x1, frozen_bn=self.frozen_bn,
                     dtype=self.dtype, lowering=self.lowering, name=f"block{i}")(x, train=train)
    return x


class ResNet(nn.Module):
  """Bottleneck ResNet returning a dict of stage outputs.

  Attributes:
    layers: depth, 50, 101 or 152 (or 14, one block per stage, for quick runs).
    width: channels of the first stage's bottleneck (64 in every standard ResNet;
      stages and stem scale with it; smaller for tests and notebooks).
    output_stride: 8, 16 or 32 (see the module docstring).
    deep_stem: three 3x3 convs (semseg `deep_base=True`, Caffe PSPNet) or one 7x7.
    stride_in_1x1: stride on the first 1x1 (Caffe) instead of the 3x3 (semseg).
    outputs: stage outputs to return, from "stem", "layer1", ..., "layer4";
      stages after the last one asked for are not built.
    frozen_stages: -1 none; k >= 0 freezes the stem and layer1..layer k: their
      BatchNorms use running statistics and gradients stop at their output.
      (Exclude their parameters from weight decay in the optimizer too.)
    frozen_bn: every BatchNorm uses running statistics and is never updated.
    dtype: compute dtype; parameters and BN statistics stay float32.
    lowering: conv2d lowering, "xla", "matmul" or None (per platform).

  `__call__(images_nhwc, *, train)` returns {name: [N, H/s, W/s, C]} for `outputs`
  (stem 128 or 64 channels at stride 4, layer1..4: 256, 512, 1024, 2048, at width 64).
  """
  layers: int = 50
  width: int = 64
  output_stride: int = 32
  deep_stem: bool = True
  stride_in_1x1: bool = False
  outputs: Sequence[str] = ("layer4",)
  frozen_stages: int = -1
  frozen_bn: bool = False
  dtype: Any = jnp.float32
  lowering: str | None = None

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool) -> dict[str, jax.Array]:
    if self.layers not in STAGE_BLOCKS:
      raise UserError(f"ResNet layers must be one of {sorted(STAGE_BLOCKS)}, got {self.layers}")
    unknown = [name for name in self.outputs if name not in STAGE_NAMES]
    if unknown or not self.outputs:
      raise UserError(f"ResNet outputs {list(self.outputs)}: choose from {STAGE_NAMES}")
    if not -1 <= self.frozen_stages <= 4:
      raise UserError(f"ResNet frozen_stages must be -1..4, got {self.frozen_stages}")
    strides, dilations = stage_strides_and_dilations(self.output_stride)
    last = max(STAGE_NAMES.index(name) for name in self.outputs)
    frozen = lambda stage: self.frozen_bn or stage <= self.frozen_stages
    x = Stem(deep=self.deep_stem, width=self.width, frozen_bn=frozen(0), dtype=self.dtype,
             lowering=self.lowering, name="stem")(x, train=train)
    features = {}
    for stage in range(last + 1):
      if stage > 0:
        x = Stage(self.width * 2 ** (stage - 1), STAGE_BLOCKS[self.layers][stage - 1],
                  stride=strides[stage - 1], dilation=dilations[stage - 1],
                  stride_in_1x1=self.stride_in_1x1, frozen_bn=frozen(stage),
                  dtype=self.dtype, lowering=self.lowering,
                  name=STAGE_NAMES[stage])(x, train=train)
      if stage == self.frozen_stages:
        x = jax.lax.stop_gradient(x)
      features[STAGE_NAMES[stage]] = x
    return {name: features[name] for name in self.outputs}
