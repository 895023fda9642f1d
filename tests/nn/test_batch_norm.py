"""BatchNorm against torch.nn.BatchNorm2d (training and eval) and the formula."""
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from readingnotes_jax.nn.batch_norm import BatchNorm
from numerics_testlib import EPS_BF16

torch = pytest.importorskip("torch")


def _variables(rng, channels):
  return {"params": {"scale": rng.uniform(0.5, 1.5, channels).astype(np.float32),
                     "bias": rng.normal(size=channels).astype(np.float32)},
          "batch_stats": {"mean": rng.normal(size=channels).astype(np.float32),
                          "var": rng.uniform(0.5, 2.0, channels).astype(np.float32)}}


def _torch_bn(variables):
  bn = torch.nn.BatchNorm2d(len(variables["params"]["scale"]), eps=1e-5, momentum=0.1)
  with torch.no_grad():
    bn.weight.copy_(torch.from_numpy(variables["params"]["scale"]))
    bn.bias.copy_(torch.from_numpy(variables["params"]["bias"]))
    bn.running_mean.copy_(torch.from_numpy(variables["batch_stats"]["mean"]))
    bn.running_var.copy_(torch.from_numpy(variables["batch_stats"]["var"]))
  return bn


@pytest.mark.parametrize("shape", [(3, 5, 4, 6), (2, 1, 1, 4)])
def test_training_matches_torch(shape):
  rng = np.random.default_rng(0)
  x = rng.normal(2.0, 3.0, size=shape).astype(np.float32)
  cotangent = rng.normal(size=shape).astype(np.float32)
  variables = _variables(rng, shape[-1])
  bn = _torch_bn(variables).train()
  tx = torch.from_numpy(x.transpose(0, 3, 1, 2)).requires_grad_(True)
  ty = bn(tx)
  ty.backward(torch.from_numpy(cotangent.transpose(0, 3, 1, 2)))

  def f(params, x):
    y, updates = BatchNorm().apply({"params": params, "batch_stats": variables["batch_stats"]},
                                   x, use_running_average=False, mutable=["batch_stats"])
    return jnp.sum(y * cotangent), (y, updates["batch_stats"])

  (_, (y, stats)), (grad_params, grad_x) = jax.value_and_grad(f, argnums=(0, 1), has_aux=True)(
      variables["params"], jnp.asarray(x))
  # Float32 on both sides, a few roundings of O(10) numbers (|x| < 11, |y| < 4.5, sums of
  # n <= 60 terms): eps32 x 10 x a few ~ 1e-6; measured against torch 1.0e-6 (y), 9e-8 and
  # 4.8e-7 (statistics), 3.4e-7 (dx), 3.8e-6 and 1.9e-6 (d scale, d bias: 60-term sums with
  # partial sums < 16, ~ sqrt(60) eps32 / 2 x 16 = 7e-6). Each bar is >= 5x the measured error
  # and >= 100x below what a wrong formula changes (biased batch variance: 1.7% of var).
  np.testing.assert_allclose(y, ty.detach().numpy().transpose(0, 2, 3, 1), atol=1e-5)
  np.testing.assert_allclose(stats["mean"], bn.running_mean.numpy(), rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(stats["var"], bn.running_var.numpy(), rtol=1e-5)  # unbiased
  np.testing.assert_allclose(grad_x, tx.grad.numpy().transpose(0, 2, 3, 1), atol=1e-4)
  np.testing.assert_allclose(grad_params["scale"], bn.weight.grad.numpy(), rtol=1e-4, atol=1e-4)
  np.testing.assert_allclose(grad_params["bias"], bn.bias.grad.numpy(), rtol=1e-5, atol=1e-5)


def test_running_average_matches_formula():
  rng = np.random.default_rng(1)
  x = rng.normal(size=(2, 3, 3, 5)).astype(np.float32)
  variables = _variables(rng, 5)
  y, updates = BatchNorm().apply(variables, x, use_running_average=True, mutable=["batch_stats"])
  stats, params = variables["batch_stats"], variables["params"]
  want = (x - stats["mean"]) / np.sqrt(stats["var"] + 1e-5) * params["scale"] + params["bias"]
  np.testing.assert_allclose(y, want, atol=1e-5)  # |y| < 3.6: ~4 float32 roundings ~ 2e-6
  jax.tree.map(np.testing.assert_array_equal, updates["batch_stats"], stats)


def test_bfloat16_output_float32_statistics():
  x = jnp.asarray(np.random.default_rng(2).normal(size=(2, 4, 4, 3)), jnp.bfloat16)
  variables = BatchNorm(dtype=jnp.bfloat16).init(jax.random.key(0), x, use_running_average=False)
  y, updates = BatchNorm(dtype=jnp.bfloat16).apply(variables, x, use_running_average=False,
                                                   mutable=["batch_stats"])
  assert y.dtype == jnp.bfloat16 and updates["batch_stats"]["var"].dtype == jnp.float32
  x32 = np.asarray(x, np.float32)
  mean, rstd = x32.mean((0, 1, 2)), 1 / np.sqrt(x32.var((0, 1, 2)) + 1e-5)
  want = (x32 - mean) * rstd
  # y = x m + o in bfloat16 (m = rstd, o = -mean rstd, float32 statistics): m, x m, o and the
  # sum each round by <= 2^-8 relative, so |y - want| <= 2^-8 (|y| + 2 |x m| + |o|) <= 3 x 2^-8
  # (|y| + |o|) (was atol=3e-2 on |y| < 2.8: 0.67 used). Float32 statistics matter: bf16 ones
  # would add 2^-8 |x m| to the multiplier's error and 2^-8 |x| / std to the mean's.
  np.testing.assert_allclose(np.asarray(y, np.float32), want, rtol=3 * EPS_BF16,
                             atol=3 * EPS_BF16 * np.abs(mean * rstd).max())


def test_bfloat16_gradients_match_torch_float32():
  """bfloat16 input and output, gradients as accurate as bfloat16 allows: against torch's
  float32 backward on the same (bfloat16-rounded) numbers. JAX's own gradient of the
  bfloat16 normalization missed dx by ~50% here."""
  rng = np.random.default_rng(3)
  shape = (2, 12, 12, 64)
  x = jnp.asarray(rng.normal(1.0, 2.0, size=shape), jnp.bfloat16)
  cotangent = jnp.asarray(rng.normal(size=shape), jnp.bfloat16)
  variables = _variables(rng, shape[-1])
  bn = _torch_bn(variables).train()
  tx = torch.from_numpy(np.asarray(x, np.float32).transpose(0, 3, 1, 2)).requires_grad_(True)
  bn(tx).backward(torch.from_numpy(np.asarray(cotangent, np.float32).transpose(0, 3, 1, 2)))

  def f(params, x):
    y, _ = BatchNorm(dtype=jnp.bfloat16).apply(
        {"params": params, "batch_stats": variables["batch_stats"]}, x,
        use_running_average=False, mutable=["batch_stats"])
    return jnp.sum(y.astype(jnp.float32) * cotangent.astype(jnp.float32))

  grad_params, grad_x = jax.grad(f, argnums=(0, 1))(variables["params"], x)
  assert grad_x.dtype == jnp.bfloat16
  want_x = tx.grad.numpy().transpose(0, 2, 3, 1)
  # dx: float32 math rounded once to bfloat16 (<= 2^-8 |dx|): 0.01 = 2.6 x 2^-8 of max |dx|.
  assert np.abs(np.asarray(grad_x, np.float32) - want_x).max() < 0.01 * np.abs(want_x).max()
  # d scale, d bias: float32 sums of 288 terms from the same bf16 numbers, partial sums < 50:
  # ~ sqrt(288) eps32 / 2 x 50 = 5e-5 (measured 1.7e-5 and 0 against torch). d scale gets the
  # bfloat16 bar (rtol 0.01, atol 0.05 = 1e-3 of max |d scale| = 49), d bias atol 1e-3.
  np.testing.assert_allclose(grad_params["scale"], bn.weight.grad.numpy(), rtol=0.01, atol=0.05)
  np.testing.assert_allclose(grad_params["bias"], bn.bias.grad.numpy(), rtol=1e-4, atol=1e-3)


def test_gradients_through_the_batch_statistics():
  """Losses reading the returned batch mean and variance too: against JAX's gradient of
  the formula written here in float32."""
  from readingnotes_jax.nn.batch_norm import _batch_norm_train
  rng = np.random.default_rng(4)
  x = jnp.asarray(rng.normal(size=(3, 4, 5, 6)), jnp.float32)
  scale, bias = jnp.asarray(rng.uniform(0.5, 1.5, 6), jnp.float32), jnp.asarray(rng.normal(size=6),
                                                                                  jnp.float32)
  weights = [jnp.asarray(rng.normal(size=s), jnp.float32) for s in ((3, 4, 5, 6), (6,), (6,))]

  def formula(x, scale, bias):
    mean = jnp.mean(x, axis=(0, 1, 2))
    var = jnp.mean(jnp.square(x - mean), axis=(0, 1, 2))
    return (x - mean) / jnp.sqrt(var + 1e-5) * scale + bias, mean, var

  def loss(fn):
    return lambda *a: sum(jnp.sum(w * o) for w, o in zip(weights, fn(*a)))

  got = jax.grad(loss(lambda *a: _batch_norm_train(*a, 1e-5, jnp.float32)), argnums=(0, 1, 2))(
      x, scale, bias)
  want = jax.grad(loss(formula), argnums=(0, 1, 2))(x, scale, bias)
  for g, w in zip(got, want):  # float32 both, |grads| < 19 from 60-term sums: measured 3.8e-6
    np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-4)


_YNN_SCRIPT = """
import sys, jax, jax.numpy as jnp, numpy as np
from readingnotes_jax.nn.batch_norm import BatchNorm
x, g = np.load(sys.argv[1])["x"], np.load(sys.argv[1])["g"]
bn = BatchNorm()
variables = bn.init(jax.random.key(0), x, use_running_average=False)
params = {"scale": jnp.linspace(0.5, 1.5, x.shape[-1]), "bias": jnp.linspace(-1, 1, x.shape[-1])}
def apply(params, x):
  return bn.apply({"params": params, "batch_stats": variables["batch_stats"]}, x,
                  use_running_average=False, mutable=["batch_stats"])[0]
y, pullback = jax.vjp(jax.jit(apply), params, x)
dparams, dx = pullback(jnp.asarray(g))
np.savez(sys.argv[2], y=y, dx=dx, dscale=dparams["scale"], dbias=dparams["bias"])
"""


def test_training_matches_the_formula_with_ynn_reductions(tmp_path):
  """Statistics and gradients with XLA:CPU's reductions handed to YNNPACK (FashionGAN's
  `xla_cpu_ynn_types`, a fresh process) against the float64 formula."""
  from readingnotes_jax.nn import conv  # pylint: disable=import-outside-toplevel
  rng = np.random.default_rng(7)
  x = rng.normal(1.0, 2.0, (8, 12, 12, 16)).astype(np.float32)
  g = rng.normal(size=x.shape).astype(np.float32)
  np.savez(tmp_path / "in.npz", x=x, g=g)
  flags = f"{conv.XLA_CPU_YNN_FLAG.split('=')[0]}=individual_dot,reduce"
  env = dict(os.environ, XLA_FLAGS=flags, JAX_PLATFORMS="cpu")
  r = subprocess.run([sys.executable, "-c", _YNN_SCRIPT, tmp_path / "in.npz",
                      tmp_path / "out.npz"], capture_output=True, text=True, env=env, timeout=300)
  assert r.returncode == 0, r.stderr[-2000:]
  out = np.load(tmp_path / "out.npz")
  x64, g64 = x.astype(np.float64), g.astype(np.float64)
  scale, bias = np.linspace(0.5, 1.5, 16), np.linspace(-1, 1, 16)
  mean, var = x64.mean((0, 1, 2)), x64.var((0, 1, 2))
  xhat = (x64 - mean) / np.sqrt(var + 1e-5)
  dbias, dscale = g64.sum((0, 1, 2)), (g64 * xhat).sum((0, 1, 2))
  dx = scale / np.sqrt(var + 1e-5) * (g64 - dbias / g64[..., 0].size
                                      - xhat * dscale / g64[..., 0].size)
  # Float32 sums of 1152 terms: ~ eps32 sqrt(1152) relative (2e-6); 1e-4 leaves margin, a
  # wrong reduction axis or count is off by O(1).
  for name, want in (("y", xhat * scale + bias), ("dx", dx), ("dscale", dscale),
                     ("dbias", dbias)):
    np.testing.assert_allclose(out[name], want, rtol=1e-4, atol=1e-4 * np.abs(want).max(),
                               err_msg=name)
