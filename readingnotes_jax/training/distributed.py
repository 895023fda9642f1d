"""Multi-process (multi-host) start-up: JAX's multi-controller runtime.

One process per host (Cloud TPU pod slice, GPU cluster): every process runs
the same `experiments.train` command; `initialize` connects them before the
first computation. Afterwards `jax.devices()` lists every process's devices,
the data mesh spans them all, each process feeds its slice of the global batch
(`mesh.shard_batch`), orbax writes one checkpoint together, and process 0
alone writes metrics and figures (`runner.is_writer`).
"""
import os

import jax

from readingnotes_jax.errors import UserError


def cluster_launch() -> str | None:
  """The multi-process launcher JAX detects by itself, if this process is one of several:
  "slurm" (srun with > 1 task), "ompi" (mpirun with > 1 rank) or "tpu" (a multi-host
  Cloud TPU slice); None for a single process."""
  env = os.environ
  if "SLURM_JOB_ID" in env and int(env.get("SLURM_NTASKS", "1")) > 1:
    return "slurm"
  if int(env.get("OMPI_COMM_WORLD_SIZE", "1")) > 1:
    return "ompi"
  if "," in env.get("TPU_WORKER_HOSTNAMES", ""):
    return "tpu"
  return None


def initialize(coordinator_address: str | None = None, num_processes: int | None = None,
               process_id: int | None = None) -> bool:
  """Starts `jax.distributed` for an explicit launch (all three arguments) or a detected
  cluster launch; returns whether this is a multi-process run. Call before any
  computation. CPU processes exchange collectives through gloo."""
  explicit = (coordinator_address, num_processes, process_id)
  if any(v is not None for v in explicit):
    if any(v is None for v in explicit):
      raise UserError("--coordinator_address, --num_processes and --process_id go together: "
                      "give all three (the same address and count to every process)")
    if not 0 <= process_id < num_processes:
      raise UserError(f"--process_id={process_id} must be in [0, --num_processes="
                      f"{num_processes})")
  elif cluster_launch() is None:
    return False
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  jax.distributed.initialize(coordinator_address, num_processes, process_id)
  return True
