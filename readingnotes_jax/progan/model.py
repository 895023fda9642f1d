"""ProGAN generator and discriminator (Karras et al., ICLR 2018), NHWC.

Matches networks.py `G_paper` and `D_paper` in tkarras/progressive_growing_of_gans
with their defaults use_wscale, use_pixelnorm, use_leakyrelu, normalize_latents
and fused_scale on. `fused_scale=True` (every block from 8x8 up) folds each
resampling into a convolution, written here as separate nearest upsampling /
average pooling and 3x3 convolutions:

- G, `upscale2d_conv2d`: a transposed 4x4 convolution whose kernel sums the 3x3
  kernel at four shifts, which is nearest 2x upsampling followed by the 3x3
  convolution with that kernel flipped and its channel axes swapped: the same
  function up to a permutation of the (i.i.d. N(0, 1)) weights, so G is the
  official network.
- D, `conv2d_downscale2d`: a stride-2 4x4 convolution with the kernel's four
  shifts averaged, which is the 3x3 convolution followed by 2x2 average
  pooling, then bias and LReLU: the pooling comes before the activation. The
  paper's Theano networks (original-theano-version branch, network.py
  `D_paper`) and `fused_scale=False` pool after bias and LReLU, a different
  function; `Discriminator.fused_scale` chooses between the two.

Parameter names follow the official scopes ('4x4/Dense', '8x8/Conv0', ...),
with ToRGB / FromRGB named by resolution ('ToRGB_8x8') instead of by lod, 'Conv0'
/ 'Conv1' in place of the fused 'Conv0_up' / 'Conv1_down', and the Dense layers'
weights use the official NCHW flattening order. No converter from the official
pickles is provided (their G kernels would need the flip above).

Progressive growing. `level` is the log2 of the current resolution (2 = 4x4,
up to log2(resolution)); it and `fading` are static Python values, `alpha`
(the weight of the newest block during a fade, 0 -> 1) is traced, so a fade
never recompiles. With `fading=True`:

  G(z) = lerp(upsample(ToRGB_{level-1}(h_{level-1})), ToRGB_level(h_level), alpha)
  D(x) = rest(lerp(FromRGB_{level-1}(downsample(x)), block_level(FromRGB_level(x)), alpha))

as the official `grow` functions do with lod_in = log2(resolution) - level + 1 - alpha.
The networks work at the current level's resolution; the official ones
always produce / take full-resolution images, nearest-upscaled from /
box-downscaled to that level, which is the same function: train with real
images box-downsampled to the current level. Gradients with respect to the
images are not the same: the full-resolution one is 2**(final - level) times
smaller in norm (the WGAN-GP penalty of progan/train.py corrects for it).

Parameters of every level. `init` always builds the whole network, every
block and every ToRGB / FromRGB, whatever `level` it is called with, so the
parameter tree is the same at every stage of growing; calls at lower levels
use a subset of it:

  params = Generator(resolution=32).init(rng, latents)["params"]
  params = Discriminator(resolution=32).init(rng, images)["params"]

(`images` may be at the full resolution or at `level`'s resolution with
`level=` given.) To count or inspect parameters without running the networks,
use `jax.eval_shape(model.init, rng, inputs)`.
"""
import functools
import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from readingnotes_jax.errors import UserError
from readingnotes_jax.nn.equalized import EqualizedConv, EqualizedDense
from readingnotes_jax.nn.normalization import minibatch_stddev, pixel_norm
from readingnotes_jax.nn.resample import downsample_avg_2x, upsample_nearest_2x


def nf(stage: int, fmap_base: int = 8192, fmap_decay: float = 1.0,
       fmap_max: int = 512) -> int:
  """Feature maps of a stage: min(int(fmap_base / 2**(stage * fmap_decay)), fmap_max).

  The block at resolution 2**r uses nf(r - 1). Matches `nf` in networks.py
  `G_paper` / `D_paper` (tkarras/progressive_growing_of_gans).
  """
  return min(int(fmap_base / (2.0 ** (stage * fmap_decay))), fmap_max)


def _final_level(resolution: int) -> int:
  level = int(round(math.log2(resolution))) if resolution > 0 else 0
  if not 2 <= level <= 10 or 2**level != resolution:
    raise UserError(f"ProGAN resolution {resolution} is not a power of two from 4 to "
                    "1024: pick one of 4, 8, ..., 1024")
  return level


def _check_level(level: int | None, final: int, fading: bool) -> int:
  level = final if level is None else level
  if not isinstance(level, int) or not 2 <= level <= final:
    raise UserError(f"level {level!r} is outside 2..{final} (log2 of 4..{2**final}): "
                    "pass the log2 of the current resolution as a Python int")
  if fading and level == 2:
    raise UserError("fading=True at level 2 (4x4): there is no previous level to fade "
                    "from; fade only at level >= 3")
  return level


def _lrelu(x: jax.Array) -> jax.Array:
  return nn.leaky_relu(x, 0.2)


def _lerp(a: jax.Array, b: jax.Array, t: jax.Array) -> jax.Array:
  return a + (b - a) * t


class _LatentToMaps(nn.Module):
  """G's first layer: Dense(latent -> 16*features) reshaped to 4x4 maps, per-map bias.

  `G_paper` block(res=2) 'Dense': gain sqrt(2)/4, output reshaped NCHW
  [N, features, 4, 4] (transposed here to NHWC), bias per feature map.
  """
  features: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    fan_in = x.shape[-1]
    kernel = self.param("kernel", nn.initializers.normal(1.0),
                        (fan_in, 16 * self.features), jnp.float32)
    bias = self.param("bias", nn.initializers.zeros, (self.features,), jnp.float32)
    kernel = (kernel * (math.sqrt(2.0) / 4 / math.sqrt(fan_in))).astype(self.dtype)
    y = jnp.matmul(x.astype(self.dtype), kernel)
    y = y.reshape(-1, self.features, 4, 4).transpose(0, 2, 3, 1)
    return y + bias.astype(self.dtype)


class _GeneratorBlock(nn.Module):
  """`G_paper` block(x, res): conv layers with bias, LReLU 0.2 and PixelNorm."""
  res: int
  features: int
  dtype: Any = jnp.float32
  lowering: str | None = None

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    conv = functools.partial(EqualizedConv, self.features, 3, dtype=self.dtype,
                             lowering=self.lowering)
    if self.res == 2:
      x = pixel_norm(_lrelu(_LatentToMaps(self.features, self.dtype, name="Dense")(x)))
      return pixel_norm(_lrelu(conv(name="Conv")(x)))
    x = upsample_nearest_2x(x)
    x = pixel_norm(_lrelu(conv(name="Conv0")(x)))
    return pixel_norm(_lrelu(conv(name="Conv1")(x)))


class Generator(nn.Module):
  """ProGAN generator, networks.py `G_paper` (tkarras/progressive_growing_of_gans).

  Attributes:
    resolution: final resolution, a power of two from 4 to 1024.
    num_channels: image channels.
    latent_size: latent vector size (the official default is nf(0) = 512).
    label_size: one-hot label width for conditional models, 0 if none.
    fmap_base, fmap_decay, fmap_max: widths, see `nf`.
    dtype: compute dtype (parameters stay float32; outputs are float32).
    lowering: convolution lowering, see `readingnotes_jax.nn.conv.conv2d`.
  """
  resolution: int = 1024
  num_channels: int = 3
  latent_size: int = 512
  label_size: int = 0
  fmap_base: int = 8192
  fmap_decay: float = 1.0
  fmap_max: int = 512
  dtype: Any = jnp.float32
  lowering: str | None = None

  @nn.compact
  def __call__(self, latents: jax.Array, labels: jax.Array | None = None, *,
               level: int | None = None, alpha: float | jax.Array = 1.0,
               fading: bool = False) -> jax.Array:
    """Images [N, 2**level, 2**level, num_channels], float32, unbounded (no tanh).

    Args:
      latents: [N, latent_size].
      labels: [N, label_size] one-hot floats when label_size > 0, else None.
        Concatenated to the latents before the latent pixel norm, as
        `G_paper` does (combo_in).
      level: log2 of the output resolution, 2..log2(resolution); static.
      alpha: weight of the newest block during a fade, in [0, 1]; traced.
      fading: whether this is a fade phase; static.
    """
    final = _final_level(self.resolution)
    level = _check_level(level, final, fading)
    if latents.ndim != 2 or latents.shape[1] != self.latent_size:
      raise UserError(f"latents have shape {latents.shape}, expected [N, {self.latent_size}]:"
                      " pass a batch of latent vectors of size latent_size")
    x = latents
    if self.label_size:
      if labels is None or labels.shape != (latents.shape[0], self.label_size):
        raise UserError(f"labels {None if labels is None else labels.shape} do not match "
                        f"[N, {self.label_size}]: pass one-hot labels of width label_size")
      x = jnp.concatenate([latents, labels.astype(latents.dtype)], axis=-1)
    elif labels is not None and labels.size:
      raise UserError("labels given to an unconditional Generator (label_size=0): "
                      "set label_size or drop the labels")
    width = functools.partial(nf, fmap_base=self.fmap_base, fmap_decay=self.fmap_decay,
                              fmap_max=self.fmap_max)
    to_rgb = {r: EqualizedConv(self.num_channels, 1, gain=1.0, dtype=self.dtype,
                               lowering=self.lowering, name=f"ToRGB_{2**r}x{2**r}")
              for r in range(2, final + 1)}

    top = final if self.is_initializing() else level
    h = pixel_norm(x.astype(self.dtype))
    features = {}
    for r in range(2, top + 1):
      h = _GeneratorBlock(r, width(r - 1), self.dtype, self.lowering, name=f"{2**r}x{2**r}")(h)
      features[r] = h
    if self.is_initializing():
      for r in range(2, final + 1):
        to_rgb[r](features[r])

    images = to_rgb[level](features[level]).astype(jnp.float32)
    if fading:
      previous = upsample_nearest_2x(to_rgb[level - 1](features[level - 1]).astype(jnp.float32))
      images = _lerp(previous, images, jnp.asarray(alpha, jnp.float32))
    return images


class _DiscriminatorBlock(nn.Module):
  """`D_paper` block(x, res) for res >= 3: conv3x3 + LReLU, conv3x3, 2x avg pool, LReLU.

  fused_scale=True: 'Conv1_down' (`conv2d_downscale2d`), pooling before the
  LReLU (and bias, which commutes with the pooling); False: 'Conv1' + LReLU,
  then `downscale2d`.
  """
  features: int
  out_features: int
  fused_scale: bool = True
  dtype: Any = jnp.float32
  lowering: str | None = None

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    conv = functools.partial(EqualizedConv, kernel_size=3, dtype=self.dtype,
                             lowering=self.lowering)
    x = _lrelu(conv(self.features, name="Conv0")(x))
    x = conv(self.out_features, name="Conv1")(x)
    if self.fused_scale:
      return _lrelu(downsample_avg_2x(x))
    return downsample_avg_2x(_lrelu(x))


class _DiscriminatorHead(nn.Module):
  """`D_paper` block(x, 2): minibatch stddev, conv3x3, Dense, Dense(1 + label_size)."""
  conv_features: int
  dense_features: int
  outputs: int
  mbstd_group_size: int
  dtype: Any = jnp.float32
  lowering: str | None = None

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    if self.mbstd_group_size > 1:
      x = minibatch_stddev(x, self.mbstd_group_size)
    x = _lrelu(EqualizedConv(self.conv_features, 3, dtype=self.dtype,
                             lowering=self.lowering, name="Conv")(x))
    x = x.transpose(0, 3, 1, 2).reshape(x.shape[0], -1)  # the official NCHW flattening
    x = _lrelu(EqualizedDense(self.dense_features, dtype=self.dtype, name="Dense0")(x))
    return EqualizedDense(self.outputs, gain=1.0, dtype=self.dtype, name="Dense1")(x)


class Discriminator(nn.Module):
  """ProGAN discriminator, networks.py `D_paper` (tkarras/progressive_growing_of_gans).

  Attributes:
    resolution: final resolution, a power of two from 4 to 1024.
    num_channels: image channels.
    label_size: number of classes for the AC-GAN label logits, 0 if none.
    fmap_base, fmap_decay, fmap_max: widths, see `nf`.
    mbstd_group_size: minibatch-stddev group size; <= 1 disables the layer
      (official default 4, 16 in the paper's v1 preset).
    fused_scale: True (official TF default): each block pools its second
      convolution's output before bias and LReLU; False: after them, as the
      paper's Theano networks (see the module docstring).
    dtype: compute dtype (parameters stay float32; outputs are float32).
    lowering: convolution lowering, see `readingnotes_jax.nn.conv.conv2d`.
  """
  resolution: int = 1024
  num_channels: int = 3
  label_size: int = 0
  fmap_base: int = 8192
  fmap_decay: float = 1.0
  fmap_max: int = 512
  mbstd_group_size: int = 4
  fused_scale: bool = True
  dtype: Any = jnp.float32
  lowering: str | None = None

  @nn.compact
  def __call__(self, images: jax.Array, *, level: int | None = None,
               alpha: float | jax.Array = 1.0,
               fading: bool = False) -> tuple[jax.Array, jax.Array]:
    """Scores [N] and label logits [N, label_size], both float32.

    Args:
      images: [N, 2**level, 2**level, num_channels].
      level: log2 of the input resolution, 2..log2(resolution); static.
      alpha: weight of the newest block during a fade, in [0, 1]; traced.
      fading: whether this is a fade phase; static.
    """
    final = _final_level(self.resolution)
    level = _check_level(level, final, fading)
    size = 2**level
    if images.ndim != 4 or images.shape[1:] != (size, size, self.num_channels):
      raise UserError(f"images have shape {images.shape}, expected [N, {size}, {size}, "
                      f"{self.num_channels}] at level {level}: resize them or set level")
    width = functools.partial(nf, fmap_base=self.fmap_base, fmap_decay=self.fmap_decay,
                              fmap_max=self.fmap_max)
    from_rgb = {r: EqualizedConv(width(r - 1), 1, dtype=self.dtype, lowering=self.lowering,
                                 name=f"FromRGB_{2**r}x{2**r}")
                for r in range(2, final + 1)}
    blocks = {r: _DiscriminatorBlock(width(r - 1), width(r - 2), self.fused_scale, self.dtype,
                                     self.lowering, name=f"{2**r}x{2**r}")
              for r in range(3, final + 1)}
    head = _DiscriminatorHead(width(1), width(0), 1 + self.label_size, self.mbstd_group_size,
                              self.dtype, self.lowering, name="4x4")

    def run(x, level, alpha, fading):
      h = _lrelu(from_rgb[level](x))
      if level > 2:
        h = blocks[level](h)
      if fading:
        previous = _lrelu(from_rgb[level - 1](downsample_avg_2x(x)))
        h = _lerp(previous, h, jnp.asarray(alpha, h.dtype))
      for r in range(level - 1, 2, -1):
        h = blocks[r](h)
      return head(h)

    x = images.astype(self.dtype)
    if self.is_initializing():  # create every level's parameters
      full = x
      for _ in range(final - level):
        full = upsample_nearest_2x(full)
      out = run(full, final, 1.0, False)
      for r in range(final - 1, 1, -1):
        full = downsample_avg_2x(full)
        from_rgb[r](full)
    if not self.is_initializing() or level != final or fading:
      out = run(x, level, alpha, fading)
    out = out.astype(jnp.float32)
    return out[:, 0], out[:, 1:]
