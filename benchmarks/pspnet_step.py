"""PSPNet-50 train step and inference: ours (JAX) against the same network in PyTorch.

Same weights (the torch peer's, converted with `load_semseg_checkpoint`), same
inputs, same batch, timed in the same run in alternating rounds (so a busy
machine slows both alike); median wall seconds per call, and median CPU seconds
of this process (on a shared machine run it pinned, `OMP_NUM_THREADS=1 taskset
-c 0 python -m ...`, and compare CPU seconds: compute per core, whatever else
runs). Variants: float32 with the default per-layer conv lowering ("auto",
`conv2d(lowering=None)`), all "matmul", all "xla", bfloat16 compute (float32 on a CPU
without bfloat16 instructions, as training runs: `nn.precision.compute_dtype`), and
"f32_concat": float32 with `factorized_head=False` (the head convolves the
upsampled, concatenated pyramid as semseg does; the other variants use
`conv_of_pyramid`, the same function with half of that conv's work). Train step: forward in
training mode, loss main + 0.4 aux (ignore 255), backward, SGD momentum 0.9 with
weight decay 1e-4 (an optax step written here, the same as torch.optim.SGD).
Achieved FLOP/s divide the network's FLOPs as the peer computes them (XLA:CPU's
cost analysis of the float32 "xla", semseg-order step; on CPU each variant's
own count is printed too) by the time; the peak is a 4096^3 float32 (and bfloat16
with float32 accumulation) matmul measured in the same run. Ratios are
torch seconds / our seconds (> 1: we are faster). Prints one JSON line, with the CPU's
model and relevant flags and, per variant, the dtype and conv lowering it ran with.

  python -m benchmarks.pspnet_step [--repeats 5] [--variants f32_auto,f32_matmul,...]
      [--torch_bf16]

On a GPU (JAX's default backend "gpu") the peer runs on CUDA too, and each timed
call waits for the device; `--torch_bf16` adds the peer under
`torch.autocast(dtype=bfloat16)` ("torch_bf16", ratios still against float32 torch).

Reference measured here for the authors' PyTorch PSPNet-50 (150 classes): train
step 2.7 s at batch 2, crop 233; inference 1.3 s at batch 1, crop 473.
"""
import json
import os
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
import torch

from benchmarks import common, torch_pspnet
from readingnotes_jax.nn import precision
from readingnotes_jax.pspnet.convert import load_semseg_checkpoint
from readingnotes_jax.pspnet.model import PSPNet, pspnet_loss

VARIANTS = {"f32_auto": {}, "f32_matmul": {"lowering": "matmul"}, "f32_xla": {"lowering": "xla"},
            "f32_concat": {"factorized_head": False}, "bf16_auto": {"dtype": "bfloat16"},
            "bf16_matmul": {"dtype": "bfloat16", "lowering": "matmul"},
            "bf16_xla": {"dtype": "bfloat16", "lowering": "xla"}}
CLASSES = 150


def matmul_peak(dtype, size: int, repeats: int = 5) -> tuple[float, float]:
  """FLOP per wall second and per CPU second of a size^3 matmul (best of repeats).

  Low-precision operands accumulate in and return float32, as the network's
  matmuls do (on the 2-core Zen 4 CPU bfloat16 -> float32 ran ~350 GFLOP/s,
  bfloat16 -> bfloat16 ~175).
  """
  a = jnp.ones((size, size), dtype)
  f = jax.jit(lambda a, b: jnp.dot(a, b, preferred_element_type=jnp.float32))
  f(a, a).block_until_ready()
  times = [_timed_with_cpu(lambda: f(a, a).block_until_ready()) for _ in range(repeats)]
  return 2 * size ** 3 / min(w for w, _ in times), 2 * size ** 3 / min(c for _, c in times)


def _timed_with_cpu(fn) -> tuple[float, float]:
  """(wall, CPU) seconds of this process for one call."""
  start, cpu = time.perf_counter(), time.process_time()
  fn()
  return time.perf_counter() - start, time.process_time() - cpu


def make_train_step(model, optimizer):
  """(state, images, labels, key) -> (state, loss); state = (params, batch_stats, opt_state)."""
  def step(state, images, labels, key):
    params, batch_stats, opt_state = state

    def loss_fn(p):
      (logits, aux), updates = model.apply({"params": p, "batch_stats": batch_stats}, images,
                                           train=True, rngs={"dropout": key},
                                           mutable=["batch_stats"])
      return pspnet_loss(logits, aux, labels)[0], updates["batch_stats"]

    (loss, batch_stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    return (optax.apply_updates(params, updates), batch_stats, opt_state), loss
  return jax.jit(step, donate_argnums=0)


def main() -> None:
  parser = common.parser(__doc__.splitlines()[0])
  parser.add_argument("--repeats", type=common.positive_int, default=5)
  parser.add_argument("--train_batch", type=common.positive_int, default=2)
  parser.add_argument("--train_crop", type=common.positive_int, default=233)
  parser.add_argument("--infer_batch", type=common.positive_int, default=1)
  parser.add_argument("--infer_crop", type=common.positive_int, default=473)
  parser.add_argument("--variants", default="f32_auto,f32_concat,f32_xla,bf16_auto")
  parser.add_argument("--torch_bf16", action="store_true")
  args = parser.parse_args()
  device = common.torch_device()
  gpu = device.type == "cuda"
  sync = torch.cuda.synchronize if gpu else lambda: None
  variants = args.variants.split(",")
  result = {"device": jax.devices()[0].device_kind, **precision.describe_cpu(),
            "xla_flags": os.environ.get("XLA_FLAGS", ""),
            "torch_threads": torch.get_num_threads(), "jax": jax.__version__,
            "torch": torch.__version__, "train": [args.train_batch, args.train_crop],
            "infer": [args.infer_batch, args.infer_crop], "load_before": os.getloadavg()[0],
            "jax_matmul_precision": str(jax.config.jax_default_matmul_precision),
            "torch_cudnn_tf32": torch.backends.cudnn.allow_tf32}
  for dtype in ("f32", "bf16"):
    wall, per_cpu = matmul_peak(jnp.float32 if dtype == "f32" else jnp.bfloat16,
                                8192 if gpu else 4096)
    result[f"peak_{dtype}_gflops"] = round(wall / 1e9, 1)
    result[f"peak_{dtype}_gflop_per_cpu_s"] = round(per_cpu / 1e9, 1)

  torch.set_flush_denormal(True)  # as XLA:CPU does; never slower for the peer
  torch.manual_seed(0)
  net = torch_pspnet.PSPNet(50, classes=CLASSES)
  _, variables = load_semseg_checkpoint(net.state_dict(), CLASSES, 50)
  net.to(device)
  rng = np.random.default_rng(0)
  train_images = rng.normal(size=(args.train_batch, 3, args.train_crop, args.train_crop))
  train_images = train_images.astype(np.float32)
  labels = rng.integers(0, CLASSES, size=(args.train_batch, args.train_crop, args.train_crop))
  labels[:, :8] = 255
  infer_images = rng.normal(size=(args.infer_batch, 3, args.infer_crop, args.infer_crop))
  infer_images = infer_images.astype(np.float32)

  optimizer = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4)
  criterion = torch.nn.CrossEntropyLoss(ignore_index=255)
  t_train_images, t_labels, t_infer_images = (
      torch.from_numpy(a).to(device) for a in (train_images, labels, infer_images))

  def torch_train(bf16=False):
    net.train()
    optimizer.zero_grad(set_to_none=True)
    with torch.autocast(device.type, torch.bfloat16, enabled=bf16):
      logits, aux = net(t_train_images)
      loss = criterion(logits.float(), t_labels) + 0.4 * criterion(aux.float(), t_labels)
    loss.backward()
    optimizer.step()
    sync()

  def torch_infer(bf16=False):
    net.eval()
    with torch.no_grad(), torch.autocast(device.type, torch.bfloat16, enabled=bf16):
      out = net(t_infer_images)
    sync()
    return out

  to_nhwc = lambda x: jnp.asarray(x.transpose(0, 2, 3, 1))
  j_train_images, j_labels = to_nhwc(train_images), jnp.asarray(labels)
  j_infer_images = to_nhwc(infer_images)
  sgd = optax.chain(optax.add_decayed_weights(1e-4), optax.sgd(0.01, momentum=0.9))
  runners = {"torch": {"train": torch_train, "infer": torch_infer}}
  if args.torch_bf16:
    runners["torch_bf16"] = {"train": lambda: torch_train(True), "infer": lambda: torch_infer(True)}
  # Counted on the CPU backend: XLA:GPU's cost analysis leaves out cuDNN's convolutions.
  cpu_device = jax.devices("cpu")[0]
  peer_model = PSPNet(CLASSES, lowering="xla", factorized_head=False)
  peer_train = make_train_step(peer_model, sgd).lower(*jax.device_put(
      ((variables["params"], variables["batch_stats"], sgd.init(variables["params"])),
       j_train_images, j_labels, jax.random.key(0)), cpu_device))
  peer_infer = jax.jit(lambda v, x: peer_model.apply(v, x, train=False)).lower(
      *jax.device_put((variables, j_infer_images), cpu_device))
  flops = {"peer": {"train": peer_train.compile().cost_analysis()["flops"],
                    "infer": peer_infer.compile().cost_analysis()["flops"]}}
  for name in variants:
    options = {**VARIANTS[name],
               "dtype": precision.compute_dtype(VARIANTS[name].get("dtype", "float32"))}
    result[f"{name}_runs_as"] = {
        "dtype": options["dtype"].name,
        "lowering": options.get("lowering", "per layer (nn.conv.default_lowering)")}
    model = PSPNet(CLASSES, **options)
    step = make_train_step(model, sgd)
    infer = jax.jit(lambda v, x, model=model: model.apply(v, x, train=False))
    state = jax.tree.map(jnp.copy, (variables["params"], variables["batch_stats"],
                                    sgd.init(variables["params"])))
    key = jax.random.key(0)
    start = time.perf_counter()
    compiled_step = step.lower(state, j_train_images, j_labels, key).compile()
    compiled_infer = infer.lower(variables, j_infer_images).compile()
    result[f"{name}_compile_s"] = round(time.perf_counter() - start, 1)
    flops[name] = {"train": compiled_step.cost_analysis()["flops"],
                   "infer": compiled_infer.cost_analysis()["flops"]}
    holder = {"state": state}

    def jax_train(holder=holder, compiled_step=compiled_step, key=key):
      holder["state"], loss = compiled_step(holder["state"], j_train_images, j_labels, key)
      loss.block_until_ready()

    def jax_infer(compiled_infer=compiled_infer):
      return compiled_infer(variables, j_infer_images).block_until_ready()

    runners[name] = {"train": jax_train, "infer": jax_infer}
    result[f"{name}_infer_max_abs_diff_vs_torch"] = float(np.abs(
        np.asarray(jax_infer()).transpose(0, 3, 1, 2) - torch_infer().cpu().numpy()).max())

  times = {name: {"train": [], "infer": []} for name in runners}
  for phase in ("train", "infer"):
    for name in runners:  # warm-up
      runners[name][phase]()
    for _ in range(args.repeats):
      for name in runners:
        times[name][phase].append(_timed_with_cpu(runners[name][phase]))
  median = {name: {phase: statistics.median(w for w, _ in t) for phase, t in v.items()}
            for name, v in times.items()}
  cpu = {name: {phase: statistics.median(c for _, c in t) for phase, t in v.items()}
         for name, v in times.items()}
  for phase in ("train", "infer"):
    result[f"torch_{phase}_s"] = round(median["torch"][phase], 3)
    result[f"torch_{phase}_cpu_s"] = round(cpu["torch"][phase], 3)
    if args.torch_bf16:
      result[f"torch_bf16_{phase}_s"] = round(median["torch_bf16"][phase], 3)
      result[f"torch_bf16_{phase}_ratio"] = round(
          median["torch"][phase] / median["torch_bf16"][phase], 3)
    for name in variants:
      seconds = median[name][phase]
      result[f"{name}_{phase}_s"] = round(seconds, 3)
      result[f"{name}_{phase}_ratio"] = round(median["torch"][phase] / seconds, 3)
      result[f"{name}_{phase}_cpu_s"] = round(cpu[name][phase], 3)
      result[f"{name}_{phase}_cpu_ratio"] = round(cpu["torch"][phase] / cpu[name][phase], 3)
      if not gpu:
        result[f"{name}_{phase}_gflop"] = round(flops[name][phase] / 1e9, 1)
      result[f"{name}_{phase}_gflops"] = round(flops["peer"][phase] / seconds / 1e9, 1)
    reference_flops = flops["peer"][phase]
    result[f"{phase}_gflop"] = round(reference_flops / 1e9, 1)
    result[f"torch_{phase}_gflops"] = round(reference_flops / median["torch"][phase] / 1e9, 1)
  for name in variants:  # CPU: per CPU second, fair on a busy machine too
    peak = result[f"peak_{name.split('_')[0]}_gflop{'s' if gpu else '_per_cpu_s'}"] * 1e9
    for phase in ("train", "infer"):
      seconds = (median if gpu else cpu)[name][phase]
      result[f"{name}_{phase}_fraction_of_peak"] = round(
          flops["peer"][phase] / seconds / peak, 3)
  result["load_after"] = os.getloadavg()[0]
  print(json.dumps(result))


if __name__ == "__main__":
  common.run(main)
