"""nn.resnet_weights: ImageNet ResNet state dicts (semseg's deep stem, torchvision's 7x7 stem)
and our own checkpoints onto nn.resnet.ResNet, against a torch ResNet with those module names.

The torch classifier below is written in this test from hszhao/semseg `model/resnet.py`
(`ResNet(Bottleneck, layers, deep_base)`; torchvision's `models/resnet.py` is its 7x7-stem
case): its `state_dict()` gives the key names and shapes of `initmodel/resnet50_v2.pth` and
`resnet50-*.pth`, independently of the loader's key rule. Widths and depths shrink for speed.
"""
import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from readingnotes_jax.errors import UserError
from readingnotes_jax.nn.resnet import STAGE_BLOCKS, STAGE_NAMES, ResNet
from readingnotes_jax.nn.resnet_weights import (load_resnet_weights, save_resnet_checkpoint,
                                                variable_shapes)
from readingnotes_jax.pspnet import train as pspnet_train
from readingnotes_jax.pspnet.model import PSPNet
from readingnotes_jax.training import mesh as mesh_lib
from numerics_testlib import EPS32, assert_within_reference

torch = pytest.importorskip("torch")

WIDTH = 8


class TorchBottleneck(torch.nn.Module):
  """semseg / torchvision Bottleneck: stride on conv2, `downsample` = (1x1 conv, BN)."""

  def __init__(self, in_channels, planes, stride):
    super().__init__()
    self.conv1 = torch.nn.Conv2d(in_channels, planes, 1, bias=False)
    self.bn1 = torch.nn.BatchNorm2d(planes)
    self.conv2 = torch.nn.Conv2d(planes, planes, 3, stride=stride, padding=1, bias=False)
    self.bn2 = torch.nn.BatchNorm2d(planes)
    self.conv3 = torch.nn.Conv2d(planes, planes * 4, 1, bias=False)
    self.bn3 = torch.nn.BatchNorm2d(planes * 4)
    self.downsample = None
    if stride != 1 or in_channels != planes * 4:
      self.downsample = torch.nn.Sequential(
          torch.nn.Conv2d(in_channels, planes * 4, 1, stride=stride, bias=False),
          torch.nn.BatchNorm2d(planes * 4))

  def forward(self, x):
    y = torch.relu(self.bn1(self.conv1(x)))
    y = torch.relu(self.bn2(self.conv2(y)))
    y = self.bn3(self.conv3(y))
    return torch.relu(y + (x if self.downsample is None else self.downsample(x)))


class TorchResNet(torch.nn.Module):
  """The ImageNet classifier with semseg's attribute names; forward gives the stage outputs."""

  def __init__(self, layers, width, deep_stem, classes=1000):
    super().__init__()
    self.deep_stem = deep_stem
    if deep_stem:
      self.conv1 = torch.nn.Conv2d(3, width, 3, stride=2, padding=1, bias=False)
      self.bn1 = torch.nn.BatchNorm2d(width)
      self.conv2 = torch.nn.Conv2d(width, width, 3, padding=1, bias=False)
      self.bn2 = torch.nn.BatchNorm2d(width)
      self.conv3 = torch.nn.Conv2d(width, 2 * width, 3, padding=1, bias=False)
      self.bn3 = torch.nn.BatchNorm2d(2 * width)
    else:
      self.conv1 = torch.nn.Conv2d(3, width, 7, stride=2, padding=3, bias=False)
      self.bn1 = torch.nn.BatchNorm2d(width)
    in_channels = 2 * width if deep_stem else width
    for stage, blocks in enumerate(STAGE_BLOCKS[layers]):
      planes = width * 2 ** stage
      modules = []
      for i in range(blocks):
        modules.append(TorchBottleneck(in_channels, planes, 2 if stage and not i else 1))
        in_channels = planes * 4
      setattr(self, f"layer{stage + 1}", torch.nn.Sequential(*modules))
    self.fc = torch.nn.Linear(in_channels, classes)

  def forward(self, x):
    x = torch.relu(self.bn1(self.conv1(x)))
    if self.deep_stem:
      x = torch.relu(self.bn3(self.conv3(torch.relu(self.bn2(self.conv2(x))))))
    outputs = {"stem": torch.nn.functional.max_pool2d(x, 3, 2, 1)}
    for name in STAGE_NAMES[1:]:
      outputs[name] = getattr(self, name)(outputs[list(outputs)[-1]])
    return outputs


def _random_net(deep_stem, layers=14, width=WIDTH):
  """Random weights, BN affine U(0.5, 1.5) / U(-0.2, 0.2) (the residual ones 0.2-0.5) and
  running statistics of a random batch, as a trained network has."""
  torch.manual_seed(0)
  net = TorchResNet(layers, width, deep_stem, classes=10)
  generator = torch.Generator().manual_seed(1)
  for name, module in net.named_modules():
    if isinstance(module, torch.nn.BatchNorm2d):
      residual = name.endswith("bn3") and "layer" in name or name.endswith("downsample.1")
      module.weight.data.uniform_(*((0.2, 0.5) if residual else (0.5, 1.5)), generator=generator)
      module.bias.data.uniform_(-0.2, 0.2, generator=generator)
      module.momentum = None  # cumulative average: the statistics of the batch below
  with torch.no_grad():
    net.train()(torch.randn(4, 3, 65, 65, generator=generator))
  return net.eval()


def _numpy(state_dict):
  return {k: v.numpy().copy() for k, v in state_dict.items()}


def _model(deep_stem, layers=14, width=WIDTH, outputs=STAGE_NAMES):
  return ResNet(layers, width=width, deep_stem=deep_stem, outputs=outputs)


@pytest.fixture(scope="module", params=[True, False], ids=["semseg_deep_stem", "classic_stem"])
def net(request):
  return _random_net(request.param)


def test_stage_outputs_match_torch(net):
  """Every stage of the loaded network against torch (eval mode) on one image batch (XLA's
  convolution: tests/nn/test_resnet.py checks the lowerings against each other)."""
  model = _model(net.deep_stem).clone(lowering="xla")
  variables, ignored = load_resnet_weights(net.state_dict(), variable_shapes(model))
  assert ignored == ["fc.bias", "fc.weight"]
  images = np.random.default_rng(2).normal(size=(2, 3, 65, 65)).astype(np.float32)
  with torch.no_grad():
    want = net(torch.from_numpy(images))
    exact = net.double()(torch.from_numpy(images).double())
    net.float()
  got = jax.jit(lambda v, x: model.apply(v, x, train=False))(
      variables, jnp.asarray(images.transpose(0, 2, 3, 1)))
  for name in STAGE_NAMES:
    ours = np.asarray(got[name]).transpose(0, 3, 1, 2)
    assert ours.shape == tuple(want[name].shape), name
    assert_within_reference(ours, want[name].numpy(), exact[name].numpy(), err_msg=name)


def test_first_conv_is_torch_conv2d(net):
  """The stem's first kernel convolves as torch's conv1 weight does (layout OIHW -> HWIO).

  Bar: a float32 sum of K products is within K eps32/2 sum |x w| of the exact value (first
  order, any summation order); inputs and weights are float32, so float64 torch is exact.
  """
  model = _model(net.deep_stem)
  variables, _ = load_resnet_weights(net.state_dict(), variable_shapes(model))
  kernel = variables["params"]["stem"]["conv1"]["kernel"]
  images = np.random.default_rng(3).normal(size=(1, 3, 15, 15)).astype(np.float32)
  size = kernel.shape[0]

  def torch_conv(x, w):
    return torch.nn.functional.conv2d(torch.from_numpy(x), w, stride=2,
                                      padding=size // 2).numpy()
  want = torch_conv(images.astype(np.float64), net.conv1.weight.detach().double())
  bound = torch_conv(np.abs(images).astype(np.float64), net.conv1.weight.detach().double().abs())
  got = jax.lax.conv_general_dilated(images.transpose(0, 2, 3, 1), kernel, (2, 2),
                                     [(size // 2, size // 2)] * 2,
                                     dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                     precision=jax.lax.Precision.HIGHEST)
  error = np.abs(np.asarray(got, np.float64).transpose(0, 3, 1, 2) - want)
  assert (error <= kernel[..., 0].size * EPS32 / 2 * bound).all()


# torchvision's documented parameter counts (resnet50 25,557,032; resnet101 44,549,160) less
# the 2048 x 1000 fc; semseg's deep stem adds its 3x3 convs and BNs and layer1's wider input.
FC = 2048 * 1000 + 1000
DEEP_STEM_EXTRA = ((27 * 64 + 128) + (576 * 64 + 128) + (576 * 128 + 256) - (147 * 64 + 128)
                   + 64 * 64 + 64 * 256)


@pytest.mark.parametrize("layers,deep_stem,params", [
    (50, True, 25_557_032 - FC + DEEP_STEM_EXTRA),    # semseg initmodel/resnet50_v2.pth
    (101, True, 44_549_160 - FC + DEEP_STEM_EXTRA),   # semseg initmodel/resnet101_v2.pth
    (50, False, 25_557_032 - FC)])                    # torchvision resnet50-*.pth
def test_full_size_files_fill_every_variable_once(layers, deep_stem, params):
  """Key names and shapes of the full-size files (the torch net built on the meta device, so
  no weights are made; num_batches_tracked as torch saves it). Array i is filled with i:
  every key but fc.* and num_batches_tracked lands in exactly one variable."""
  with torch.device("meta"):
    keys = {k: tuple(v.shape) for k, v in TorchResNet(layers, 64, deep_stem).state_dict().items()}
  state = {k: np.full(shape, i, np.float32) for i, (k, shape) in enumerate(keys.items())}
  variables, ignored = load_resnet_weights(state, variable_shapes(_model(deep_stem, layers, 64)))
  assert ignored == ["fc.bias", "fc.weight"]
  assert sum(v.size for v in jax.tree.leaves(variables["params"])) == params
  source = {path: int(leaf.flat[0]) for path, leaf in
            flax.traverse_util.flatten_dict(variables).items()}
  assert sorted(source.values()) == [i for i, k in enumerate(keys) if not (
      k.startswith("fc.") or k.endswith("num_batches_tracked"))]
  index = list(keys).index
  assert source["params", "layer3", "block5", "conv2", "kernel"] == index("layer3.5.conv2.weight")
  assert source["batch_stats", "layer1", "block0", "downsample_bn", "var"] == index(
      "layer1.0.downsample.1.running_var")
  assert source["params", "stem", "bn1", "scale"] == index("bn1.weight")


def test_pth_and_npz_files_and_training_checkpoints(net, tmp_path):
  """torch.save'd state dict (semseg's initmodel format), a DDP training checkpoint and an .npz
  load the same arrays as the state dict in memory."""
  target = variable_shapes(_model(net.deep_stem))
  want, _ = load_resnet_weights(_numpy(net.state_dict()), target)
  torch.save(net.state_dict(), tmp_path / "resnet.pth")
  torch.save({"epoch": 1, "state_dict": {f"module.{k}": v for k, v in net.state_dict().items()}},
             tmp_path / "train_epoch_1.pth")
  np.savez(tmp_path / "resnet.npz", **_numpy(net.state_dict()))
  for name in ("resnet.pth", "train_epoch_1.pth", "resnet.npz"):
    got, ignored = load_resnet_weights(tmp_path / name, target)
    assert ignored == ["fc.bias", "fc.weight"], name
    jax.tree.map(np.testing.assert_array_equal, got, want)


def test_stages_the_model_omits_are_ignored(net):
  full, _ = load_resnet_weights(net.state_dict(), variable_shapes(_model(net.deep_stem)))
  part, ignored = load_resnet_weights(
      net.state_dict(), variable_shapes(_model(net.deep_stem, outputs=("layer2",))))
  assert set(part["params"]) == {"stem", "layer1", "layer2"}
  assert ignored[:2] == ["fc.bias", "fc.weight"] and {k.split(".")[0] for k in ignored} == {
      "fc", "layer3", "layer4"}
  jax.tree.map(np.testing.assert_array_equal, part,
               {c: {k: full[c][k] for k in part[c]} for c in part})


def _edited(state, drop=(), add=None):
  return {**{k: v for k, v in state.items() if k not in drop}, **(add or {})}


@pytest.mark.parametrize("edit,model_kwargs,message", [
    (dict(add={"layer2.0.se.weight": np.zeros(3, np.float32)}), {},
     "unexpected keys layer2.0.se.weight"),
    (dict(drop=("layer3.0.bn2.running_var",)), {}, "missing keys layer3.0.bn2.running_var"),
    (dict(add={"layer1.0.conv2.weight": np.zeros((8, 8, 1, 3), np.float32)}), {},
     r"mis-shaped keys layer1.0.conv2.weight \(8, 8, 1, 3\) \(expected \(8, 8, 3, 3\)\)"),
    ({}, dict(width=16), r"hold ResNet-14 \(width 8, .*\) and do not fit ResNet-14 \(width 16"),
    ({}, dict(layers=50), r"hold ResNet-14 .* do not fit ResNet-50 .*: missing keys layer1\.1\."),
])
def test_bad_state_dict_raises_naming_the_key(net, edit, model_kwargs, message):
  model = _model(net.deep_stem).clone(**model_kwargs)
  with pytest.raises(UserError, match=message) as info:
    load_resnet_weights(_edited(_numpy(net.state_dict()), **edit), variable_shapes(model))
  assert "\n" not in str(info.value)


def test_stem_of_the_other_kind_raises(net):
  with pytest.raises(UserError, match=f"hold ResNet-14 .* the model is .*: give .* or a ResNet "
                                      f"with deep_stem={net.deep_stem}"):
    load_resnet_weights(net.state_dict(), variable_shapes(_model(not net.deep_stem)))


def test_unreadable_and_absent_files_raise(tmp_path):
  target = variable_shapes(_model(True))
  with pytest.raises(UserError, match="absent.pth not found"):
    load_resnet_weights(tmp_path / "absent.pth", target)
  (tmp_path / "broken.pth").write_bytes(b"not a checkpoint")
  with pytest.raises(UserError, match="cannot read ResNet weights .*broken.pth"):
    load_resnet_weights(tmp_path / "broken.pth", target)


def test_checkpoint_directory_round_trip(net, tmp_path):
  """save_resnet_checkpoint -> load_resnet_weights; another ResNet or an empty folder fail."""
  target = variable_shapes(_model(net.deep_stem))
  variables, _ = load_resnet_weights(net.state_dict(), target)
  save_resnet_checkpoint(tmp_path / "backbone", variables)
  got, ignored = load_resnet_weights(tmp_path / "backbone", target)
  assert ignored == []
  jax.tree.map(np.testing.assert_array_equal, got, variables)
  with pytest.raises(UserError, match="not a checkpoint of ResNet-14 .width 16"):
    load_resnet_weights(tmp_path / "backbone", variable_shapes(_model(net.deep_stem, width=16)))
  (tmp_path / "empty").mkdir()
  with pytest.raises(UserError, match="no checkpoint"):
    load_resnet_weights(tmp_path / "empty", target)
  with pytest.raises(UserError, match="not empty"):
    save_resnet_checkpoint(tmp_path / "backbone", variables)


def test_pspnet_backbone_init_replaces_only_the_backbone(tmp_path):
  """pspnet.train.with_backbone_init: semseg's initmodel layout into PSPNet's backbone
  (output stride 8 changes no shape); heads, other statistics and optimizer state untouched."""
  torch_net = _random_net(deep_stem=True)
  torch.save(torch_net.state_dict(), tmp_path / "resnet14_v2.pth")
  model = PSPNet(num_classes=3, layers=14, width=WIDTH)
  config = ml_collections.ConfigDict(
      {"optimizer": {"weight_decay": 1e-4, "momentum": 0.9, "new_lr_multiplier": 10.0}})
  tx = pspnet_train.make_optimizer(config)
  shapes = jax.eval_shape(lambda key: pspnet_train.create_train_state(model, tx, key),
                          jax.random.key(0))
  leaves, tree = jax.tree.flatten(shapes)  # leaf i filled with -i: none equals a loaded value
  state = jax.tree.unflatten(tree, [np.full(leaf.shape, -i, leaf.dtype)
                                    for i, leaf in enumerate(leaves)])
  before = jax.tree.map(np.copy, state)
  mesh = mesh_lib.make_data_mesh(1)
  after = pspnet_train.with_backbone_init(state, str(tmp_path / "resnet14_v2.pth"), mesh)
  want = _numpy(torch_net.state_dict())
  backbone = after["params"]["backbone"]
  np.testing.assert_array_equal(backbone["stem"]["conv3"]["kernel"],
                                want["conv3.weight"].transpose(2, 3, 1, 0))
  np.testing.assert_array_equal(backbone["layer4"]["block0"]["bn3"]["scale"],
                                want["layer4.0.bn3.weight"])
  statistics = after["batch_stats"]["backbone"]
  np.testing.assert_array_equal(statistics["layer2"]["block0"]["downsample_bn"]["mean"],
                                want["layer2.0.downsample.1.running_mean"])
  for collection in ("params", "batch_stats"):
    for name in set(after[collection]) - {"backbone"}:
      jax.tree.map(np.testing.assert_array_equal, after[collection][name],
                   before[collection][name])
  jax.tree.map(np.testing.assert_array_equal, after["opt_state"], before["opt_state"])
  with pytest.raises(UserError, match="^model.backbone_init: ResNet weights .*absent.pth not "):
    pspnet_train.with_backbone_init(state, str(tmp_path / "absent.pth"), mesh)
