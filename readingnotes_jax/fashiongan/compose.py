"""FashionGAN's conditions, compositional mapping and the demo's post-processing.

Labels are the 7 classes of `readingnotes_jax.data.ccp_fashion.CLASS_NAMES` (0
background, 1 hair, 2 face, 3 upper clothes, 4 lower clothes, 5 legs, 6 arms: the paper's
section 4 order and the values of the release's `b_` maps). Channel k of every map here
holds label k; the release's networks put label (k + 1) mod 7 in channel k (its loaders
set channel j to `b_ == j % 7`, background last), see `RELEASE_LABEL_ORDER` and
`RELEASE_MERGED_ORDER` for converting its weights or files.

- `spatial_constraint`: down m(S0), the 8 x 8 x 4 condition of G_shape (paper section
  3.2): the map merged into background / hair / face / body, each binary mask resized to
  8 x 8 as complete_demo/script2.m does, `imresize(single(b == j), [8, 8])` (MATLAB's
  default bicubic with antialiasing: `imresize_matrix`).
- `colour_condition`: G_image's condition (ih1/train.lua `simple_sample`): each label
  coloured by the codebook `cb` x 0.25 (`CODEBOOK`), blurred by the 5 x 5 Gaussian `H`
  (`BLUR_KERNEL`, zero padding as `image.convolve(u, H, 'same')`), minus 0.5.
- `region_masks` / `compose_regions`: the compositional mapping of paper section 3.3,
  which the release does not contain: every region l of the segmentation gets its own
  rendering r_l, and the image is sum_l mask_l * r_l, so a region's texture cannot leak
  into another region.
- `demo_segmentation` and `demo_postprocess`: demo_release/demo_full.lua's use of the
  stage-1 logits (a 5 x 5 smoothing, then the arg max) and its final step (hair and face
  copied from the photo, arms and legs averaged with the photo's median skin colour).
"""
import jax
import jax.numpy as jnp
import numpy as np

from readingnotes_jax.data import ccp_fashion
from readingnotes_jax.errors import UserError

NUM_LABELS = len(ccp_fashion.CLASS_NAMES)
MERGED_CLASS_NAMES = ("background", "hair", "face", "body")
# Label -> merged class: clothes, legs and arms are all `body` (the paper's m(S0)).
MERGED_CLASS_OF_LABEL = np.array([0, 1, 2, 3, 3, 3, 3])
CONSTRAINT_SIZE = 8  # config_sr1.lua lr_win_size
# Label of each channel of the release's 7-channel maps (sr1/train.lua `t:eq(j % 7)`) and
# merged class of each channel of sr1_8.mat (script2.m: hair, face, body, background).
RELEASE_LABEL_ORDER = (1, 2, 3, 4, 5, 6, 0)
RELEASE_MERGED_ORDER = (1, 2, 3, 0)
# ih1/train.lua `cb` (columns k = 1..7 are labels k mod 7) times 0.25: rows are labels 0..6.
CODEBOOK = 0.25 * np.array([[2, 2, 2], [3, 2, 1], [2, 3, 1], [1, 3, 2], [1, 2, 3], [2, 1, 3],
                            [3, 1, 2]], np.float32)
# ih1/train.lua `H`: a 5 x 5 Gaussian (sigma 1) rounded to 4 decimals.
BLUR_KERNEL = np.array([[0.0030, 0.0133, 0.0219, 0.0133, 0.0030],
                        [0.0133, 0.0596, 0.0983, 0.0596, 0.0133],
                        [0.0219, 0.0983, 0.1621, 0.0983, 0.0219],
                        [0.0133, 0.0596, 0.0983, 0.0596, 0.0133],
                        [0.0030, 0.0133, 0.0219, 0.0133, 0.0030]], np.float32)
# demo_full.lua `image.gaussian(5, 3)`: torch's unnormalized exp(-(dx^2 + dy^2) / 2 (3 * 5)^2).
_OFFSETS = np.arange(5) - 2.0
DEMO_SMOOTHING_KERNEL = np.exp(-(_OFFSETS[:, None] ** 2 + _OFFSETS[None, :] ** 2)
                               / (2 * 15.0 ** 2)).astype(np.float32)
HAIR, FACE = ccp_fashion.HAIR, ccp_fashion.FACE
SKIN_LABELS = (ccp_fashion.LEGS, ccp_fashion.ARMS)  # demo_full.lua's labels 5 and 6.


def _cubic(x: np.ndarray) -> np.ndarray:
  """Keys' cubic (a = -0.5), MATLAB imresize.m `cubic`."""
  ax = np.abs(x)
  return ((1.5 * ax**3 - 2.5 * ax**2 + 1) * (ax <= 1)
          + (-0.5 * ax**3 + 2.5 * ax**2 - 4 * ax + 2) * ((ax > 1) & (ax <= 2)))


def imresize_matrix(in_size: int, out_size: int) -> np.ndarray:
  """[out_size, in_size] float64 matrix of MATLAB's `imresize` (bicubic, antialiased) on one axis.

  As imresize.m `contributions`: output pixel i (1-based) samples u = i / s + (1 - 1 / s) / 2
  with s = out / in; shrinking widens the kernel to s * cubic(s * x) over 4 / s pixels;
  each row's weights are normalized to sum 1; taps outside the input fold back
  symmetrically (index 0 is pixel 1, index in + 1 is pixel in).
  """
  scale = out_size / in_size
  width = 4.0 / scale if scale < 1 else 4.0
  kernel = (lambda x: scale * _cubic(scale * x)) if scale < 1 else _cubic
  u = np.arange(1, out_size + 1) / scale + 0.5 * (1 - 1 / scale)
  left = np.floor(u - width / 2)
  taps = left[:, None] + np.arange(int(np.ceil(width)) + 2)[None, :]
  weights = kernel(u[:, None] - taps)
  weights /= weights.sum(axis=1, keepdims=True)
  mirror = np.concatenate([np.arange(in_size), np.arange(in_size)[::-1]])
  columns = mirror[(taps.astype(np.int64) - 1) % (2 * in_size)]
  matrix = np.zeros((out_size, in_size))
  np.add.at(matrix, (np.repeat(np.arange(out_size), taps.shape[1]), columns.ravel()),
            weights.ravel())
  return matrix


def spatial_constraint(labels: np.ndarray, size: int = CONSTRAINT_SIZE) -> np.ndarray:
  """down m(S0): float32 [..., size, size, 4] from labels [..., H, W] (NumPy, host side).

  Channel c is the binary mask of `MERGED_CLASS_NAMES[c]` resized by `imresize_matrix`
  on each axis (values slightly outside [0, 1] near edges, as MATLAB's bicubic gives).
  """
  labels = np.asarray(labels)
  if labels.ndim < 2 or labels.size == 0 or labels.min() < 0 or labels.max() >= NUM_LABELS:
    raise UserError(f"spatial_constraint needs label maps [..., H, W] with values 0..6, got "
                    f"shape {labels.shape}: pass FashionGAN's 7-class maps")
  merged = MERGED_CLASS_OF_LABEL[labels]
  masks = (merged[..., None] == np.arange(len(MERGED_CLASS_NAMES))).astype(np.float64)
  rows = imresize_matrix(labels.shape[-2], size)
  cols = imresize_matrix(labels.shape[-1], size)
  # Two products (rows, then columns), not einsum's default loop over all five indices.
  return np.einsum("ph,...hwc,qw->...pqc", rows, masks, cols, optimize=True).astype(np.float32)


def _depthwise_same(x: jax.Array, kernel: np.ndarray) -> jax.Array:
  """Each channel of NHWC `x` convolved with the (symmetric) 5 x 5 `kernel`, zero padding."""
  channels = x.shape[-1]
  weights = jnp.broadcast_to(jnp.asarray(kernel)[:, :, None, None], (*kernel.shape, 1, channels))
  pad = kernel.shape[0] // 2
  return jax.lax.conv_general_dilated(
      x, weights, (1, 1), ((pad, pad), (pad, pad)), feature_group_count=channels,
      dimension_numbers=("NHWC", "HWIO", "NHWC"), precision=jax.lax.Precision.HIGHEST)


def colour_condition(labels: jax.Array) -> jax.Array:
  """G_image's condition, float32 [B, H, W, 3] from int labels [B, H, W] (jit-friendly).

  ih1/train.lua: u = CODEBOOK[label] per channel, v = image.convolve(u, H, 'same'), v - 0.5.
  """
  if labels.ndim != 3:
    raise UserError(f"colour_condition needs label maps [B, H, W], got shape {labels.shape}")
  return _depthwise_same(jnp.asarray(CODEBOOK)[labels], BLUR_KERNEL) - 0.5


def region_masks(labels: jax.Array, num_labels: int = NUM_LABELS) -> jax.Array:
  """One-hot float32 [..., num_labels] masks of int labels [...]."""
  return jax.nn.one_hot(labels, num_labels, dtype=jnp.float32)


def compose_regions(renderings: jax.Array, masks: jax.Array) -> jax.Array:
  """sum_l masks[..., l] * renderings[..., l, :]: [B, H, W, L, C], [B, H, W, L] -> [B, H, W, C].

  With one-hot masks each pixel is its own region's rendering, so changing the rendering
  of one region changes nothing outside it (paper section 3.3); soft masks (the stage-1
  softmax) blend the renderings.
  """
  if renderings.shape[:-1] != masks.shape:
    raise UserError(f"compose_regions: renderings {renderings.shape} and masks {masks.shape} "
                    "disagree: pass [B, H, W, L, C] renderings and [B, H, W, L] masks")
  return jnp.einsum("bhwlc,bhwl->bhwc", renderings, masks.astype(renderings.dtype))


def demo_segmentation(logits: jax.Array) -> jax.Array:
  """Stage-1 labels as demo_full.lua reads them: int32 [B, H, W] from logits [B, H, W, 7].

  Each channel is convolved with `DEMO_SMOOTHING_KERNEL` (zero padding, `image.convolve(...,
  'same')`), then the arg max over channels is taken (the first one on ties, as torch.max).
  """
  return jnp.argmax(_depthwise_same(logits.astype(jnp.float32), DEMO_SMOOTHING_KERNEL),
                    axis=-1).astype(jnp.int32)


def _lower_median(values: np.ndarray) -> np.ndarray:
  """Per-column median, the lower middle value for even counts (torch7's `median`)."""
  return np.sort(values, axis=0)[(len(values) - 1) // 2]


def demo_postprocess(generated: np.ndarray, photo: np.ndarray, photo_labels: np.ndarray,
                     generated_labels: np.ndarray) -> np.ndarray:
  """demo_full.lua's post-processing of one stage-2 image (NumPy, [H, W, 3] images).

  In order: pixels that are hair or face in the photo's labels take the photo's values;
  then for legs and arms (labels 5, 6), when the photo and the generated segmentation both
  have the label, the generated pixels of that label become the mean of their value and
  the photo's per-channel median over its pixels of that label.

  Args:
    generated: the generated image, mean image added (the scale of `photo`).
    photo: the original photo, same scale.
    photo_labels, generated_labels: int [H, W] 7-class maps of the photo and of stage 1.
  """
  generated, photo = np.asarray(generated), np.asarray(photo)
  if not (generated.shape == photo.shape and generated.shape[:2] == photo_labels.shape
          == generated_labels.shape):
    raise UserError(f"demo_postprocess: image {generated.shape}, photo {photo.shape}, labels "
                    f"{photo_labels.shape} and {generated_labels.shape} must share H x W")
  out = generated.astype(np.float32, copy=True)
  copied = (photo_labels == HAIR) | (photo_labels == FACE)
  out[copied] = photo[copied]
  for label in SKIN_LABELS:
    source, target = photo_labels == label, generated_labels == label
    if source.any() and target.any():
      out[target] = (out[target] + _lower_median(photo[source].astype(np.float32))) / 2
  return out
