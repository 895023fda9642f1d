"""load_semseg_checkpoint against a PyTorch PSPNet with semseg's module names.

The peer is benchmarks/torch_pspnet.py (written from semseg's model/pspnet.py and
model/resnet.py): random weights, BatchNorm statistics calibrated on random images,
converted, and compared on the same input in eval and training mode.
"""
import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from readingnotes_jax.errors import UserError
from readingnotes_jax.pspnet.convert import load_semseg_checkpoint
from readingnotes_jax.pspnet.model import pspnet_loss
from numerics_testlib import EPS32, assert_within_reference

torch = pytest.importorskip("torch")
torch_pspnet = pytest.importorskip("benchmarks.torch_pspnet")

CLASSES = 21


def _check_bar(bar, f64):
  """A bar that still catches a bug: below 1e-3 of the largest logit. A 1% error in one channel
  of the aux head's BN scale moves the train-mode aux logits by 2.5e-3 (of 1.77); a 1% error
  in one element of its 1x1 classifier kernel, by 1.1e-3. Bars measured 7e-5 (eval) to 8.2e-4
  (train-mode logits, of 1.54)."""
  assert bar < 1e-3 * np.abs(f64).max(), (bar, np.abs(f64).max())


@pytest.fixture(scope="module")
def torch_net():
  """Random PSPNet-50 with random BN affine and statistics of a random batch."""
  torch.manual_seed(0)
  net = torch_pspnet.PSPNet(50, classes=CLASSES)
  generator = torch.Generator().manual_seed(1)
  for name, module in net.named_modules():
    if isinstance(module, torch.nn.BatchNorm2d):
      residual = name.endswith("bn3") or name.endswith("downsample.1")
      module.weight.data.uniform_(*((0.2, 0.5) if residual else (0.5, 1.5)), generator=generator)
      module.bias.data.uniform_(-0.2, 0.2, generator=generator)
      module.momentum = None  # cumulative average: running stats of the batch below
  with torch.no_grad():
    net.train()(torch.randn(8, 3, 65, 65, generator=generator))
  for module in net.modules():
    if isinstance(module, torch.nn.BatchNorm2d):
      module.momentum = 0.1
      module.running_var.clamp_(min=0.2)  # no near-dead channel with a 1/sqrt(1e-5) gain
    if isinstance(module, torch.nn.Dropout2d):
      module.p = 0.0
  return net


@pytest.fixture(scope="module")
def state_dict(torch_net):
  return {k: v.numpy().copy() for k, v in torch_net.state_dict().items()}


@pytest.fixture(scope="module")
def converted(torch_net):
  return load_semseg_checkpoint(torch_net.state_dict(), CLASSES, 50)


@pytest.fixture(scope="module")
def images():
  return np.random.default_rng(2).normal(size=(2, 3, 65, 65)).astype(np.float32)


def _nhwc(x):
  return jnp.asarray(np.asarray(x).transpose(0, 2, 3, 1))


def _nchw(x):
  return np.asarray(x).transpose(0, 3, 1, 2)


@pytest.mark.parametrize("lowering,factorized_head", [("matmul", True), ("xla", True),
                                                     ("xla", False)])
def test_eval_logits_match_torch(torch_net, converted, images, lowering, factorized_head):
  model, variables = converted
  assert model.use_aux and model.layers == 50 and model.num_classes == CLASSES
  torch_net.eval()
  with torch.no_grad():
    want = torch_net(torch.from_numpy(images)).numpy()
    exact = torch_net.double()(torch.from_numpy(images).double()).numpy()
    torch_net.float()
  model = model.clone(lowering=lowering, factorized_head=factorized_head)
  got = _nchw(jax.jit(lambda v, x: model.apply(v, x, train=False))(variables, _nhwc(images)))
  assert got.shape == want.shape == (2, CLASSES, 65, 65)
  # Against float64, at SAFETY x torch's float32 error (1.7e-5 to 2.5e-5 measured; ours
  # 1.6-1.8e-5 matmul, 2.9-3.1e-5 xla): |got - want| follows, at most (SAFETY + 1) x that.
  _check_bar(assert_within_reference(got, want, exact), exact)


def test_train_mode_matches_torch(torch_net, converted, images):
  """Training-mode logits, aux logits, loss and updated BN statistics (dropout 0).

  Batch statistics over 2 images (the 1x1 pyramid bin normalizes 2 values) make
  this forward ill-conditioned, so every bar is SAFETY x torch's own float32 error
  against float64 (numerics_testlib.reference_bar). Gradients are checked
  block by block in tests/nn/test_resnet.py.
  """
  model, variables = converted
  labels = np.random.default_rng(3).integers(0, CLASSES, size=(2, 65, 65))
  labels[:, :10] = 255
  criterion = torch.nn.CrossEntropyLoss(ignore_index=255)

  def torch_forward(dtype):
    net = torch_pspnet.PSPNet(50, classes=CLASSES).to(dtype)
    net.load_state_dict(torch_net.state_dict())
    for module in net.modules():
      if isinstance(module, torch.nn.Dropout2d):
        module.p = 0.0
    with torch.no_grad():
      logits, aux = net.train()(torch.from_numpy(images).to(dtype))
    return logits.numpy(), aux.numpy(), net.state_dict()

  logits, aux, state = torch_forward(torch.float32)
  logits64, aux64, state64 = torch_forward(torch.float64)

  def forward(variables, x):
    (out, out_aux), updates = model.clone(dropout=0.0).apply(
        variables, x, train=True, mutable=["batch_stats"])
    return out, out_aux, pspnet_loss(out, out_aux, jnp.asarray(labels))[0], updates

  out, out_aux, got_loss, updates = jax.jit(forward)(variables, _nhwc(images))
  out, out_aux = _nchw(out), _nchw(out_aux)
  for name, got, want, exact in (("logits", out, logits, logits64), ("aux", out_aux, aux, aux64)):
    _check_bar(assert_within_reference(got, want, exact, err_msg=name), exact)
  # The loss of our own logits, against torch's criterion in float64 on the same logits: the
  # mean of V = 7150 float32 cross-entropy terms rounds by about sqrt(V) eps32 = 1e-5 relative
  # (statistical: ~6 sigma for a sequential sum, tree orders do better). The logits' bars
  # cover the rest.
  valid = int((labels != 255).sum())
  want_loss = sum(weight * criterion(torch.from_numpy(z.astype(np.float64)),
                                     torch.from_numpy(labels)).item()
                  for weight, z in ((1.0, out), (0.4, out_aux)))
  np.testing.assert_allclose(got_loss, want_loss, rtol=np.sqrt(valid) * EPS32)
  stats = flax.traverse_util.flatten_dict(updates["batch_stats"])
  # A batch statistic sums K = N x H x W values (sqrt(K) ulps), and its update rounds 4 more
  # times (n / (n - 1), momentum, 1 - momentum, the sum: 2 ulps).
  for path, key, count in (
      (("backbone", "stem", "bn1", "var"), "layer0.1.running_var", 2 * 33 * 33),
      (("backbone", "layer4", "block2", "bn3", "mean"), "layer4.2.bn3.running_mean", 2 * 9 * 9),
      (("ppm", "bn0", "var"), "ppm.features.0.2.running_var", 2),  # n = 2: unbiased
      (("ppm", "bn0", "mean"), "ppm.features.0.2.running_mean", 2),
      (("cls", "bn", "var"), "cls.1.running_var", 2 * 9 * 9)):
    assert_within_reference(stats[path], state[key].numpy(), state64[key].numpy(),
                            ulps=np.sqrt(count) + 2, err_msg=key)


def test_reads_pth_file_with_module_prefix(torch_net, converted, tmp_path):
  path = tmp_path / "train_epoch_1.pth"
  torch.save({"epoch": 1, "state_dict": {f"module.{k}": v for k, v in
                                         torch_net.state_dict().items()}}, path)
  _, variables = load_semseg_checkpoint(path, CLASSES, 50)
  jax.tree.map(np.testing.assert_array_equal, variables, converted[1])


def test_numpy_state_dict_without_aux(state_dict):
  model, variables = load_semseg_checkpoint(
      {k: v for k, v in state_dict.items() if not k.startswith("aux.")}, CLASSES, 50)
  assert not model.use_aux and "aux" not in variables["params"]
  np.testing.assert_array_equal(variables["params"]["cls"]["conv"]["kernel"],
                                state_dict["cls.0.weight"].transpose(2, 3, 1, 0))
  np.testing.assert_array_equal(variables["batch_stats"]["backbone"]["layer3"]["block5"]
                                ["bn2"]["var"],
                                state_dict["layer3.5.bn2.running_var"])


def _edited(state_dict, drop=(), add=None):
  state = {k: v for k, v in state_dict.items() if k not in drop}
  state.update(add or {})
  return state


@pytest.mark.parametrize("edit,layers,message", [
    (dict(drop=("layer3.2.bn2.running_var",)), 50, "lacks layer3.2.bn2.running_var"),
    (dict(add={"layer3.6.conv1.weight": np.zeros((256, 1024, 1, 1), np.float32)}), 50,
     "layer3.6.conv1.weight"),
    (dict(add={"ppm.features.1.1.weight": np.zeros((512, 2048, 3, 3), np.float32)}), 50,
     "ppm.features.1.1.weight has shape"),
    (dict(add={"cls.4.weight": np.zeros((150, 512, 1, 1), np.float32)}), 50,
     "150 classes"),
    ({}, 101, "lacks layer3.6.bn1.bias .* looks like layers=50"),
])
def test_bad_checkpoint_raises_naming_the_key(state_dict, edit, layers, message):
  with pytest.raises(UserError, match=message):
    load_semseg_checkpoint(_edited(state_dict, **edit), CLASSES, layers)


def test_unreadable_file_raises(tmp_path):
  path = tmp_path / "broken.pth"
  path.write_bytes(b"not a checkpoint")
  with pytest.raises(UserError, match="broken.pth"):
    load_semseg_checkpoint(path, CLASSES, 50)
