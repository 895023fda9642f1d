"""PSPNet parts: parameter counts, adaptive pooling, pyramid pooling, heads, loss.

The whole network against PyTorch is in test_convert.py.
"""
import chex
import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from readingnotes_jax.errors import UserError
from readingnotes_jax.nn.resize import resize_bilinear_align_corners
from readingnotes_jax.pspnet.model import (PSPNet, PyramidPooling, SegmentationHead,
                                           adaptive_avg_pool, conv_of_pyramid,
                                           cross_entropy_ignore, pspnet_loss)


def _count(tree) -> int:
  return sum(int(np.prod(leaf.shape)) for leaf in jax.tree.leaves(tree))


def _init_shapes(model, shape=(1, 33, 33, 3), train=False):
  return jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros(shape), train=train))


# The authors' PyTorch PSPNet-50 for ADE20K (150 classes), BN scale and bias
# counted, running statistics not. ResNet-101 adds 17 layer3 blocks of
# 2 * (1024*256 + 256*256*9 + 256*1024 + BN 2*(256+256+1024)).
@pytest.mark.parametrize("layers,use_aux,count", [
    (50, True, 49_180_908), (50, False, 46_782_550),
    (101, True, 49_180_908 + 17 * (2 * 1024 * 256 + 9 * 256 * 256 + 2 * (256 + 256 + 1024)))])
def test_parameter_count(layers, use_aux, count):
  assert _count(_init_shapes(PSPNet(150, layers=layers, use_aux=use_aux))["params"]) == count


def test_parameter_count_matches_torch_peer():
  torch_pspnet = pytest.importorskip("benchmarks.torch_pspnet")
  for use_aux in (True, False):
    net = torch_pspnet.PSPNet(50, classes=150, use_aux=use_aux)
    want = sum(p.numel() for p in net.parameters())
    assert _count(_init_shapes(PSPNet(150, use_aux=use_aux))["params"]) == want


def test_output_shapes_and_dtypes():
  model = PSPNet(7, dtype=jnp.bfloat16)
  variables = _init_shapes(model, (2, 41, 49, 3))
  assert set(variables["params"]) == {"backbone", "ppm", "cls", "aux"}
  assert jax.tree.map(lambda x: x.dtype, variables) == jax.tree.map(lambda x: jnp.float32,
                                                                     variables)
  x = jnp.zeros((2, 41, 49, 3))
  logits = jax.eval_shape(lambda v: model.apply(v, x, train=False), variables)
  assert logits.shape == (2, 41, 49, 7) and logits.dtype == jnp.float32
  (main, aux), _ = jax.eval_shape(
      lambda v: model.apply(v, x, train=True, rngs={"dropout": jax.random.key(0)},
                            mutable=["batch_stats"]), variables)
  assert main.shape == aux.shape == (2, 41, 49, 7)
  zoomed = jax.eval_shape(lambda v: model.clone(zoom_factor=2).apply(v, x, train=False), variables)
  assert zoomed.shape == (2, 11, 13, 7)


def test_without_aux_head():
  model = PSPNet(5, use_aux=False)
  variables = _init_shapes(model, train=True)
  assert "aux" not in variables["params"]
  (_, aux), _ = jax.eval_shape(
      lambda v: model.apply(v, jnp.zeros((1, 33, 33, 3)), train=True,
                            rngs={"dropout": jax.random.key(0)}, mutable=["batch_stats"]),
      variables)
  assert aux is None


@pytest.mark.parametrize("shape", [(1, 32, 33, 3), (33, 33, 3)])
def test_bad_image_shape_raises(shape):
  with pytest.raises(UserError, match="H - 1"):
    _init_shapes(PSPNet(5), shape)


def _numpy_adaptive_pool(x, bins):
  """Bin i of n covers [floor(i n / b), ceil((i + 1) n / b)) on each axis."""
  n, h, w, c = x.shape
  out = np.zeros((n, bins, bins, c))
  for i in range(bins):
    for j in range(bins):
      y0, y1 = int(np.floor(i * h / bins)), int(np.ceil((i + 1) * h / bins))
      x0, x1 = int(np.floor(j * w / bins)), int(np.ceil((j + 1) * w / bins))
      out[:, i, j] = x[:, y0:y1, x0:x1].mean(axis=(1, 2))
  return out


@pytest.mark.parametrize("size", [(7, 9), (60, 60), (5, 4)])
@pytest.mark.parametrize("bins", [1, 2, 3, 6])
def test_adaptive_avg_pool(size, bins):
  x = np.random.default_rng(0).normal(size=(2, *size, 3)).astype(np.float32)
  got = adaptive_avg_pool(jnp.asarray(x), bins)
  # Means of n <= 3600 N(0, 1) values: float32 sums round by ~ sqrt(n) eps32 x |partial sums|
  # ~ sqrt(n), / n: ~ eps32 (measured 1.2e-7, both references); a wrong bin edge is O(0.1).
  np.testing.assert_allclose(got, _numpy_adaptive_pool(x, bins), atol=1e-5)
  torch = pytest.importorskip("torch")
  want = torch.nn.AdaptiveAvgPool2d(bins)(torch.from_numpy(x.transpose(0, 3, 1, 2))).numpy()
  np.testing.assert_allclose(np.asarray(got).transpose(0, 3, 1, 2), want, atol=1e-5)


@pytest.mark.parametrize("train", [False, True])
def test_pyramid_pooling_matches_torch(train):
  torch = pytest.importorskip("torch")
  torch_pspnet = pytest.importorskip("benchmarks.torch_pspnet")
  torch.manual_seed(0)
  ppm = torch_pspnet.PPM(16, 4, (1, 2, 3, 6)).train(train)
  variables = {"params": {}, "batch_stats": {}}
  for k, branch in enumerate(ppm.features):
    conv, bn = branch[1], branch[2]
    bn.running_mean.uniform_(-0.5, 0.5)
    bn.running_var.uniform_(0.5, 2.0)
    bn.weight.data.uniform_(0.5, 1.5)
    bn.bias.data.uniform_(-0.5, 0.5)
    variables["params"][f"conv{k}"] = {"kernel": conv.weight.detach().numpy().transpose(2, 3, 1, 0)}
    variables["params"][f"bn{k}"] = {"scale": bn.weight.detach().numpy().copy(),
                                     "bias": bn.bias.detach().numpy().copy()}
    variables["batch_stats"][f"bn{k}"] = {"mean": bn.running_mean.numpy().copy(),
                                          "var": bn.running_var.numpy().copy()}
  x = np.random.default_rng(1).normal(size=(3, 16, 11, 9)).astype(np.float32)
  with torch.no_grad():
    want = ppm(torch.from_numpy(x)).numpy()
  got, _ = PyramidPooling((1, 2, 3, 6), 4, lowering="xla").apply(
      variables, jnp.asarray(x.transpose(0, 2, 3, 1)), train=train, mutable=["batch_stats"])
  assert got.shape == (3, 11, 9, 32)
  # Pooling means, 16-term 1x1 convs, BN (train: over 3 values in the 1x1 bin, 108 in the 6x6)
  # and blends, |out| < 3.8, in float32 on both sides: measured 9.5e-7, 1e-4 is 100x that.
  np.testing.assert_allclose(np.asarray(got).transpose(0, 3, 1, 2), want, atol=1e-4)


def _numpy_upsample(y: np.ndarray, out_h: int, out_w: int) -> np.ndarray:
  """align_corners=True bilinear resize from the formula: sample at i (b - 1) / (out - 1)."""
  def axis_weights(size, out):
    weights = np.zeros((out, size))
    for i in range(out):
      s = i * (size - 1) / (out - 1) if out > 1 else 0.0
      lo = int(np.floor(s))
      weights[i, lo] += 1 - (s - lo)
      weights[i, min(lo + 1, size - 1)] += s - lo
    return weights
  return np.einsum("ph,qw,nhwc->npqc", axis_weights(y.shape[1], out_h),
                   axis_weights(y.shape[2], out_w), y)


def _numpy_conv_same(x: np.ndarray, kernel: np.ndarray) -> np.ndarray:
  """Cross-correlation with k // 2 zeros on each side, straight from the sum."""
  k = kernel.shape[0]
  padded = np.pad(x, ((0, 0), (k // 2, k // 2), (k // 2, k // 2), (0, 0)))
  h, w = x.shape[1:3]
  return sum(np.einsum("nhwc,cd->nhwd", padded[:, i:i + h, j:j + w], kernel[i, j])
             for i in range(k) for j in range(k))


@pytest.mark.parametrize("kernel_size", [3, 5])
def test_conv_of_pyramid_matches_conv_of_upsampled_concat(kernel_size):
  """Forward against NumPy (upsample, concatenate, convolve); gradients against XLA's
  convolution of the upsampled concatenation."""
  rng = np.random.default_rng(4)
  x = rng.normal(size=(2, 7, 9, 5))
  branches = [rng.normal(size=(2, b, b, c)) for b, c in ((1, 3), (2, 3), (3, 2), (6, 2))]
  kernel = rng.normal(size=(kernel_size, kernel_size, 15, 4)) / 10
  want = _numpy_conv_same(np.concatenate([x] + [_numpy_upsample(y, 7, 9) for y in branches],
                                         axis=-1), kernel)
  f32 = lambda a: jnp.asarray(a, jnp.float32)
  got = jax.jit(conv_of_pyramid)(f32(x), [f32(y) for y in branches], f32(kernel))
  chex.assert_shape(got, (2, 7, 9, 4))
  # Float32 sums of <= 25 x 15 = 375 products of size ~ 0.1 against float64: ~ sqrt(375) eps32
  # x |partial sums| < 3.6 = 8e-6 (measured 7.5e-7).
  np.testing.assert_allclose(got, want, atol=1e-4)

  def reference(x, branches, kernel):
    stacked = jnp.concatenate([x] + [resize_bilinear_align_corners(y, (7, 9))
                                     for y in branches], axis=-1)
    return jax.lax.conv_general_dilated(stacked, kernel, (1, 1), "SAME",
                                        dimension_numbers=("NHWC", "HWIO", "NHWC"))

  cotangent = f32(rng.normal(size=(2, 7, 9, 4)))
  grads = lambda fn: jax.jit(jax.grad(lambda *a: jnp.sum(fn(*a) * cotangent), argnums=(0, 1, 2)))(
      f32(x), [f32(y) for y in branches], f32(kernel))
  # Two float32 orders of sums over <= 2 x 7 x 9 = 126 positions, gradients up to 40:
  # ~ sqrt(126) eps32 x 40 = 5e-5 (measured 9.5e-6).
  chex.assert_trees_all_close(grads(conv_of_pyramid), grads(reference), atol=1e-4)


def test_conv_of_pyramid_channel_mismatch_raises():
  x, y = jnp.zeros((1, 5, 5, 2)), jnp.zeros((1, 2, 2, 3))
  with pytest.raises(UserError, match="kernel reads 4"):
    conv_of_pyramid(x, [y], jnp.zeros((3, 3, 4, 1)))


class _PyramidHead(nn.Module):
  """PSPNet's ppm + cls head, with or without `factorized_head`."""
  factorized: bool

  @nn.compact
  def __call__(self, x):
    pyramid = PyramidPooling((1, 2, 3, 6), 4, upsample=not self.factorized, name="ppm")(
        x, train=True)
    return SegmentationHead(16, 5, dropout=0.0, name="cls")(pyramid, train=True)


def test_factorized_head_equals_semseg_order():
  """Same variables, same outputs and gradients with and without upsampling first."""
  x = jnp.asarray(np.random.default_rng(5).normal(size=(2, 11, 9, 8)), jnp.float32)
  variables = _PyramidHead(False).init(jax.random.key(0), x)
  chex.assert_trees_all_equal_shapes(variables, _PyramidHead(True).init(jax.random.key(0), x))
  results = {}
  for factorized in (False, True):
    def loss(params, module=_PyramidHead(factorized)):
      out, _ = module.apply({**variables, "params": params}, x, mutable=["batch_stats"])
      return jnp.sum(jnp.sin(out)), out
    results[factorized] = jax.jit(jax.value_and_grad(loss, has_aux=True))(variables["params"])
  (_, want), want_grads = results[False]
  (_, got), got_grads = results[True]
  # The same float32 function in two orders: outputs (|out| < 1.3) measured 5.1e-7 apart;
  # gradients, sums over 2 x 11 x 9 = 198 positions (~ sqrt(198) eps32 = 1.7e-6 relative),
  # up to 189, measured 6.9e-5 apart (13% of rtol + atol).
  np.testing.assert_allclose(got, want, atol=1e-5)
  chex.assert_trees_all_close(got_grads, want_grads, rtol=1e-4, atol=1e-4)


def test_head_dropout_drops_whole_channels():
  """torch Dropout2d: one keep/drop draw per (image, channel), kept values scaled by 2."""
  head = SegmentationHead(64, 3, dropout=0.5, lowering="xla")
  x = jnp.asarray(np.random.default_rng(2).normal(size=(2, 5, 5, 8)), jnp.float32)
  variables = head.init(jax.random.key(0), x, train=False)
  _, state = head.apply(variables, x, train=True, rngs={"dropout": jax.random.key(1)},
                        mutable=["batch_stats", "intermediates"], capture_intermediates=True)
  captured = flax.traverse_util.flatten_dict(state["intermediates"])
  before = np.maximum(np.asarray(captured[("bn", "__call__")][0]), 0)
  after = np.asarray(captured[("Dropout_0", "__call__")][0])
  dropped = np.all(after == 0, axis=(1, 2))
  kept = np.all(np.isclose(after, 2 * before), axis=(1, 2))  # x / 0.5 and 2 x: both exact
  assert np.all(dropped | kept) and dropped.any() and kept.any()


def test_loss_matches_torch_and_formula():
  rng = np.random.default_rng(3)
  logits = rng.normal(size=(2, 5, 6, 4)).astype(np.float32) * 3
  aux = rng.normal(size=(2, 5, 6, 4)).astype(np.float32)
  labels = rng.integers(0, 4, size=(2, 5, 6))
  labels[0, :2] = 255
  loss, parts = pspnet_loss(jnp.asarray(logits), jnp.asarray(aux), jnp.asarray(labels))

  def numpy_ce(z):
    log_p = z - z.max(-1, keepdims=True)
    log_p = log_p - np.log(np.exp(log_p).sum(-1, keepdims=True))
    valid = labels != 255
    return -np.take_along_axis(log_p, np.where(valid, labels, 0)[..., None], -1)[..., 0][
        valid].mean()

  # Means of <= 60 float32 terms, each a logsumexp over 4: ~ 10 eps32 relative on each side.
  np.testing.assert_allclose(parts["main_loss"], numpy_ce(logits), rtol=1e-5)
  np.testing.assert_allclose(parts["aux_loss"], numpy_ce(aux), rtol=1e-5)
  np.testing.assert_allclose(loss, numpy_ce(logits) + 0.4 * numpy_ce(aux), rtol=1e-5)
  torch = pytest.importorskip("torch")
  criterion = torch.nn.CrossEntropyLoss(ignore_index=255)
  nchw = lambda z: torch.from_numpy(z.transpose(0, 3, 1, 2))
  want = (criterion(nchw(logits), torch.from_numpy(labels))
          + 0.4 * criterion(nchw(aux), torch.from_numpy(labels)))
  np.testing.assert_allclose(loss, want.item(), rtol=1e-5)  # as above, torch's float32 order


def test_loss_edge_cases():
  logits = jnp.zeros((1, 2, 2, 3))
  assert cross_entropy_ignore(logits, jnp.full((1, 2, 2), 255)) == 0.0
  loss, parts = pspnet_loss(logits, None, jnp.zeros((1, 2, 2), jnp.int32))
  np.testing.assert_allclose(loss, np.log(3), rtol=1e-6)  # float32 log(3): ~ 2 eps32
  assert parts["aux_loss"] == 0.0
  with pytest.raises(UserError, match="labels"):
    pspnet_loss(logits, None, jnp.zeros((1, 3, 2), jnp.int32))
