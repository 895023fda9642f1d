"""GFLOP/s of three conv2d lowerings, float32 and bfloat16, forward and forward+backward.

Shape: 3x3 conv 512->512 at 32x32, batch 16 (the ProGAN 32x32 block). FLOPs are
counted as 2*N*H*W*Cin*Cout*k*k forward and three times that forward+backward
(gradients of input and kernel), for "winograd" too (its speed in the direct
convolution's terms, though it does 2.25x fewer multiply-adds). Prints one JSON line with
GFLOP/s (wall clock) and GFLOP per CPU-second of this process (less sensitive to other
processes sharing the CPU; the load averages in the line tell whether they did),
after the CPU's model and flags (`common.machine_description`).

  python -m benchmarks.conv_lowering [--repeats 5]
"""
import json
import os

import jax
import jax.numpy as jnp

from benchmarks import common
from readingnotes_jax.nn.conv import conv2d


def main() -> None:
  parser = common.parser(__doc__.splitlines()[0])
  parser.add_argument("--repeats", type=common.positive_int, default=5)
  parser.add_argument("--batch", type=common.positive_int, default=16)
  parser.add_argument("--size", type=common.positive_int, default=32)
  parser.add_argument("--channels", type=common.positive_int, default=512)
  args = parser.parse_args()
  n, s, c, k = args.batch, args.size, args.channels, 3
  flops = 2 * n * s * s * c * c * k * k
  kx, kw = jax.random.split(jax.random.key(0))
  result = {**common.machine_description(), "shape": [n, s, s, c, c, k],
            "gflop_fwd": flops / 1e9}
  for dtype in ("float32", "bfloat16"):
    x = jax.random.normal(kx, (n, s, s, c), dtype)
    w = jax.random.normal(kw, (k, k, c, c), dtype) * 0.02
    for lowering in ("xla", "matmul", "winograd"):
      fwd = jax.jit(lambda x, w, lowering=lowering: conv2d(x, w, lowering=lowering))
      loss = lambda x, w, lowering=lowering: jnp.sum(
          conv2d(x, w, lowering=lowering).astype(jnp.float32))
      fwd_bwd = jax.jit(jax.value_and_grad(loss, argnums=(0, 1)))
      for name, fn, work in (("fwd", fwd, flops), ("fwd_bwd", fwd_bwd, 3 * flops)):
        wall, cpu = common.seconds(fn, x, w, repeats=args.repeats)
        result[f"{lowering}_{dtype}_{name}_gflops"] = round(work / wall / 1e9, 1)
        result[f"{lowering}_{dtype}_{name}_gflop_per_cpu_s"] = round(work / cpu / 1e9, 1)
  result["load_average_after"] = os.getloadavg()[0]
  print(json.dumps(result))


if __name__ == "__main__":
  common.run(main)
