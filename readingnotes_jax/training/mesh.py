"""Data-parallel placement: a 1-D device mesh, batches sharded on it, state replicated.

Train steps are plain `jax.jit` functions; placing their inputs with these
shardings makes XLA partition them over the mesh (batch statistics and
gradient means are then global: synchronized BatchNorm for free). Works the
same on 1 device, on `--xla_force_host_platform_device_count=8` CPU devices and
on multi-host TPU pods (each process passes its own slice of the global batch).
"""
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from readingnotes_jax.errors import UserError

DATA_AXIS = "data"


def make_data_mesh(num_devices: int | None = None) -> Mesh:
  """A mesh over the first `num_devices` devices (default all) with one axis, `data`."""
  devices = jax.devices()
  if num_devices is not None:
    if not 1 <= num_devices <= len(devices):
      raise UserError(f"num_devices={num_devices} but {len(devices)} devices are visible")
    devices = devices[:num_devices]
  return Mesh(np.asarray(devices), (DATA_AXIS,))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, PartitionSpec())


def batch_sharded(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, PartitionSpec(DATA_AXIS))


def replicate(tree: Any, mesh: Mesh) -> Any:
  """Places every leaf of `tree` on all devices of `mesh`."""
  return jax.device_put(tree, replicated(mesh))


def shard_batch(batch: Any, mesh: Mesh) -> Any:
  """Turns this process's slice of the global batch (NumPy leaves) into global arrays.

  The leading dimension of each leaf is this process's share of the global
  batch; the global batch must split evenly over the mesh's devices.
  """
  sharding = batch_sharded(mesh)

  def put(x):
    global_size = x.shape[0] * jax.process_count()
    if global_size % mesh.size:
      raise UserError(f"global batch {global_size} does not split over {mesh.size} devices: "
                      f"choose a batch size divisible by {mesh.size}")
    return jax.make_array_from_process_local_data(sharding, np.asarray(x))

  return jax.tree.map(put, batch)
