"""GFLOP/s of the two conv2d lowerings, float32 and bfloat16, forward and forward+backward.

Shape: 3x3 conv 512->512 at 32x32, batch 16 (the ProGAN 32x32 block). FLOPs are
counted as 2*N*H*W*Cin*Cout*k*k forward and three times that forward+backward
(gradients of input and kernel). Prints one JSON line with GFLOP/s (wall
clock) and GFLOP per CPU-second of this process (less sensitive to other
processes sharing the CPU; the load averages in the line tell whether they did).

  python -m benchmarks.conv_lowering [--repeats 5]
"""
import argparse
import json
import os
import time

import jax
import jax.numpy as jnp

from readingnotes_jax.nn.conv import conv2d


def _seconds(fn, *args, repeats: int) -> tuple[float, float]:
  """Best wall-clock and best process CPU seconds of one call."""
  jax.block_until_ready(fn(*args))  # compile and warm up
  wall = cpu = float("inf")
  for _ in range(repeats):
    start, start_cpu = time.perf_counter(), time.process_time()
    jax.block_until_ready(fn(*args))
    wall = min(wall, time.perf_counter() - start)
    cpu = min(cpu, time.process_time() - start_cpu)
  return wall, cpu


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--repeats", type=int, default=5)
  parser.add_argument("--batch", type=int, default=16)
  parser.add_argument("--size", type=int, default=32)
  parser.add_argument("--channels", type=int, default=512)
  args = parser.parse_args()
  n, s, c, k = args.batch, args.size, args.channels, 3
  flops = 2 * n * s * s * c * c * k * k
  kx, kw = jax.random.split(jax.random.key(0))
  result = {"device": jax.devices()[0].device_kind, "shape": [n, s, s, c, c, k],
            "gflop_fwd": flops / 1e9, "load_average_before": os.getloadavg()[0]}
  for dtype in ("float32", "bfloat16"):
    x = jax.random.normal(kx, (n, s, s, c), dtype)
    w = jax.random.normal(kw, (k, k, c, c), dtype) * 0.02
    for lowering in ("xla", "matmul"):
      fwd = jax.jit(lambda x, w, lowering=lowering: conv2d(x, w, lowering=lowering))
      loss = lambda x, w, lowering=lowering: jnp.sum(
          conv2d(x, w, lowering=lowering).astype(jnp.float32))
      fwd_bwd = jax.jit(jax.value_and_grad(loss, argnums=(0, 1)))
      for name, fn, work in (("fwd", fwd, flops), ("fwd_bwd", fwd_bwd, 3 * flops)):
        wall, cpu = _seconds(fn, x, w, repeats=args.repeats)
        result[f"{lowering}_{dtype}_{name}_gflops"] = round(work / wall / 1e9, 1)
        result[f"{lowering}_{dtype}_{name}_gflop_per_cpu_s"] = round(work / cpu / 1e9, 1)
  result["load_average_after"] = os.getloadavg()[0]
  print(json.dumps(result))


if __name__ == "__main__":
  main()
