"""Seconds of the correlation layer's methods, forward and forward+backward (D&T res4 shape).

Shape: [1, 38, 63, 1024] (res4 of a 600 x 1000 image), max_displacement 8, strides 1/1,
padding 8: 289 output channels. Useful work: 2 * N * H_out * W_out * K^2 * C flops
forward, three times that forward+backward. Prints one JSON line with the best wall and
process-CPU seconds of each method (CPU seconds are less sensitive to other processes on
a shared machine; the load averages tell whether there were any), the plain PyTorch loop
(shift, multiply, mean over channels, once per displacement: `torch_detect_track.correlation`)
and the peer `spatial-correlation-sampler` (PyTorch, raw sums) when it is importable; the
line starts with the CPU's model and flags (`common.machine_description`).

The layer's limit on this machine, measured in the same run: its FLOPs at the rate of one
large float32 matmul (XLA), or its bytes (two inputs read, the output written; forward+
backward: the output's gradient read and two input gradients written as well) at the rate
of an array copy, whichever is slower. On a GPU the matmul is 8192^3 at JAX's default
precision (TF32 on NVIDIA since Ampere, as the layer's own float32 products), and the PyTorch
loop runs on CUDA, each timed call waiting for it.

  python -m benchmarks.correlation [--repeats 3] [--methods matmul,conv]
"""
import json
import os

import jax
import jax.numpy as jnp

from benchmarks import common
from readingnotes_jax.nn import correlation as corr


def _peer_seconds(shape, d, s1, s2, pad, repeats):
  """spatial-correlation-sampler on the same shape, or None when it is not installed."""
  try:
    import torch
    from spatial_correlation_sampler import SpatialCorrelationSampler
  except ImportError:
    return None
  n, h, w, c = shape
  sampler = SpatialCorrelationSampler(kernel_size=1, patch_size=2 * (d // s2) + 1,
                                      stride=s1, padding=pad - d, dilation_patch=s2)
  a = torch.randn(n, c, h, w, requires_grad=True)
  b = torch.randn(n, c, h, w, requires_grad=True)
  fwd = lambda: sampler(a, b)
  fwd_bwd = lambda: sampler(a, b).sin().sum().backward()
  return {name: common.seconds(fn, repeats=repeats)
          for name, fn in (("fwd", fwd), ("fwd_bwd", fwd_bwd))}


def _torch_loop_seconds(shape, d, s1, s2, pad, repeats):
  """The plain PyTorch loop (benchmarks/torch_detect_track.py), strides equal, padding d."""
  import torch  # pylint: disable=import-outside-toplevel
  from benchmarks import torch_detect_track  # pylint: disable=import-outside-toplevel
  if s1 != s2 or pad != d:
    return None
  n, h, w, c = shape
  device = common.torch_device()
  a = torch.randn(n, c, h, w, device=device, requires_grad=True)
  b = torch.randn(n, c, h, w, device=device, requires_grad=True)
  fwd = lambda: torch_detect_track.correlation(a, b, d, s1)
  fwd_bwd = lambda: torch_detect_track.correlation(a, b, d, s1).sin().sum().backward()
  return {name: common.seconds(common.torch_synced(fn, device), repeats=repeats)
          for name, fn in (("fwd", fwd), ("fwd_bwd", fwd_bwd))}


def _machine_rates(repeats):
  """(float32 matmul FLOP/s, copy bytes/s) measured with XLA on this machine."""
  n = 8192 if jax.default_backend() == "gpu" else 2048
  a = jnp.ones((n, n), jnp.float32)
  matmul = jax.jit(lambda x: x @ x)
  flop_rate = 2 * n ** 3 / common.seconds(matmul, a, repeats=repeats)[0]
  big = jnp.ones((64 * 2 ** 20,), jnp.float32)  # 256 MB, beyond the caches
  copy = jax.jit(lambda x: x + 1)
  byte_rate = 2 * big.size * 4 / common.seconds(copy, big, repeats=repeats)[0]
  return flop_rate, byte_rate


def main() -> None:
  parser = common.parser(__doc__.splitlines()[0])
  parser.add_argument("--repeats", type=common.positive_int, default=3)
  parser.add_argument("--shape", default="1,38,63,1024")
  parser.add_argument("--config", default="8,1,1,8",
                      help="max_displacement,stride1,stride2,padding (res3: 8,2,2,8)")
  parser.add_argument("--methods", default=",".join(corr.METHODS))
  args = parser.parse_args()
  unknown = sorted(set(args.methods.split(",")) - set(corr.METHODS))
  if unknown:
    parser.error(f"--methods: unknown {unknown}: use some of {list(corr.METHODS)}")
  shape = tuple(int(v) for v in args.shape.split(","))
  d, s1, s2, pad = (int(v) for v in args.config.split(","))
  n, h, w, c = shape
  k = 2 * (d // s2) + 1
  out_h, out_w = (corr.correlation_output_size(v, d, s1, pad) for v in (h, w))
  flops = 2 * n * out_h * out_w * k * k * c
  result = {**common.machine_description(), "shape": list(shape), "config": [d, s1, s2, pad],
            "gflop_fwd": flops / 1e9}
  kt, ktau = jax.random.split(jax.random.key(0))
  x_t, x_tau = jax.random.normal(kt, shape), jax.random.normal(ktau, shape)
  for method in args.methods.split(","):
    fwd = jax.jit(lambda a, b, m=method: corr.correlation(a, b, d, s1, s2, pad, method=m))
    loss = lambda a, b, m=method: jnp.sum(jnp.sin(corr.correlation(a, b, d, s1, s2, pad,
                                                                   method=m)))
    fwd_bwd = jax.jit(jax.value_and_grad(loss, argnums=(0, 1)))
    for name, fn, work in (("fwd", fwd, flops), ("fwd_bwd", fwd_bwd, 3 * flops)):
      wall, cpu = common.seconds(fn, x_t, x_tau, repeats=args.repeats)
      result[f"{method}_{name}_s"] = round(wall, 6)
      result[f"{method}_{name}_cpu_s"] = round(cpu, 6)
      result[f"{method}_{name}_gflops"] = round(work / wall / 1e9, 2)
  flop_rate, byte_rate = _machine_rates(args.repeats)
  inputs, outputs = 2 * n * h * w * c * 4, n * out_h * out_w * k * k * 4
  for name, work, moved in (("fwd", flops, inputs + outputs),
                            ("fwd_bwd", 3 * flops, 2 * (inputs + outputs))):
    limit = max(work / flop_rate, moved / byte_rate)
    result[f"limit_{name}_s"] = round(limit, 7)
    for method in args.methods.split(","):
      result[f"{method}_{name}_over_limit"] = round(result[f"{method}_{name}_s"] / limit, 2)
  result["matmul_gflops"], result["copy_gbytes_per_s"] = round(flop_rate / 1e9, 1), round(
      byte_rate / 1e9, 1)
  loop = _torch_loop_seconds(shape, d, s1, s2, pad, args.repeats)
  if loop is not None:
    for name, (wall, cpu) in loop.items():
      result[f"torch_loop_{name}_s"] = round(wall, 6)
      for method in args.methods.split(","):
        result[f"{method}_{name}_speedup_vs_torch_loop"] = round(
            wall / result[f"{method}_{name}_s"], 2)
  peer = _peer_seconds(shape, d, s1, s2, pad, args.repeats)
  if peer is None:
    result["peer"] = "spatial-correlation-sampler not importable"
  else:
    for name, (wall, cpu) in peer.items():
      result[f"peer_{name}_s"], result[f"peer_{name}_cpu_s"] = round(wall, 6), round(cpu, 6)
      for method in args.methods.split(","):
        result[f"{method}_{name}_speedup_vs_peer"] = round(wall / result[f"{method}_{name}_s"], 2)
  result["load_average_after"] = os.getloadavg()[0]
  print(json.dumps(result))


if __name__ == "__main__":
  common.run(main)
