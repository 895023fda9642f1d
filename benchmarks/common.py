"""What the benchmarks share: the machine's description, a best-of-N timer, and their
command line (`parser`, `positive_int`, `run`: bad flags are one line on stderr, exit code 2)."""
import argparse
import os
import statistics
import sys
import time

import jax

from readingnotes_jax import errors
from readingnotes_jax.errors import UserError
from readingnotes_jax.nn import precision


def parser(description: str) -> errors.ArgumentParser:
  """A benchmark's argument parser (its bad flags raise UserError, for `run`)."""
  return errors.ArgumentParser(description=description)


def positive_int(text: str) -> int:
  """An argparse type: an integer of at least 1."""
  value = int(text)
  if value < 1:
    raise argparse.ArgumentTypeError(f"{text} is not a positive integer")
  return value


def run(main) -> None:
  """Runs `main()`; a UserError it raises (bad flags: `errors.ArgumentParser`'s, or found while
  setting up) is one line on stderr and exit code 2."""
  try:
    main()
  except UserError as e:
    print(f"{os.path.basename(sys.argv[0])}: error: {e}", file=sys.stderr)
    sys.exit(2)


def machine_description() -> dict:
  """JAX's device kind, the CPU (`precision.describe_cpu`) and the 1-minute load average now."""
  return {"device": jax.devices()[0].device_kind, **precision.describe_cpu(),
          "load_average_before": os.getloadavg()[0]}


def torch_device():
  """The peer's PyTorch device: CUDA when JAX's backend is a GPU, else the CPU."""
  import torch  # pylint: disable=import-outside-toplevel
  return torch.device("cuda" if jax.default_backend() == "gpu" else "cpu")


def torch_synced(fn, device):
  """`fn` followed by a wait for `device` (PyTorch's CUDA calls return before they finish)."""
  import torch  # pylint: disable=import-outside-toplevel
  if device.type != "cuda":
    return fn

  def run(*args):
    out = fn(*args)
    torch.cuda.synchronize()
    return out

  return run


def seconds(fn, *args, repeats: int) -> tuple[float, float]:
  """Best wall-clock and best process-CPU seconds of one call, after a warm-up call.

  `fn` may return JAX arrays (waited for) or anything else (PyTorch CPU tensors are ready
  on return).
  """
  jax.block_until_ready(fn(*args))
  wall = cpu = float("inf")
  for _ in range(repeats):
    start, start_cpu = time.perf_counter(), time.process_time()
    jax.block_until_ready(fn(*args))
    wall = min(wall, time.perf_counter() - start)
    cpu = min(cpu, time.process_time() - start_cpu)
  return wall, cpu


def alternating_medians(runs: dict, rounds: int) -> dict[str, float]:
  """Median seconds of each `runs[name]()` over `rounds` rounds after one warm-up call each,
  the order reversed every other round (so neither side always runs on a warm cache)."""
  def timed(fn) -> float:
    start = time.perf_counter()
    jax.block_until_ready(fn())
    return time.perf_counter() - start

  for fn in runs.values():
    timed(fn)  # warm-up (compiles ours)
  seconds = {name: [] for name in runs}
  for r in range(rounds):
    for name in (list(runs) if r % 2 == 0 else list(runs)[::-1]):
      seconds[name].append(timed(runs[name]))
  return {name: statistics.median(s) for name, s in seconds.items()}
