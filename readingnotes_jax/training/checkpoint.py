"""The project's one orbax wrapper: async, keep-the-last-few checkpoints of a train state.

A checkpoint holds two items: `state` (any PyTree of arrays: networks, EMA,
optimizer states, counters, keys) and `meta` (a JSON dict: what a human or a
compatibility check wants to read without the arrays). Restoring checks that the
stored arrays match the structure, shapes and dtypes of the caller's state;
anything unreadable or mismatched raises `UserError` and leaves the files alone.
"""
import os
import pathlib
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
# orbax's default registry gives jax.Array's handler this store (no public name in 0.12.8).
from orbax.checkpoint._src.metadata import array_metadata_store

from readingnotes_jax.errors import UserError


class Checkpointer:
  """Saves and restores `(state, meta)` under `directory` (usually `workdir/checkpoints`)."""

  def __init__(self, directory: str | os.PathLike, *, max_to_keep: int = 3,
               async_save: bool = True):
    self.directory = pathlib.Path(directory).absolute()
    options = ocp.CheckpointManagerOptions(
        max_to_keep=max_to_keep, create=True,
        enable_async_checkpointing=async_save)
    self._manager = ocp.CheckpointManager(
        self.directory, options=options,
        item_handlers={"state": ocp.PyTreeCheckpointHandler(type_handler_registry=_registry()),
                       "meta": ocp.JsonCheckpointHandler()})

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def all_steps(self) -> list[int]:
    return list(self._manager.all_steps())

  def save(self, step: int, state: Any, meta: dict[str, Any]) -> None:
    """Starts an (async) save of `state` and `meta` as checkpoint `step`."""
    self._manager.save(step, args=ocp.args.Composite(
        state=ocp.args.PyTreeSave(state), meta=ocp.args.JsonSave(meta)))

  def restore(self, target: Any, step: int | None = None) -> tuple[Any, dict[str, Any]]:
    """Restores checkpoint `step` (default latest) with `target`'s structure and shardings
    (`target`: arrays, or jax.ShapeDtypeStruct with or without a sharding).

    The stored device layout does not matter: a checkpoint written on 8 devices
    restores onto 1 and vice versa (NumPy leaves of `target` land on one device).

    Raises UserError naming the checkpoint when it is unreadable or does not
    match `target` (another config, another model).
    """
    step = self.latest_step() if step is None else step
    if step is None:
      raise UserError(f"no checkpoint in {self.directory}")
    where = self.directory / str(step)
    try:
      stored = self._manager.item_metadata(step)["state"]
      if stored is None:
        raise ValueError("no array metadata")
    except Exception as e:  # orbax raises many types for a damaged tree.
      raise UserError(f"checkpoint {where} is unreadable ({_short(e)}): move it aside to "
                      "resume from an earlier one, or use a new --workdir") from e
    _check_compatible(stored, target, where)
    abstract = jax.tree.map(_abstract, target)
    try:
      restored = self._manager.restore(step, args=ocp.args.Composite(
          state=ocp.args.PyTreeRestore(
              abstract, restore_args=ocp.checkpoint_utils.construct_restore_args(abstract)),
          meta=ocp.args.JsonRestore()))
    except Exception as e:
      raise UserError(f"checkpoint {where} is unreadable ({_short(e)}): move it aside to "
                      "resume from an earlier one, or use a new --workdir") from e
    return restored["state"], restored["meta"]

  def wait(self) -> None:
    """Blocks until pending async saves are on disk."""
    self._manager.wait_until_finished()

  def close(self) -> None:
    self._manager.wait_until_finished()
    self._manager.close()


def _registry() -> ocp.type_handlers.TypeHandlerRegistry:
  """orbax's default type handlers, except that on CPU devices a replicated array is written
  from one replica. orbax's replica-parallel save (its default off GPU) has each of R replicas
  write 1/R of the array, through one compiled slice per array shape and device: on CPU
  devices, which share the host's memory, that is only cost (216 compiles, 6 s, at the first
  save of an 8-device FashionGAN run); on GPU orbax already turns it off, on TPU it stays."""
  th = ocp.type_handlers
  on_cpu = jax.default_backend() == "cpu"
  return th.create_type_handler_registry(
      (int, th.ScalarHandler()), (float, th.ScalarHandler()), (bytes, th.ScalarHandler()),
      (np.number, th.ScalarHandler()), (np.ndarray, th.NumpyHandler()),
      (jax.Array, th.ArrayHandler(use_replica_parallel=False if on_cpu else None,
                                  array_metadata_store=array_metadata_store.Store())),
      (str, th.StringHandler()))


def _abstract(x: Any) -> Any:
  """Shape, dtype and sharding to restore a leaf of the target with: a jax.Array's or a
  ShapeDtypeStruct's own; host values and shapes without a sharding land on this
  process's first device."""
  if isinstance(x, (jax.Array, jax.ShapeDtypeStruct)) and x.sharding is not None:
    return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding)
  if not isinstance(x, jax.ShapeDtypeStruct):
    x = np.asarray(x)
  return jax.ShapeDtypeStruct(x.shape, x.dtype,
                              sharding=jax.sharding.SingleDeviceSharding(jax.local_devices()[0]))


def _check_compatible(stored: Any, target: Any, where: pathlib.Path) -> None:
  """Raises UserError if the stored tree's paths, shapes or dtypes differ from `target`'s."""
  def describe(tree):
    flat, _ = jax.tree_util.tree_flatten_with_path(tree)
    return {"/".join(map(_key_name, path)): (tuple(leaf.shape), np.dtype(leaf.dtype).name)
            for path, leaf in flat}
  try:
    have = describe(stored)
  except Exception as e:
    raise UserError(f"checkpoint {where} is unreadable ({_short(e)}): move it aside to "
                    "resume from an earlier one, or use a new --workdir") from e
  want = describe(jax.tree.map(_abstract, target))
  if have == want:
    return
  missing = sorted(set(want) - set(have))
  extra = sorted(set(have) - set(want))
  changed = sorted(k for k in set(want) & set(have) if want[k] != have[k])
  detail = (f"missing {missing[0]}" if missing else f"unexpected {extra[0]}" if extra
            else f"{changed[0]} is {have[changed[0]]}, the config needs {want[changed[0]]}")
  raise UserError(f"checkpoint {where} does not match this config ({detail}; "
                  f"{len(missing)} missing, {len(extra)} unexpected, {len(changed)} changed): "
                  "use the config it was made with, or a new --workdir")


def _key_name(key: Any) -> str:
  """One path entry as stored by orbax, whatever the container (dict, namedtuple, list)."""
  for attr in ("key", "name", "idx"):
    if hasattr(key, attr):
      return str(getattr(key, attr))
  return str(key)


def _short(e: Exception) -> str:
  text = f"{type(e).__name__}: {e}".splitlines()[0]
  return text[:200]
