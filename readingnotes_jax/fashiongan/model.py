"""FashionGAN's networks (Zhu et al., ICCV 2017), NHWC, as the authors' Torch release builds them.

zhusz/ICCV17-fashionGAN:
- `DesignCoder`: language/train_te.py `define_network`, a 2-layer tanh RNN (hidden 100)
  over the one-hot words whose last hidden state of the top layer is the design coding d,
  with a linear head per attribute (category 19, colour 17, gender 2, sleeve 4).
- `ShapeGenerator`, `ShapeDiscriminator`: sr1/net_graph_sr1.lua `netG`, `netD` (G_shape,
  D_shape).
- `ImageGenerator`, `ImageDiscriminator`: ih1/net_graph_ih1.lua (G_image, D_image, the
  submitted encoder-decoder).
- `UNetImageGenerator`, `PatchImageDiscriminator`: ih1_skip/net_graph_ih1.lua, the U-Net
  with a patch discriminator that demo_release/demo_full.lua runs.

Layers as the release's: convolutions without bias (sr1 calls `m:noBias()`; ih1 and
ih1_skip zero every bias before each forward pass, so they are always 0), BatchNorm
(torch semantics, `readingnotes_jax.nn.batch_norm`), ReLU in decoders, LeakyReLU 0.2
elsewhere. `SpatialFullConvolution` is `conv_transpose` with its kernel laid out
[kh, kw, Cin, Cout]. Initialization (`weights_init` of each .lua graph): kernels
N(0, std) with std 0.02 / 16 in sr1 and ih1 and 0.02 in ih1_skip (`init_std`), BatchNorm
scales N(1, 0.02) and offsets 0: build variables with `initialize`, which redraws the
scales that `model.init` sets to 1.

Channel k of segmentation maps and of the 4-channel spatial constraint holds label /
merged class k (`readingnotes_jax.fashiongan.compose`; the release's order differs by a
permutation, `compose.RELEASE_LABEL_ORDER`). Discriminators return logits: the release's
final `nn.Sigmoid` is folded into the BCE of `losses`.

Parameters at 128 x 128 (tests/fashiongan counts them from the .lua layer lists): G_shape
18,114,512, D_shape 13,086,456, G_image 29,869,776 (compositional: + 18,432), D_image
26,795,512, U-Net G_image 42,650,192, patch D_image 2,934,520; `DesignCoder` 88,642 with
the release's 539 words + the unknown word.

`size` (128, the release's, or 64 for CPU runs): at 64 each encoder and discriminator
drops its layer from 64 x 64 to 32 x 32 and each decoder its layer from 32 x 32 to 64 x 64,
the next layer taking the dropped one's input channels; everything at 16 x 16 and below
(the spatial constraint at 8 x 8, the text at 4 x 4, the U-Net bottleneck at 1 x 1, the
14 x 14 patches) is the release's. `features` (ngf = ndf = 64) scales every width.

Inputs: z [B, 80] ~ N(0, 1), d [B, 100], the shape condition [B, 8, 8, 4]
(`compose.spatial_constraint`), the image condition [B, S, S, 3]
(`compose.colour_condition`). `train=True` uses batch statistics (and dropout in the
U-Net, rng "dropout"): the release's demo runs its generators that way.
"""
import functools
import math
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax import traverse_util

from readingnotes_jax.errors import UserError
from readingnotes_jax.fashiongan import compose
from readingnotes_jax.nn import conv
from readingnotes_jax.nn.batch_norm import BatchNorm
from readingnotes_jax.nn.conv import conv2d

SIZES = (64, 128)
NOISE_SIZE = 80  # config_sr1.lua nz
CODING_SIZE = 100  # nt_input
REDUCED_CODING_SIZE = 20  # nt
RELEASE_INIT_STD = 0.02 / 16  # sr1 and ih1 weights_init
UNET_INIT_STD = 0.02  # ih1_skip weights_init
BN_SCALE_STD = 0.02
LEAK = 0.2
DROPOUT_RATE = 0.5  # ih1_skip decoder d1-d3
# language/train_te.py: (name, classes) of the attribute heads, in its order.
RELEASE_ATTRIBUTES = (("category", 19), ("colour", 17), ("gender", 2), ("sleeve", 4))
RNN_HIDDEN = 100
RNN_LAYERS = 2


TRANSPOSE_LOWERINGS = ("dilated", "phases", "patches")
# Kernel taps feeding output phase a (rows 2m + a) of a stride-2, 4-tap, padding-1 transposed
# convolution, from inputs m - 1, m (a = 0) and m, m + 1 (a = 1): y[2m] = x[m-1] W[3] +
# x[m] W[1], y[2m+1] = x[m] W[2] + x[m+1] W[0].
_PHASE_TAPS = ((3, 1), (2, 0))


def conv_transpose(x: jax.Array, kernel: jax.Array, stride: int, padding: int,
                   lowering: str | None = None) -> jax.Array:
  """torch `SpatialFullConvolution`: y[s i - p + k] += x[i] @ kernel[k] (both axes), NHWC.

  `kernel` [kh, kw, Cin, Cout]; output (H - 1) s + kh - 2p. Three lowerings, equal up to
  float rounding: "dilated", the correlation of x dilated by `stride` and padded by
  kh - 1 - p with the flipped kernel (any shape); "phases" (the release's only upsampling:
  4 x 4, stride 2, padding 1), one 2 x 2 convolution of x padded by 1 whose 4 x Cout
  channels are the four output phases, interleaved; "patches", the "dilated" correlation as
  one GEMM of its taps (`nn.conv.conv2d_patches`, any shape). XLA:CPU runs convolutions with
  dilated inputs on a slow generic path: forward + backward of [16, 8, 8, 320] -> [16, 16,
  16, 128] took 0.88 s "dilated" and 0.13 s "phases" on a 2-core Sapphire Rapids. At few
  output positions the weights dominate and "phases" pays for transposing its kernel
  (forward + backward, 1024 -> 512, batch 4, jax 0.10.2 with `individual_dot,reduce`, ms
  "phases" / "patches": from 1 x 1 121 / 12, 2 x 2 122 / 19, 4 x 4 142 / 52, 8 x 8 84 / 113;
  batch 16, 256 -> 128 from 2 x 2 4.1 / 3.7, from 4 x 4 6.6 / 12.8). None picks "patches"
  where `conv.patches_preferred` (CPU, few output positions in the batch), else "phases"
  where it applies, else "dilated".
  """
  kh, kw = kernel.shape[:2]
  phases = (kh, kw, stride, padding) == (4, 4, 2, 1)
  n, h, w, cin = x.shape
  if lowering is None:
    positions = n * ((h - 1) * stride + kh - 2 * padding) * ((w - 1) * stride + kw - 2 * padding)
    lowering = ("patches" if conv.patches_preferred(positions, x.dtype, kernel.size) else
                "phases" if phases else "dilated")
  if lowering not in TRANSPOSE_LOWERINGS or (lowering == "phases" and not phases):
    raise UserError(f"conv_transpose lowering {lowering!r} for a {kh}x{kw} kernel, stride "
                    f"{stride}, padding {padding}: use one of {TRANSPOSE_LOWERINGS} ('phases' "
                    "only for 4x4, stride 2, padding 1)")
  if lowering == "dilated":
    return jax.lax.conv_general_dilated(
        x, jnp.flip(kernel, (0, 1)).astype(x.dtype), (1, 1),
        ((kh - 1 - padding,) * 2, (kw - 1 - padding,) * 2), lhs_dilation=(stride, stride),
        dimension_numbers=("NHWC", "HWIO", "NHWC"))
  if lowering == "patches":
    return conv.conv2d_patches(x, kernel, pad_h=(kh - 1 - padding,) * 2,
                               pad_w=(kw - 1 - padding,) * 2, input_dilation=stride,
                               flip_kernel=True)
  cout = kernel.shape[-1]
  taps = [jnp.array(t) for t in _PHASE_TAPS]
  # [2, 2, Cin, 2 (a), 2 (b), Cout]: the 2 x 2 kernel of output phase (a, b).
  phase_kernels = jnp.stack([jnp.stack([kernel[taps[a]][:, taps[b]] for b in range(2)], -2)
                             for a in range(2)], -3)
  full = conv2d(jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0))),
                phase_kernels.reshape(2, 2, cin, 4 * cout), padding=0)
  full = full.reshape(n, h + 1, w + 1, 2, 2, cout)
  rows = [jnp.stack([full[:, a:a + h, b:b + w, a, b] for b in range(2)], 3) for a in range(2)]
  return jnp.stack(rows, 2).reshape(n, 2 * h, 2 * w, cout)


def normal_init(std: float):
  """N(0, std^2) initializer drawn as one flat vector, then reshaped: the same distribution as
  `nn.initializers.normal`, but XLA:CPU compiles the 1-D draw 4-5x faster than a 4-D one
  (a [4, 4, 128, 64] kernel: 2.3 s against 9.9 s on a loaded 2-core CPU)."""
  def init(key, shape, dtype=jnp.float32):
    return (std * jax.random.normal(key, (math.prod(shape),), dtype)).reshape(shape)
  return init


class Conv(nn.Module):
  """`nn.SpatialConvolution` without bias (or, `transpose`, `nn.SpatialFullConvolution`)."""
  features: int
  kernel_size: int
  stride: int = 1
  padding: int = 0
  transpose: bool = False
  init_std: float = RELEASE_INIT_STD
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    kernel = self.param("kernel", normal_init(self.init_std),
                        (self.kernel_size, self.kernel_size, x.shape[-1], self.features),
                        jnp.float32)
    x = x.astype(self.dtype)
    if self.transpose:
      return conv_transpose(x, kernel, self.stride, self.padding)
    return conv2d(x, kernel, stride=self.stride, padding=self.padding)


def _lrelu(x: jax.Array) -> jax.Array:
  return nn.leaky_relu(x, LEAK)


def _check_size(size: int) -> None:
  if size not in SIZES:
    raise UserError(f"FashionGAN size {size}: use one of {SIZES} (128 is the release's)")


def _check_inputs(name: str, z: jax.Array | None, d: jax.Array, condition: jax.Array,
                  condition_shape: Sequence[int], noise_size: int) -> None:
  batch = d.shape[0]
  if z is not None and z.shape != (batch, noise_size):
    raise UserError(f"{name}: z has shape {z.shape}, expected [{batch}, {noise_size}]")
  if d.shape != (batch, CODING_SIZE):
    raise UserError(f"{name}: d has shape {d.shape}, expected [B, {CODING_SIZE}] (the design "
                    "coding)")
  if tuple(condition.shape) != (batch, *condition_shape):
    raise UserError(f"{name}: condition has shape {condition.shape}, expected "
                    f"[{batch}, {', '.join(map(str, condition_shape))}]")


class _Layers(nn.Module):
  """Shared plumbing: conv -> optional BatchNorm -> activation, and the text path."""
  features: int = 64
  init_std: float = RELEASE_INIT_STD
  dtype: Any = jnp.float32

  def conv(self, x, features, kernel, stride, padding, name, *, train, bn=True,
           act=_lrelu, transpose=False):
    x = Conv(features, kernel, stride, padding, transpose, self.init_std, self.dtype,
             name=name)(x)
    if bn:
      x = BatchNorm(dtype=self.dtype, name=f"{name}_bn")(x, use_running_average=not train)
    return act(x) if act is not None else x

  def text(self, d, name, *, train, bn):
    """conv(nt_input, nt, 1, 1) [- bn] - lrelu on d as a [B, 1, 1, 100] map."""
    return self.conv(d[:, None, None, :], REDUCED_CODING_SIZE, 1, 1, 0, name, train=train,
                     bn=bn)


class ShapeGenerator(_Layers):
  """G_shape, sr1/net_graph_sr1.lua `netG`: (z, d, down m(S0)) -> 7-label logits [B, S, S, 7].

  [z, lrelu(W d)] (100 @ 1x1) -> deconv 1024 @ 4 -> 512 @ 8; condition -> conv3 64 ->
  128 @ 8; join (640) -> deconv 256 @ 16 -> conv3 512, 512, 256 -> deconv 128 @ 32 ->
  64 @ 64 -> 7 @ 128 (no BN, no activation: logits). BN + ReLU on deconvs, BN + LReLU on
  convs (condition and middle).
  """
  size: int = 128
  num_labels: int = compose.NUM_LABELS
  noise_size: int = NOISE_SIZE

  @nn.compact
  def __call__(self, z, d, condition, *, train: bool):
    _check_size(self.size)
    _check_inputs("ShapeGenerator", z, d, condition,
                  (compose.CONSTRAINT_SIZE, compose.CONSTRAINT_SIZE,
                   len(compose.MERGED_CLASS_NAMES)), self.noise_size)
    f = self.features
    deconv = lambda x, c, name: self.conv(x, c, 4, 2, 1, name, train=train, act=nn.relu,
                                          transpose=True)
    h1 = self.text(d, "h1", train=train, bn=False)
    x = jnp.concatenate([z[:, None, None, :].astype(h1.dtype), h1], axis=-1)
    x = self.conv(x, f * 16, 4, 1, 0, "g1", train=train, act=nn.relu, transpose=True)
    x = deconv(x, f * 8, "g_extra")
    c = self.conv(condition, f, 3, 1, 1, "f1", train=train)
    c = self.conv(c, f * 2, 3, 1, 1, "f_extra", train=train)
    x = deconv(jnp.concatenate([x, c.astype(x.dtype)], axis=-1), f * 4, "g2")
    x = self.conv(x, f * 8, 3, 1, 1, "m1", train=train)
    x = self.conv(x, f * 8, 3, 1, 1, "m2", train=train)
    x = self.conv(x, f * 4, 3, 1, 1, "m3", train=train)
    x = deconv(x, f * 2, "g3")
    if self.size == 128:
      x = deconv(x, f, "g4")
    x = self.conv(x, self.num_labels, 4, 2, 1, "g5", train=train, bn=False, act=None,
                  transpose=True)
    return x.astype(jnp.float32)


class ShapeDiscriminator(_Layers):
  """D_shape, sr1/net_graph_sr1.lua `netD`: (segmentation, d, down m(S0)) -> logits [B].

  The input map (one-hot for real segmentations, G_shape's logits for fakes) first goes
  through a softmax over labels, as the release's `cudnn.SpatialSoftMax` (which also
  softens the one-hot maps). -> conv4/2 64 (no BN) @ 64 -> 128 @ 32 -> 256 @ 16 -> conv3
  512, 512, 256 -> conv4/2 512 @ 8; the condition (conv3 64 without BN, then 128 with BN)
  joins at 8 x 8 (640) -> conv4/2 512 @ 4; the text (1x1 conv 100 -> 20, BN, LReLU)
  replicated over 4 x 4 joins there (532) -> 1x1 conv 512 -> conv4 (valid) 1.
  """
  size: int = 128
  num_labels: int = compose.NUM_LABELS

  @nn.compact
  def __call__(self, segmentation, d, condition, *, train: bool):
    _check_size(self.size)
    _check_inputs("ShapeDiscriminator", None, d, condition,
                  (compose.CONSTRAINT_SIZE, compose.CONSTRAINT_SIZE,
                   len(compose.MERGED_CLASS_NAMES)), 0)
    if segmentation.shape[1:] != (self.size, self.size, self.num_labels):
      raise UserError(f"ShapeDiscriminator: segmentation has shape {segmentation.shape}, "
                      f"expected [B, {self.size}, {self.size}, {self.num_labels}]")
    f = self.features
    down = lambda x, c, name, bn=True: self.conv(x, c, 4, 2, 1, name, train=train, bn=bn)
    x = jax.nn.softmax(segmentation.astype(jnp.float32), axis=-1)
    x = down(x, f, "d1", bn=False)
    if self.size == 128:
      x = down(x, f * 2, "d2")
    x = down(x, f * 4, "d3")
    x = self.conv(x, f * 8, 3, 1, 1, "mid1", train=train)
    x = self.conv(x, f * 8, 3, 1, 1, "mid2", train=train)
    x = self.conv(x, f * 4, 3, 1, 1, "mid3", train=train)
    x = down(x, f * 8, "d4")
    c = self.conv(condition, f, 3, 1, 1, "c1", train=train, bn=False)
    c = self.conv(c, f * 2, 3, 1, 1, "c2", train=train)
    x = down(jnp.concatenate([x, c.astype(x.dtype)], axis=-1), f * 8, "d_extra")
    return _text_head(self, x, d, train)


def _text_head(layers: _Layers, x, d, train):
  """The release's end of D: text b1 replicated over x's grid, join, 1x1 conv, BN, LReLU,
  then conv4 (valid) to 1 channel; logits [B] (4 x 4 grid) or [B, h, w] (patches)."""
  b1 = layers.text(d, "b1", train=train, bn=True)
  b1 = jnp.broadcast_to(b1, (x.shape[0], x.shape[1], x.shape[2], b1.shape[-1]))
  x = layers.conv(jnp.concatenate([x, b1.astype(x.dtype)], axis=-1), x.shape[-1], 1, 1, 0,
                  "d_extra_b1", train=train)
  logits = layers.conv(x, 1, 4, 1, 0, "d5", train=train, bn=False, act=None)
  return logits[:, 0, 0, 0].astype(jnp.float32)


def _rgb_output(x, compositional, masks, num_labels):
  """tanh of the last layer's 3 channels, or (compositional) of its 3 L channels composed by
  `masks` [B, S, S, L] (`compose.compose_regions`)."""
  x = jnp.tanh(x.astype(jnp.float32))
  if not compositional:
    return x
  renderings = x.reshape(*x.shape[:3], num_labels, 3)
  if masks is None or masks.shape != renderings.shape[:-1]:
    raise UserError(f"compositional G_image needs region masks [B, S, S, {num_labels}] "
                    f"(compose.region_masks of the segmentation), got "
                    f"{None if masks is None else masks.shape}")
  return compose.compose_regions(renderings, masks)


class ImageGenerator(_Layers):
  """G_image, ih1/net_graph_ih1.lua `netG`: (z, d, colour condition) -> image [B, S, S, 3].

  [z, lrelu(W d)] -> deconv 1024 @ 4 -> 512 @ 8 -> 512 @ 16; condition -> conv4/2 64 @ 64
  -> 128 @ 32 -> 256 @ 16 (BN, LReLU); join (768) -> deconv 512 @ 32 -> conv3 512, 512,
  512, 256, 128 -> deconv 64 @ 64 -> 3 @ 128 -> tanh. The output is relative to the data
  set's mean image (ih1/train.lua trains on `ih`, which `+ ih_mean` displays).

  `compositional=True` (paper section 3.3, not in the release): the last layer gives 3
  channels per label, each region's rendering, composed under `masks` [B, S, S, 7].
  `noise=False` (not the release): z is replaced by zeros, so the image is a function of
  (d, condition) alone (the same parameters either way).
  """
  size: int = 128
  noise_size: int = NOISE_SIZE
  compositional: bool = False
  num_labels: int = compose.NUM_LABELS
  noise: bool = True

  @nn.compact
  def __call__(self, z, d, condition, masks=None, *, train: bool):
    _check_size(self.size)
    _check_inputs("ImageGenerator", z, d, condition, (self.size, self.size, 3),
                  self.noise_size)
    z = z if self.noise else jnp.zeros_like(z)
    f = self.features
    deconv = lambda x, c, name: self.conv(x, c, 4, 2, 1, name, train=train, act=nn.relu,
                                          transpose=True)
    down = lambda x, c, name: self.conv(x, c, 4, 2, 1, name, train=train)
    h1 = self.text(d, "h1", train=train, bn=False)
    x = jnp.concatenate([z[:, None, None, :].astype(h1.dtype), h1], axis=-1)
    x = self.conv(x, f * 16, 4, 1, 0, "g1", train=train, act=nn.relu, transpose=True)
    x = deconv(x, f * 8, "g_extra")
    x = deconv(x, f * 8, "g2")
    c = down(condition, f, "f1")
    if self.size == 128:
      c = down(c, f * 2, "f_extra")
    c = down(c, f * 4, "f2")
    x = deconv(jnp.concatenate([x, c.astype(x.dtype)], axis=-1), f * 8, "g3")
    for name, width in (("mid1", 8), ("mid2", 8), ("mid3", 8), ("mid4", 4), ("mid5", 2)):
      x = self.conv(x, f * width, 3, 1, 1, name, train=train)
    if self.size == 128:
      x = deconv(x, f, "g4")
    out = 3 * self.num_labels if self.compositional else 3
    x = self.conv(x, out, 4, 2, 1, "g5", train=train, bn=False, act=None, transpose=True)
    return _rgb_output(x, self.compositional, masks, self.num_labels)


class ImageDiscriminator(_Layers):
  """D_image, ih1/net_graph_ih1.lua `netD`: (image, d, colour condition) -> logits [B].

  Image and condition each: conv4/2 64 (no BN) @ 64 -> 128 @ 32 -> 256 @ 16; join (512) ->
  five conv3 512 -> conv4/2 512 @ 8 -> 1024 @ 4; text replicated over 4 x 4 joins (1044) ->
  1x1 conv 1024 -> conv4 (valid) 1.
  """
  size: int = 128

  @nn.compact
  def __call__(self, image, d, condition, *, train: bool):
    _check_size(self.size)
    _check_inputs("ImageDiscriminator", None, d, condition, (self.size, self.size, 3), 0)
    _check_image("ImageDiscriminator", image, self.size)
    f = self.features
    down = lambda x, c, name, bn=True: self.conv(x, c, 4, 2, 1, name, train=train, bn=bn)
    x, c = down(image, f, "d1", bn=False), down(condition, f, "c1", bn=False)
    if self.size == 128:
      x, c = down(x, f * 2, "d2"), down(c, f * 2, "c2")
    x, c = down(x, f * 4, "d3"), down(c, f * 4, "c3")
    x = jnp.concatenate([x, c], axis=-1)
    for k in range(1, 6):
      x = self.conv(x, f * 8, 3, 1, 1, f"m{k}", train=train)
    x = down(x, f * 8, "d4")
    x = down(x, f * 16, "d_extra")
    return _text_head(self, x, d, train)


def _check_image(name: str, image: jax.Array, size: int) -> None:
  if image.ndim != 4 or image.shape[1:] != (size, size, 3):
    raise UserError(f"{name}: image has shape {image.shape}, expected [B, {size}, {size}, 3]")


class UNetImageGenerator(_Layers):
  """G_image with skips, ih1_skip/net_graph_ih1.lua `netG` (the demo's stage 2).

  Encoder of the condition, conv4/2: e1 64 (no BN) @ 64, e2 128, e3 256, e4 512, e5 512,
  e6 512, e7 512 @ 1 (no BN), each after an LReLU of the previous. Decoder: d1 = deconv
  of relu([z, lrelu(W d), e7]) (612) to 512 @ 2 with BN and dropout 0.5, joined with e6;
  d2, d3 likewise (512, dropout), d4 256, d5 128, d6 64 (BN, no dropout), each joined with
  the mirror encoder output; relu -> deconv 3 @ 128 -> tanh. `init_std` defaults to
  ih1_skip's 0.02. `compositional` and `noise` as in `ImageGenerator`.
  """
  size: int = 128
  noise_size: int = NOISE_SIZE
  compositional: bool = False
  num_labels: int = compose.NUM_LABELS
  noise: bool = True
  init_std: float = UNET_INIT_STD
  dropout_rate: float = DROPOUT_RATE

  @nn.compact
  def __call__(self, z, d, condition, masks=None, *, train: bool):
    _check_size(self.size)
    _check_inputs("UNetImageGenerator", z, d, condition, (self.size, self.size, 3),
                  self.noise_size)
    z = z if self.noise else jnp.zeros_like(z)
    f = self.features
    encoder = [("e1", 1, False)] + ([("e2", 2, True)] if self.size == 128 else []) + [
        ("e3", 4, True), ("e4", 8, True), ("e5", 8, True), ("e6", 8, True), ("e7", 8, False)]
    skips, x = [], condition
    for k, (name, width, bn) in enumerate(encoder):
      x = self.conv(x if k == 0 else _lrelu(x), f * width, 4, 2, 1, name, train=train, bn=bn,
                    act=None)
      skips.append(x)
    h1 = self.text(d, "h1", train=train, bn=False)
    x = jnp.concatenate([z[:, None, None, :].astype(x.dtype), h1.astype(x.dtype), skips.pop()],
                        axis=-1)
    decoder = [("d1", 8, True), ("d2", 8, True), ("d3", 8, True), ("d4", 4, False)] + (
        [("d5", 2, False)] if self.size == 128 else []) + [("d6", 1, False)]
    for name, width, dropout in decoder:
      x = self.conv(nn.relu(x), f * width, 4, 2, 1, name, train=train, act=None,
                    transpose=True)
      if dropout:
        x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
      x = jnp.concatenate([x, skips.pop().astype(x.dtype)], axis=-1)
    out = 3 * self.num_labels if self.compositional else 3
    x = self.conv(nn.relu(x), out, 4, 2, 1, "d7", train=train, bn=False, act=None,
                  transpose=True)
    return _rgb_output(x, self.compositional, masks, self.num_labels)


class PatchImageDiscriminator(_Layers):
  """D_image of ih1_skip/net_graph_ih1.lua `netD`: patch logits [B, 14, 14].

  [image, condition] (6) -> conv4/2 64 (no BN) @ 64 -> 128 @ 32 -> 256 @ 16; the text
  (1x1 conv, BN, LReLU) replicated over 16 x 16 joins (276) -> conv4/1/1 512 @ 15 (BN,
  LReLU) -> conv4/1/1 1 @ 14. `init_std` defaults to ih1_skip's 0.02.
  """
  size: int = 128
  init_std: float = UNET_INIT_STD

  @nn.compact
  def __call__(self, image, d, condition, *, train: bool):
    _check_size(self.size)
    _check_inputs("PatchImageDiscriminator", None, d, condition, (self.size, self.size, 3),
                  0)
    _check_image("PatchImageDiscriminator", image, self.size)
    f = self.features
    x = jnp.concatenate([image, condition], axis=-1)
    x = self.conv(x, f, 4, 2, 1, "x0", train=train, bn=False)
    if self.size == 128:
      x = self.conv(x, f * 2, 4, 2, 1, "x1", train=train)
    x = self.conv(x, f * 4, 4, 2, 1, "x2", train=train)
    b1 = self.text(d, "b1", train=train, bn=True)
    b1 = jnp.broadcast_to(b1, (x.shape[0], x.shape[1], x.shape[2], b1.shape[-1]))
    x = self.conv(jnp.concatenate([x, b1.astype(x.dtype)], axis=-1), f * 8, 4, 1, 1, "x3",
                  train=train)
    logits = self.conv(x, 1, 4, 1, 1, "x4", train=train, bn=False, act=None)
    return logits[..., 0].astype(jnp.float32)


class DesignCoder(nn.Module):
  """The design coding d: language/train_te.py `define_network` (nn.RNN + linear heads).

  h_t^(1) = tanh(W_ih0 onehot(w_t) + b_ih0 + W_hh0 h_{t-1}^(1) + b_hh0),
  h_t^(2) = tanh(W_ih1 h_t^(1) + b_ih1 + W_hh1 h_{t-1}^(2) + b_hh1), h_0 = 0; d is the top
  layer's state after the sentence's last word (`hn[-1]`), and each attribute's logits a
  linear map of d. Parameters carry torch's names and layouts (`weight_ih_l0` [H, V], ...,
  heads `net_<name>` with kernel [H, C] = torch's weight transposed) and init (uniform
  +-1/sqrt(H) for the RNN, +-1/sqrt(fan_in) for the heads). Word id 0 is the vocabulary's
  unknown word (`fashiongan.data.Vocabulary`), so the one-hot size is `vocab_size`
  (the release's 539 words + 1).

  Call with words int [B, T] (padding after each sentence ignored) and lengths int [B]
  (>= 1); returns (d [B, hidden], {attribute name: logits [B, classes]}).
  """
  vocab_size: int
  attributes: tuple[tuple[str, int], ...] = RELEASE_ATTRIBUTES
  hidden_size: int = RNN_HIDDEN
  num_layers: int = RNN_LAYERS

  @nn.compact
  def __call__(self, words: jax.Array, lengths: jax.Array):
    if words.ndim != 2 or lengths.shape != words.shape[:1]:
      raise UserError(f"DesignCoder needs words [B, T] and lengths [B], got {words.shape} and "
                      f"{lengths.shape}")
    hidden = self.hidden_size
    bound = 1 / math.sqrt(hidden)
    uniform = lambda scale: (lambda key, shape, dtype=jnp.float32:
                             jax.random.uniform(key, shape, dtype, -scale, scale))
    layers = []
    for layer in range(self.num_layers):
      inputs = self.vocab_size if layer == 0 else hidden
      layers.append({name: self.param(f"{name}_l{layer}", uniform(bound), shape)
                     for name, shape in (("weight_ih", (hidden, inputs)),
                                         ("weight_hh", (hidden, hidden)),
                                         ("bias_ih", (hidden,)), ("bias_hh", (hidden,)))})
    # onehot(w) @ W_ih0^T is column w of W_ih0.
    first = jnp.take(layers[0]["weight_ih"].T, words, axis=0) + layers[0]["bias_ih"]
    steps = jnp.arange(words.shape[1])[:, None] < lengths[None, :]  # [T, B]

    def step(states, inputs):
      x, valid = inputs
      new = []
      for layer, (weights, state) in enumerate(zip(layers, states)):
        pre = x if layer == 0 else x @ weights["weight_ih"].T + weights["bias_ih"]
        x = jnp.tanh(pre + state @ weights["weight_hh"].T + weights["bias_hh"])
        new.append(jnp.where(valid[:, None], x, state))
      return tuple(new), None

    initial = tuple(jnp.zeros((words.shape[0], hidden)) for _ in layers)
    states, _ = jax.lax.scan(step, initial, (jnp.swapaxes(first, 0, 1), steps))
    coding = states[-1]
    heads = {name: nn.Dense(classes, kernel_init=uniform(bound), bias_init=uniform(bound),
                            name=f"net_{name}")(coding)
             for name, classes in self.attributes}
    return coding, heads


def initialize(model: nn.Module, key: jax.Array, *args, **kwargs) -> dict:
  """Variables of a FashionGAN network with the release's initialization, from one draw.

  GAN networks (`weights_init` of the .lua graphs): kernels N(0, model.init_std),
  BatchNorm scales N(1, 0.02) (`model.init` sets them to 1) and offsets 0, running mean 0
  and variance 1. `DesignCoder` (torch's defaults): every parameter U(-1/sqrt(H),
  1/sqrt(H)), as its `init`. `args` and `kwargs` are `model.init`'s inputs; the variables'
  shapes come from `jax.eval_shape`, so no forward pass runs, and all values are slices of
  one random vector drawn by one compiled function: XLA:CPU compiles every random draw on
  its own (1.5 s each for a [4, 4, 128, 64] kernel on a loaded 2-core CPU, about 45 s for
  G_shape's 29 arrays through `model.init`).
  """
  abstract = jax.eval_shape(
      lambda k: model.init({"params": k, "dropout": k}, *args, **kwargs), key)
  if isinstance(model, DesignCoder):
    rule = ("uniform", 1 / math.sqrt(model.hidden_size))
  else:
    rule = ("release", model.init_std)
  spec = tuple((path, leaf.shape) for path, leaf in
               traverse_util.flatten_dict(abstract["params"]).items())
  variables = {"params": traverse_util.unflatten_dict(_draw(key, spec, rule))}
  if "batch_stats" in abstract:
    variables["batch_stats"] = jax.tree_util.tree_map_with_path(
        lambda path, leaf: (jnp.ones if path[-1].key == "var" else jnp.zeros)(leaf.shape),
        abstract["batch_stats"])
  return variables


@functools.partial(jax.jit, static_argnums=(1, 2))
def _draw(key, spec, rule):
  """{path: values} for `spec` ((path, shape), ...) under `initialize`'s `rule`."""
  sizes = [math.prod(shape) for _, shape in spec]
  kind, scale = rule
  if kind == "uniform":
    values = jax.random.uniform(key, (sum(sizes),), jnp.float32, -scale, scale)
  else:
    values = jax.random.normal(key, (sum(sizes),), jnp.float32)
  params, start = {}, 0
  for (path, shape), size in zip(spec, sizes):
    draw = values[start:start + size].reshape(shape)
    start += size
    if kind == "uniform":
      params[path] = draw
    elif path[-1] == "kernel":
      params[path] = scale * draw
    elif path[-1] == "scale":
      params[path] = 1 + BN_SCALE_STD * draw
    else:
      params[path] = jnp.zeros(shape)
  return params
