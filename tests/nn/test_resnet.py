"""ResNet backbone: parameter counts, strides, blocks and a full network against torch.

The torch peer is benchmarks/torch_pspnet.py (semseg's module structure).
"""
import copy

import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from readingnotes_jax.errors import UserError
from readingnotes_jax.nn.resnet import Bottleneck, ResNet, Stem
from numerics_testlib import EPS32, SAFETY, assert_within_reference


def _count(tree) -> int:
  return sum(int(np.prod(leaf.shape)) for leaf in jax.tree.leaves(tree))


def _shapes(model, size=65, train=False):
  return jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, size, size, 3)),
                                           train=train))


def _forward_shapes(model, size=65):
  variables = _shapes(model, size)
  return jax.eval_shape(lambda v: model.apply(v, jnp.zeros((1, size, size, 3)), train=False),
                        variables)


# torchvision resnet50/101/152 (25,557,032 / 44,549,160 / 60,192,808) without the
# 2048x1000 fc: the classic 7x7 stem.
CLASSIC_COUNTS = {50: 23_508_032, 101: 42_500_160, 152: 58_143_808}
# Deep stem: 3x3 convs 3->64, 64->64, 64->128 with BN instead of 7x7 3->64 with BN,
# and layer1's first 1x1 conv and projection read 128 channels instead of 64.
DEEP_STEM_EXTRA = ((27 * 64 + 128) + (576 * 64 + 128) + (576 * 128 + 256) - (147 * 64 + 128)
                   + 64 * 64 + 64 * 256)


@pytest.mark.parametrize("layers", [50, 101, 152])
@pytest.mark.parametrize("deep_stem", [False, True])
def test_parameter_count(layers, deep_stem):
  variables = _shapes(ResNet(layers, deep_stem=deep_stem))
  assert _count(variables["params"]) == CLASSIC_COUNTS[layers] + deep_stem * DEEP_STEM_EXTRA
  # Running statistics: 2 per BN channel, as many as the BN scales and biases.
  bn_params = sum(_count(v) for k, v in flax.traverse_util.flatten_dict(
      variables["params"]).items() if k[-1] in ("scale", "bias"))
  assert _count(variables["batch_stats"]) == bn_params


def test_parameter_count_matches_torch_peer():
  torch_pspnet = pytest.importorskip("benchmarks.torch_pspnet")
  want = sum(p.numel() for p in torch_pspnet.ResNet(50, deep_stem=True).parameters())
  assert _count(_shapes(ResNet(50))["params"]) == want == 23_631_808


@pytest.mark.parametrize("output_stride,sizes", [(8, (17, 17, 9, 9, 9)), (16, (17, 17, 9, 5, 5)),
                                                 (32, (17, 17, 9, 5, 3))])
def test_stage_shapes(output_stride, sizes):
  names = ("stem", "layer1", "layer2", "layer3", "layer4")
  out = _forward_shapes(ResNet(50, output_stride=output_stride, outputs=names))
  for name, size, channels in zip(names, sizes, (128, 256, 512, 1024, 2048)):
    assert out[name].shape == (1, size, size, channels), name


def test_builds_only_the_stages_asked_for():
  model = ResNet(101, outputs=("layer2", "stem"))
  assert set(_shapes(model)["params"]) == {"stem", "layer1", "layer2"}
  assert set(_forward_shapes(model)) == {"layer2", "stem"}


@pytest.mark.parametrize("kwargs", [dict(layers=34), dict(output_stride=4),
                                    dict(outputs=("layer5",)), dict(frozen_stages=5)])
def test_bad_configuration_raises(kwargs):
  with pytest.raises(UserError):
    _shapes(ResNet(**kwargs))


def _torch_to_flax(module, prefix_map):
  """{'params': ..., 'batch_stats': ...} from a torch module, keys renamed by prefix_map."""
  variables = {}
  for key, value in module.state_dict().items():
    module_name, leaf = key.rsplit(".", 1)
    if leaf == "num_batches_tracked":
      continue
    path = tuple(prefix_map(module_name).split("/"))
    value = value.numpy().copy()
    if leaf == "weight" and value.ndim == 4:
      variables[("params", *path, "kernel")] = value.transpose(2, 3, 1, 0)
    else:
      collection, name = {"weight": ("params", "scale"), "bias": ("params", "bias"),
                          "running_mean": ("batch_stats", "mean"),
                          "running_var": ("batch_stats", "var")}[leaf]
      variables[(collection, *path, name)] = value
  return flax.traverse_util.unflatten_dict(variables)


def _randomize_bn(torch, module, seed):
  generator = torch.Generator().manual_seed(seed)
  for m in module.modules():
    if isinstance(m, torch.nn.BatchNorm2d):
      m.weight.data.uniform_(0.5, 1.5, generator=generator)
      m.bias.data.uniform_(-0.3, 0.3, generator=generator)
      m.running_mean.uniform_(-0.3, 0.3, generator=generator)
      m.running_var.uniform_(0.5, 2.0, generator=generator)


def _block_name(name):
  return {"downsample.0": "downsample_conv", "downsample.1": "downsample_bn"}.get(name, name)


@pytest.mark.parametrize("in_channels,planes,stride,dilation,stride_in_1x1,lowering", [
    (24, 8, 2, 1, False, "matmul"), (24, 8, 2, 1, True, "xla"), (32, 8, 1, 2, False, "xla"),
    (16, 8, 1, 4, True, "matmul")])
def test_bottleneck_matches_torch(in_channels, planes, stride, dilation, stride_in_1x1, lowering):
  """Training-mode output, gradients and BN statistics; eval-mode output."""
  torch = pytest.importorskip("torch")
  torch_pspnet = pytest.importorskip("benchmarks.torch_pspnet")
  torch.manual_seed(0)
  block = torch_pspnet.Bottleneck(in_channels, planes, stride, dilation, stride_in_1x1)
  _randomize_bn(torch, block, 1)
  variables = _torch_to_flax(block, _block_name)
  assert ("downsample_conv" in variables["params"]) == (stride != 1 or in_channels != 4 * planes)
  rng = np.random.default_rng(0)
  x = rng.normal(size=(2, in_channels, 11, 11)).astype(np.float32)
  model = Bottleneck(planes, stride=stride, dilation=dilation, stride_in_1x1=stride_in_1x1,
                     lowering=lowering)
  out_shape = block.eval()(torch.from_numpy(x)).shape
  cotangent = rng.normal(size=out_shape).astype(np.float32)

  def torch_run(dtype):
    """Eval output, train output, input gradient, parameter gradients, updated statistics."""
    net = copy.deepcopy(block).to(dtype)
    with torch.no_grad():
      want_eval = net.eval()(torch.from_numpy(x).to(dtype)).numpy()
    tx = torch.from_numpy(x).to(dtype).requires_grad_(True)
    ty = net.train()(tx)
    ty.backward(torch.from_numpy(cotangent).to(dtype))
    grads = _torch_to_flax(
        type("Grads", (), {"state_dict": lambda self: {k: p.grad for k, p in
                                                        net.named_parameters()}})(), _block_name)
    return (want_eval, ty.detach().numpy(), tx.grad.numpy(), grads["params"],
            _torch_to_flax(net, _block_name)["batch_stats"])

  # Each output against torch in float64, at SAFETY x (torch's own float32 error + `ulps` of
  # the output's size), ulps = sqrt(K) for the longest reduction here, K = 2 x 11 x 11 = 242
  # positions (BN statistics, kernel gradients): a K-term float32 sum rounds by ~ sqrt(K) eps32
  # of its size in any order. Ours ran up to 2.7x torch's error on the parameter gradients (up
  # to 295), which used 30% of the former rtol=atol=1e-4.
  ulps = np.sqrt(x.size / in_channels)
  want32, want64 = torch_run(torch.float32), torch_run(torch.float64)
  got_eval = jax.jit(lambda v, x: model.apply(v, x, train=False))(
      variables, jnp.asarray(x.transpose(0, 2, 3, 1)))
  assert_within_reference(np.asarray(got_eval).transpose(0, 3, 1, 2), want32[0], want64[0],
                          ulps, err_msg="eval output")

  def f(params, x):
    y, updates = model.apply({"params": params, "batch_stats": variables["batch_stats"]}, x,
                             train=True, mutable=["batch_stats"])
    return jnp.sum(y * cotangent.transpose(0, 2, 3, 1)), (y, updates["batch_stats"])

  (_, (y, stats)), (grads, grad_x) = jax.jit(jax.value_and_grad(f, (0, 1), has_aux=True))(
      variables["params"], jnp.asarray(x.transpose(0, 2, 3, 1)))
  for name, got, k in (("train output", np.asarray(y).transpose(0, 3, 1, 2), 1),
                       ("input gradient", np.asarray(grad_x).transpose(0, 3, 1, 2), 2)):
    assert_within_reference(got, want32[k], want64[k], ulps, err_msg=name)
  for k, tree in ((3, grads), (4, stats)):
    got, w32, w64 = (flax.traverse_util.flatten_dict(t) for t in (tree, want32[k], want64[k]))
    assert set(got) == set(w32)
    for path in got:
      assert_within_reference(got[path], w32[path], w64[path], ulps, err_msg="/".join(path))


@pytest.mark.parametrize("deep", [True, False])
def test_stem_matches_torch(deep):
  torch = pytest.importorskip("torch")
  torch_pspnet = pytest.importorskip("benchmarks.torch_pspnet")
  torch.manual_seed(1)
  stem = torch_pspnet.ResNet(50, deep_stem=deep).layer0
  _randomize_bn(torch, stem, 2)
  names = ({0: "conv1", 1: "bn1", 3: "conv2", 4: "bn2", 6: "conv3", 7: "bn3"} if deep
           else {0: "conv1", 1: "bn1"})
  variables = _torch_to_flax(stem, lambda n: names[int(n)])
  x = np.random.default_rng(1).normal(size=(2, 3, 21, 19)).astype(np.float32)
  for train in (False, True):
    want = stem.train(train)(torch.from_numpy(x)).detach().numpy()
    got, _ = jax.jit(lambda v, x: Stem(deep=deep, lowering="xla").apply(v, x, train=train,
                                                         mutable=["batch_stats"]))(
                                                             variables, jnp.asarray(x.transpose(0, 2, 3, 1)))
    # <= 3 float32 convs of K <= 576 terms and BNs over 2 x 11 x 10 values, |out| < 5.5:
    # ~ sqrt(576) eps32 x 5.5 x 3 = 5e-5 (measured 4.3e-6); a wrong stem is O(1).
    np.testing.assert_allclose(np.asarray(got).transpose(0, 3, 1, 2), want, atol=1e-4)


def test_full_network_output_stride_16_classic_stem_caffe_stride_matches_torch():
  """ResNet-50, 7x7 stem, stride on the first 1x1, output stride 16, eval mode."""
  torch = pytest.importorskip("torch")
  torch_pspnet = pytest.importorskip("benchmarks.torch_pspnet")
  torch.manual_seed(2)
  net = torch_pspnet.ResNet(50, output_stride=16, deep_stem=False, stride_in_1x1=True)
  _randomize_bn(torch, net, 3)
  for name, m in net.named_modules():  # small residual branches keep float32 error small
    if name.endswith("bn3") or name.endswith("downsample.1"):
      m.weight.data.mul_(0.3)

  def rename(name):
    if name.startswith("layer0."):
      return {"layer0.0": "stem/conv1", "layer0.1": "stem/bn1"}[name]
    layer, block, rest = name.split(".", 2)
    return f"{layer}/block{block}/{_block_name(rest)}"

  variables = _torch_to_flax(net, rename)
  x = np.random.default_rng(4).normal(size=(1, 3, 33, 33)).astype(np.float32)
  with torch.no_grad():
    want = net.eval()(torch.from_numpy(x))
  names = ("layer1", "layer3", "layer4")
  got = jax.jit(lambda v, x: ResNet(50, output_stride=16, deep_stem=False, stride_in_1x1=True,
                                    outputs=names, lowering="xla").apply(v, x, train=False))(
                                        variables, jnp.asarray(x.transpose(0, 2, 3, 1)))
  for name in names:  # eval mode, small residual branches: measured 7.5e-7 (of 1.9)
    np.testing.assert_allclose(np.asarray(got[name]).transpose(0, 3, 1, 2), want[name].numpy(),
                               atol=1e-4 * max(1.0, np.abs(want[name].numpy()).max()), err_msg=name)


@pytest.fixture(scope="module")
def small_resnet():
  """ResNet-50 up to layer2 on 2x33x33 images, and its initial variables."""
  rng = np.random.default_rng(5)
  x = jnp.asarray(rng.normal(size=(2, 33, 33, 3)), jnp.float32)
  shapes = _shapes(ResNet(50, outputs=("layer2",)), size=33)

  def value(path, leaf):
    if path[-1] == "kernel":
      return rng.normal(0, np.prod(leaf.shape[:-1]) ** -0.5, leaf.shape).astype(np.float32)
    return np.full(leaf.shape, 1.0 if path[-1] in ("scale", "var") else 0.0, np.float32)

  return x, flax.traverse_util.path_aware_map(value, flax.core.unfreeze(shapes))


def _train_grads(model, variables, x):
  def loss(params):
    out, updates = model.apply({"params": params, "batch_stats": variables["batch_stats"]}, x,
                               train=True, mutable=["batch_stats"])
    return jnp.mean(jnp.square(out["layer2"])), (out["layer2"], updates["batch_stats"])
  (_, (out, stats)), grads = jax.jit(jax.value_and_grad(loss, has_aux=True))(variables["params"])
  return out, stats, grads


def test_frozen_stages(small_resnet):
  x, variables = small_resnet
  model = ResNet(50, outputs=("layer2",), frozen_stages=1, lowering="xla")
  _, stats, grads = _train_grads(model, variables, x)
  for stage in ("stem", "layer1"):
    assert all(np.all(g == 0) for g in jax.tree.leaves(grads[stage])), stage
    jax.tree.map(np.testing.assert_array_equal, stats[stage], variables["batch_stats"][stage])
  assert any(np.any(g != 0) for g in jax.tree.leaves(grads["layer2"]))
  assert not np.allclose(stats["layer2"]["block0"]["bn1"]["mean"],
                         variables["batch_stats"]["layer2"]["block0"]["bn1"]["mean"])


def test_frozen_bn_uses_running_statistics(small_resnet):
  x, variables = small_resnet
  model = ResNet(50, outputs=("layer2",), frozen_bn=True, lowering="xla")
  out, stats, grads = _train_grads(model, variables, x)
  jax.tree.map(np.testing.assert_array_equal, stats, variables["batch_stats"])
  eval_out = jax.jit(lambda v, x: model.apply(v, x, train=False))(variables, x)
  # The same float32 function in two XLA programs (orders): 24 convs of K <= 1152 terms, each
  # ~ sqrt(K) eps32 relative, ~ sqrt(24 K) eps32 = 2e-5 of max |out| through the stack, x
  # SAFETY (the former atol=1e-5 was 24% used); batch instead of running statistics is O(1).
  np.testing.assert_allclose(out, eval_out["layer2"],
                             atol=SAFETY * np.sqrt(24 * 1152) * EPS32 * np.abs(out).max())
  assert any(np.any(g != 0) for g in jax.tree.leaves(grads["stem"]))


def test_bfloat16_compute(small_resnet):
  x, variables = small_resnet
  forward = lambda model: jax.jit(lambda v, x: model.apply(v, x, train=False))(variables, x)
  want = forward(ResNet(50, outputs=("layer2",), lowering="xla"))
  got = forward(ResNet(50, outputs=("layer2",), dtype=jnp.bfloat16))
  assert got["layer2"].dtype == jnp.bfloat16
  scale = np.abs(np.asarray(want["layer2"])).max()
  # Each of 24 convs rounds its input and output to bf16 (2^-8, like a random walk through the
  # stack): ~ sqrt(24) x 2^-8 = 0.02 of the scale (measured 0.008); 0.05 = 2.5x that.
  np.testing.assert_allclose(np.asarray(got["layer2"], np.float32), want["layer2"],
                             atol=0.05 * scale)
