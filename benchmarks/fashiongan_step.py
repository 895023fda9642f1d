"""FashionGAN train steps, G_shape / D_shape, G_image / D_image (ih1's encoder-decoder) and the
U-Net G_image / patch D_image: ours (JAX) against the same networks in PyTorch
(benchmarks/torch_fashiongan.py), same run.

One step is what `fashiongan.train.gan_step` does: G forward (training-mode BatchNorm), the D
step on (real, its condition), (another record's real and condition, this text: "wrong") and
the detached fake, loss real + 0.1 wrong + 0.9 fake (BCE on logits), Adam(2e-4, 0.5, 0.999);
then the G step: BCE(D(fake), 1) with the updated D + 100 x the supervised term (pixel-wise
cross-entropy to the true map for G_shape, L1 to the photo for G_image). The design coding d
is an input (the frozen coder's output; its RNN is a few microseconds here). The peer does
the same in PyTorch's usual way: one G forward whose graph serves the G step. Our variants:
float32 and bfloat16 compute (parameters and Adam state float32; bfloat16 runs as float32 on
a CPU without bfloat16 instructions, as training does: `nn.precision.compute_dtype`); the
peer float32 and bfloat16 autocast (its networks' forward passes under `torch.autocast`, the
losses in float32), which says what bfloat16 gives the same networks in PyTorch on this CPU.

Timed in rounds after one warm-up call each, the order reversed every other round; the
median seconds per step give ratios peer float32 / ours (> 1: we are faster; goals: >= 1.0
float32, >= 1.5 bfloat16 on CPUs with bfloat16 instructions) and
`ratio_bfloat16_vs_torch_autocast`, the peer's bfloat16 autocast over ours. Defaults are
`ccp_fashiongan:runlocal`'s sizes (64 px, width 16, batch 16); `--size 128 --features 64
--batch 4` is the release's.
On a GPU the peer runs on CUDA too (cuDNN's TF32 convolutions on, PyTorch's default, as JAX's
default precision; `loss_g.item()` waits for each step). Prints one JSON line with the CPU
model and flags and each network's parameter count (ours and the peer's, which must agree).

  python -m benchmarks.fashiongan_step [--rounds 5] [--size 64] [--features 16] [--batch 16]
      [--threads N]
"""
import functools
import json
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import torch

from benchmarks import common, torch_fashiongan
from experiments.configs.fashiongan import ccp_fashiongan
from readingnotes_jax.fashiongan import compose, losses, model, train
from readingnotes_jax.nn import conv, precision
from readingnotes_jax.training import runner

LR, BETAS = 2e-4, (0.5, 0.999)


STAGES = ("shape", "image", "image_unet")


def _config(size: int, features: int, dtype: str, generator: str) -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.data = {"image_size": size}
  c.model = {"features": features, "dtype": dtype, "image_generator": generator,
             "compositional": False, "compare_plain": False}
  return c


def _inputs(stage: str, batch: int, size: int, seed: int = 0) -> dict[str, np.ndarray]:
  rng = np.random.default_rng(seed)
  labels = rng.integers(0, compose.NUM_LABELS, (2, batch, size, size))
  out = {"z": rng.standard_normal((batch, model.NOISE_SIZE)).astype(np.float32),
         "d": np.tanh(rng.standard_normal((batch, model.CODING_SIZE))).astype(np.float32),
         "labels": labels[0].astype(np.int32)}
  if stage == "shape":
    out["condition"] = compose.spatial_constraint(labels[0])
    out["wrong_condition"] = compose.spatial_constraint(labels[1])
    out["real"] = np.eye(compose.NUM_LABELS, dtype=np.float32)[labels[0]]
    out["wrong"] = np.eye(compose.NUM_LABELS, dtype=np.float32)[labels[1]]
  else:
    out["condition"] = np.asarray(compose.colour_condition(labels[0]))
    out["wrong_condition"] = np.asarray(compose.colour_condition(labels[1]))
    out["real"] = rng.uniform(-1, 1, (batch, size, size, 3)).astype(np.float32)
    out["wrong"] = rng.uniform(-1, 1, (batch, size, size, 3)).astype(np.float32)
  return out


def ours(stage: str, x: dict[str, np.ndarray], size: int, features: int, dtype: str):
  """(step() -> metrics, {network: parameters}) of our jitted `train.gan_step`."""
  generator = "unet" if stage == "image_unet" else "encoder_decoder"
  nets = train.Networks(_config(size, features, dtype, generator), 8, (("a", 2),))
  tx = optax.adam(LR, b1=BETAS[0], b2=BETAS[1], eps=1e-8)
  if stage == "shape":
    g, d = nets.g_shape, nets.d_shape
    g_inputs = (x["z"], x["d"], x["condition"])
    g_loss = lambda fake_logits, out: losses.shape_generator_loss(fake_logits, out, x["labels"])
    rngs = None
  else:
    g, d = nets.g_image["plain"], nets.d_image["plain"]
    g_inputs = (x["z"], x["d"], x["condition"], None)
    g_loss = lambda fake_logits, out: losses.image_generator_loss(fake_logits, out, x["real"])
    rngs = {"dropout": jax.random.key(0)}
  state = train._gan_state(g, d, tx, jax.random.key(0), g_inputs,  # pylint: disable=protected-access
                           (x["real"], x["d"], x["condition"]))
  step = jax.jit(functools.partial(
      train.gan_step, generator=g, discriminator=d, tx=tx,
      loss_config=ml_collections.ConfigDict({"wrong_weight": 0.1, "fake_weight": 0.9}),
      g_loss=g_loss, rngs=rngs), donate_argnums=(0,))
  holder = {"state": state}

  def run():
    holder["state"], metrics = step(holder["state"], x["d"], x["real"], x["wrong"], g_inputs,
                                    x["condition"], x["wrong_condition"])
    return metrics

  params = {"g": runner.count_params(state["g"]["params"]),
            "d": runner.count_params(state["d"]["params"])}
  return run, params


def peer(stage: str, x: dict[str, np.ndarray], size: int, features: int,
         bfloat16: bool = False):
  """(step() -> loss, {network: parameters}) of the PyTorch networks, NCHW; `bfloat16`: their
  forward passes under bfloat16 autocast."""
  torch.manual_seed(0)
  device = common.torch_device()
  nchw = lambda a: torch.from_numpy(np.ascontiguousarray(np.moveaxis(a, -1, 1))).to(device)
  if stage == "shape":
    g = torch_fashiongan.ShapeGenerator(size, features)
    d = torch_fashiongan.ShapeDiscriminator(size, features)
    labels = torch.from_numpy(x["labels"]).long().to(device)
    supervised = lambda out: 100 * torch.nn.functional.cross_entropy(out.float(), labels)
  else:
    if stage == "image_unet":
      g = torch_fashiongan.UNetImageGenerator(size, features)
      d = torch_fashiongan.PatchImageDiscriminator(size, features)
    else:
      g = torch_fashiongan.ImageGenerator(size, features)
      d = torch_fashiongan.ImageDiscriminator(size, features)
    target = nchw(x["real"])
    supervised = lambda out: 100 * torch.mean(torch.abs(out.float() - target))
  g.to(device)
  d.to(device)
  z, code = torch.from_numpy(x["z"]).to(device), torch.from_numpy(x["d"]).to(device)
  condition, wrong_condition = nchw(x["condition"]), nchw(x["wrong_condition"])
  real, wrong = nchw(x["real"]), nchw(x["wrong"])
  opt_g = torch.optim.Adam(g.parameters(), lr=LR, betas=BETAS, eps=1e-8)
  opt_d = torch.optim.Adam(d.parameters(), lr=LR, betas=BETAS, eps=1e-8)
  bce = lambda logits, target: torch.nn.functional.binary_cross_entropy_with_logits(
      logits.float(), target.float())
  autocast = lambda: torch.autocast(device.type, dtype=torch.bfloat16, enabled=bfloat16)

  def run():
    with autocast():
      fake = g(z, code, condition)
    opt_d.zero_grad()
    with autocast():
      real_logits, wrong_logits = d(real, code, condition), d(wrong, code, wrong_condition)
      fake_logits = d(fake.detach(), code, condition)
    loss_d = (bce(real_logits, torch.ones_like(real_logits))
              + 0.1 * bce(wrong_logits, torch.zeros_like(wrong_logits))
              + 0.9 * bce(fake_logits, torch.zeros_like(fake_logits)))
    loss_d.backward()
    opt_d.step()
    opt_g.zero_grad()
    with autocast():
      logits = d(fake, code, condition)
    loss_g = bce(logits, torch.ones_like(logits)) + supervised(fake)
    loss_g.backward()
    opt_g.step()
    return loss_g.item()

  return run, {"g": torch_fashiongan.count(g), "d": torch_fashiongan.count(d)}


def main() -> None:
  parser = common.parser(__doc__.split("\n\n")[0])
  parser.add_argument("--rounds", type=common.positive_int, default=5)
  parser.add_argument("--size", type=common.positive_int, default=64, choices=model.SIZES)
  parser.add_argument("--features", type=common.positive_int, default=16)
  parser.add_argument("--batch", type=common.positive_int, default=16)
  parser.add_argument("--threads", type=int, default=0, help="torch threads (0: its default)")
  args = parser.parse_args()
  config = ccp_fashiongan.get_config()
  if config.xla_cpu_ynn:  # as experiments.train does, before any computation
    conv.enable_xla_cpu_ynn(config.xla_cpu_ynn_types)
  if args.threads:
    torch.set_num_threads(args.threads)
  result = {"benchmark": "fashiongan_step", **common.machine_description(),
            "torch": torch.__version__, "torch_threads": torch.get_num_threads(),
            "torch_cudnn_tf32": torch.backends.cudnn.allow_tf32,
            "size": args.size, "features": args.features, "batch": args.batch, "stages": {}}
  for stage in STAGES:
    x = _inputs(stage, args.batch, args.size)
    runs, params = {}, {}
    for dtype in ("float32", "bfloat16"):
      runs[f"ours_{dtype}"], params["ours"] = ours(stage, x, args.size, args.features, dtype)
    runs["torch"], params["torch"] = peer(stage, x, args.size, args.features)
    runs["torch_bfloat16"], _ = peer(stage, x, args.size, args.features, bfloat16=True)
    if params["ours"] != params["torch"]:
      raise SystemExit(f"{stage}: parameter counts differ, ours {params['ours']} vs torch "
                       f"{params['torch']}: the peer is not the same network")
    median = common.alternating_medians(runs, args.rounds)
    result["stages"][stage] = {
        "params": params["ours"], "seconds": median,
        "ours_runs_as": {"bfloat16": str(jnp.dtype(precision.compute_dtype("bfloat16")))},
        "ratio_float32": median["torch"] / median["ours_float32"],
        "ratio_bfloat16": median["torch"] / median["ours_bfloat16"],
        "ratio_bfloat16_vs_torch_autocast": median["torch_bfloat16"] / median["ours_bfloat16"]}
    print(stage, json.dumps(result["stages"][stage]), flush=True)
  result["load_average_after"] = os.getloadavg()[0]
  print(json.dumps(result))


if __name__ == "__main__":
  common.run(main)
