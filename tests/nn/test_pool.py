"""max_pool against torch.nn.MaxPool2d: values and gradients, ties included."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from readingnotes_jax.errors import UserError
from readingnotes_jax.nn.pool import max_pool
from numerics_testlib import EPS32, EPS_BF16

torch = pytest.importorskip("torch")


@pytest.mark.parametrize("shape,window,stride,padding", [
    ((2, 9, 11, 3), 3, 2, 1), ((1, 8, 8, 2), 2, 2, 0), ((2, 7, 6, 4), 3, 1, 1),
    ((1, 10, 9, 2), 3, 3, 0)])
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_matches_torch_with_ties(shape, window, stride, padding, dtype):
  """Small integers make ties common: torch sends the gradient to the first maximum."""
  rng = np.random.default_rng(0)
  x = rng.integers(-2, 3, size=shape).astype(np.float32)
  tx = torch.from_numpy(x.transpose(0, 3, 1, 2)).requires_grad_(True)
  ty = torch.nn.MaxPool2d(window, stride, padding)(tx)
  cotangent = rng.normal(size=ty.shape).astype(np.float32)
  cotangent = np.array(jnp.asarray(cotangent, dtype), np.float32)  # representable in dtype
  ty.backward(torch.from_numpy(cotangent))
  y, vjp = jax.vjp(lambda v: max_pool(v, window, stride, padding), jnp.asarray(x, dtype))
  (dx,) = vjp(jnp.asarray(cotangent.transpose(0, 2, 3, 1), dtype))
  assert y.dtype == dx.dtype == dtype
  np.testing.assert_array_equal(np.asarray(y, np.float32),
                                ty.detach().numpy().transpose(0, 2, 3, 1))
  want = tx.grad.numpy().transpose(0, 2, 3, 1)
  # Each input sums the `count` cotangents routed to it: ours in `dtype` (<= count roundings
  # by its unit roundoff u, of partial sums <= sum |g|), torch in float32 (u32 = 2^-24), so
  # |dx - want| <= count (u + u32) sum |g|, where torch's gradient for |g| gives sum |g| and
  # for ones, count (same routing). An input no window picks must get exactly 0, and a tie
  # sent to another element moves a whole cotangent.
  def routed(cotangent):
    tx.grad = None
    torch.nn.MaxPool2d(window, stride, padding)(tx).backward(torch.from_numpy(cotangent))
    return tx.grad.numpy().transpose(0, 2, 3, 1)
  u = EPS_BF16 if dtype == jnp.bfloat16 else EPS32 / 2
  bound = routed(np.ones_like(cotangent)) * (u + EPS32 / 2) * routed(np.abs(cotangent))
  excess = np.abs(np.asarray(dx, np.float32) - want) - bound
  assert np.all(excess <= 0), excess.max()


def test_bad_arguments_are_user_errors():
  with pytest.raises(UserError, match="padding"):
    max_pool(jnp.zeros((1, 5, 5, 1)), 3, 2, 2)
  with pytest.raises(UserError, match="smaller"):
    max_pool(jnp.zeros((1, 2, 2, 1)), 3, 1, 0)
