"""FashionGAN's networks: layer lists and parameter counts from the release's .lua graphs,
shapes, initialization, the transposed convolution and the RNN against NumPy and torch.

The layer lists below are written out from zhusz/ICCV17-fashionGAN sr1/net_graph_sr1.lua,
ih1/net_graph_ih1.lua, ih1_skip/net_graph_ih1.lua and language/train_te.py: (name, input
channels, output channels, kernel, BatchNorm after it). Kernels have no bias; a
BatchNorm has 2 C parameters.
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

from readingnotes_jax.errors import UserError
from readingnotes_jax.fashiongan import model
from numerics_testlib import EPS32, assert_within_reference

_RNG = np.random.default_rng(0)
BATCH = 2

SHAPE_G = [("h1", 100, 20, 1, False), ("g1", 100, 1024, 4, True), ("g_extra", 1024, 512, 4, True),
           ("f1", 4, 64, 3, True), ("f_extra", 64, 128, 3, True), ("g2", 640, 256, 4, True),
           ("m1", 256, 512, 3, True), ("m2", 512, 512, 3, True), ("m3", 512, 256, 3, True),
           ("g3", 256, 128, 4, True), ("g4", 128, 64, 4, True), ("g5", 64, 7, 4, False)]
SHAPE_D = [("d1", 7, 64, 4, False), ("d2", 64, 128, 4, True), ("d3", 128, 256, 4, True),
           ("mid1", 256, 512, 3, True), ("mid2", 512, 512, 3, True), ("mid3", 512, 256, 3, True),
           ("d4", 256, 512, 4, True), ("c1", 4, 64, 3, False), ("c2", 64, 128, 3, True),
           ("d_extra", 640, 512, 4, True), ("b1", 100, 20, 1, True),
           ("d_extra_b1", 532, 512, 1, True), ("d5", 512, 1, 4, False)]
IMAGE_G = [("h1", 100, 20, 1, False), ("g1", 100, 1024, 4, True), ("g_extra", 1024, 512, 4, True),
           ("g2", 512, 512, 4, True), ("f1", 3, 64, 4, True), ("f_extra", 64, 128, 4, True),
           ("f2", 128, 256, 4, True), ("g3", 768, 512, 4, True), ("mid1", 512, 512, 3, True),
           ("mid2", 512, 512, 3, True), ("mid3", 512, 512, 3, True), ("mid4", 512, 256, 3, True),
           ("mid5", 256, 128, 3, True), ("g4", 128, 64, 4, True), ("g5", 64, 3, 4, False)]
IMAGE_D = [("d1", 3, 64, 4, False), ("d2", 64, 128, 4, True), ("d3", 128, 256, 4, True),
           ("c1", 3, 64, 4, False), ("c2", 64, 128, 4, True), ("c3", 128, 256, 4, True),
           ("m1", 512, 512, 3, True), ("m2", 512, 512, 3, True), ("m3", 512, 512, 3, True),
           ("m4", 512, 512, 3, True), ("m5", 512, 512, 3, True), ("d4", 512, 512, 4, True),
           ("d_extra", 512, 1024, 4, True), ("b1", 100, 20, 1, True),
           ("d_extra_b1", 1044, 1024, 1, True), ("d5", 1024, 1, 4, False)]
UNET_G = [("e1", 3, 64, 4, False), ("e2", 64, 128, 4, True), ("e3", 128, 256, 4, True),
          ("e4", 256, 512, 4, True), ("e5", 512, 512, 4, True), ("e6", 512, 512, 4, True),
          ("e7", 512, 512, 4, False), ("h1", 100, 20, 1, False), ("d1", 612, 512, 4, True),
          ("d2", 1024, 512, 4, True), ("d3", 1024, 512, 4, True), ("d4", 1024, 256, 4, True),
          ("d5", 512, 128, 4, True), ("d6", 256, 64, 4, True), ("d7", 128, 3, 4, False)]
PATCH_D = [("x0", 6, 64, 4, False), ("x1", 64, 128, 4, True), ("x2", 128, 256, 4, True),
           ("b1", 100, 20, 1, True), ("x3", 276, 512, 4, True), ("x4", 512, 1, 4, False)]


def _without(layers, dropped, **inputs):
  """The 64 x 64 variant: `dropped` removed, layers named in `inputs` taking those channels."""
  return [(n, inputs.get(n, cin), cout, k, bn) for n, cin, cout, k, bn in layers
          if n not in dropped]


NETWORKS = {  # name -> (class, layers at 128, layers at 64)
    "shape_g": (model.ShapeGenerator, SHAPE_G, _without(SHAPE_G, {"g4"}, g5=128)),
    "shape_d": (model.ShapeDiscriminator, SHAPE_D, _without(SHAPE_D, {"d2"}, d3=64)),
    "image_g": (model.ImageGenerator, IMAGE_G,
                _without(IMAGE_G, {"f_extra", "g4"}, f2=64, g5=128)),
    "image_d": (model.ImageDiscriminator, IMAGE_D, _without(IMAGE_D, {"d2", "c2"}, d3=64, c3=64)),
    "unet_g": (model.UNetImageGenerator, UNET_G, _without(UNET_G, {"e2", "d5"}, e3=64, d6=512)),
    "patch_d": (model.PatchImageDiscriminator, PATCH_D, _without(PATCH_D, {"x1"}, x2=64)),
}


def _count(layers):
  return sum(cin * cout * k * k + (2 * cout if bn else 0) for _, cin, cout, k, bn in layers)


def _inputs(name, size, batch=BATCH):
  z = jnp.asarray(_RNG.standard_normal((batch, 80)), jnp.float32)
  d = jnp.asarray(_RNG.standard_normal((batch, 100)), jnp.float32)
  shape_condition = jnp.asarray(_RNG.random((batch, 8, 8, 4)), jnp.float32)
  image = jnp.asarray(_RNG.uniform(-0.5, 0.5, (batch, size, size, 3)), jnp.float32)
  segmentation = jnp.asarray(_RNG.standard_normal((batch, size, size, 7)), jnp.float32)
  return {"shape_g": (z, d, shape_condition), "shape_d": (segmentation, d, shape_condition),
          "image_g": (z, d, image), "image_d": (image, d, image), "unet_g": (z, d, image),
          "patch_d": (image, d, image)}[name]


def _abstract(network, size, extra=(), **attributes):
  """(output, variables) shapes of a network, traced without running it."""
  cls = NETWORKS[network][0]
  return jax.eval_shape(lambda key: cls(size=size, **attributes).init_with_output(
      {"params": key, "dropout": key}, *_inputs(network, size), *extra, train=True),
      jax.random.key(0))


OUTPUT_SHAPES = {"shape_g": (BATCH, 64, 64, 7), "shape_d": (BATCH,),
                 "image_g": (BATCH, 64, 64, 3), "image_d": (BATCH,),
                 "unet_g": (BATCH, 64, 64, 3), "patch_d": (BATCH, 14, 14)}


@pytest.mark.parametrize("network", sorted(NETWORKS))
@pytest.mark.parametrize("size", [128, 64])
def test_layers_and_parameter_counts_match_the_release(network, size):
  layers = NETWORKS[network][1 if size == 128 else 2]
  output, variables = _abstract(network, size)
  params = variables["params"]
  if size == 64:
    assert output.shape == OUTPUT_SHAPES[network]
  flat = {"/".join(path): leaf.shape for path, leaf in traverse_util.flatten_dict(params).items()}
  want = {}
  for name, cin, cout, k, bn in layers:
    want[f"{name}/kernel"] = (k, k, cin, cout)
    if bn:
      want[f"{name}_bn/scale"] = want[f"{name}_bn/bias"] = (cout,)
  assert flat == want
  assert sum(np.prod(s) for s in flat.values()) == _count(layers)


def test_compositional_last_layer_renders_three_channels_per_label():
  masks = (jnp.zeros((BATCH, 128, 128, 7)),)
  output, variables = _abstract("image_g", 128, masks, compositional=True)
  assert variables["params"]["g5"]["kernel"].shape == (4, 4, 64, 21)
  assert output.shape == (BATCH, 128, 128, 3)
  _, variables = _abstract("unet_g", 128, masks, compositional=True)
  assert variables["params"]["d7"]["kernel"].shape == (4, 4, 128, 21)


def test_design_coder_parameters_are_torch_rnn_and_linear_heads():
  coder = model.DesignCoder(vocab_size=540)
  params = jax.eval_shape(coder.init, jax.random.key(0), jnp.zeros((2, 5), jnp.int32),
                          jnp.ones((2,), jnp.int32))["params"]
  shapes = {"/".join(p): v.shape for p, v in traverse_util.flatten_dict(params).items()}
  want = {"weight_ih_l0": (100, 540), "weight_hh_l0": (100, 100), "bias_ih_l0": (100,),
          "bias_hh_l0": (100,), "weight_ih_l1": (100, 100), "weight_hh_l1": (100, 100),
          "bias_ih_l1": (100,), "bias_hh_l1": (100,)}
  for name, classes in (("category", 19), ("colour", 17), ("gender", 2), ("sleeve", 4)):
    want[f"net_{name}/kernel"], want[f"net_{name}/bias"] = (100, classes), (classes,)
  assert shapes == want
  # nn.RNN(540, 100, 2): layer 0 (W_ih, W_hh, two biases), layer 1, then the four heads.
  assert sum(np.prod(s) for s in shapes.values()) == (
      100 * 540 + 100 * 100 + 200) + (2 * 100 * 100 + 200) + (100 * 42 + 42)


def test_initialization_is_the_releases():
  """Kernels N(0, 0.02 / 16) (sr1, ih1 `weights_init`) or N(0, 0.02) (ih1_skip); BatchNorm
  scales N(1, 0.02), offsets 0; running statistics 0 and 1."""
  net = model.ShapeGenerator(size=64, features=16)
  variables = jax.jit(lambda k: model.initialize(net, k, *_inputs("shape_g", 64), train=True))(
      jax.random.key(3))
  flat = traverse_util.flatten_dict(variables["params"])
  kernels = np.concatenate([np.ravel(v) for p, v in flat.items() if p[-1] == "kernel"])
  scales = np.concatenate([np.ravel(v) for p, v in flat.items() if p[-1] == "scale"])
  biases = np.concatenate([np.ravel(v) for p, v in flat.items() if p[-1] == "bias"])
  # 1.1M kernel values: the sample std is within 0.1% (1 sigma); 864 scales: 2.4%.
  assert abs(kernels.std() / (0.02 / 16) - 1) < 0.01 and abs(kernels.mean()) < 1e-5
  assert abs(scales.mean() - 1) < 0.004 and abs(scales.std() / 0.02 - 1) < 0.12
  assert np.all(biases == 0)
  stats = traverse_util.flatten_dict(variables["batch_stats"])
  assert stats and all(np.all(v == (1 if p[-1] == "var" else 0)) for p, v in stats.items())
  assert model.ImageGenerator().init_std == model.ShapeDiscriminator().init_std == 0.02 / 16
  assert model.UNetImageGenerator().init_std == model.PatchImageDiscriminator().init_std == 0.02


@pytest.fixture(name="image_generators", scope="module")
def image_generators_fixture():
  """Plain and compositional G_image at 64 px, widths / 16, one compiled function."""
  plain = model.ImageGenerator(size=64, features=4)
  composed = model.ImageGenerator(size=64, features=4, compositional=True)
  z, d, condition = _inputs("image_g", 64)
  labels = np.repeat(np.repeat(_RNG.integers(0, 7, (BATCH, 8, 8)), 8, axis=1), 8, axis=2)
  variables = jax.jit(lambda k: model.initialize(composed, k, z, d, condition,
                                                 jnp.zeros((BATCH, 64, 64, 7)), train=True))(
      jax.random.key(6))

  @jax.jit
  def run(variables, masks, region):
    """(compositional output, plain output with the last layer of `region`'s rendering)."""
    out, _ = composed.apply(variables, z, d, condition, masks, train=True,
                            mutable=["batch_stats"])
    kernel = variables["params"]["g5"]["kernel"]
    plain_variables = {**variables, "params": {**variables["params"], "g5": {
        "kernel": jax.lax.dynamic_slice_in_dim(kernel, 3 * region, 3, axis=3)}}}
    reference, _ = plain.apply(plain_variables, z, d, condition, train=True,
                               mutable=["batch_stats"])
    return out, reference

  return run, variables, labels


def test_compositional_generator_with_one_region_is_the_plain_generator(image_generators):
  run, variables, _ = image_generators
  masks = jax.nn.one_hot(jnp.full((BATCH, 64, 64), 4), 7)
  out, reference = run(variables, masks, 4)
  assert out.shape == (BATCH, 64, 64, 3) and np.abs(np.asarray(out)).max() <= 1
  # The same network up to the last layer; that layer's 3 of 21 output channels are
  # 128-term sums (8 channels x 4 x 4 taps) of products below 1 in total: a few ulps.
  np.testing.assert_allclose(out, reference, rtol=0, atol=128 * EPS32)


def test_compositional_generator_keeps_textures_inside_their_regions(image_generators):
  run, variables, labels = image_generators
  masks = jax.nn.one_hot(jnp.asarray(labels), 7)
  out, _ = run(variables, masks, 0)
  kernel = variables["params"]["g5"]["kernel"]
  changed = {**variables, "params": {**variables["params"], "g5": {
      "kernel": kernel.at[..., 9:12].multiply(-3.0)}}}  # Region 3's rendering only.
  out_changed, _ = run(changed, masks, 0)
  moved = np.any(np.asarray(out_changed) != np.asarray(out), axis=-1)
  np.testing.assert_array_equal(moved, labels == 3)
  assert moved.any()


def _conv_transpose_reference(x, kernel, stride, padding):
  """torch's SpatialFullConvolution from its definition: y[s i - p + k] += x[i] W[k]."""
  n, h, w, _ = x.shape
  kh, kw, _, cout = kernel.shape
  out_h, out_w = (h - 1) * stride + kh - 2 * padding, (w - 1) * stride + kw - 2 * padding
  full = np.zeros((n, (h - 1) * stride + kh, (w - 1) * stride + kw, cout), x.dtype)
  for i in range(h):
    for j in range(w):
      full[:, i * stride:i * stride + kh, j * stride:j * stride + kw] += np.einsum(
          "nc,hwcd->nhwd", x[:, i, j], kernel)
  return full[:, padding:padding + out_h, padding:padding + out_w]


def _conv_transpose_vjp(x, kernel, g, stride, padding):
  """(dL/dx, dL/dkernel) of sum(g * y) from the definition: dx[i] = sum_k g[s i - p + k]
  W[k]^T, dW[k] = sum_i x[i]^T g[s i - p + k] (over the uncropped output, g zero outside)."""
  n, h, w, _ = x.shape
  kh, kw = kernel.shape[:2]
  full = np.zeros((n, (h - 1) * stride + kh, (w - 1) * stride + kw, g.shape[-1]), g.dtype)
  full[:, padding:padding + g.shape[1], padding:padding + g.shape[2]] = g
  gx, gw = np.zeros_like(x), np.zeros_like(kernel)
  for i in range(h):
    for j in range(w):
      window = full[:, i * stride:i * stride + kh, j * stride:j * stride + kw]
      gx[:, i, j] = np.einsum("nhwd,hwcd->nc", window, kernel)
      gw += np.einsum("nc,nhwd->hwcd", x[:, i, j], window)
  return gx, gw


TRANSPOSE_CASES = [((2, 1, 1, 5), 1, 0, "dilated"), ((2, 5, 4, 3), 2, 1, "dilated"),
                   ((2, 5, 4, 3), 2, 1, "phases"), ((2, 1, 1, 5), 1, 0, "patches"),
                   ((2, 5, 4, 3), 2, 1, "patches"), ((2, 3, 2, 3), 3, 2, "patches")]


@pytest.mark.parametrize("shape, stride, padding, lowering", TRANSPOSE_CASES)
def test_conv_transpose_against_definition(shape, stride, padding, lowering):
  x = _RNG.standard_normal(shape).astype(np.float32)
  kernel = _RNG.standard_normal((4, 4, shape[-1], 6)).astype(np.float32)
  got = model.conv_transpose(jnp.asarray(x), jnp.asarray(kernel), stride, padding, lowering)
  f64 = _conv_transpose_reference(x.astype(np.float64), kernel.astype(np.float64), stride,
                                  padding)
  f32 = _conv_transpose_reference(x, kernel, stride, padding)
  assert got.shape == f64.shape
  assert_within_reference(got, f32, f64, ulps=4, err_msg="conv_transpose")


@pytest.mark.parametrize("shape, stride, padding, lowering", TRANSPOSE_CASES)
def test_conv_transpose_gradients_against_definition(shape, stride, padding, lowering):
  x = _RNG.standard_normal(shape).astype(np.float32)
  kernel = _RNG.standard_normal((4, 4, shape[-1], 6)).astype(np.float32)
  y, pullback = jax.vjp(lambda a, b: model.conv_transpose(a, b, stride, padding, lowering),
                        jnp.asarray(x), jnp.asarray(kernel))
  g = _RNG.standard_normal(y.shape).astype(np.float32)
  got = pullback(jnp.asarray(g))
  f64 = _conv_transpose_vjp(*(a.astype(np.float64) for a in (x, kernel, g)), stride, padding)
  f32 = _conv_transpose_vjp(x, kernel, g, stride, padding)
  for name, a, b, c in zip(("dx", "dkernel"), got, f32, f64):
    assert_within_reference(a, b, c, ulps=4, err_msg=f"conv_transpose {name}")


@pytest.mark.parametrize("lowering", ["phases", "patches"])
def test_conv_transpose_against_torch(lowering):
  torch = pytest.importorskip("torch")
  x = _RNG.standard_normal((2, 6, 5, 3)).astype(np.float32)
  kernel = _RNG.standard_normal((4, 4, 3, 4)).astype(np.float32)
  layer = torch.nn.ConvTranspose2d(3, 4, 4, stride=2, padding=1, bias=False).double()
  with torch.no_grad():
    layer.weight.copy_(torch.from_numpy(kernel.transpose(2, 3, 0, 1).astype(np.float64)))
    want = layer(torch.from_numpy(x.transpose(0, 3, 1, 2).astype(np.float64))).numpy()
  got = model.conv_transpose(jnp.asarray(x), jnp.asarray(kernel), 2, 1, lowering)
  f32 = _conv_transpose_reference(x, kernel, 2, 1)
  assert_within_reference(got, f32, want.transpose(0, 2, 3, 1), ulps=4, err_msg="vs torch")


def _rnn_reference(params, words, lengths, dtype):
  """train_te.py's nn.RNN (tanh, 2 layers, h0 = 0) over one-hot words, hn[-1], in `dtype`."""
  p = {k: np.asarray(v, dtype) for k, v in params.items() if k.startswith(("weight", "bias"))}
  out = []
  for sentence, length in zip(words, lengths):
    h = [np.zeros(100, dtype), np.zeros(100, dtype)]
    for word in sentence[:length]:
      x = np.zeros(p["weight_ih_l0"].shape[1], dtype)
      x[word] = 1
      for layer in range(2):
        h[layer] = np.tanh(p[f"weight_ih_l{layer}"] @ x + p[f"bias_ih_l{layer}"]
                           + p[f"weight_hh_l{layer}"] @ h[layer] + p[f"bias_hh_l{layer}"])
        x = h[layer]
    out.append(h[1])
  return np.stack(out)


@pytest.fixture(name="coder", scope="module")
def coder_fixture():
  coder = model.DesignCoder(vocab_size=12, attributes=(("upper", 5), ("colour", 4)))
  words = np.array([[3, 1, 4, 1, 5, 9], [2, 6, 0, 0, 0, 0], [11, 0, 7, 0, 0, 0]], np.int32)
  lengths = np.array([6, 2, 3], np.int32)
  params = jax.jit(lambda k: model.initialize(coder, k, words, lengths))(
      jax.random.key(5))["params"]
  apply = jax.jit(coder.apply)
  coding, heads = apply({"params": params}, words, lengths)
  return params, words, lengths, coding, heads, apply


def test_design_coder_against_numpy_rnn(coder):
  params, words, lengths, coding, heads, apply = coder
  f64 = _rnn_reference(params, words, lengths, np.float64)
  f32 = _rnn_reference(params, words, lengths, np.float32)
  assert_within_reference(coding, f32, f64, ulps=8, err_msg="design coding")
  kernel, bias = params["net_upper"]["kernel"], params["net_upper"]["bias"]
  assert_within_reference(
      heads["upper"], f32 @ np.asarray(kernel) + np.asarray(bias),
      f64 @ np.asarray(kernel, np.float64) + np.asarray(bias, np.float64), ulps=8,
      err_msg="head")
  assert heads["colour"].shape == (3, 4)
  values = np.concatenate([np.ravel(v) for v in jax.tree.leaves(params)])
  assert np.abs(values).max() <= 0.1 and abs(values.std() / (0.1 / np.sqrt(3)) - 1) < 0.02
  # Words after each sentence's length are ignored.
  junk = np.where(np.arange(words.shape[1]) < lengths[:, None], words, 7)
  np.testing.assert_array_equal(apply({"params": params}, junk, lengths)[0], coding)


def test_design_coder_against_torch_rnn(coder):
  torch = pytest.importorskip("torch")
  params, words, lengths, coding, _, _ = coder
  rnn = torch.nn.RNN(12, 100, 2).double()
  f32 = _rnn_reference(params, words, lengths, np.float32)
  with torch.no_grad():
    for name, value in rnn.named_parameters():
      value.copy_(torch.from_numpy(np.asarray(params[name], np.float64)))
    for k in range(len(words)):
      onehot = np.eye(12)[words[k, :lengths[k]]][:, None, :]
      _, hn = rnn(torch.from_numpy(onehot), torch.zeros(2, 1, 100, dtype=torch.float64))
      assert_within_reference(coding[k], f32[k], hn[-1, 0].numpy(), ulps=8, err_msg="torch")


def test_bad_inputs_are_one_line_errors():
  z, d, condition = _inputs("shape_g", 64)
  with pytest.raises(UserError, match="size 96"):
    model.ShapeGenerator(size=96).init(jax.random.key(0), z, d, condition, train=False)
  with pytest.raises(UserError, match="d has shape"):
    model.ShapeGenerator(size=64).init(jax.random.key(0), z, d[:, :50], condition, train=False)
  z, d, image = _inputs("image_g", 64)
  with pytest.raises(UserError, match="region masks"):
    jax.eval_shape(lambda k: model.ImageGenerator(size=64, compositional=True).init(
        k, z, d, image, train=False), jax.random.key(0))
  with pytest.raises(UserError, match="image has shape"):
    jax.eval_shape(lambda k: model.ImageDiscriminator(size=64).init(
        k, image[:, :32], d, image, train=False), jax.random.key(0))


@pytest.mark.parametrize("cls,name", [(model.ImageGenerator, "image_g"),
                                      (model.UNetImageGenerator, "unet_g")])
def test_image_generator_without_noise_is_the_release_generator_at_z_zero(cls, name):
  """`noise=False` (model.image_noise): any z gives what the release's G_image gives for
  z = 0, with the same parameters; with noise, z changes the image."""
  z, d, condition = _inputs(name, 64)
  release, quiet = cls(size=64, features=4), cls(size=64, features=4, noise=False)
  rngs = {"dropout": jax.random.key(1)}
  variables = jax.jit(lambda k: model.initialize(release, k, z, d, condition, train=True))(
      jax.random.key(7))

  @jax.jit
  def images(z_a, z_b):
    run = lambda net, noise: net.apply(variables, noise, d, condition, train=True, rngs=rngs,
                                       mutable=["batch_stats"])[0]
    return run(quiet, z_a), run(quiet, z_b), run(release, jnp.zeros_like(z_a)), run(release, z_a)

  quiet_a, quiet_b, release_zero, release_a = images(z, -z)
  np.testing.assert_array_equal(quiet_a, quiet_b)
  np.testing.assert_array_equal(quiet_a, release_zero)
  assert np.abs(np.asarray(release_a) - np.asarray(release_zero)).max() > 1e-3
