"""conv2d: the general lowerings against a NumPy reference (values and gradients); the
3x3-only "winograd" lowering in test_winograd.py."""
import os
import subprocess
import sys

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from readingnotes_jax.errors import UserError
from readingnotes_jax.nn import conv

GENERAL_LOWERINGS = tuple(low for low in conv.LOWERINGS if low != "winograd")
# (kernel, stride, dilation, padding, input height, input width)
CASES = [
    (3, 1, 1, "SAME", 6, 5),
    (1, 2, 1, "SAME", 7, 6),   # ResNet projection shortcut
    (3, 1, 2, "SAME", 7, 8),   # dilated ResNet stage
    (3, 1, 4, "SAME", 9, 9),
    (7, 2, 1, "SAME", 9, 10),  # ResNet stem, odd size: asymmetric padding
    (3, 2, 1, 1, 8, 7),
    (3, 1, 1, "VALID", 5, 6),
    (2, 2, 1, "SAME", 5, 5),
    (4, 2, 1, 1, 8, 7),        # FashionGAN's down-sampling, odd width
    (3, 2, 2, "SAME", 9, 9),   # dilated and strided
    (5, 3, 1, 2, 11, 10),      # stride not dividing the kernel
]


def _same_pads(size, k, s, d):
  """TensorFlow's 'SAME': output ceil(size / s), the extra zero at the end."""
  out = -(-size // s)
  total = max((out - 1) * s + (k - 1) * d + 1 - size, 0)
  return total // 2, total - total // 2


def _pads(size, k, s, d, padding):
  if padding == "SAME":
    return _same_pads(size, k, s, d)
  p = 0 if padding == "VALID" else padding
  return p, p


def _conv_np(x, w, s, d, padding):
  """y[n,p,q,o] = sum_ijc xpad[n, p*s + i*d, q*s + j*d, c] w[i,j,c,o], and its VJP."""
  k = w.shape[0]
  ph = _pads(x.shape[1], k, s, d, padding)
  pw = _pads(x.shape[2], k, s, d, padding)
  xp = np.pad(x.astype(np.float64), ((0, 0), ph, pw, (0, 0)))
  oh = (xp.shape[1] - (k - 1) * d - 1) // s + 1
  ow = (xp.shape[2] - (k - 1) * d - 1) // s + 1
  y = np.zeros((x.shape[0], oh, ow, w.shape[-1]))
  for p in range(oh):
    for q in range(ow):
      for i in range(k):
        for j in range(k):
          y[:, p, q] += xp[:, p * s + i * d, q * s + j * d] @ w[i, j]

  def vjp(g):
    gxp = np.zeros_like(xp)
    gw = np.zeros(w.shape)
    for p in range(oh):
      for q in range(ow):
        for i in range(k):
          for j in range(k):
            gxp[:, p * s + i * d, q * s + j * d] += g[:, p, q] @ w[i, j].T
            gw[i, j] += xp[:, p * s + i * d, q * s + j * d].T @ g[:, p, q]
    gx = gxp[:, ph[0]:ph[0] + x.shape[1], pw[0]:pw[0] + x.shape[2]]
    return gx, gw

  return y, vjp


@pytest.fixture(scope="module")
def arrays():
  rng = np.random.default_rng(0)
  return rng.normal(size=(2, 10, 10, 3)).astype(np.float32), rng


@pytest.mark.parametrize("lowering", GENERAL_LOWERINGS)
@pytest.mark.parametrize("k,s,d,padding,h,w", CASES)
def test_values_and_gradients_match_numpy(arrays, lowering, k, s, d, padding, h, w):
  base, rng = arrays
  x = base[:, :h, :w]
  kernel = rng.normal(size=(k, k, 3, 4)).astype(np.float32)
  ref, vjp = _conv_np(x, kernel, s, d, padding)
  fn = lambda x, kernel: conv.conv2d(x, kernel, stride=s, dilation=d, padding=padding,
                                     lowering=lowering)
  out, pullback = jax.vjp(jax.jit(fn), x, kernel)
  chex.assert_shape(out, ref.shape)
  # Float32 sums of K <= 200 products of N(0, 1) numbers (outputs K = 147, kernel gradients
  # 2 x 10 x 10 positions) against float64: rounding ~ eps32 K = 2.4e-5 (random walk of partial
  # sums ~ sqrt(K)), measured <= 1.7e-5 here and with XLA's AVX2 kernels; a wrong tap, stride
  # or padding moves outputs by O(1).
  np.testing.assert_allclose(out, ref, rtol=1e-4, atol=1e-4)
  g = rng.normal(size=ref.shape).astype(np.float32)
  gx, gw = pullback(jnp.asarray(g))
  gx_ref, gw_ref = vjp(g.astype(np.float64))
  np.testing.assert_allclose(gx, gx_ref, rtol=1e-4, atol=1e-4)
  np.testing.assert_allclose(gw, gw_ref, rtol=1e-4, atol=1e-4)


def test_same_padding_agrees_with_lax():
  rng = np.random.default_rng(1)
  x = rng.normal(size=(1, 9, 10, 2)).astype(np.float32)
  kernel = rng.normal(size=(4, 4, 2, 3)).astype(np.float32)
  ref = jax.lax.conv_general_dilated(x, kernel, (2, 2), "SAME",
                                     dimension_numbers=("NHWC", "HWIO", "NHWC"))
  out = jax.jit(lambda x, k: conv.conv2d(x, k, stride=2, lowering="matmul"))(x, kernel)
  # 32-term float32 sums in two orders: ~ eps32 x 32 x |terms| ~ 4e-6 (measured 2.9e-6).
  np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-5)


def test_lowerings_agree_in_bfloat16():
  rng = np.random.default_rng(2)
  x = jnp.asarray(rng.normal(size=(2, 8, 8, 16)), jnp.bfloat16)
  kernel = jnp.asarray(rng.normal(size=(3, 3, 16, 8)) * 0.1, jnp.bfloat16)
  a = conv.conv2d(x, kernel, lowering="xla")
  b = conv.conv2d(x, kernel, lowering="matmul")
  assert a.dtype == b.dtype == jnp.bfloat16
  # Each rounds 144-term sums to bfloat16 (2^-8 |y|), more if a backend accumulates in
  # bfloat16 (~ sqrt(144) 2^-8 = 0.047 of the terms' size): 0.05, |y| < 4.5 (measured 0 here).
  np.testing.assert_allclose(np.asarray(a, np.float32), np.asarray(b, np.float32),
                             rtol=0.05, atol=0.05)


def test_default_lowering_on_this_backend(monkeypatch):
  monkeypatch.setenv("XLA_FLAGS", "")
  bf16 = jnp.bfloat16
  if jax.default_backend() == "cpu":
    assert conv.default_lowering() == "matmul"
    assert conv.default_lowering(512) == conv.default_lowering(512, bf16) == "matmul"
    assert conv.default_lowering(256) == conv.default_lowering(64, bf16) == "xla"
    assert conv.default_lowering(128, bf16) == conv.default_lowering(256, bf16) == "matmul"
    assert conv.default_lowering(64, jnp.float32, (1, 1)) == "matmul"
    assert conv.default_lowering(64, jnp.float32, (1, 1), stride=2) == "matmul"
    assert conv.default_lowering(64, jnp.float32, (3, 3)) == "xla"
    assert conv.default_lowering(512, bf16, (3, 3), stride=2) == "xla"
    assert conv.default_lowering(64, jnp.float32, (4, 4), 2, conv.PATCHES_MAX_ROWS) == "patches"
    assert conv.default_lowering(512, bf16, (4, 4), 2, 256, 4 * 4 * 512 * 512) == "patches"
    assert (conv.default_lowering(128, bf16, (4, 4), 2, 256, 4 * 4 * 128 * 128)
            == "space_to_depth")
    assert conv.default_lowering(128, bf16, (4, 4), 2, 64, 4 * 4 * 128 * 128) == "patches"
    assert (conv.default_lowering(64, jnp.float32, (4, 4), 2, conv.PATCHES_MAX_ROWS + 1)
            == "space_to_depth")
    assert conv.default_lowering(64, jnp.float32, (4, 4), 2, 4096, dilation=2) == "xla"
    assert conv.default_lowering(64, jnp.float32, (6, 3), 3, 4096) == "space_to_depth"
    assert conv.default_lowering(512, jnp.float32, (3, 3), 1, 16) == "matmul"  # stride 1
    wino = dict(kernel_size=(3, 3), winograd_padding=True)
    assert conv.default_lowering(conv.WINOGRAD_MIN_CHANNELS, **wino) == "winograd"
    assert (conv.default_lowering(conv.LOW_PRECISION_WINOGRAD_MIN_CHANNELS, bf16, **wino)
            == "winograd")
    assert conv.default_lowering(conv.WINOGRAD_MIN_CHANNELS - 1, **wino) == "xla"
    assert conv.default_lowering(512, bf16, (3, 3), dilation=2, winograd_padding=True) == "matmul"
    assert conv.default_lowering(512, jnp.float32, (5, 5), winograd_padding=True) == "matmul"
    assert conv.default_lowering(conv.WINOGRAD_MIN_CHANNELS, jnp.float32, (2, 2),
                                 winograd_padding=True) == "winograd"
    assert conv.default_lowering(512, bf16, (2, 2), winograd_padding=True) == "matmul"
    monkeypatch.setenv("XLA_FLAGS", conv.XLA_CPU_YNN_FLAG)
    assert conv.default_lowering(512) == conv.default_lowering(64, bf16) == "xla"
    assert conv.default_lowering(512, bf16) == conv.default_lowering(128, bf16) == "matmul"
    assert conv.default_lowering(512, jnp.float32, (1, 1)) == "matmul"
    assert conv.default_lowering(512, jnp.float32, (3, 3), winograd_padding=True) == "winograd"
  else:
    assert conv.default_lowering() == conv.default_lowering(512, bf16, (1, 1)) == "xla"


def test_enable_xla_cpu_ynn_keeps_other_flags_and_a_users_choice(monkeypatch):
  monkeypatch.setenv("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
  conv.enable_xla_cpu_ynn()
  assert os.environ["XLA_FLAGS"].split() == [
      "--xla_force_host_platform_device_count=8",
      "--xla_cpu_experimental_ynn_fusion_type=individual_dot"]
  assert conv.xla_cpu_ynn_enabled()
  conv.enable_xla_cpu_ynn()  # idempotent
  assert len(os.environ["XLA_FLAGS"].split()) == 2
  monkeypatch.setenv("XLA_FLAGS", "--xla_cpu_experimental_ynn_fusion_type=dot")
  conv.enable_xla_cpu_ynn()
  assert os.environ["XLA_FLAGS"] == "--xla_cpu_experimental_ynn_fusion_type=dot"
  assert not conv.xla_cpu_ynn_enabled()
  monkeypatch.setenv("XLA_FLAGS", "")
  conv.enable_xla_cpu_ynn("individual_dot,reduce")  # FashionGAN's: reductions as well
  assert os.environ["XLA_FLAGS"] == "--xla_cpu_experimental_ynn_fusion_type=individual_dot,reduce"
  assert conv.xla_cpu_ynn_enabled()


_YNN_SCRIPT = """
import sys, jax, numpy as np
from readingnotes_jax.nn import conv
assert conv.xla_cpu_ynn_enabled()
cases = {cases!r}
data = dict(np.load(sys.argv[1]))
out = {{}}
for n, (k, s, d, padding, h, w) in enumerate(cases):
  for lowering in {lowerings!r}:
    fn = lambda x, kernel: conv.conv2d(x, kernel, stride=s, dilation=d, padding=padding,
                                       lowering=lowering)
    y, pullback = jax.vjp(jax.jit(fn), data[f"x{{n}}"], data[f"k{{n}}"])
    gx, gw = pullback(data[f"g{{n}}"])
    out.update({{f"{{lowering}}{{n}}_{{name}}": np.asarray(v) for name, v in
                 (("y", y), ("gx", gx), ("gw", gw))}})
np.savez(sys.argv[2], **out)
"""


def test_lowerings_match_numpy_with_xla_cpu_ynn(tmp_path):
  """XLA:CPU with `XLA_CPU_YNN_FLAG` (a fresh process) against the NumPy reference."""
  rng = np.random.default_rng(3)
  data, refs = {}, {}
  for n, (k, s, d, padding, h, w) in enumerate(CASES):
    x = rng.normal(size=(2, h, w, 3)).astype(np.float32)
    kernel = rng.normal(size=(k, k, 3, 4)).astype(np.float32)
    ref, vjp = _conv_np(x, kernel, s, d, padding)
    g = rng.normal(size=ref.shape).astype(np.float32)
    data.update({f"x{n}": x, f"k{n}": kernel, f"g{n}": g})
    refs.update(zip((f"{n}_y", f"{n}_gx", f"{n}_gw"), (ref, *vjp(g.astype(np.float64)))))
  np.savez(tmp_path / "in.npz", **data)
  env = dict(os.environ, XLA_FLAGS=conv.XLA_CPU_YNN_FLAG, JAX_PLATFORMS="cpu")
  script = _YNN_SCRIPT.format(cases=CASES, lowerings=GENERAL_LOWERINGS)
  r = subprocess.run([sys.executable, "-c", script,
                      tmp_path / "in.npz", tmp_path / "out.npz"],
                     capture_output=True, text=True, env=env, timeout=300)
  assert r.returncode == 0, r.stderr[-2000:]
  out = np.load(tmp_path / "out.npz")
  for lowering in GENERAL_LOWERINGS:
    for key, ref in refs.items():  # as in test_values_and_gradients_match_numpy (1.3e-5)
      np.testing.assert_allclose(out[lowering + key], ref, rtol=1e-4, atol=1e-4,
                                 err_msg=f"{lowering} {key}")


def test_bad_arguments_are_user_errors():
  x, kernel = jnp.zeros((1, 4, 4, 2)), jnp.zeros((3, 3, 2, 2))
  with pytest.raises(UserError):
    conv.conv2d(x, kernel, lowering="fft")
  with pytest.raises(UserError):
    conv.conv2d(x, jnp.zeros((3, 3, 5, 2)))
  with pytest.raises(UserError):
    conv.conv2d(x, kernel, stride=0)


# float32: sums of <= 180 terms, then the same again for the gradient of the gradient (~ eps32
# x 180 x 2 ~ 4e-5 of max |w|; Winograd's transforms add ~ 10 roundings per step, < 1e-5).
# bfloat16: the values, both gradients and the penalty's inner gradient rounded to bf16 (2^-8
# each), Winograd's V and U too: ~ 6 roundings of O(max |w|) = 0.023 <= 0.05.
@pytest.mark.parametrize("dtype,tolerance", [(jnp.float32, 1e-4), (jnp.bfloat16, 0.05)])
@pytest.mark.parametrize("lowering,k,d,padding,cin,cout", [
    ("matmul", 3, 1, "SAME", 8, 5), ("matmul", 3, 2, "SAME", 8, 5),
    ("matmul", 3, 1, "VALID", 8, 5), ("matmul", 1, 1, 1, 8, 5), ("matmul", 2, 1, "SAME", 8, 5),
    ("matmul", 3, 2, "SAME", 20, 5), ("matmul", 2, 1, 3, 20, 5),  # wide input: _shifted_outputs
    ("matmul", 3, 2, "SAME", 5, 20), ("matmul", 3, 1, "VALID", 5, 20),  # its input gradient
    ("winograd", 3, 1, "SAME", 8, 5), ("winograd", 3, 1, 2, 5, 20),
    ("winograd", 2, 1, "SAME", 8, 5), ("winograd", 2, 1, 0, 20, 5)])
def test_gradients_to_second_order_match_lax(dtype, tolerance, lowering, k, d, padding, cin,
                                             cout):
  """The matmul and Winograd lowerings' hand-written gradients against lax.conv in float32.

  Values, both first-order gradients and a gradient-penalty-style gradient of a
  gradient (WGAN-GP's double backward); bf16 inputs are rounded first, so
  both sides see the same numbers.
  """
  rng = np.random.default_rng(3)
  x = jnp.asarray(rng.normal(size=(2, 6, 7, cin)), dtype)
  kernel = jnp.asarray(rng.normal(size=(k, k, cin, cout)) * 0.2, dtype)

  def score(x, kernel, lowering):
    y = conv.conv2d(x, kernel, dilation=d, padding=padding, lowering=lowering)
    return jnp.sum(jnp.tanh(y.astype(jnp.float32)))

  def penalty(kernel, x, lowering):
    return jnp.sum(jnp.square(jax.grad(score)(x, kernel, lowering).astype(jnp.float32)))

  checks = {
      "value": lambda x, k, low: conv.conv2d(x, k, dilation=d, padding=padding, lowering=low),
      "grads": jax.grad(score, argnums=(0, 1)),
      "penalty_grad": lambda x, k, low: jax.grad(penalty)(k, x, low),
  }
  for name, fn in checks.items():
    got = jax.jit(fn, static_argnums=2)(x, kernel, lowering)
    want = jax.jit(fn, static_argnums=2)(x.astype(jnp.float32), kernel.astype(jnp.float32), "xla")
    for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
      assert g.dtype == dtype, name
      w = np.asarray(w)
      np.testing.assert_allclose(np.asarray(g, np.float32), w, rtol=tolerance,
                                 atol=tolerance * np.abs(w).max(), err_msg=name)


@pytest.mark.parametrize("lowering", GENERAL_LOWERINGS)
@pytest.mark.parametrize("k,s,d,cin,cout", [(3, 1, 2, 8, 5), (3, 1, 1, 20, 5), (1, 1, 1, 8, 5),
                                           (3, 2, 1, 8, 5)])
def test_float32_kernel_with_bfloat16_input(lowering, k, s, d, cin, cout):
  """Mixed precision: the values are those of the bf16-rounded kernel, and at stride 1 the
  matmul lowering's kernel gradient is float32 from the float32 accumulation (NumPy in
  float64 on the same bf16 numbers; bf16 rounding of the gradient would miss 1e-5)."""
  rng = np.random.default_rng(5)
  x = jnp.asarray(rng.normal(size=(2, 7, 6, cin)), jnp.bfloat16)
  kernel = jnp.asarray(rng.normal(size=(k, k, cin, cout)) * 0.2, jnp.float32)
  kernel16 = kernel.astype(jnp.bfloat16)
  fn = lambda x, w: conv.conv2d(x, w, stride=s, dilation=d, lowering=lowering)
  y, pullback = jax.vjp(jax.jit(fn), x, kernel)
  assert y.dtype == jnp.bfloat16
  np.testing.assert_array_equal(np.asarray(y, np.float32),
                                np.asarray(jax.jit(fn)(x, kernel16), np.float32))
  g = jnp.asarray(rng.normal(size=y.shape), jnp.bfloat16)
  gx, gw = pullback(g)
  assert (gx.dtype, gw.dtype) == (jnp.bfloat16, jnp.float32)
  f64 = lambda a: np.asarray(a, np.float32).astype(np.float64)
  _, vjp = _conv_np(f64(x), f64(kernel16), s, d, "SAME")
  want_gx, want_gw = vjp(f64(g))
  exact = lowering == "matmul" and s == 1
  # Float32 sums of <= 84 products: ~ sqrt(84) eps32 = 1.1e-6 of max |gw| (bar 1e-5); else a
  # bf16 result, rounded to 2^-8 = 0.0039 of itself and maybe accumulated in bf16: 1e-2.
  np.testing.assert_allclose(f64(gw), want_gw, rtol=1e-5 if exact else 1e-2,
                             atol=(1e-5 if exact else 1e-2) * np.abs(want_gw).max())
  np.testing.assert_allclose(f64(gx), want_gx, rtol=1e-2, atol=1e-2 * np.abs(want_gx).max())


def test_kernel_dtype_must_match_or_be_float32():
  with pytest.raises(UserError, match="kernel dtype"):
    conv.conv2d(jnp.zeros((1, 4, 4, 2)), jnp.zeros((3, 3, 2, 2), jnp.bfloat16))
  with pytest.raises(UserError, match="kernel dtype"):
    conv.conv2d(jnp.zeros((1, 4, 4, 2), jnp.bfloat16), jnp.zeros((3, 3, 2, 2), jnp.float16))
