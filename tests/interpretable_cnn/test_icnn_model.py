"""Interpretable CNN networks: layer sizes as the release's, geometry, the masks' wiring.

References are written here from the release's layer lists (vgg_vd_16.m, alexnet.m,
imagenet-caffe-alex), its mask (getMu.m, getMask.m) and the paper's template formula, in
NumPy float64, and torch (float64) for Caffe's LRN and grouped convolution.
"""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from readingnotes_jax.errors import UserError
from readingnotes_jax.interpretable_cnn import model as icnn_model

U32 = 2.0 ** -24  # float32 unit roundoff.


def _conv_count(kernel, cin, cout):
  return kernel * kernel * cin * cout + cout


def _param_count(tree):
  return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))


def _init(net, size, key=0):
  """Shapes of the initial variables for one image of `size` (side, or (height, width))."""
  height, width = (size, size) if isinstance(size, int) else size
  return jax.eval_shape(lambda: net.init(jax.random.key(key), jnp.zeros((1, height, width, 3)),
                                         train=False))


def _init_jit(net, images, key):
  """Real initial variables: one compiled program, with XLA's RngBitGenerator keys (threefry
  keys compile about 10x slower on XLA:CPU; the trainer uses "rbg" too)."""
  return jax.jit(functools.partial(net.init, train=False))(jax.random.key(key, impl="rbg"),
                                                           images)


def test_vgg16_parameters_are_the_releases():
  """vgg_vd_16.m: VGG-16's 13 convs, conv6 3x3 512->512, fc7 7x7 512->4096 (at 224 px),
  fc8 4096->4096, fc9 4096->1, and one beta per input channel of each conv_mask layer."""
  widths = [(3, 64), (64, 64), (64, 128), (128, 128), (128, 256), (256, 256), (256, 256),
            (256, 512), (512, 512), (512, 512), (512, 512), (512, 512), (512, 512)]
  ordinary = (sum(_conv_count(3, a, b) for a, b in widths) + _conv_count(3, 512, 512)
              + _conv_count(7, 512, 4096) + _conv_count(1, 4096, 4096) + _conv_count(1, 4096, 1))
  assert _param_count(_init(icnn_model.VGG16(), 224)) == ordinary + 512 + 512
  assert _param_count(_init(icnn_model.VGG16(interpretable=False), 224)) == ordinary


def test_alexnet_parameters_are_the_releases():
  """Caffe AlexNet's convs (groups 2 in conv2, conv4, conv5; 34,944 + 307,456 + 885,120 +
  663,936 + 442,624 parameters), then alexnet.m's conv6 3x3 256->256, fc7 6x6 256->4096
  (at 227 px), fc8, fc9 and the betas."""
  convs = (_conv_count(11, 3, 96) + _conv_count(5, 48, 256) + _conv_count(3, 256, 384)
           + _conv_count(3, 192, 384) + _conv_count(3, 192, 256))
  assert convs == 2_334_080
  head = (_conv_count(3, 256, 256) + _conv_count(6, 256, 4096) + _conv_count(1, 4096, 4096)
          + _conv_count(1, 4096, 1))
  assert _param_count(_init(icnn_model.AlexNet(), 227)) == convs + head + 256 + 256


def _interval_geometry(layers, cell):
  """Centre of the input pixels an output cell sees, by composing index intervals."""
  lo = hi = cell
  for kernel, stride, padding in reversed(layers):
    lo, hi = lo * stride - padding, hi * stride - padding + kernel - 1
  return (lo + hi + 1) / 2  # Pixels lo..hi span [lo, hi + 1).


VGG_LAYERS = ([(3, 1, 1)] * 2 + [(2, 2, 0)] + [(3, 1, 1)] * 2 + [(2, 2, 0)]
              + ([(3, 1, 1)] * 3 + [(2, 2, 0)]) * 2 + [(3, 1, 1)] * 3 + [(3, 1, 1)])
ALEXNET_LAYERS = [(11, 4, 0), (3, 2, 0), (5, 1, 2), (3, 2, 0)] + [(3, 1, 1)] * 4
RESNET_LAYERS = [(7, 2, 3), (3, 2, 1), (1, 1, 0), (3, 1, 1), (1, 1, 0), (1, 1, 0), (3, 2, 1),
                 (1, 1, 0), (1, 1, 0), (3, 2, 1), (1, 1, 0), (3, 1, 1)]


@pytest.mark.parametrize("net, layers, size, cells", [
    (icnn_model.VGG16(width=2), VGG_LAYERS, 64, 4),
    (icnn_model.AlexNet(width=6), ALEXNET_LAYERS, 99, 5),
    (icnn_model.InterpretableResNet(layers=14, width=4), RESNET_LAYERS, 64, 4)])
def test_feature_geometry_is_the_receptive_field_centre(net, layers, size, cells):
  stride, offset = net.feature_geometry()
  for cell in range(cells):
    assert offset + stride * cell == _interval_geometry(layers, cell)
  images = jax.ShapeDtypeStruct((2, size, size, 3), jnp.float32)
  _, aux = jax.eval_shape(functools.partial(net.apply, train=False), _init(net, size), images)
  assert aux["filters"].shape[1:3] == (cells, cells)


def test_vgg16_filters_are_centred_at_224():
  """14 x 14 conv6 cells 16 px apart, the first and last 8 px from the borders."""
  stride, offset = icnn_model.VGG16().feature_geometry()
  assert (stride, offset, offset + 13 * stride) == (16, 8.0, 224 - 8.0)


def _release_mask(x, beta):
  """getMu.m (centroid, MATLAB round, 1-based) and getMask.m, one image x [H, W, C]."""
  h, w, c = x.shape
  rows = np.arange(1, h + 1, dtype=np.float64)[:, None, None]
  cols = np.arange(1, w + 1, dtype=np.float64)[None, :, None]
  total = np.maximum(x.sum(axis=(0, 1)), 1e-9)
  matlab_round = lambda v: np.sign(v) * np.floor(np.abs(v) + 0.5)
  r = np.maximum(matlab_round((rows * x).sum(axis=(0, 1)) / total), 1).astype(int)
  q = np.maximum(matlab_round((cols * x).sum(axis=(0, 1)) / total), 1).astype(int)
  lin_h = np.linspace(-1, 1, h) if h > 1 else np.ones(1)
  lin_w = np.linspace(-1, 1, w) if w > 1 else np.ones(1)
  dist = (np.abs(lin_h[:, None, None] - lin_h[r - 1][None, None, :])
          + np.abs(lin_w[None, :, None] - lin_w[q - 1][None, None, :]))
  return np.maximum(1 - beta * dist, -1)


def _paper_mask(x):
  """T_mu_hat at each map's first maximum: tau max(1 - 4 |[i, j] - mu|_1 / n, -1), tau 0.5 / n."""
  n, _, c = x.shape
  mask = np.empty_like(x)
  i, j = np.meshgrid(np.arange(n), np.arange(n), indexing="ij")
  for k in range(c):
    mu0, mu1 = np.unravel_index(np.argmax(x[:, :, k]), (n, n))
    mask[:, :, k] = 0.5 / n * np.maximum(1 - 4 * (np.abs(i - mu0) + np.abs(j - mu1)) / n, -1)
  return mask


def _conv3x3_relu(x, kernel, bias):
  """ReLU(3x3 conv with zero padding 1 + bias) of one image, and the sum of |terms|."""
  h, w, _ = x.shape
  padded = np.pad(x, ((1, 1), (1, 1), (0, 0)))
  out = np.zeros((h, w, kernel.shape[-1]))
  size = np.zeros_like(out)
  for a in range(3):
    for b in range(3):
      patch = padded[a:a + h, b:b + w]
      out += np.einsum("hwc,cd->hwd", patch, kernel[a, b])
      size += np.einsum("hwc,cd->hwd", np.abs(patch), np.abs(kernel[a, b]))
  return np.maximum(out + bias, 0), size + np.abs(bias)


@pytest.mark.parametrize("formulation", ["release", "paper", None])
def test_conv6_reads_the_masked_top_maps(formulation):
  """conv6's maps ("filters") are ReLU(conv6(max(x . mask, 0))) of the backbone's top maps x,
  with the release's mask (learned beta), the paper's template, or no mask (ordinary)."""
  net = icnn_model.VGG16(width=2, initializer="he", formulation=formulation or "release",
                         interpretable=formulation is not None)
  images = jax.random.normal(jax.random.key(1), (3, 64, 64, 3)) * 60.0
  params = _init_jit(net, images, 2)["params"]
  if formulation == "release":  # a beta per channel, away from the initial 2.0
    params["mask6"]["beta"] = jnp.linspace(1.5, 3.0, params["mask6"]["beta"].shape[0])
  _, aux = jax.jit(functools.partial(net.apply, train=False))({"params": params}, images)
  top = np.asarray(aux["mask_inputs"]["mask6"], np.float64)
  kernel = np.asarray(params["conv6"]["kernel"], np.float64)
  bias = np.asarray(params["conv6"]["bias"], np.float64)
  assert top.shape == (3, 4, 4, 16) and (top > 0).any()
  for x, got in zip(top, np.asarray(aux["filters"], np.float64)):
    if formulation == "release":
      x = np.maximum(x * _release_mask(x, np.asarray(params["mask6"]["beta"], np.float64)), 0)
    elif formulation == "paper":
      x = np.maximum(x * _paper_mask(x), 0)
    want, size = _conv3x3_relu(x, kernel, bias)
    # float32: the mask product rounds once, the 9 x 16 products and their sum at most
    # 9 x 16 + 2 times, each by U32 of a partial sum bounded by sum |terms|.
    np.testing.assert_array_less(np.abs(got - want), (9 * 16 + 3) * U32 * size + 1e-30)


def test_ordinary_network_starts_from_the_interpretable_weights():
  images = jnp.zeros((1, 32, 32, 3))
  interpretable = _init_jit(icnn_model.VGG16(width=2), images, 3)
  ordinary = _init_jit(icnn_model.VGG16(width=2, interpretable=False), images, 3)
  shared = {k: v for k, v in interpretable["params"].items() if not k.startswith("mask")}
  assert set(shared) == set(ordinary["params"])
  jax.tree.map(np.testing.assert_array_equal, shared, ordinary["params"])
  np.testing.assert_array_equal(interpretable["params"]["mask7"]["beta"], np.full(16, 2.0))


def test_alexnet_lrn_and_grouped_conv_match_torch():
  """Caffe's LRN (torch LocalResponseNorm(5, 1e-4, 0.75, 1)) and a conv with 2 groups."""
  rng = np.random.default_rng(0)
  x = rng.uniform(0, 30, (2, 5, 5, 8)).astype(np.float32)
  want = torch.nn.functional.local_response_norm(
      torch.from_numpy(x.astype(np.float64)).permute(0, 3, 1, 2), 5, alpha=1e-4, beta=0.75,
      k=1.0).permute(0, 2, 3, 1).numpy()
  # float32: the 5 squares' sum, the power and the division each round by a few U32.
  np.testing.assert_allclose(np.asarray(icnn_model._lrn(jnp.asarray(x))), want, rtol=16 * U32)
  conv = icnn_model.Conv(6, (3, 3), padding=1, groups=2, initializer="he")
  variables = conv.init(jax.random.key(0), jnp.asarray(x))
  kernel = np.asarray(variables["params"]["kernel"], np.float64)  # [3, 3, 4, 6]
  got = np.asarray(conv.apply(variables, jnp.asarray(x)), np.float64)
  torch_kernel = torch.from_numpy(kernel).permute(3, 2, 0, 1)  # [6, 4, 3, 3]
  want = torch.nn.functional.conv2d(torch.from_numpy(x.astype(np.float64)).permute(0, 3, 1, 2),
                                    torch_kernel, padding=1, groups=2).permute(0, 2, 3, 1).numpy()
  size = torch.nn.functional.conv2d(
      torch.from_numpy(np.abs(x).astype(np.float64)).permute(0, 3, 1, 2), torch_kernel.abs(),
      padding=1, groups=2).permute(0, 2, 3, 1).numpy()
  np.testing.assert_array_less(np.abs(got - want), 38 * U32 * size + 1e-30)  # 36 products


def test_resnet_variant_masks_before_the_last_stage():
  net = icnn_model.InterpretableResNet(layers=14, width=4, num_classes=3)
  variables = _init(net, 64)
  params = variables["params"]
  assert params["mask6"]["beta"].shape == (64,) and params["mask7"]["beta"].shape == (64,)
  assert "batch_stats" in variables
  images = jax.ShapeDtypeStruct((2, 64, 64, 3), jnp.float32)
  (logits, aux), _ = jax.eval_shape(
      functools.partial(net.apply, train=True, mutable=["batch_stats"]), variables, images)
  assert logits.shape == (2, 3)
  assert aux["mask_inputs"]["mask6"].shape == (2, 4, 4, 64)  # layer3 at stride 16
  assert aux["mask_inputs"]["mask7"].shape == aux["filters"].shape == (2, 4, 4, 64)
  ordinary = _init(net.clone(interpretable=False), 64)
  assert not any(k.startswith("mask") for k in ordinary["params"])


def test_bad_settings_are_one_line_errors():
  with pytest.raises(UserError, match="unknown filter-loss formulation 'mine'"):
    _init(icnn_model.VGG16(width=2, formulation="mine"), (32, 64))
  with pytest.raises(UserError, match="H == W"):  # the paper's templates need square maps
    _init(icnn_model.VGG16(width=2, formulation="paper"), (32, 64))
  variables = _init(icnn_model.VGG16(width=2), (32, 64))
  assert variables["params"]["fc7"]["kernel"].shape[:2] == (1, 2)  # the release's mask: any map
  with pytest.raises(UserError, match="multiple of 3"):
    _init(icnn_model.AlexNet(width=10), 99)
  with pytest.raises(UserError, match="at least 32x32"):
    _init(icnn_model.VGG16(width=2), 16)
  with pytest.raises(UserError, match="model.initializer"):
    _init(icnn_model.VGG16(width=2, initializer="xavier"), (32, 64))
