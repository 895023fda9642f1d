"""max_pool against torch.nn.MaxPool2d: values and gradients, ties included."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from readingnotes_jax.errors import UserError
from readingnotes_jax.nn.pool import max_pool

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
  np.testing.assert_allclose(np.asarray(dx, np.float32), tx.grad.numpy().transpose(0, 2, 3, 1),
                             rtol=1e-2 if dtype == jnp.bfloat16 else 1e-6, atol=1e-6)


def test_bad_arguments_are_user_errors():
  with pytest.raises(UserError, match="padding"):
    max_pool(jnp.zeros((1, 5, 5, 1)), 3, 2, 2)
  with pytest.raises(UserError, match="smaller"):
    max_pool(jnp.zeros((1, 2, 2, 1)), 3, 1, 0)
