"""The orbax wrapper: round trip in a fresh process-like instance, clear errors, files untouched."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from readingnotes_jax.errors import UserError
from readingnotes_jax.training.checkpoint import Checkpointer


def make_state(width=3):
  adam = optax.scale_by_adam().init({"b": jnp.zeros((width,))})
  return {"w": jnp.arange(2 * width, dtype=jnp.float32).reshape(2, width),
          "opt": (jnp.int32(7), {"mu": jnp.ones((width,), jnp.bfloat16)}), "adam": adam}


def test_round_trip_from_a_new_instance(tmp_path):
  saver = Checkpointer(tmp_path, max_to_keep=2)
  for step in (1, 2, 3):
    state = jax.tree.map(lambda x: x + step, make_state())
    saver.save(step, state, {"step": step, "phase": "fade"})
  saver.close()
  reader = Checkpointer(tmp_path)
  assert reader.all_steps() == [2, 3]
  state, meta = reader.restore(make_state())
  assert meta == {"step": 3, "phase": "fade"}
  expected = jax.tree.map(lambda x: np.asarray(x + 3), make_state())
  jax.tree.map(np.testing.assert_array_equal, state, expected)
  assert state["opt"][1]["mu"].dtype == jnp.bfloat16


def test_mismatched_shapes_name_the_leaf(tmp_path):
  saver = Checkpointer(tmp_path)
  saver.save(5, make_state(), {})
  saver.close()
  with pytest.raises(UserError, match=r"adam/mu/b is \(\(3,\), 'float32'\), the config needs \(\(4,\).*4 changed"):
    Checkpointer(tmp_path).restore(make_state(width=4))


def test_corrupt_files_raise_user_error_and_stay(tmp_path):
  saver = Checkpointer(tmp_path)
  saver.save(5, make_state(), {})
  saver.close()
  files = [f for f in (tmp_path / "5" / "state").rglob("*") if f.is_file()]
  for f in files:
    f.write_bytes(b"\0garbage")
  with pytest.raises(UserError, match="unreadable"):
    Checkpointer(tmp_path).restore(make_state())
  assert all(f.read_bytes() == b"\0garbage" for f in files)
