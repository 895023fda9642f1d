"""FID InceptionV3 against a PyTorch net of pytorch-fid's layout; FID, KID, IS against formulas."""
import flax.linen
import jax
import numpy as np
import pytest
import scipy.linalg
import scipy.ndimage

from readingnotes_jax.errors import UserError
from readingnotes_jax.metrics import fid
from readingnotes_jax.metrics import inception

torch = pytest.importorskip("torch")
import fid_testlib  # pylint: disable=wrong-import-position  # needs torch

# Bars. pool3 is the mean over 8x8 positions of Mixed_7c (here |pool3| <= 2.0), at the
# end of up to 47 float32 convolutions in series (stem 5, Mixed_5b-d 3 each, 6a 3, 6b-e
# 5 each, 7a 4, 7b-c 3 each). A K-term float32 sum has a relative rounding error of
# order sqrt(K) 2^-24 (K <= 3*3*448: ~4e-6), and each layer carries the earlier
# errors on: measured on this net, torch float32 is 3.3e-5 from torch float64 on
# pool3 and 1.1e-5 on the logits (one more 2048-term sum, weights ~1/sqrt(2048)), flax
# float32 2.8e-5 and 1.9e-5. Two float32 computations each within e of the exact result
# differ by at most 2e, ~7e-5 here: 1e-4 holds for both outputs (measured flax vs torch
# 5.7e-5 pool3, 1.7e-5 logits; margin ~1.7x on pool3). Per layer, flax must be within
# 3x torch float32's own error of float64 (measured: 0.8x to 1.7x).
FEATURE_ATOL = 1e-4
LOGITS_ATOL = 1e-4


def _randomize(net: torch.nn.Module) -> None:
  """Random weights and BN parameters that keep activations O(1) and errors tame.

  Conv weights He-normal, BN weight U(0.5, 1.5) and bias U(-0.2, 0.2), fc N(0, 1/2048)
  and bias U(-1, 1). BN statistics are set in one eval pass, each from its conv's
  output on two other test images: running_var = E[z^2] x U(0.7, 1.4), running_mean =
  0.1 sqrt(E[z^2]) N(0, 1). (Centred batch statistics instead let activations grow to ~60
  and float32 errors to ~3x more relative to them: torch float32 6e-4 from float64 on pool3.)
  """
  gen = torch.Generator().manual_seed(1)

  def set_statistics(bn, output):
    second_moment = output.double().square().mean(dim=(0, 2, 3)).float()
    channels = second_moment.shape
    bn.running_var.copy_(second_moment * torch.empty(channels).uniform_(0.7, 1.4, generator=gen))
    bn.running_mean.copy_(0.1 * second_moment.sqrt() * torch.randn(channels, generator=gen))

  hooks = []
  with torch.no_grad():
    for module in net.modules():
      if isinstance(module, torch.nn.Conv2d):
        module.weight.normal_(0, (2 / module.weight[0].numel()) ** 0.5, generator=gen)
      elif isinstance(module, torch.nn.BatchNorm2d):
        module.weight.uniform_(0.5, 1.5, generator=gen)
        module.bias.uniform_(-0.2, 0.2, generator=gen)
      elif isinstance(module, torch.nn.Linear):
        module.weight.normal_(0, 2048 ** -0.5, generator=gen)
        module.bias.uniform_(-1, 1, generator=gen)
      elif isinstance(module, fid_testlib.BasicConv2d):
        hooks.append(module.conv.register_forward_hook(
            lambda _, __, out, bn=module.bn: set_statistics(bn, out)))
    net.eval()(torch.from_numpy(_test_images(seed=1)))
  for hook in hooks:
    hook.remove()


def _test_images(seed: int = 0) -> np.ndarray:
  """[2, 3, 64, 64] in [0, 1]: noise blurred with sigma 1 and 2, like small GAN samples."""
  rng = np.random.default_rng(seed)
  images = [scipy.ndimage.gaussian_filter(rng.normal(size=(3, 64, 64)), (0, s, s), mode="wrap")
            for s in (1.0, 2.0)]
  return np.stack([np.clip(0.5 + 0.25 * x / x.std(), 0, 1) for x in images]).astype(np.float32)


@pytest.fixture(scope="module")
def torch_net():
  torch.manual_seed(0)
  net = fid_testlib.FIDInceptionV3()
  _randomize(net)
  return net


@pytest.fixture(scope="module")
def weights_file(torch_net, tmp_path_factory):
  path = tmp_path_factory.mktemp("fid") / "pt_inception.pth"
  torch.save(torch_net.state_dict(), path)
  return path


@pytest.fixture(scope="module")
def state_dict(torch_net):
  return {k: v.numpy().copy() for k, v in torch_net.state_dict().items()}


def _top_level(module, method_name):
  return method_name == "__call__" and len(module.scope.path) == 1


def _torch_outputs(net, images):
  """Outputs of each top-level module (Conv2d_1a_3x3 ... Mixed_7c, fc) and pool3, float64."""
  outputs = {}
  hooks = [module.register_forward_hook(
      lambda _, __, out, name=name: outputs.__setitem__(name, out.double().numpy()))
           for name, module in net.named_children()]
  with torch.no_grad():
    pool3, _ = net(torch.from_numpy(images).to(next(net.parameters()).dtype))
  for hook in hooks:
    hook.remove()
  return outputs | {"pool3": pool3.double().numpy()}


def test_network_matches_torch_layer_by_layer(torch_net, weights_file):
  model, variables = inception.load_fid_inception(str(weights_file))
  images = _test_images()
  want = _torch_outputs(torch_net, images)
  exact = _torch_outputs(torch_net.double(), images)
  torch_net.float()  # float64 -> float32 restores the float32 weights exactly
  apply = jax.jit(lambda v, x: model.apply(v, x, capture_intermediates=_top_level,
                                           mutable=["intermediates"]))
  got, state = apply(variables, images.transpose(0, 2, 3, 1))
  got = {name: np.asarray(value["__call__"][0], np.float64)
         for name, value in state["intermediates"].items()} | {
             "pool3": np.asarray(got["pool3"], np.float64),
             "logits_unbiased": np.asarray(got["logits_unbiased"], np.float64)}
  report, errors = [], {}
  for name in want:
    ours = got[name].transpose(0, 3, 1, 2) if got[name].ndim == 4 else got[name]
    assert ours.shape == want[name].shape, name
    errors[name] = (np.abs(ours - want[name]).max(), np.abs(ours - exact[name]).max(),
                    np.abs(want[name] - exact[name]).max(), np.abs(exact[name]).max())
    report.append(f"{name} {errors[name][0]:.1e} ({errors[name][1]:.1e}, {errors[name][2]:.1e}, "
                  f"|x| <= {errors[name][3]:.1f})")
  print("\nmax |flax - torch32| (|flax - torch64|, |torch32 - torch64|):", "; ".join(report))
  for name, (to_torch, to_exact, torch_to_exact, scale) in errors.items():
    assert 0.1 < scale < 50, name  # activations neither vanish nor explode
    assert to_exact <= 3 * torch_to_exact + 1e-6, name
  assert errors["pool3"][0] < FEATURE_ATOL
  assert errors["fc"][0] < LOGITS_ATOL
  bias = np.asarray(variables["params"]["fc"]["bias"])
  np.testing.assert_allclose(got["logits_unbiased"], got["fc"] - bias, atol=1e-6)


@pytest.mark.parametrize("in_size, out_size", [(64, 299), (299, 299), (500, 299), (1, 5),
                                               (10, 3)])
def test_resize_matches_torch_bilinear(in_size, out_size):
  x = np.random.default_rng(1).normal(size=(2, in_size, in_size + 3, 2)).astype(np.float32)
  size = (out_size, out_size + 1)
  got = np.asarray(inception.resize_bilinear(x, size))

  def torch_resize(dtype):
    nchw = torch.from_numpy(x.transpose(0, 3, 1, 2)).to(dtype)
    out = torch.nn.functional.interpolate(nchw, size=size, mode="bilinear", align_corners=False)
    return out.double().numpy().transpose(0, 2, 3, 1)

  # Torch in float64 computes the same rule exactly.
  np.testing.assert_allclose(got, torch_resize(torch.float64), atol=1e-6)
  # In float32 torch's sample positions s = (i + 0.5) in / out - 0.5 are rounded to
  # float32 (error ~ in_size * 2^-23 pixels), times the largest neighbour difference.
  step = max(np.abs(np.diff(x, axis=1)).max(initial=0), np.abs(np.diff(x, axis=2)).max())
  bound = 4 * (in_size + 3) * 2.0 ** -23 * step + 1e-6
  assert np.abs(got - torch_resize(torch.float32)).max() < bound
  assert np.allclose(inception.resize_matrix(in_size, out_size).sum(axis=1), 1.0)


def test_npz_and_state_dict_load_the_same_variables(weights_file, state_dict, tmp_path):
  npz = tmp_path / "fid.npz"
  inception.convert_fid_weights_to_npz(str(weights_file), str(npz))
  _, from_npz = inception.load_fid_inception(npz)
  _, from_dict = inception.load_fid_inception(state_dict)
  jax.tree.map(np.testing.assert_array_equal, from_npz, from_dict)
  kernel = np.asarray(from_dict["params"]["Mixed_6b"]["branch7x7_2"]["conv"]["kernel"])
  assert kernel.shape == (1, 7, 128, 128)  # HWIO from OIHW (128, 128, 1, 7)
  np.testing.assert_array_equal(
      kernel, state_dict["Mixed_6b.branch7x7_2.conv.weight"].transpose(2, 3, 1, 0))
  np.testing.assert_array_equal(from_dict["params"]["fc"]["kernel"], state_dict["fc.weight"].T)
  np.testing.assert_array_equal(from_dict["batch_stats"]["Mixed_7c"]["branch_pool"]["bn"]["var"],
                                state_dict["Mixed_7c.branch_pool.bn.running_var"])


def test_loader_names_missing_extra_and_misshaped_keys(state_dict):
  broken = dict(state_dict)
  del broken["Mixed_5b.branch1x1.conv.weight"]
  broken["Mixed_5b.extra.weight"] = np.zeros(3, np.float32)
  broken["fc.bias"] = np.zeros(1000, np.float32)
  broken["Conv2d_1a_3x3.bn.num_batches_tracked"] = np.zeros((), np.int64)  # ignored
  with pytest.raises(UserError) as info:
    inception.load_fid_inception(broken)
  message = str(info.value)
  assert "\n" not in message
  assert "missing keys Mixed_5b.branch1x1.conv.weight" in message
  assert "unexpected keys Mixed_5b.extra.weight" in message
  assert "mis-shaped keys fc.bias (1000,) (expected (1008,))" in message


def test_loader_file_errors(tmp_path, monkeypatch):
  with pytest.raises(UserError, match="not found"):
    inception.load_fid_inception(tmp_path / "absent.pth")
  garbage = tmp_path / "garbage.pth"
  garbage.write_bytes(b"not a checkpoint")
  with pytest.raises(UserError, match="cannot read FID weights"):
    inception.load_fid_inception(garbage)
  monkeypatch.setitem(__import__("sys").modules, "torch", None)
  with pytest.raises(UserError, match="needs torch"):
    inception.load_fid_inception(garbage)


def test_fid_weights_path(monkeypatch):
  monkeypatch.delenv(inception.WEIGHTS_ENV, raising=False)
  assert inception.fid_weights_path({}) is None
  assert inception.fid_weights_path({"fid_weights": "/a.pth"}) == "/a.pth"
  monkeypatch.setenv(inception.WEIGHTS_ENV, "/b.pth")
  assert inception.fid_weights_path({"fid_weights": None}) == "/b.pth"
  assert inception.fid_weights_path({"fid_weights": "/a.pth"}) == "/a.pth"


# -- Frechet distance -------------------------------------------------------------------

def test_frechet_distance_of_diagonal_gaussians():
  rng = np.random.default_rng(2)
  mu1, mu2 = rng.normal(size=6), rng.normal(size=6)
  s1, s2 = rng.uniform(0.1, 3, 6), rng.uniform(0.1, 3, 6)
  closed_form = np.sum((mu1 - mu2) ** 2) + np.sum(s1 + s2 - 2 * np.sqrt(s1 * s2))
  assert fid.frechet_distance(mu1, np.diag(s1), mu2, np.diag(s2)) == pytest.approx(
      closed_form, rel=1e-10)
  assert fid.frechet_distance(mu1, np.diag(s1), mu1, np.diag(s1)) == pytest.approx(0, abs=1e-10)


def test_frechet_distance_of_full_covariances_against_scipy():
  rng = np.random.default_rng(3)
  a, b = rng.normal(size=(5, 5)), rng.normal(size=(5, 5))
  sigma1, sigma2 = a @ a.T + 0.1 * np.eye(5), b @ b.T + 0.1 * np.eye(5)
  mu1, mu2 = rng.normal(size=5), rng.normal(size=5)
  # tr sqrt(S1 S2) = tr sqrt(S1^1/2 S2 S1^1/2), a symmetric PSD root.
  root1 = scipy.linalg.sqrtm(sigma1).real
  cross = np.trace(scipy.linalg.sqrtm(root1 @ sigma2 @ root1).real)
  want = np.sum((mu1 - mu2) ** 2) + np.trace(sigma1) + np.trace(sigma2) - 2 * cross
  assert fid.frechet_distance(mu1, sigma1, mu2, sigma2) == pytest.approx(want, rel=1e-9)


def test_frechet_distance_of_sample_statistics():
  rng = np.random.default_rng(4)
  x = rng.normal(size=(4000, 3)) * [1.0, 2.0, 0.5] + [1.0, 0.0, -1.0]
  mu, sigma = fid.feature_statistics(x)
  np.testing.assert_allclose(mu, x.mean(axis=0))
  np.testing.assert_allclose(sigma, np.cov(x.T))
  # Singular covariances (fewer samples than dimensions) stay finite and near 0 for one set.
  few = rng.normal(size=(5, 40))
  assert fid.frechet_distance(*fid.feature_statistics(few), *fid.feature_statistics(few)) \
      == pytest.approx(0, abs=1e-3)
  with pytest.raises(UserError, match="N >= 2"):
    fid.feature_statistics(x[:1])
  with pytest.raises(UserError, match="one D"):
    fid.frechet_distance(mu, sigma, mu[:2], sigma[:2, :2])


# -- KID ----------------------------------------------------------------------------------

def _mmd2_double_loop(x, y):
  m, d = x.shape
  k = lambda a, b: (np.dot(a, b) / d + 1) ** 3
  xx = sum(k(x[i], x[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
  yy = sum(k(y[i], y[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
  xy = sum(k(x[i], y[j]) for i in range(m) for j in range(m)) / (m * m)
  return xx + yy - 2 * xy


def test_kid_matches_the_mmd_formula():
  rng = np.random.default_rng(5)
  f1, f2 = rng.normal(size=(30, 4)), rng.normal(size=(25, 4)) * 1.3 + 0.2
  draws = np.random.RandomState(7)
  want = []
  for _ in range(3):
    x = f1[draws.choice(30, 10, replace=False)]
    y = f2[draws.choice(25, 10, replace=False)]
    want.append(_mmd2_double_loop(x, y))
  mean, std = fid.kernel_inception_distance(f1, f2, num_subsets=3, subset_size=10, seed=7)
  assert mean == pytest.approx(np.mean(want), rel=1e-10)
  assert std == pytest.approx(np.std(want), rel=1e-8)
  assert fid.mmd2_unbiased(f1[:10], f2[:10]) == pytest.approx(
      _mmd2_double_loop(f1[:10], f2[:10]), rel=1e-10)
  with pytest.raises(UserError, match="subset_size"):
    fid.kernel_inception_distance(f1, f2, num_subsets=3, subset_size=26)


# -- Inception Score ----------------------------------------------------------------------

def test_inception_score_known_answers():
  assert fid.inception_score(np.zeros((20, 7)), splits=2) == pytest.approx((1.0, 0.0))
  with np.errstate(divide="ignore"):
    one_hot = np.log(np.eye(10)[np.arange(20) % 10])  # each split: 10 distinct classes
    assert fid.inception_score(one_hot, splits=2) == pytest.approx((10.0, 0.0))
    # Split 1: 4 distinct classes; split 2: all one class -> scores 4 and 1.
    mixed = np.log(np.eye(10)[[0, 1, 2, 3, 5, 5, 5, 5]])
    assert fid.inception_score(mixed, splits=2) == pytest.approx((2.5, 1.5))


def test_inception_score_matches_the_formula():
  rng = np.random.default_rng(6)
  probs = rng.dirichlet(np.full(5, 0.5), size=9)
  scores = []
  for part in (probs[0:3], probs[3:6], probs[6:9]):
    marginal = part.mean(axis=0)
    kl = np.mean([np.sum(p * (np.log(p) - np.log(marginal))) for p in part])
    scores.append(np.exp(kl))
  got = fid.inception_score(np.log(probs) + 3.0, splits=3)  # logits up to a constant
  assert got == pytest.approx((np.mean(scores), np.std(scores)), rel=1e-10)
  with pytest.raises(UserError, match="splits"):
    fid.inception_score(probs, splits=10)


# -- generative_scores --------------------------------------------------------------------

class _FakeExtractor:
  """Features: per-channel mean and std of each image; logits: its first 4 pixels."""

  def __init__(self):
    self.shapes = []

  def __call__(self, batch):
    self.shapes.append(batch.shape)
    assert batch.dtype == np.float32 and batch.shape[-1] == 3
    features = np.concatenate([batch.mean(axis=(1, 2)), batch.std(axis=(1, 2))], axis=1)
    return features, 3 * batch[:, 0, :4, 0]


def test_generative_scores_batches_pads_and_converts():
  rng = np.random.default_rng(7)
  real = rng.uniform(-1, 1, (11, 8, 8, 3)).astype(np.float32)
  fake = rng.uniform(-1, 1, (7, 8, 8, 1)).astype(np.float32)
  extractor = _FakeExtractor()
  scores = fid.generative_scores(real, fake, extractor, batch_size=4, kid_subsets=5)
  assert set(extractor.shapes) == {(4, 8, 8, 3)} and len(extractor.shapes) == 3 + 2
  real_features, _ = _FakeExtractor()(real)
  fake_features, fake_logits = _FakeExtractor()(np.repeat(fake, 3, axis=-1))
  want = fid.scores_from_features(real_features, fake_features, fake_logits, kid_subsets=5)
  assert set(scores) == {"fid", "kid", "kid_std", "is", "is_std"}
  for key, value in want.items():
    assert scores[key] == pytest.approx(value, rel=1e-6, abs=1e-9), key
  # 7 fakes: 7 splits; KID subsets of 7 (the smaller set).
  assert scores["is"] == pytest.approx(fid.inception_score(fake_logits, 7)[0], rel=1e-6)
  # An iterable of uneven batches and uint8 give the same numbers.
  as_uint8 = np.clip(np.rint((real + 1) * 127.5), 0, 255).astype(np.uint8)
  streamed = fid.extract_features((as_uint8[i:i + 3] for i in range(0, 11, 3)),
                                  _FakeExtractor(), 4)[0]
  np.testing.assert_allclose(streamed, real_features, atol=0.01)


class _StubInception(flax.linen.Module):
  """Stands in for FIDInceptionV3 in `inception_extractor`: returns its input's statistics."""

  @flax.linen.compact
  def __call__(self, images):
    offset = self.param("offset", flax.linen.initializers.zeros, ())
    mean = images.mean(axis=(1, 2)) + offset
    return {"pool3": mean, "logits": mean + 1, "logits_unbiased": images.min(axis=(1, 2))}


def test_inception_extractor_maps_to_unit_range_and_returns_unbiased_logits():
  model = _StubInception()
  variables = model.init(jax.random.key(0), np.zeros((1, 4, 4, 3), np.float32))
  images = np.random.default_rng(8).uniform(-1, 1, (2, 4, 4, 3)).astype(np.float32)
  features, logits = inception.inception_extractor(model, variables)(images)
  np.testing.assert_allclose(features, ((images + 1) / 2).mean(axis=(1, 2)), atol=1e-6)
  np.testing.assert_allclose(logits, ((images + 1) / 2).min(axis=(1, 2)), atol=1e-6)


def test_generative_scores_bad_images():
  extractor = _FakeExtractor()
  with pytest.raises(UserError, match="1 or 3 channels"):
    fid.generative_scores(np.zeros((4, 8, 8, 2)), np.zeros((4, 8, 8, 3)), extractor)
  with pytest.raises(UserError, match="dtype"):
    fid.generative_scores(np.zeros((4, 8, 8, 3), np.int32), np.zeros((4, 8, 8, 3)), extractor)
  with pytest.raises(UserError, match="one size"):
    fid.extract_features([np.zeros((2, 8, 8, 3)), np.zeros((2, 9, 9, 3))], extractor, 4)
