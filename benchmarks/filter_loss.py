"""Interpretable CNNs' `paper` filter loss, forward+backward, against the ports' explicit formula.

Shape: VGG-16's top conv layer, 512 filters, 14 x 14 maps, batch 32 (the release's VGG-16
batch). Ours: `interpretable_cnn.loss.filter_loss(x, None, "paper")` under `jax.jit(
jax.value_and_grad(...))`: the scores tr(x . T) of all templates as one contraction with the
template bank, then log-sum-exps over a [B, C, n^2 + 1] array. Peer: `explicit_filter_loss`,
PyTorch, the formula as ducminhkhoi/InterpretableCNN writes it (model.py,
`Model.compute_local_loss`): every map times every template materialized as a
C x B x (n^2 + 1) x n^2 tensor (2.5 GB in float32 here), summed to tr(x . T), exponentiated,
normalized over the batch, then the KL sums of p(x|T) against p(x), summed over the filters;
NCHW maps (the port's layout), the paper's templates (`paper_templates`; the port's tau is
0.5 / n^2, the paper's 0.5 / n). Input: scale * relu(N(0, 1)) maps from a fixed seed.

One JSON line (the CPU's model and flags first, `common.machine_description`) with:
- seconds: best wall and process-CPU seconds of one forward+backward call of each after a
  warm-up call (`common.seconds`), and peer / ours;
- peak memory, the same way for both sides: each alone in a fresh child process (Linux);
  after one warm-up call (ours: compiles) and malloc_trim, the peak RSS (VmHWM) is reset
  through /proc/self/clear_refs; the peak RSS during one more call minus the RSS just before
  it (both sides hold their input before it; the gradient, as large, is allocated during
  it). Also XLA's memory analysis of our compiled call (argument + output + temp bytes) and
  the size of the peer's materialized product;
- values: loss and gradient of both in float32, and of a float64 reference (the same formula
  in torch float64 with tr(x . T) as a contraction, nothing materialized): relative errors,
  loss |a - b| / |b| and gradient max |a - b| / max |b|.
Goals (issue 12), checked in `goals_met`: >= 5x less peak RSS, >= 2x less wall time, ours and
the peer equal to 1e-5 relative (loss and gradient).

  python -m benchmarks.filter_loss [--repeats 3] [--batch 32] [--size 14] [--filters 512]
      [--scale 1.0]
"""
import argparse
import ctypes
import gc
import json
import os
import pathlib
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import torch

from benchmarks import common
from readingnotes_jax.interpretable_cnn import loss as icnn_loss

PAPER_BETA = 4.0  # section 3
GOALS = {"memory_ratio": 5.0, "speedup": 2.0, "relative_error": 1e-5}
MIB = 2**20
PAGE = 4096  # RSS is counted in pages


def paper_templates(n: int, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
  """The paper's templates [n^2 + 1, n, n] (T_mu for row-major mu, then T^-) and p(T) [n^2 + 1].

  Section 3: T_mu(i, j) = tau max(1 - beta ||(i, j) - mu||_1 / n, -1), T^- = -tau,
  tau = 0.5 / n, beta = 4; p(T_mu) = alpha / n^2, p(T^-) = 1 - alpha, alpha = n^2 / (1 + n^2).
  """
  coords = torch.arange(n, dtype=torch.float64)
  mu_row, mu_col = coords.repeat_interleave(n), coords.repeat(n)
  distance = ((coords[None, :, None] - mu_row[:, None, None]).abs()
              + (coords[None, None, :] - mu_col[:, None, None]).abs())
  tau = 0.5 / n
  positive = tau * torch.clamp(1 - PAPER_BETA * distance / n, min=-1)
  bank = torch.cat([positive, torch.full((1, n, n), -tau, dtype=torch.float64)])
  alpha = n * n / (1 + n * n)
  prior = torch.tensor([alpha / (n * n)] * (n * n) + [1 - alpha], dtype=torch.float64)
  return bank.to(dtype), prior.to(dtype)


def explicit_filter_loss(x: torch.Tensor, bank: torch.Tensor, prior: torch.Tensor,
                         materialize: bool = True) -> torch.Tensor:
  """-MI(X; T) summed over the filters, as the explicit ports compute it; x is [B, C, n, n].

  p(x|T) = exp(tr(x . T)) / sum over the batch, p(x) = sum_T p(T) p(x|T),
  loss = -sum_T p(T) sum_x p(x|T) log(p(x|T) / p(x)) per filter (ducminhkhoi/
  InterpretableCNN, model.py `compute_local_loss`). `materialize`: tr(x . T) from the
  C x B x (n^2 + 1) x n x n product, as the port; otherwise as a contraction.
  """
  maps = x.transpose(0, 1)  # [C, B, n, n]
  if materialize:
    scores = (maps[:, :, None] * bank[None, None]).sum(-1).sum(-1)
  else:
    scores = torch.einsum("cbij,kij->cbk", maps, bank)
  likelihood = scores.exp()
  p_x_given_t = likelihood / likelihood.sum(1, keepdim=True)  # [C, B, K]
  p_x = (prior * p_x_given_t).sum(-1, keepdim=True)
  divergence = (p_x_given_t * torch.log(p_x_given_t / p_x)).sum(1)  # [C, K]
  return -(prior * divergence).sum()


def feature_maps(batch: int, size: int, filters: int, scale: float) -> np.ndarray:
  """scale * relu(N(0, 1)), [B, n, n, C] float32, seed 0."""
  normal = np.random.default_rng(0).standard_normal((batch, size, size, filters))
  return (scale * np.maximum(normal, 0.0)).astype(np.float32)


def ours(x: np.ndarray):
  """(call, its argument): our loss and gradient, jitted, on NHWC maps."""
  step = jax.jit(jax.value_and_grad(lambda v: icnn_loss.filter_loss(v, None, "paper")))
  return step, jnp.asarray(x)


def peer(x: np.ndarray):
  """(call, its argument): the explicit loss and its gradient in PyTorch, on NCHW maps."""
  bank, prior = paper_templates(x.shape[1], torch.float32)

  def step(maps):
    value = explicit_filter_loss(maps, bank, prior)
    return value.detach(), torch.autograd.grad(value, maps)[0]

  return step, torch.from_numpy(x.transpose(0, 3, 1, 2).copy()).requires_grad_(True)


def _status_bytes(field: str) -> int:
  for line in pathlib.Path("/proc/self/status").read_text().splitlines():
    if line.startswith(field + ":"):
      return int(line.split()[1]) * 1024  # kB
  raise RuntimeError(f"/proc/self/status has no {field}")


def peak_rss_of_call(side: str, x: np.ndarray) -> int:
  """Bytes of peak RSS above the RSS before one call of `side`, after a warm-up call."""
  step, arg = {"ours": ours, "peer": peer}[side](x)
  jax.block_until_ready(step(arg))
  gc.collect()
  ctypes.CDLL("libc.so.6").malloc_trim(0)
  pathlib.Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS
  before = _status_bytes("VmRSS")
  jax.block_until_ready(step(arg))
  return _status_bytes("VmHWM") - before


def _child_peak_rss(side: str, args) -> int:
  """`peak_rss_of_call` in a fresh Python process."""
  command = [sys.executable, "-m", "benchmarks.filter_loss", "--rss_child", side,
             "--batch", str(args.batch), "--size", str(args.size),
             "--filters", str(args.filters), "--scale", str(args.scale)]
  done = subprocess.run(command, capture_output=True, text=True,
                        cwd=pathlib.Path(__file__).resolve().parents[1])
  if done.returncode:
    raise RuntimeError(f"{' '.join(command)} failed:\n{done.stderr[-3000:]}")
  return json.loads(done.stdout.strip().splitlines()[-1])["peak_rss_bytes"]


def _relative(a, b) -> float:
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  return float(np.max(np.abs(a - b)) / np.max(np.abs(b)))


def main() -> None:
  parser = common.parser(__doc__.splitlines()[0])
  parser.add_argument("--repeats", type=common.positive_int, default=3)
  parser.add_argument("--batch", type=common.positive_int, default=32)
  parser.add_argument("--size", type=common.positive_int, default=14)
  parser.add_argument("--filters", type=common.positive_int, default=512)
  parser.add_argument("--scale", type=float, default=1.0)
  parser.add_argument("--rss_child", choices=("ours", "peer"), help=argparse.SUPPRESS)
  args = parser.parse_args()
  b, n, c = args.batch, args.size, args.filters
  x = feature_maps(b, n, c, args.scale)
  if args.rss_child:
    print(json.dumps({"peak_rss_bytes": peak_rss_of_call(args.rss_child, x)}))
    return

  result = {**common.machine_description(), "jax": jax.__version__, "torch": torch.__version__,
            "torch_threads": torch.get_num_threads(),
            "xla_flags": os.environ.get("XLA_FLAGS", ""), "shape_bhwc": [b, n, n, c],
            "scale": args.scale, "repeats": args.repeats}
  our_step, our_x = ours(x)
  peer_step, peer_x = peer(x)
  for side, step, arg in (("ours", our_step, our_x), ("peer", peer_step, peer_x)):
    wall, cpu = common.seconds(step, arg, repeats=args.repeats)
    result[f"{side}_s"], result[f"{side}_cpu_s"] = round(wall, 4), round(cpu, 4)
  result["speedup"] = round(result["peer_s"] / result["ours_s"], 2)
  result["speedup_cpu"] = round(result["peer_cpu_s"] / result["ours_cpu_s"], 2)

  memory = our_step.lower(our_x).compile().memory_analysis()
  xla_bytes = {part: getattr(memory, f"{part}_size_in_bytes")
               for part in ("argument", "output", "temp")}
  xla_bytes["total"] = sum(xla_bytes.values())
  result["ours_xla_mib"] = {part: round(v / MIB, 2) for part, v in xla_bytes.items()}
  result["peer_product_mib"] = round(c * b * (n * n + 1) * n * n * 4 / MIB, 1)
  rss = {side: _child_peak_rss(side, args) for side in ("ours", "peer")}
  for side, peak in rss.items():
    result[f"{side}_peak_rss_mib"] = round(peak / MIB, 1)
  result["memory_ratio"] = round(rss["peer"] / max(rss["ours"], PAGE), 1)

  our_loss, our_grad = our_step(our_x)
  peer_loss, peer_grad = peer_step(peer_x)
  our_grad = np.asarray(our_grad).transpose(0, 3, 1, 2)
  bank, prior = paper_templates(n, torch.float64)
  x64 = peer_x.detach().double().requires_grad_(True)
  loss64 = explicit_filter_loss(x64, bank, prior, materialize=False)
  grad64 = torch.autograd.grad(loss64, x64)[0].numpy()
  loss64 = loss64.detach()
  result["loss"] = {"ours": float(our_loss), "peer": float(peer_loss), "float64": float(loss64)}
  for name, (loss_a, grad_a), (loss_b, grad_b) in (
      ("ours_vs_peer", (our_loss, our_grad), (peer_loss, peer_grad)),
      ("ours_vs_float64", (our_loss, our_grad), (loss64, grad64)),
      ("peer_vs_float64", (peer_loss, peer_grad), (loss64, grad64))):
    result[f"loss_error_{name}"] = float(f"{_relative(loss_a, loss_b):.2e}")
    result[f"grad_error_{name}"] = float(f"{_relative(grad_a, grad_b):.2e}")
  result["goals_met"] = {
      "memory": result["memory_ratio"] >= GOALS["memory_ratio"],
      "speed": result["speedup"] >= GOALS["speedup"],
      "values": max(result["loss_error_ours_vs_peer"],
                    result["grad_error_ours_vs_peer"]) <= GOALS["relative_error"]}
  result["load_average_after"] = os.getloadavg()[0]
  print(json.dumps(result))


if __name__ == "__main__":
  common.run(main)
