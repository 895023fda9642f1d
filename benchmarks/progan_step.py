"""ProGAN training step: ours (JAX) against the PyPI peer pro-gan-pth 3.4 (PyTorch), same run.

One iteration is one discriminator step and one generator step on one
minibatch (WGAN-GP: D(fake) - D(real), gradient penalty lambda 10 with its
double backward, drift 0.001 * D(real)^2; G: -D(G(z)); Adam(0, 0.99, 1e-8);
generator EMA), in the stable phase at the final resolution of a network grown
from 4x4 (32 px: 4 levels), 512 feature maps at every level, RGB. Ours is one
call of the compiled `progan.train.train_step`; the peer's is what its
`ProGAN.train` does per minibatch: `optimize_discriminator`, `update_average`
(EMA), `optimize_generator`. Both networks have the same parameter count
(printed). Our variants: float32 and bfloat16 compute (parameters and Adam
state float32; bfloat16 runs as float32 on a CPU without bfloat16 instructions, as
training does: `nn.precision.compute_dtype`), each with the "xla" and "matmul"
convolution lowerings. The JSON line names the CPU model and its relevant flags, and per
variant the lowering and the dtype it ran as.

Timed in rounds after one warm-up call each, the order reversed every other
round (a busy machine slows all alike, a drifting load favours none); the
median seconds per iteration give images/s and ratios ours/peer (goals:
>= 1.0 in float32, >= 1.5 in bfloat16). Achieved FLOP/s
divide the useful FLOPs of a step (XLA's cost analysis of the lowered float32
step with lax.conv; each variant's own count is printed too) by the time, as
fractions of matmul peaks (2048^3, float32, and bfloat16 accumulated in
float32) measured in the same run. Compile time per stage ((level, fading) of
the 4 -> resolution schedule, float32, the platform's default lowering) is
measured in two child processes sharing a fresh persistent compilation cache:
cold, then warm. Prints one JSON line (also written to --out). `--parts`
instead times the pieces of an iteration (G forward, D forward, D backward,
gradient penalty, G step) for each variant and the peer.

  python -m benchmarks.progan_step [--iters 2] [--peer_iters 2] [--batch 16]
      [--resolution 32] [--skip_peer] [--skip_compile] [--variants f32_xla,...]
      [--parts] [--no_xla_cpu_ynn] [--out FILE]

Like experiments.train, it sets XLA:CPU's YNNPACK flag when the config says
`xla_cpu_ynn` (`readingnotes_jax.nn.conv.enable_xla_cpu_ynn`); the JSON line
records XLA_FLAGS.

The peer needs three run-time patches on torch 2.13, made here and never in
its installed files (see `_import_peer`). Install: `pip install torch==2.13.0`
(CPU) and `pip install --no-deps pro-gan-pth==3.4` (its requirements pin
torch 1.10 and numpy 1.21).
"""
import argparse
import contextlib
import functools
import io
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import types

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks import common
from experiments.configs.progan import fashion_mnist_32
from readingnotes_jax.errors import UserError
from readingnotes_jax.nn import conv, precision
from readingnotes_jax.progan import train as progan_train
from readingnotes_jax.training import loop, mesh as mesh_lib

VARIANTS = {"f32_xla": ("float32", "xla"), "f32_matmul": ("float32", "matmul"),
            "bf16_xla": ("bfloat16", "xla"), "bf16_matmul": ("bfloat16", "matmul")}
GOALS = {"float32": 1.0, "bfloat16": 1.5}
CHANNELS = 512
NUM_CHANNELS = 3  # the peer's default (RGB)

# What the two sides do differently, all of it negligible next to the 512-wide 3x3 convolutions.
DIFFERENCES = [
    "peer G and D always run the fade branch (ToRGB / FromRGB of the previous level, "
    "resampling, lerp with alpha=1) even in the stable phase: about 1.6 MFLOP per image "
    "against about 13 GFLOP per network forward",
    "peer cross-fades the real batch every step (identity average pool, 2x pool, "
    "upsample, lerp); ours only in fade phases",
    "peer checks every gradient for NaN/Inf before each Adam step and reads both losses "
    "back (.item()); ours returns the losses as arrays",
    "peer uses the same latents for its D and G steps; ours draws two batches",
    "peer's first G layer is a 4x4 transposed convolution of the 1x1 latent (the same "
    "matmul as our Dense) without the PixelNorm after it",
]
FLOPS_NOTE = (
    "gflops = useful_flops_per_step (XLA's cost analysis of the float32 step lowered with "
    "lax.conv, which counts only the kernel taps that fall inside the image) / seconds, for "
    "every variant and the peer; each variant's own count (flops_per_step) is also given: the "
    "matmul lowering multiplies the zero padding too (+4.3% per 3x3 conv at 32x32, +19% at "
    "8x8) and adds its 9 taps (+0.09%)")
PEER_PATCHES = [
    "Adam betas given as floats (0.0, 0.99): its trainer passes (0, 0.99), which torch 2.13 "
    "rejects",
    "EqualizedConvTranspose2d._output_padding adapted to torch 2.13's signature "
    "(num_spatial_dims, dilation)",
    "torchvision.utils / torchvision.transforms and torch.utils.tensorboard (images and logs "
    "only) replaced in sys.modules by placeholders before import",
]


def _timed(fn) -> float:
  start = time.perf_counter()
  fn()
  return time.perf_counter() - start


def matmul_peak(dtype, size: int = 2048, repeats: int = 10, accumulate=None) -> float:
  """FLOP/s of a size^3 matmul, the best of `repeats` (`accumulate`: preferred_element_type)."""
  a = jnp.ones((size, size), dtype)
  f = jax.jit(lambda a, b: jnp.dot(a, b, preferred_element_type=accumulate))
  f(a, a).block_until_ready()
  best = min(_timed(lambda: f(a, a).block_until_ready()) for _ in range(repeats))
  return 2 * size ** 3 / best


def _level(resolution: int) -> int:
  level = int(round(math.log2(resolution))) if resolution > 0 else 0
  if not 2 <= level <= 6 or 2 ** level != resolution:
    raise UserError(f"--resolution {resolution}: use a power of two from 4 to 64 (the "
                    "peer's widths drop below 512 above 64 px)")
  return level


def make_config(resolution: int, dtype: str = "float32", lowering: str = ""):
  """The Fashion-MNIST ProGAN config in RGB with 512 feature maps at every level."""
  c = fashion_mnist_32.get_config()
  c.model.resolution = resolution
  c.model.num_channels = NUM_CHANNELS
  c.model.fmap_base = CHANNELS * resolution  # nf(level - 1) = 512 up to `resolution`.
  c.model.fmap_max = CHANNELS
  c.model.dtype = dtype
  c.model.lowering = lowering
  return c


def _step_args(config, batch_size: int, level: int, mesh, abstract: bool):
  """(state, batch, key, alpha, g_lr, d_lr) for a step at `level`; shapes only if `abstract`."""
  G, D = progan_train.build_models(config)
  make_state = functools.partial(progan_train.create_state, config, G, D)
  size = 2 ** level
  if abstract:
    state = jax.eval_shape(make_state, jax.random.key(0))
    batch = {"image": jax.ShapeDtypeStruct((batch_size, size, size, NUM_CHANNELS), jnp.float32),
             "label": jax.ShapeDtypeStruct((batch_size,), jnp.int32)}
  else:
    state = jax.jit(make_state, out_shardings=mesh_lib.replicated(mesh))(jax.random.key(0))
    rng = np.random.default_rng(0)
    images = rng.uniform(-1, 1, (batch_size, size, size, NUM_CHANNELS)).astype(np.float32)
    batch = mesh_lib.shard_batch({"image": images,
                                  "label": np.zeros(batch_size, np.int32)}, mesh)
  scalar = lambda v: np.float32(v)
  return G, D, (state, batch, jax.random.key(1), scalar(1.0), scalar(1e-3), scalar(1e-3))


def _flops(lowered) -> float:
  cost = lowered.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  return float(cost["flops"])


def useful_flops(resolution: int, batch_size: int) -> float:
  """FLOPs of one float32 step by XLA's cost analysis with lax.conv (padding taps not counted)."""
  config = make_config(resolution, "float32", "xla")
  mesh = mesh_lib.make_data_mesh(1)
  level = _level(resolution)
  G, D, args = _step_args(config, batch_size, level, mesh, abstract=True)
  return _flops(progan_train.make_train_step(config, G, D, mesh).lower(
      *args, level=level, fading=False))


def build_ours(name: str, resolution: int, batch_size: int):
  """(run one iteration, FLOPs per step by the lowered step's cost analysis, compile s, params)."""
  dtype, lowering = VARIANTS[name]
  config = make_config(resolution, dtype, lowering)
  mesh = mesh_lib.make_data_mesh(1)
  level = _level(resolution)
  G, D, args = _step_args(config, batch_size, level, mesh, abstract=False)
  step = progan_train.make_train_step(config, G, D, mesh)
  start = time.perf_counter()
  lowered = step.lower(*args, level=level, fading=False)
  compiled = lowered.compile()
  compile_s = time.perf_counter() - start
  count = lambda tree: int(sum(x.size for x in jax.tree.leaves(tree)))
  params = {"generator": count(args[0]["g"]), "discriminator": count(args[0]["d"])}
  holder = {"state": args[0]}

  def run():
    holder["state"], metrics = compiled(holder["state"], *args[1:])
    jax.block_until_ready((holder["state"], metrics))
  return run, _flops(lowered), compile_s, params


def _import_peer():
  """pro-gan-pth 3.4 with its run-time patches for torch 2.13 (its files stay untouched)."""
  def placeholder(*args, **kwargs):
    del args, kwargs

  for name, attrs in (("torchvision", ()), ("torchvision.utils", ("save_image",)),
                      ("torchvision.transforms",
                       ("Compose", "RandomHorizontalFlip", "Resize", "ToTensor")),
                      ("torch.utils.tensorboard", ("SummaryWriter",))):
    if name not in sys.modules:
      module = types.ModuleType(name)
      for attr in attrs:
        setattr(module, attr, placeholder)
      sys.modules[name] = module
  import torch  # pylint: disable=import-outside-toplevel
  # pylint: disable-next=import-outside-toplevel
  from pro_gan_pytorch import custom_layers, gan, losses, networks

  def output_padding(self, input_, output_size, stride, padding, kernel_size):
    # Its forward passes the builtin `input` and the torch 1.10 argument list.
    return torch.nn.ConvTranspose2d._output_padding(
        self, input_, output_size, stride, padding, kernel_size, 2, self.dilation)
  custom_layers.EqualizedConvTranspose2d._output_padding = output_padding
  return torch, custom_layers, gan, losses, networks


def build_peer(resolution: int, batch_size: int, lr: float = 1e-3):
  """(run one iteration as `ProGAN.train` does per minibatch, params, torch version, threads)."""
  torch, custom_layers, gan, losses, networks = _import_peer()
  depth = _level(resolution)
  torch.manual_seed(0)
  with contextlib.redirect_stdout(io.StringIO()):  # it prints both networks
    progan = gan.ProGAN(networks.Generator(depth=depth, num_channels=NUM_CHANNELS,
                                           latent_size=CHANNELS),
                        networks.Discriminator(depth=depth, num_channels=NUM_CHANNELS,
                                               latent_size=CHANNELS),
                        device=torch.device("cpu"), use_ema=True, ema_beta=0.999)
  adam = functools.partial(torch.optim.Adam, lr=lr, betas=(0.0, 0.99), eps=1e-8)
  gen_optim, dis_optim = adam(progan.gen.parameters()), adam(progan.dis.parameters())
  loss = losses.WganGP(drift=0.001)
  rng = np.random.default_rng(0)
  reals = torch.from_numpy(rng.uniform(
      -1, 1, (batch_size, NUM_CHANNELS, resolution, resolution)).astype(np.float32))

  def run():
    noise = torch.randn(batch_size, CHANNELS)
    progan.optimize_discriminator(loss, dis_optim, noise, reals, depth, 1.0)
    custom_layers.update_average(progan.gen_shadow, progan.gen, beta=progan.ema_beta)
    progan.optimize_generator(loss, gen_optim, noise, reals, depth, 1.0)

  count = lambda net: int(sum(p.numel() for p in net.parameters()))
  params = {"generator": count(progan.gen), "discriminator": count(progan.dis)}
  return run, params, torch.__version__, torch.get_num_threads()


PARTS = ("G_forward", "D_forward", "D_forward_backward", "gradient_penalty", "G_step")
PARTS_NOTE = (
    "seconds, best of --iters after a warm-up: G forward; D forward; gradient of sum(D(x)) "
    "for D's parameters; gradient of the WGAN-GP penalty for D's parameters (D forward, "
    "gradient for the input, double backward); gradient of -D(G(z)) for G's parameters. "
    "One iteration runs G_forward + 2 D_forward_backward + gradient_penalty + G_step, about")


def our_parts(name: str, resolution: int, batch_size: int):
  """{part: run()} for one variant: the pieces of `progan.train.train_step`, jitted alone."""
  dtype, lowering = VARIANTS[name]
  config = make_config(resolution, dtype, lowering)
  level = _level(resolution)
  G, D, args = _step_args(config, batch_size, level, mesh_lib.make_data_mesh(1), abstract=False)
  g, d, reals = args[0]["g"], args[0]["d"], args[1]["image"]
  latents = jax.random.normal(jax.random.key(2), (batch_size, config.model.latent_size))
  gen = lambda g, z: G.apply(g, z, level=level)
  disc = lambda d, x: D.apply(d, x, level=level)[0]

  def penalty(d, x):
    grads = jax.grad(lambda x: jnp.sum(disc(d, x)))(x)
    return jnp.mean(jnp.square(jnp.sqrt(jnp.sum(jnp.square(grads), axis=(1, 2, 3))) - 1.0))

  fns = {"G_forward": (gen, (g, latents)), "D_forward": (disc, (d, reals)),
         "D_forward_backward": (jax.grad(lambda d, x: jnp.mean(disc(d, x))), (d, reals)),
         "gradient_penalty": (jax.grad(penalty), (d, reals)),
         "G_step": (jax.grad(lambda g, d, z: -jnp.mean(disc(d, gen(g, z)))), (g, d, latents))}
  runs = {}
  for part, (fn, fn_args) in fns.items():
    compiled = jax.jit(fn).lower(*fn_args).compile()
    runs[part] = functools.partial(
        lambda compiled, fn_args: jax.block_until_ready(compiled(*fn_args)), compiled, fn_args)
  return runs


def peer_parts(resolution: int, batch_size: int):
  """{part: run()} for the peer: the same pieces, as its WganGP loss and ProGAN steps run them."""
  torch, _, _, losses, networks = _import_peer()
  depth = _level(resolution)
  torch.manual_seed(0)
  gen = networks.Generator(depth=depth, num_channels=NUM_CHANNELS, latent_size=CHANNELS)
  dis = networks.Discriminator(depth=depth, num_channels=NUM_CHANNELS, latent_size=CHANNELS)
  latents = torch.randn(batch_size, CHANNELS)
  reals = torch.rand(batch_size, NUM_CHANNELS, resolution, resolution) * 2 - 1

  def no_grad(fn):
    with torch.no_grad():
      fn()

  def backward(net, loss_fn):
    net.zero_grad()
    loss_fn().backward()

  gp = lambda: losses.WganGP._gradient_penalty(dis, reals, reals.flip(0), depth, 1.0)
  return {"G_forward": lambda: no_grad(lambda: gen(latents, depth, 1.0)),
          "D_forward": lambda: no_grad(lambda: dis(reals, depth, 1.0)),
          "D_forward_backward": lambda: backward(dis, lambda: dis(reals, depth, 1.0).mean()),
          "gradient_penalty": lambda: backward(dis, gp),
          "G_step": lambda: backward(
              gen, lambda: -dis(gen(latents, depth, 1.0), depth, 1.0).mean())}


def measure_parts(names, with_peer: bool, resolution: int, batch_size: int, repeats: int) -> dict:
  """Seconds per part (best of `repeats` after one warm-up) for our variants and the peer."""
  runners = {name: our_parts(name, resolution, batch_size) for name in names}
  if with_peer:
    runners["peer"] = peer_parts(resolution, batch_size)
  out = {name: {} for name in runners}
  for part in PARTS:  # runners interleaved per part, as in main
    for parts in runners.values():
      parts[part]()
    times = _rounds({name: parts[part] for name, parts in runners.items()},
                    {name: repeats for name in runners})
    for name, t in times.items():
      out[name][part] = round(min(t), 3)
  for p in out.values():
    p["iteration_estimate"] = round(p["G_forward"] + 2 * p["D_forward_backward"]
                                    + p["gradient_penalty"] + p["G_step"], 3)
  return out


def _rounds(runners: dict, counts: dict) -> dict:
  """Times each runner counts[name] times in rounds, forward then reversed order alternately.

  On a shared machine whose load drifts, alternating the order keeps a trend from
  favouring whichever runner comes last.
  """
  times = {name: [] for name in runners}
  order = list(runners)
  for i in range(max(counts.values())):
    for name in (order if i % 2 == 0 else order[::-1]):
      if i < counts[name]:
        times[name].append(_timed(runners[name]))
  return times


def compile_stages(cache_dir: str, resolution: int, batch_size: int) -> dict:
  """Seconds to trace+lower and to compile the step of each (level, fading), cached in a dir."""
  loop.enable_compilation_cache(cache_dir)
  config = make_config(resolution)
  mesh = mesh_lib.make_data_mesh(1)
  final = _level(resolution)
  stages = {}
  for level in range(2, final + 1):
    for fading in ((False,) if level == 2 else (True, False)):
      G, D, args = _step_args(config, batch_size, level, mesh, abstract=True)
      step = progan_train.make_train_step(config, G, D, mesh)
      start = time.perf_counter()
      lowered = step.lower(*args, level=level, fading=fading)
      lowered_at = time.perf_counter()
      lowered.compile()
      done = time.perf_counter()
      stages[f"{2 ** level}px_{'fade' if fading else 'stable'}"] = {
          "lower_s": round(lowered_at - start, 2), "compile_s": round(done - lowered_at, 2)}
  return stages


def measure_compile(resolution: int, batch_size: int) -> dict:
  """Per-stage compile times in a cold child process (empty cache) and then a warm one."""
  cache_dir = tempfile.mkdtemp(prefix="progan_compile_cache_")
  out = {}
  try:
    for run in ("cold", "warm"):
      command = [sys.executable, "-m", "benchmarks.progan_step", "--compile_stages", cache_dir,
                 "--resolution", str(resolution), "--batch", str(batch_size)]
      start = time.perf_counter()
      child = subprocess.run(command, capture_output=True, text=True, check=False,
                             cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
      if child.returncode:
        raise RuntimeError(f"compile child failed:\n{child.stderr[-2000:]}")
      stages = json.loads(child.stdout.strip().splitlines()[-1])
      out[run] = {"stages": stages,
                  "total_s": round(sum(s["lower_s"] + s["compile_s"] for s in stages.values()), 1),
                  "process_s": round(time.perf_counter() - start, 1)}
  finally:
    shutil.rmtree(cache_dir, ignore_errors=True)
  return out


def main() -> None:
  parser = common.parser(__doc__.splitlines()[0])
  parser.add_argument("--iters", type=common.positive_int, default=2,
                      help="timed iterations of ours")
  parser.add_argument("--peer_iters", type=common.positive_int, default=2,
                      help="timed iterations of the peer")
  parser.add_argument("--batch", type=common.positive_int, default=16)
  parser.add_argument("--resolution", type=int, default=32)
  parser.add_argument("--variants", default=",".join(VARIANTS))
  parser.add_argument("--skip_peer", action="store_true")
  parser.add_argument("--skip_compile", action="store_true")
  parser.add_argument("--parts", action="store_true",
                      help="instead of whole iterations, time their parts (G forward, D "
                      "forward, D backward, gradient penalty, G step)")
  parser.add_argument("--out", default="", help="also write the JSON to this file")
  parser.add_argument("--no_xla_cpu_ynn", action="store_true",
                      help="leave XLA:CPU's dots to XLA even though the config sets xla_cpu_ynn")
  parser.add_argument("--compile_stages", default="", help=argparse.SUPPRESS)
  args = parser.parse_args()
  if fashion_mnist_32.get_config().xla_cpu_ynn and not args.no_xla_cpu_ynn:
    conv.enable_xla_cpu_ynn()  # as experiments.train does; the compile children inherit it
  level = _level(args.resolution)
  if args.compile_stages:  # child process of measure_compile
    print(json.dumps(compile_stages(args.compile_stages, args.resolution, args.batch)))
    return
  variants = [v for v in args.variants.split(",") if v]
  unknown = sorted(set(variants) - set(VARIANTS))
  if unknown:
    raise UserError(f"--variants: unknown {unknown}: use some of {list(VARIANTS)}")

  result = {"benchmark": "progan_step", "device": jax.devices()[0].device_kind,
            **precision.describe_cpu(), "jax": jax.__version__, "resolution": args.resolution,
            "levels": level - 1, "phase": "stable", "batch": args.batch,
            "feature_maps": CHANNELS, "image_channels": NUM_CHANNELS,
            "xla_flags": os.environ.get("XLA_FLAGS", ""),
            "uptime_before": subprocess.run(["uptime"], capture_output=True,
                                            text=True).stdout.strip(),
            "load_before": os.getloadavg()}
  if args.parts:
    result["parts"] = measure_parts(variants, not args.skip_peer, args.resolution, args.batch,
                                    args.iters)
    result["parts_note"] = PARTS_NOTE + " the step's time"
    result["load_after"] = os.getloadavg()
    _emit(result, args.out)
    return
  result["peak_f32_gflops"] = round(matmul_peak(jnp.float32) / 1e9, 1)
  result["peak_bf16_gflops"] = round(matmul_peak(jnp.bfloat16, accumulate=jnp.float32) / 1e9, 1)
  result["matmul_bf16_out_bf16_gflops"] = round(matmul_peak(jnp.bfloat16) / 1e9, 1)
  if not args.skip_compile:
    result["compile_per_stage"] = measure_compile(args.resolution, args.batch)

  runners, flops, ours = {}, {}, {}
  if not args.skip_peer:
    runners["peer"], peer_params, torch_version, threads = build_peer(args.resolution, args.batch)
    result["peer"] = {"package": "pro-gan-pth==3.4", "torch": torch_version,
                      "torch_threads": threads, "params": peer_params}
  for name in variants:
    runners[name], flops[name], compile_s, params = build_ours(name, args.resolution, args.batch)
    ours[name] = {"compile_s": round(compile_s, 1), "params": params,
                  "flops_per_step": flops[name], "lowering": VARIANTS[name][1],
                  "runs_as": precision.compute_dtype(VARIANTS[name][0]).name}

  for run in runners.values():  # warm-up
    run()
  times = _rounds(runners, {name: args.peer_iters if name == "peer" else args.iters
                            for name in runners})
  seconds = {name: statistics.median(t) for name, t in times.items()}

  reference_flops = useful_flops(args.resolution, args.batch)
  result["useful_flops_per_step"] = reference_flops
  result["flops_note"] = FLOPS_NOTE
  if "peer" in seconds:
    result["peer"].update({"seconds_per_iter": round(seconds["peer"], 3),
                           "times": [round(t, 3) for t in times["peer"]],
                           "images_per_s": round(args.batch / seconds["peer"], 3),
                           "gflops": round(reference_flops / seconds["peer"] / 1e9, 1)})
    result["peer"]["fraction_f32_peak"] = round(
        result["peer"]["gflops"] / result["peak_f32_gflops"], 3)
  for name in variants:
    dtype = VARIANTS[name][0]
    gflops = reference_flops / seconds[name] / 1e9
    ours[name].update({"seconds_per_iter": round(seconds[name], 3),
                       "times": [round(t, 3) for t in times[name]],
                       "images_per_s": round(args.batch / seconds[name], 3),
                       "gflops": round(gflops, 1),
                       "gflops_own_count": round(flops[name] / seconds[name] / 1e9, 1),
                       "fraction_f32_peak": round(gflops / result["peak_f32_gflops"], 3),
                       "fraction_bf16_peak": round(gflops / result["peak_bf16_gflops"], 3)})
    if "peer" in seconds:
      ratio = seconds["peer"] / seconds[name]
      ours[name].update({"ratio_vs_peer": round(ratio, 3), "goal": GOALS[dtype],
                         "meets_goal": ratio >= GOALS[dtype]})
  result["ours"] = ours
  for dtype in ("f32", "bf16"):
    if f"{dtype}_xla" in flops and f"{dtype}_matmul" in flops:
      result[f"flops_matmul_over_xla_{dtype}"] = round(
          flops[f"{dtype}_matmul"] / flops[f"{dtype}_xla"], 4)
  if not args.skip_peer:
    result["same_work"] = {"params_equal": all(p["params"] == result["peer"]["params"]
                                               for p in ours.values()),
                           "differences": DIFFERENCES, "peer_patches": PEER_PATCHES}
  result["load_after"] = os.getloadavg()
  _emit(result, args.out)


def _emit(result: dict, out: str) -> None:
  line = json.dumps(result)
  print(line)
  if out:
    with open(out, "w", encoding="utf-8") as f:
      f.write(line + "\n")


if __name__ == "__main__":
  common.run(main)
