"""The FID InceptionV3 (TF `inception-2015-12-05` graph) in Flax, NHWC, and its weights.

Layout as mseitzer/pytorch-fid ports the TF graph (`src/pytorch_fid/inception.py`
`fid_inception_v3` and the `FIDInception*` blocks, on torchvision's
`models/inception.py` Inception3), module names kept so that state-dict keys map
one to one:

  Conv2d_1a_3x3 (3->32, 3x3/2), Conv2d_2a_3x3 (32, 3x3), Conv2d_2b_3x3 (64, 3x3 pad 1),
  max pool 3x3/2, Conv2d_3b_1x1 (80), Conv2d_4a_3x3 (192, 3x3), max pool 3x3/2,
  Mixed_5b/5c/5d  FIDInceptionA (pool features 32, 64, 64)       35x35 -> 256, 288, 288
  Mixed_6a        InceptionB                                     17x17 -> 768
  Mixed_6b..6e    FIDInceptionC (7x7 channels 128, 160, 160, 192)        768
  Mixed_7a        InceptionD                                       8x8 -> 1280
  Mixed_7b        FIDInceptionE, pool_branch="avg" (FIDInceptionE_1)     2048
  Mixed_7c        FIDInceptionE, pool_branch="max" (FIDInceptionE_2)     2048
  global average pool -> pool3 [N, 2048] (FID, KID); fc -> logits [N, 1008] (IS).

Every BasicConv2d is a convolution without bias, BatchNorm (eps 0.001, running
statistics) and ReLU. The average pools of the A, C and E_1 pool branches
(3x3, stride 1, pad 1) divide by the number of real pixels in each window
(count_include_pad=False, as TF); E_2's pool branch is a 3x3 max pool.

Input rule (pytorch-fid `InceptionV3.forward`, resize_input and normalize_input):
images in [0, 1], NHWC, of any size, are resized to 299 x 299 exactly as
`F.interpolate(x, size=(299, 299), mode='bilinear', align_corners=False)`
(no antialiasing; `resize_bilinear`), then mapped to [-1, 1] by 2 x - 1.
pytorch-fid notes that its scores differ slightly from the TF code's, partly
from that code's own image interpolation; this module reproduces pytorch-fid.

Weights: `load_fid_inception` reads pytorch-fid's
`pt_inception-2015-12-05-6726825d.pth` (torch needed) or a `.npz` with the same
keys (`convert_fid_weights_to_npz` writes one where torch is installed):

  model, variables = load_fid_inception(fid_weights_path(config))
  extract = inception_extractor(model, variables)   # [-1, 1] images -> (pool3, logits)

Convolutions and fc run at `jax.lax.Precision.HIGHEST` by default (float32
products on TPU and GPU, which would otherwise use bfloat16 or TF32 passes).
Against a PyTorch net of this layout with random weights loaded through
`load_fid_inception` (tests/metrics/test_fid.py, 2 images 64 -> 299, CPU), pool3
agrees to 5.7e-5 and the logits to 1.7e-5 (max abs; torch float32 is itself
3.3e-5 and 1.1e-5 from float64). Cost: 11.3 GFLOP (5.7 G multiply-adds) per image.
"""
import functools
import os
from collections.abc import Callable
from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from readingnotes_jax.errors import UserError
from readingnotes_jax.nn import torch_weights
from readingnotes_jax.nn.batch_norm import BatchNorm

INPUT_SIZE = 299
FEATURE_DIM = 2048
NUM_LOGITS = 1008
WEIGHTS_ENV = "READINGNOTES_FID_WEIGHTS"
WEIGHTS_FILE = "pt_inception-2015-12-05-6726825d.pth"
_HIGHEST = jax.lax.Precision.HIGHEST


def resize_matrix(in_size: int, out_size: int) -> np.ndarray:
  """[out_size, in_size] float32 matrix of torch's bilinear resize of one axis, align_corners=False.

  Output pixel i samples s = max((i + 0.5) * in_size / out_size - 0.5, 0) and blends
  pixels floor(s) and min(floor(s) + 1, in_size - 1) with weights 1 - (s - floor(s))
  and s - floor(s) (PyTorch `area_pixel_compute_source_index`, `upsample_bilinear2d`).
  """
  source = np.maximum((np.arange(out_size) + 0.5) * (in_size / out_size) - 0.5, 0.0)
  left = np.minimum(np.floor(source).astype(np.int64), in_size - 1)
  right = np.minimum(left + 1, in_size - 1)
  fraction = source - left
  matrix = np.zeros((out_size, in_size), np.float64)
  rows = np.arange(out_size)
  np.add.at(matrix, (rows, left), 1.0 - fraction)
  np.add.at(matrix, (rows, right), fraction)
  return matrix.astype(np.float32)


def resize_bilinear(images: jax.Array, size: tuple[int, int]) -> jax.Array:
  """NHWC `images` resized to `size` as torch bilinear, align_corners=False (float32)."""
  rows = jnp.asarray(resize_matrix(images.shape[1], size[0]))
  columns = jnp.asarray(resize_matrix(images.shape[2], size[1]))
  x = jnp.einsum("oh,nhwc->nowc", rows, images.astype(jnp.float32), precision=_HIGHEST)
  return jnp.einsum("pw,nowc->nopc", columns, x, precision=_HIGHEST)


def _avg_pool_3x3_same(x: jax.Array) -> jax.Array:
  """3x3 average, stride 1, pad 1, over the real pixels only (count_include_pad=False)."""
  return nn.avg_pool(x, (3, 3), strides=(1, 1), padding=((1, 1), (1, 1)),
                     count_include_pad=False)


def _max_pool_3x3(x: jax.Array, stride: int, padding: int) -> jax.Array:
  return nn.max_pool(x, (3, 3), strides=(stride, stride),
                     padding=((padding, padding), (padding, padding)))


class BasicConv2d(nn.Module):
  """Conv (no bias) + BatchNorm(eps 0.001, running statistics) + ReLU (torchvision BasicConv2d).

  Attributes:
    features: output channels.
    kernel_size: (kh, kw).
    strides: stride on both axes.
    padding: (ph, pw) zero padding on each side.
    dtype: compute dtype.
    precision: precision of the convolution.
  """
  features: int
  kernel_size: tuple[int, int]
  strides: int = 1
  padding: tuple[int, int] = (0, 0)
  dtype: Any = jnp.float32
  precision: Any = _HIGHEST

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    ph, pw = self.padding
    x = nn.Conv(self.features, self.kernel_size, strides=self.strides,
                padding=((ph, ph), (pw, pw)), use_bias=False, dtype=self.dtype,
                precision=self.precision, name="conv")(x)
    x = BatchNorm(epsilon=1e-3, dtype=self.dtype, name="bn")(x, use_running_average=True)
    return nn.relu(x)


class _Block(nn.Module):
  """Base of the Inception blocks: `conv(name, features, kernel, ...)` builds a BasicConv2d."""
  dtype: Any = jnp.float32
  precision: Any = _HIGHEST

  def conv(self, name: str, features: int, kernel: int | tuple[int, int], strides: int = 1,
           padding: int | tuple[int, int] = 0) -> BasicConv2d:
    kernel = (kernel, kernel) if isinstance(kernel, int) else kernel
    padding = (padding, padding) if isinstance(padding, int) else padding
    return BasicConv2d(features, kernel, strides, padding, self.dtype, self.precision,
                       name=name)


class FIDInceptionA(_Block):
  """Mixed_5b/c/d: 1x1 64 | 1x1 48, 5x5 64 | 1x1 64, 3x3 96, 3x3 96 | avg pool, 1x1 pool_features.

  Attributes:
    pool_features: output channels of the pool branch.
  """
  pool_features: int = 32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    branch1x1 = self.conv("branch1x1", 64, 1)(x)
    branch5x5 = self.conv("branch5x5_1", 48, 1)(x)
    branch5x5 = self.conv("branch5x5_2", 64, 5, padding=2)(branch5x5)
    branch3x3dbl = self.conv("branch3x3dbl_1", 64, 1)(x)
    branch3x3dbl = self.conv("branch3x3dbl_2", 96, 3, padding=1)(branch3x3dbl)
    branch3x3dbl = self.conv("branch3x3dbl_3", 96, 3, padding=1)(branch3x3dbl)
    branch_pool = self.conv("branch_pool", self.pool_features, 1)(_avg_pool_3x3_same(x))
    return jnp.concatenate([branch1x1, branch5x5, branch3x3dbl, branch_pool], axis=-1)


class InceptionB(_Block):
  """Mixed_6a (grid 35 -> 17): 3x3/2 384 | 1x1 64, 3x3 96, 3x3/2 96 | max pool 3x3/2."""

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    branch3x3 = self.conv("branch3x3", 384, 3, strides=2)(x)
    branch3x3dbl = self.conv("branch3x3dbl_1", 64, 1)(x)
    branch3x3dbl = self.conv("branch3x3dbl_2", 96, 3, padding=1)(branch3x3dbl)
    branch3x3dbl = self.conv("branch3x3dbl_3", 96, 3, strides=2)(branch3x3dbl)
    return jnp.concatenate([branch3x3, branch3x3dbl, _max_pool_3x3(x, 2, 0)], axis=-1)


class FIDInceptionC(_Block):
  """Mixed_6b..e: factorized 7x7 branches (1x7 / 7x1) of `channels_7x7`, each branch 192 out.

  Attributes:
    channels_7x7: width inside the 7x7 branches.
  """
  channels_7x7: int = 128

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    c7 = self.channels_7x7
    branch1x1 = self.conv("branch1x1", 192, 1)(x)
    branch7x7 = self.conv("branch7x7_1", c7, 1)(x)
    branch7x7 = self.conv("branch7x7_2", c7, (1, 7), padding=(0, 3))(branch7x7)
    branch7x7 = self.conv("branch7x7_3", 192, (7, 1), padding=(3, 0))(branch7x7)
    dbl = self.conv("branch7x7dbl_1", c7, 1)(x)
    dbl = self.conv("branch7x7dbl_2", c7, (7, 1), padding=(3, 0))(dbl)
    dbl = self.conv("branch7x7dbl_3", c7, (1, 7), padding=(0, 3))(dbl)
    dbl = self.conv("branch7x7dbl_4", c7, (7, 1), padding=(3, 0))(dbl)
    dbl = self.conv("branch7x7dbl_5", 192, (1, 7), padding=(0, 3))(dbl)
    branch_pool = self.conv("branch_pool", 192, 1)(_avg_pool_3x3_same(x))
    return jnp.concatenate([branch1x1, branch7x7, dbl, branch_pool], axis=-1)


class InceptionD(_Block):
  """Mixed_7a (grid 17 -> 8): 1x1 192, 3x3/2 320 | 1x1, 1x7, 7x1, 3x3/2 192 | max pool 3x3/2."""

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    branch3x3 = self.conv("branch3x3_1", 192, 1)(x)
    branch3x3 = self.conv("branch3x3_2", 320, 3, strides=2)(branch3x3)
    branch7x7x3 = self.conv("branch7x7x3_1", 192, 1)(x)
    branch7x7x3 = self.conv("branch7x7x3_2", 192, (1, 7), padding=(0, 3))(branch7x7x3)
    branch7x7x3 = self.conv("branch7x7x3_3", 192, (7, 1), padding=(3, 0))(branch7x7x3)
    branch7x7x3 = self.conv("branch7x7x3_4", 192, 3, strides=2)(branch7x7x3)
    return jnp.concatenate([branch3x3, branch7x7x3, _max_pool_3x3(x, 2, 0)], axis=-1)


class FIDInceptionE(_Block):
  """Mixed_7b/c: 1x1 320 | 1x1 384 -> (1x3, 3x1) | 1x1 448, 3x3 384 -> (1x3, 3x1) | pool, 1x1 192.

  Attributes:
    pool_branch: "avg" (3x3 average without padded zeros: FIDInceptionE_1, Mixed_7b)
      or "max" (3x3 max pool, stride 1, pad 1: FIDInceptionE_2, Mixed_7c).
  """
  pool_branch: str = "avg"

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    branch1x1 = self.conv("branch1x1", 320, 1)(x)
    branch3x3 = self.conv("branch3x3_1", 384, 1)(x)
    branch3x3 = [self.conv("branch3x3_2a", 384, (1, 3), padding=(0, 1))(branch3x3),
                 self.conv("branch3x3_2b", 384, (3, 1), padding=(1, 0))(branch3x3)]
    dbl = self.conv("branch3x3dbl_1", 448, 1)(x)
    dbl = self.conv("branch3x3dbl_2", 384, 3, padding=1)(dbl)
    dbl = [self.conv("branch3x3dbl_3a", 384, (1, 3), padding=(0, 1))(dbl),
           self.conv("branch3x3dbl_3b", 384, (3, 1), padding=(1, 0))(dbl)]
    if self.pool_branch == "avg":
      pooled = _avg_pool_3x3_same(x)
    elif self.pool_branch == "max":
      pooled = _max_pool_3x3(x, 1, 1)
    else:
      raise UserError(f"FIDInceptionE.pool_branch must be 'avg' or 'max'; got {self.pool_branch!r}")
    branch_pool = self.conv("branch_pool", 192, 1)(pooled)
    return jnp.concatenate([branch1x1, *branch3x3, *dbl, branch_pool], axis=-1)


class FIDInceptionV3(nn.Module):
  """The FID InceptionV3: NHWC images in [0, 1] -> pool3 features and 1008-way logits.

  Attributes:
    resize_input: resize to 299 x 299 first (`resize_bilinear`, pytorch-fid's rule).
    normalize_input: map [0, 1] to [-1, 1] (2 x - 1) after resizing.
    dtype: compute dtype (parameters stay float32).
    precision: precision of the convolutions and fc.

  Returns from `__call__` a dict: "pool3" [N, 2048] (global average of Mixed_7c),
  "logits" [N, 1008] (fc: pool3 @ W + b, the graph's softmax/logits) and
  "logits_unbiased" [N, 1008] (pool3 @ W, what the original Inception Score code,
  openai/improved-gan `inception_score/model.py`, and torch-fidelity's IS use).
  """
  resize_input: bool = True
  normalize_input: bool = True
  dtype: Any = jnp.float32
  precision: Any = _HIGHEST

  @nn.compact
  def __call__(self, images: jax.Array) -> dict[str, jax.Array]:
    if images.ndim != 4 or images.shape[-1] != 3:
      raise UserError(f"FIDInceptionV3 wants NHWC RGB images; got shape {images.shape}: "
                      f"repeat grayscale to 3 channels")
    x = images.astype(jnp.float32)
    if self.resize_input:
      x = resize_bilinear(x, (INPUT_SIZE, INPUT_SIZE))
    if self.normalize_input:
      x = 2 * x - 1
    x = x.astype(self.dtype)
    kw = {"dtype": self.dtype, "precision": self.precision}
    stem = {"Conv2d_1a_3x3": (32, 3, 2, 0), "Conv2d_2a_3x3": (32, 3, 1, 0),
            "Conv2d_2b_3x3": (64, 3, 1, 1), "Conv2d_3b_1x1": (80, 1, 1, 0),
            "Conv2d_4a_3x3": (192, 3, 1, 0)}
    for name, (features, kernel, strides, padding) in stem.items():
      x = BasicConv2d(features, (kernel, kernel), strides, (padding, padding), name=name, **kw)(x)
      if name in ("Conv2d_2b_3x3", "Conv2d_4a_3x3"):
        x = _max_pool_3x3(x, 2, 0)
    for name, pool_features in (("Mixed_5b", 32), ("Mixed_5c", 64), ("Mixed_5d", 64)):
      x = FIDInceptionA(pool_features=pool_features, name=name, **kw)(x)
    x = InceptionB(name="Mixed_6a", **kw)(x)
    for name, channels in (("Mixed_6b", 128), ("Mixed_6c", 160), ("Mixed_6d", 160),
                           ("Mixed_6e", 192)):
      x = FIDInceptionC(channels_7x7=channels, name=name, **kw)(x)
    x = InceptionD(name="Mixed_7a", **kw)(x)
    x = FIDInceptionE(pool_branch="avg", name="Mixed_7b", **kw)(x)
    x = FIDInceptionE(pool_branch="max", name="Mixed_7c", **kw)(x)
    pool3 = jnp.mean(x.astype(jnp.float32), axis=(1, 2))
    fc = nn.Dense(NUM_LOGITS, precision=self.precision, name="fc")
    logits = fc(pool3)
    unbiased = logits - fc.variables["params"]["bias"]
    return {"pool3": pool3, "logits": logits, "logits_unbiased": unbiased}


# -- weights ----------------------------------------------------------------------------

_FIX = (f"give pytorch-fid's {WEIGHTS_FILE} (release fid_weights) or an .npz of it "
        f"(convert_fid_weights_to_npz), through config.fid_weights or ${WEIGHTS_ENV}")


def torch_key(collection: str, path: tuple[str, ...]) -> str:
  """pytorch-fid state-dict key of one flax variable, e.g. 'Mixed_5b.branch1x1.conv.weight'."""
  return torch_weights.torch_key(".".join(path[:-1]), collection, path[-1])


@functools.cache
def variable_shapes() -> dict[tuple[str, ...], tuple[int, ...]]:
  """{(collection, *module path, name): shape} of FIDInceptionV3's variables (traced once)."""
  shapes = jax.eval_shape(lambda: FIDInceptionV3().init(
      jax.random.key(0), jnp.zeros((1, INPUT_SIZE, INPUT_SIZE, 3))))
  return {path: leaf.shape for path, leaf in flax.traverse_util.flatten_dict(
      flax.core.unfreeze(shapes)).items()}


def fid_weights_path(config: Any) -> str | None:
  """`config.get('fid_weights')`, else the READINGNOTES_FID_WEIGHTS env var, else None."""
  path = config.get("fid_weights") if config is not None else None
  return path or os.environ.get(WEIGHTS_ENV) or None


def load_fid_inception(path_or_state_dict: Any,
                       **model_kwargs) -> tuple[FIDInceptionV3, dict[str, Any]]:
  """Builds `FIDInceptionV3(**model_kwargs)` and its variables from pytorch-fid's weights.

  Args:
    path_or_state_dict: a `.pth` path (pytorch-fid's `pt_inception-2015-12-05-6726825d.pth`;
      needs torch), an `.npz` path with the same keys, or a state dict of torch
      tensors or NumPy arrays.
    **model_kwargs: FIDInceptionV3 attributes (dtype, precision, ...).

  Returns:
    (model, variables): {"params", "batch_stats"} as float32 jax arrays; conv weights
    OIHW -> HWIO, fc.weight transposed, BN weight/bias -> scale/bias and
    running_mean/var -> batch_stats mean/var; `num_batches_tracked` is ignored.

  Raises:
    UserError: unreadable file, or keys missing, left over or of the wrong shape (named).
  """
  source = path_or_state_dict
  where = "FID weights"
  if isinstance(source, (str, os.PathLike)):
    source = torch_weights.read_state_dict_file(source, where, _FIX)
    where = f"FID weights {os.fspath(path_or_state_dict)}"
  state = torch_weights.numpy_state_dict(source, where, _FIX)
  match = torch_weights.match_state_dict(state, variable_shapes(), torch_key)
  if match.problems():
    raise UserError(f"{where} do not fit the FID InceptionV3: {match.problems()}: give "
                    f"pytorch-fid's {WEIGHTS_FILE} (or an .npz of its state dict)")
  model = FIDInceptionV3(**model_kwargs)
  return model, jax.device_put(flax.traverse_util.unflatten_dict(match.variables))


def convert_fid_weights_to_npz(pth_path: str, npz_path: str) -> None:
  """Writes the state dict of a pytorch-fid `.pth` as an `.npz` (needs torch once)."""
  where = "FID weights"
  state = torch_weights.numpy_state_dict(
      torch_weights.read_state_dict_file(pth_path, where, _FIX), where, _FIX)
  np.savez(npz_path, **state)


# -- extraction -------------------------------------------------------------------------

@functools.partial(jax.jit, static_argnums=0)
def _extract(model: FIDInceptionV3, variables: Any, images: jax.Array):
  outputs = model.apply(variables, (images.astype(jnp.float32) + 1) / 2)
  return outputs["pool3"], outputs["logits_unbiased"]


def inception_extractor(model: FIDInceptionV3,
                        variables: Any) -> Callable[[Any], tuple[jax.Array, jax.Array]]:
  """A jitted extractor for `fid.generative_scores`: NHWC RGB in [-1, 1] -> (pool3, logits).

  Images go to [0, 1] by (x + 1) / 2 and through `model` (pytorch-fid's input rule);
  the logits are the unbiased ones (pool3 @ W) that the Inception Score uses. One
  compilation per batch shape.
  """
  return functools.partial(_extract, model, variables)
