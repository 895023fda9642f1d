"""ProGAN Generator / Discriminator: widths, parameter counts, a NumPy reference, fades."""
import functools
import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from readingnotes_jax.errors import UserError
from readingnotes_jax.progan.model import Discriminator, Generator, nf

# A tiny conditional configuration: widths 16, 16, 8 at 4, 8, 16 px.
TINY = dict(resolution=16, num_channels=3, label_size=3, fmap_base=64, fmap_max=16)
LATENT = 8
BATCH = 4


def _count(tree) -> int:
  return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))


# ----------------------------------------------------------------------------
# Widths and parameter counts, written from the layer formulas of G_paper / D_paper.

def _widths(stage):
  return min(int(8192 / 2.0**stage), 512)


def _conv(k, cin, cout):
  return k * k * cin * cout + cout


def _g_count_by_hand(final_log2, channels=3, latent=512):
  """(params with the final ToRGB only, params of the lower ToRGB layers)."""
  n = latent * 16 * _widths(1) + _widths(1)  # 4x4 Dense: one bias per feature map
  n += _conv(3, _widths(1), _widths(1))
  for r in range(3, final_log2 + 1):
    n += _conv(3, _widths(r - 2), _widths(r - 1)) + _conv(3, _widths(r - 1), _widths(r - 1))
  to_rgb = [_conv(1, _widths(r - 1), channels) for r in range(2, final_log2 + 1)]
  return n + to_rgb[-1], sum(to_rgb[:-1])


def _d_count_by_hand(final_log2, channels=3, labels=0):
  """(params with the final FromRGB only, params of the lower FromRGB layers)."""
  n = _conv(3, _widths(1) + 1, _widths(1))  # after minibatch stddev
  n += 16 * _widths(1) * _widths(0) + _widths(0) + _widths(0) * (1 + labels) + 1 + labels
  for r in range(3, final_log2 + 1):
    n += _conv(3, _widths(r - 1), _widths(r - 1)) + _conv(3, _widths(r - 1), _widths(r - 2))
  from_rgb = [_conv(1, channels, _widths(r - 1)) for r in range(2, final_log2 + 1)]
  return n + from_rgb[-1], sum(from_rgb[:-1])


def test_nf_matches_paper_widths():
  assert [nf(r - 1) for r in range(2, 11)] == [512, 512, 512, 512, 256, 128, 64, 32, 16]
  assert nf(0) == 512
  assert nf(3, fmap_base=64, fmap_max=16) == 8


def test_parameter_counts_at_1024():
  """Paper Table 2: about 23.1M each.

  G's 4x4 Dense has one bias per feature map (official `apply_bias` after the
  reshape to [N, 512, 4, 4]), so G is 23,071,507 with the final ToRGB; a bias
  per Dense output (8192) would give 23,079,187.
  """
  key = jax.random.key(0)
  g = jax.eval_shape(Generator().init, key, jnp.zeros((1, 512)))["params"]
  d = jax.eval_shape(Discriminator().init, key, jnp.zeros((4, 1024, 1024, 3)))["params"]
  g_main, g_lower = _g_count_by_hand(10)
  d_main, d_lower = _d_count_by_hand(10)
  assert (g_main, g_lower) == (23_071_507, 7_608)
  assert (d_main, d_lower) == (23_077_137, 10_112)
  lower_to_rgb = sum(_count(g[f"ToRGB_{2**r}x{2**r}"]) for r in range(2, 10))
  lower_from_rgb = sum(_count(d[f"FromRGB_{2**r}x{2**r}"]) for r in range(2, 10))
  assert (_count(g) - lower_to_rgb, lower_to_rgb) == (g_main, g_lower)
  assert (_count(d) - lower_from_rgb, lower_from_rgb) == (d_main, d_lower)


def test_conditional_parameter_counts():
  key = jax.random.key(0)
  g = jax.eval_shape(Generator(resolution=32, label_size=10).init, key,
                     jnp.zeros((1, 512)), jnp.zeros((1, 10)))["params"]
  d = jax.eval_shape(Discriminator(resolution=32, label_size=10).init, key,
                     jnp.zeros((4, 32, 32, 3)))["params"]
  g_main, g_lower = _g_count_by_hand(5, latent=522)
  d_main, d_lower = _d_count_by_hand(5, labels=10)
  assert _count(g) == g_main + g_lower
  assert _count(d) == d_main + d_lower


# ----------------------------------------------------------------------------
# Every level: the same parameter tree, the right output shapes.

@pytest.mark.parametrize("level", range(2, 11))
def test_shapes_and_tree_at_every_level(level):
  kw = dict(resolution=1024, num_channels=3, fmap_base=2048, fmap_max=8)
  G, D = Generator(latent_size=8, **kw), Discriminator(**kw)
  key = jax.random.key(0)
  latents = jnp.zeros((BATCH, 8))
  size = 2**level
  images = jnp.zeros((BATCH, size, size, 3))
  g_full = jax.eval_shape(G.init, key, latents)
  d_full = jax.eval_shape(D.init, key, jnp.zeros((BATCH, 1024, 1024, 3)))
  g_here = jax.eval_shape(lambda k: G.init(k, latents, level=level), key)
  d_here = jax.eval_shape(lambda k: D.init(k, images, level=level), key)
  chex.assert_trees_all_equal_shapes_and_dtypes(g_full, g_here)
  chex.assert_trees_all_equal_shapes_and_dtypes(d_full, d_here)
  for fading in (False, True) if level > 2 else (False,):
    out = jax.eval_shape(lambda v: G.apply(v, latents, level=level, alpha=0.5, fading=fading),
                         g_full)
    chex.assert_shape(out, (BATCH, size, size, 3))
    assert out.dtype == jnp.float32
    scores, logits = jax.eval_shape(
        lambda v: D.apply(v, images, level=level, alpha=0.5, fading=fading), d_full)
    chex.assert_shape(scores, (BATCH,))
    chex.assert_shape(logits, (BATCH, 0))


# ----------------------------------------------------------------------------
# NumPy reference of G_paper / D_paper (use_wscale, pixel norm, LReLU 0.2).

def _lrelu(x):
  return np.maximum(x, 0.2 * x)


def _pn(x):
  return x / np.sqrt(np.mean(x**2, axis=-1, keepdims=True) + 1e-8)


def _wconv(x, p, gain=math.sqrt(2)):
  w = np.asarray(p["kernel"], np.float64)
  k, _, cin, _ = w.shape
  w = w * gain / math.sqrt(k * k * cin)
  pad = k // 2
  xp = np.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
  h, wd = x.shape[1:3]
  out = sum(np.einsum("nhwc,cd->nhwd", xp[:, i:i + h, j:j + wd], w[i, j])
            for i in range(k) for j in range(k))
  return out + np.asarray(p["bias"], np.float64)


def _shift_sum_kernel(w):
  """networks.py fused kernels: the 3x3 kernel padded to 5x5, summed at its four 1-pixel shifts."""
  w5 = np.pad(w, ((1, 1), (1, 1), (0, 0), (0, 0)))
  return w5[1:, 1:] + w5[:-1, 1:] + w5[1:, :-1] + w5[:-1, :-1]


def _wconv_downscale(x, p):
  """networks.py `conv2d_downscale2d` + `apply_bias`: 4x4 kernel (shift sum x 0.25), stride 2,
  'SAME' padding (one pixel each side for even sizes)."""
  w = np.asarray(p["kernel"], np.float64)
  w = _shift_sum_kernel(w * math.sqrt(2) / math.sqrt(9 * w.shape[2])) * 0.25
  xp = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
  h, wd = x.shape[1] // 2, x.shape[2] // 2
  out = sum(np.einsum("nhwc,cd->nhwd", xp[:, i:i + 2 * h:2, j:j + 2 * wd:2], w[i, j])
            for i in range(4) for j in range(4))
  return out + np.asarray(p["bias"], np.float64)


def _wdense(x, p, gain=math.sqrt(2)):
  w = np.asarray(p["kernel"], np.float64)
  return x @ (w * gain / math.sqrt(w.shape[0])) + np.asarray(p["bias"], np.float64)


def _up(x):
  return x.repeat(2, axis=1).repeat(2, axis=2)


def _down(x):
  n, h, w, c = x.shape
  return x.reshape(n, h // 2, 2, w // 2, 2, c).mean(axis=(2, 4))


def _g_reference(p, latents, labels, level, alpha, fading):
  z = _pn(np.concatenate([latents, labels], axis=1).astype(np.float64))
  dense = p["4x4"]["Dense"]
  w = np.asarray(dense["kernel"], np.float64) * math.sqrt(2) / 4 / math.sqrt(z.shape[1])
  c = dense["bias"].shape[0]
  h = (z @ w).reshape(-1, c, 4, 4).transpose(0, 2, 3, 1) + np.asarray(dense["bias"])
  h = _pn(_lrelu(_wconv(_pn(_lrelu(h)), p["4x4"]["Conv"])))
  hs = {2: h}
  for r in range(3, level + 1):
    block = p[f"{2**r}x{2**r}"]
    h = _pn(_lrelu(_wconv(_up(h), block["Conv0"])))
    h = _pn(_lrelu(_wconv(h, block["Conv1"])))
    hs[r] = h
  rgb = lambda r: _wconv(hs[r], p[f"ToRGB_{2**r}x{2**r}"], gain=1.0)
  if not fading:
    return rgb(level)
  return (1 - alpha) * _up(rgb(level - 1)) + alpha * rgb(level)


def _mbstd(x, g):
  m = x.shape[0] // g
  stat = np.empty(x.shape[0])
  for i in range(m):
    members = x[i::m]
    stat[i::m] = np.sqrt(members.var(axis=0) + 1e-8).mean()
  return np.concatenate([x, np.broadcast_to(stat[:, None, None, None], x.shape[:3] + (1,))], -1)


def _d_reference(p, images, level, alpha, fading, group_size=4, fused_scale=True):
  """`D_paper`; fused_scale: 'Conv1_down' (`conv2d_downscale2d`), else 'Conv1' then
  `downscale2d` (the paper's Theano order)."""
  x = images.astype(np.float64)
  from_rgb = lambda img, r: _lrelu(_wconv(img, p[f"FromRGB_{2**r}x{2**r}"]))

  def block(h, r):
    b = p[f"{2**r}x{2**r}"]
    h = _lrelu(_wconv(h, b["Conv0"]))
    if fused_scale:
      return _lrelu(_wconv_downscale(h, b["Conv1"]))
    return _down(_lrelu(_wconv(h, b["Conv1"])))

  h = from_rgb(x, level)
  if level > 2:
    h = block(h, level)
  if fading:
    h = (1 - alpha) * from_rgb(_down(x), level - 1) + alpha * h
  for r in range(level - 1, 2, -1):
    h = block(h, r)
  head = p["4x4"]
  h = _lrelu(_wconv(_mbstd(h, group_size), head["Conv"]))
  h = h.transpose(0, 3, 1, 2).reshape(h.shape[0], -1)  # official NCHW flattening
  out = _wdense(_lrelu(_wdense(h, head["Dense0"])), head["Dense1"], gain=1.0)
  return out[:, 0], out[:, 1:]


def _random_variables(rng, model, *inputs):
  """Variables of `model.init`'s shapes, kernels N(0, 1), biases N(0, 0.2**2).

  Drawn here rather than by `init` (whose initialisers the layer tests check)
  so that no init is compiled and the biases are nonzero.
  """
  shapes = jax.eval_shape(model.init, jax.random.key(0), *inputs)
  return jax.tree_util.tree_map_with_path(
      lambda path, s: rng.normal(size=s.shape).astype(np.float32)
      * (0.2 if path[-1].key == "bias" else 1.0), shapes)


@pytest.fixture(scope="module")
def nets():
  """Tiny conditional G and D with random parameters, nonzero biases included."""
  rng = np.random.default_rng(0)
  latents = rng.normal(size=(BATCH, LATENT)).astype(np.float32)
  labels = np.eye(3, dtype=np.float32)[[0, 2, 1, 2]]
  images = rng.normal(size=(BATCH, 16, 16, 3)).astype(np.float32)
  G = Generator(latent_size=LATENT, lowering="xla", **TINY)
  D = Discriminator(lowering="xla", **TINY)
  g_params = _random_variables(rng, G, latents, labels)
  d_params = _random_variables(rng, D, images)
  g = jax.jit(G.apply, static_argnames=("level", "fading"))
  d = jax.jit(D.apply, static_argnames=("level", "fading"))
  d_theano = jax.jit(Discriminator(lowering="xla", fused_scale=False, **TINY).apply,
                     static_argnames=("level", "fading"))
  return dict(latents=latents, labels=labels, images=images, g_params=g_params,
              d_params=d_params, g=g, d=d, d_theano=d_theano)


@pytest.mark.parametrize("level,fading,alpha", [(4, False, 1.0), (4, True, 0.3)])
def test_generator_matches_numpy(nets, level, fading, alpha):
  out = nets["g"](nets["g_params"], nets["latents"], nets["labels"], level=level,
                  alpha=alpha, fading=fading)
  ref = _g_reference(nets["g_params"]["params"], nets["latents"], nets["labels"], level,
                     alpha, fading)
  # NumPy references here are float64. A few layers of float32 sums (K <= 9 x 16 = 144 terms),
  # pixel norms and upsamplings, |out| < 2.6: ~ sqrt(144) eps32 x |out| x layers ~ 1e-5
  # (measured <= 3.4e-6); wrong equalized-lr gains or fades change outputs by > 10%.
  np.testing.assert_allclose(out, ref, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("fused_scale", [True, False])
@pytest.mark.parametrize("level,fading,alpha", [(4, False, 1.0), (4, True, 0.3)])
def test_discriminator_matches_numpy(nets, level, fading, alpha, fused_scale):
  """The default D is the official TF one (fused_scale=True); False is the Theano order."""
  images = nets["images"]
  d = nets["d"] if fused_scale else nets["d_theano"]
  scores, logits = d(nets["d_params"], images, level=level, alpha=alpha, fading=fading)
  params = nets["d_params"]["params"]
  ref_scores, ref_logits = _d_reference(params, images, level, alpha, fading,
                                        fused_scale=fused_scale)
  other_scores, _ = _d_reference(params, images, level, alpha, fading,
                                 fused_scale=not fused_scale)
  chex.assert_shape((scores, logits), ((BATCH,), (BATCH, 3)))
  assert np.abs(other_scores - ref_scores).max() > 0.05  # the check below tells them apart
  # As for the generator (measured <= 1.6e-7).
  np.testing.assert_allclose(scores, ref_scores, rtol=1e-4, atol=1e-4)
  np.testing.assert_allclose(logits, ref_logits, rtol=1e-4, atol=1e-4)


def test_official_fused_upscale_conv_is_upsample_then_flipped_conv():
  """networks.py `upscale2d_conv2d` (G's default): conv2d_transpose, stride 2, of the shift-sum
  kernel [4, 4, out, in], written here as its scatter definition, equals nearest 2x
  upsampling then the 3x3 'SAME' convolution with the kernel flipped and in/out swapped."""
  rng = np.random.default_rng(5)
  x = rng.normal(size=(2, 4, 4, 3))
  w = rng.normal(size=(3, 3, 5, 3))  # the official layout [k, k, fmaps, in channels]
  w4 = _shift_sum_kernel(w)
  # conv2d_transpose is the adjoint of the stride-2 'SAME' conv (pad 1 before): input pixel m
  # reaches output 2m + i - 1 through tap i.
  out = np.zeros((2, 10, 10, 5))
  for i in range(4):
    for j in range(4):
      out[:, i:i + 8:2, j:j + 8:2] += np.einsum("nhwc,dc->nhwd", x, w4[i, j])
  out = out[:, 1:9, 1:9]
  flipped = {"kernel": w[::-1, ::-1].transpose(0, 1, 3, 2), "bias": np.zeros(5)}
  np.testing.assert_allclose(_wconv(_up(x), flipped, gain=math.sqrt(9 * 3)), out,
                             rtol=1e-12, atol=1e-12)  # float64 sums of 36 terms
  unflipped = {"kernel": w.transpose(0, 1, 3, 2), "bias": np.zeros(5)}
  assert np.abs(_wconv(_up(x), unflipped, gain=math.sqrt(9 * 3)) - out).max() > 1.0


# ----------------------------------------------------------------------------
# Fades, checked through the networks at the neighbouring levels.

def test_generator_fade_endpoints(nets):
  g, params, z, y = nets["g"], nets["g_params"], nets["latents"], nets["labels"]
  fade = lambda a: g(params, z, y, level=4, alpha=a, fading=True)
  previous = np.asarray(g(params, z, y, level=3, alpha=1.0, fading=False))
  new = np.asarray(g(params, z, y, level=4, alpha=1.0, fading=False))
  assert np.abs(_up(previous) - new).max() > 0.1  # the check below can tell them apart
  # The same float32 layers in two programs (|out| < 2.9): measured <= 2.4e-7.
  np.testing.assert_allclose(fade(0.0), _up(previous), rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(fade(1.0), new, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(fade(0.25), 0.75 * _up(previous) + 0.25 * new, rtol=1e-5,
                             atol=1e-5)


def test_discriminator_fade_endpoints(nets):
  d, params, x = nets["d"], nets["d_params"], nets["images"]
  fade = lambda a: d(params, x, level=4, alpha=a, fading=True)
  previous = d(params, _down(x).astype(np.float32), level=3, alpha=1.0, fading=False)
  new = d(params, x, level=4, alpha=1.0, fading=False)
  assert np.abs(np.asarray(previous[0]) - np.asarray(new[0])).max() > 0.1
  # As for the generator (measured <= 1.0e-7).
  chex.assert_trees_all_close(fade(0.0), previous, rtol=1e-5, atol=1e-5)
  chex.assert_trees_all_close(fade(1.0), new, rtol=1e-5, atol=1e-5)


# ----------------------------------------------------------------------------
# Variants: jit or not, bfloat16 compute, conv lowerings.

class VariantsTest(chex.TestCase):

  @chex.variants(with_jit=True, without_jit=True)
  def test_init_and_fade_match_numpy(self):
    rng = np.random.default_rng(3)
    z = rng.normal(size=(2, 8)).astype(np.float32)
    x = rng.normal(size=(2, 8, 8, 3)).astype(np.float32)
    G = Generator(resolution=8, latent_size=8, fmap_base=32, fmap_max=8)
    D = Discriminator(resolution=8, fmap_base=32, fmap_max=8, mbstd_group_size=2)
    gv = self.variant(G.init)(jax.random.key(0), z)
    images = self.variant(lambda v, z, a: G.apply(v, z, level=3, alpha=a, fading=True))(
        gv, z, 0.5)
    ref = _g_reference(gv["params"], z, np.zeros((2, 0)), 3, 0.5, True)
    # As in test_generator_matches_numpy (measured <= 8.6e-7).
    np.testing.assert_allclose(images, ref, rtol=1e-4, atol=1e-4)
    dv = self.variant(D.init)(jax.random.key(1), x)
    scores, _ = self.variant(lambda v, x, a: D.apply(v, x, level=3, alpha=a, fading=True))(
        dv, x, 0.5)
    ref_scores, _ = _d_reference(dv["params"], x, 3, 0.5, True, group_size=2)
    np.testing.assert_allclose(scores, ref_scores, rtol=1e-4, atol=1e-4)


@pytest.fixture(scope="module")
def wide_nets():
  """Widths 32 at 4 and 8 px, enough that bfloat16 rounding averages out; a fade to 8 px."""
  kw = dict(resolution=8, fmap_base=128, fmap_max=32)
  rng = np.random.default_rng(4)
  z = rng.normal(size=(BATCH, 16)).astype(np.float32)
  x = rng.normal(size=(BATCH, 8, 8, 3)).astype(np.float32)
  gv = _random_variables(rng, Generator(latent_size=16, **kw), z)
  dv = _random_variables(rng, Discriminator(**kw), x)

  @functools.cache
  def run(dtype, lowering):
    G = Generator(latent_size=16, dtype=dtype, lowering=lowering, **kw)
    D = Discriminator(dtype=dtype, lowering=lowering, **kw)
    both = jax.jit(lambda gv, dv, z, x: (
        G.apply(gv, z, level=3, alpha=0.5, fading=True),
        D.apply(dv, x, level=3, alpha=0.5, fading=True)[0]))
    g, d = both(gv, dv, z, x)
    return np.asarray(g), np.asarray(d)

  return run


def test_lowerings_give_the_same_networks(wide_nets):
  g_xla, d_xla = wide_nets(jnp.float32, "xla")
  g_mm, d_mm = wide_nets(jnp.float32, "matmul")
  # Two float32 orders of K <= 9 x 32 = 288-term sums through 4-5 layers, |out| < 1.8:
  # ~ sqrt(288) eps32 x 1.8 x 5 = 2e-5 (measured 9.5e-7).
  np.testing.assert_allclose(g_mm, g_xla, rtol=1e-4, atol=1e-4)
  np.testing.assert_allclose(d_mm, d_xla, rtol=1e-4, atol=1e-4)


def test_bfloat16_close_to_float32(wide_nets):
  g32, d32 = wide_nets(jnp.float32, "xla")
  g16, d16 = wide_nets(jnp.bfloat16, None)
  assert g16.dtype == d16.dtype == np.float32
  # Each of ~5 layers rounds its input and output to bf16 (2^-8 relative, like a random walk):
  # ~ sqrt(10) x 2^-8 = 0.012 of the scale; 0.05 is 4x that.
  assert np.abs(g16 - g32).max() < 0.05 * np.abs(g32).max()
  assert np.abs(d16 - d32).max() < 0.05 * np.abs(d32).max()
  assert np.corrcoef(g16.ravel(), g32.ravel())[0, 1] > 0.999


# ----------------------------------------------------------------------------
# Bad input.

def test_bad_inputs_are_user_errors():
  key = jax.random.key(0)
  z = jnp.zeros((4, 8))
  small = dict(latent_size=8, fmap_base=32, fmap_max=8)
  with pytest.raises(UserError, match="power of two"):
    Generator(resolution=48, **small).init(key, z)
  with pytest.raises(UserError, match="power of two"):
    Discriminator(resolution=2048).init(key, jnp.zeros((4, 2048, 2048, 3)))
  with pytest.raises(UserError, match="level"):
    Generator(resolution=16, **small).init(key, z, level=5)
  with pytest.raises(UserError, match="fade"):
    Generator(resolution=16, **small).init(key, z, level=2, fading=True)
  with pytest.raises(UserError, match="latents"):
    Generator(resolution=16, **small).init(key, jnp.zeros((4, 9)))
  with pytest.raises(UserError, match="labels"):
    Generator(resolution=16, label_size=3, **small).init(key, z)
  with pytest.raises(UserError, match="images"):
    Discriminator(resolution=16).init(key, jnp.zeros((4, 8, 8, 3)))
  with pytest.raises(UserError, match="divisible"):
    Discriminator(resolution=4, fmap_base=32, fmap_max=8).init(key, jnp.zeros((6, 4, 4, 3)))
