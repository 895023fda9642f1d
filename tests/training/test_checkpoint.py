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


REPLICATED_SAVE = r"""
import logging, sys
import jax, jax.numpy as jnp, numpy as np
from readingnotes_jax.training import mesh as mesh_lib
from readingnotes_jax.training.checkpoint import Checkpointer

class Count(logging.Handler):
  slices = 0
  def emit(self, record):
    Count.slices += "Compiling jit(slice)" in record.getMessage()

logging.getLogger("jax").addHandler(Count())
mesh = mesh_lib.make_data_mesh(8)
state = {f"w{k}": jnp.full((k + 1, 8), k, jnp.float32) for k in range(6)}
state["count"] = jnp.int32(7)
state = jax.device_put(state, mesh_lib.replicated(mesh))
jax.config.update("jax_log_compiles", True)
saver = Checkpointer(sys.argv[1])
saver.save(1, state, {})
saver.close()
jax.config.update("jax_log_compiles", False)
restored, _ = Checkpointer(sys.argv[1]).restore(state)
for k in range(6):
  np.testing.assert_array_equal(restored[f"w{k}"], np.full((k + 1, 8), k, np.float32))
assert int(restored["count"]) == 7
print("slices", Count.slices)
"""


def test_a_replicated_state_on_cpu_devices_is_saved_without_a_slice_per_device(tmp_path):
  """orbax's replica-parallel save (its default) would write 1/8 of each array from each of 8
  CPU devices through a compiled slice per array and device (6 x 8 here); the wrapper saves
  from one replica instead, and the state comes back whole."""
  import os, subprocess, sys  # pylint: disable=import-outside-toplevel,multiple-imports
  r = subprocess.run([sys.executable, "-c", REPLICATED_SAVE, str(tmp_path / "ckpt")],
                     capture_output=True, text=True, timeout=300,
                     env={**os.environ, "XLA_FLAGS": os.environ["XLA_FLAGS"] +
                          " --xla_force_host_platform_device_count=8"})
  assert r.returncode == 0, r.stderr[-3000:]
  assert r.stdout.split()[-2:] == ["slices", "0"], r.stdout[-500:]
