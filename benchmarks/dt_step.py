"""The D&T train step (one frame pair, ResNet-50, 30 VID classes): ours against the same network
in PyTorch (benchmarks/torch_detect_track.py), same run.

Ours is `detect_track.train.train_step` in the D&T phase: both frames through the detector,
the RPN loss on 256 sampled anchors, 300 proposals per image (6000 scored, NMS 0.7), R-FCN
losses with OHEM (128 of them), the correlation features, the RoI-tracking loss, Caffe SGD
(momentum 0.9, weight decay, lr_mult 2 for biases) with conv1, res2 and BatchNorm frozen.
The peer runs the same network (parameter counts checked equal) and the same losses at 300
given RoIs per image and given targets, then torch.optim.SGD: it skips proposal generation,
NMS and OHEM, so it does a little less work than ours. Our variants: float32 and bfloat16
compute (parameters float32; bfloat16 runs as float32 on a CPU without bfloat16
instructions: `nn.precision.compute_dtype`); the peer float32 and bfloat16 autocast.

Timed in rounds after one warm-up call each, the order reversed every other round; ratios
are the peer's float32 median seconds over ours (> 1: we are faster; goals: >= 1.0 float32,
>= 1.5 bfloat16 on CPUs with bfloat16 instructions, as the other step benchmarks), and
`ratio_bfloat16_vs_torch_autocast` the peer's bfloat16 autocast over ours. Default input: 320 x 480 frames (a
VID frame at about half the official 600 px scale). On a GPU the peer runs on CUDA too
(cuDNN's TF32 convolutions on, PyTorch's default, as JAX's default precision; `loss.item()`
waits for each step). Prints one JSON line with the CPU model and flags.

  python -m benchmarks.dt_step [--rounds 3] [--height 320] [--width 480] [--threads N]
"""
import functools
import json
import os

import jax
import numpy as np
import torch

from benchmarks import common, torch_detect_track
from experiments.configs.detect_track import mot_dt_resnet50
from readingnotes_jax.detect_track import train as dt_train
from readingnotes_jax.nn import precision
from readingnotes_jax.training import runner

NUM_CLASSES, ROIS, GT = 30, 300, 8


def _inputs(height: int, width: int, seed: int = 0) -> dict[str, np.ndarray]:
  rng = np.random.default_rng(seed)
  x1 = rng.uniform(0, width - 120, (1, 2, GT))
  y1 = rng.uniform(0, height - 120, (1, 2, GT))
  boxes = np.stack([x1, y1, x1 + rng.uniform(40, 110, x1.shape),
                    y1 + rng.uniform(40, 110, y1.shape)], -1).astype(np.float32)
  return {"frames": rng.standard_normal((1, 2, height, width, 3)).astype(np.float32),
          "gt_boxes": boxes, "gt_labels": rng.integers(1, NUM_CLASSES + 1, (1, 2, GT)).astype(np.int32),
          "gt_ids": np.tile(np.arange(GT, dtype=np.int32), (1, 2, 1)),
          "image_sizes": np.tile(np.array([height, width], np.int32), (1, 2, 1)),
          "image_scales": np.ones((1, 2), np.float32)}


def ours(x: dict[str, np.ndarray], dtype: str):
  config = mot_dt_resnet50.get_config(f"model.num_classes={NUM_CLASSES},model.dtype={dtype}")
  model = dt_train.build_model(config)
  abstract = dt_train.abstract_state(config, model)
  tx = dt_train.dt_model.make_optimizer(abstract["params"], dt_train.schedule(config, dt_train.DT))
  state = jax.jit(functools.partial(dt_train.create_train_state, model, tx))(
      jax.random.key(0, impl=dt_train.PRNG_IMPL))
  step = jax.jit(functools.partial(dt_train.train_step, model=model, tx=tx, phase=dt_train.DT),
                 donate_argnums=(0,))
  key = jax.random.key(1, impl=dt_train.PRNG_IMPL)
  holder = {"state": state}

  def run():
    holder["state"], metrics = step(holder["state"], x, key)
    return metrics["loss"]

  return run, runner.count_params(state["params"])


def peer(x: dict[str, np.ndarray], bfloat16: bool):
  torch.manual_seed(0)
  net = torch_detect_track.DetectTrack(NUM_CLASSES).train()
  height, width = x["frames"].shape[2:4]
  rng = np.random.default_rng(1)
  h, w = -(-height // 16), -(-width // 16)
  anchors = h * w * 9
  labels = np.full((2, anchors), -1, np.int64)
  labels[:, rng.choice(anchors, 256, replace=False)] = rng.integers(0, 2, 256)
  x1 = rng.uniform(0, width - 100, (2, ROIS))
  y1 = rng.uniform(0, height - 100, (2, ROIS))
  rois = np.stack([x1, y1, x1 + rng.uniform(20, 99, x1.shape), y1 + rng.uniform(20, 99, y1.shape)], -1)
  t = {"rpn_labels": torch.from_numpy(labels),
       "rpn_targets": torch.from_numpy(rng.standard_normal((2, anchors, 4)).astype(np.float32)),
       "rois": torch.from_numpy(rois.astype(np.float32)),
       "roi_labels": torch.from_numpy(rng.integers(0, NUM_CLASSES + 1, (2, ROIS))),
       "roi_targets": torch.from_numpy(rng.standard_normal((2, ROIS, 4)).astype(np.float32)),
       "track_targets": torch.from_numpy(rng.standard_normal((1, ROIS, 4)).astype(np.float32))}
  device = common.torch_device()
  net.to(device)
  t = {k: v.to(device) for k, v in t.items()}
  frames = torch.from_numpy(np.ascontiguousarray(np.moveaxis(x["frames"], -1, 2))).to(device)
  trainable = [p for p in net.parameters() if p.requires_grad]
  opt = torch.optim.SGD(trainable, lr=1e-4, momentum=0.9, weight_decay=5e-4)

  def run():
    opt.zero_grad()
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bfloat16):
      out = net(frames)
    loss = torch_detect_track.dt_loss(net, {k: v.float() for k, v in out.items()}, t)
    loss.backward()
    opt.step()
    return loss.item()

  return run, sum(p.numel() for p in net.parameters())


def main() -> None:
  parser = common.parser(__doc__.split("\n\n")[0])
  parser.add_argument("--rounds", type=common.positive_int, default=3)
  parser.add_argument("--height", type=common.positive_int, default=320)
  parser.add_argument("--width", type=common.positive_int, default=480)
  parser.add_argument("--threads", type=int, default=0, help="torch threads (0: its default)")
  args = parser.parse_args()
  if args.threads:
    torch.set_num_threads(args.threads)
  machine = common.machine_description()
  x = _inputs(args.height, args.width)
  runs, params = {}, {}
  for dtype in ("float32", "bfloat16"):
    runs[f"ours_{dtype}"], params["ours"] = ours(x, dtype)
  runs["torch_float32"], params["torch"] = peer(x, False)
  runs["torch_bfloat16"], _ = peer(x, True)
  # Ours counts BatchNorm scale and shift as parameters (frozen), as torch does.
  if params["ours"] != params["torch"]:
    raise SystemExit(f"parameter counts differ, ours {params['ours']} vs torch "
                     f"{params['torch']}: the peer is not the same network")
  median = common.alternating_medians(runs, args.rounds)
  result = {"benchmark": "dt_step", **machine, "torch": torch.__version__,
            "torch_threads": torch.get_num_threads(),
            "torch_cudnn_tf32": torch.backends.cudnn.allow_tf32, "height": args.height,
            "width": args.width, "params": params["ours"], "seconds": median,
            "ours_runs_as": {"bfloat16": str(np.dtype(precision.compute_dtype("bfloat16")))},
            "ratio_float32": median["torch_float32"] / median["ours_float32"],
            "ratio_bfloat16": median["torch_float32"] / median["ours_bfloat16"],
            "ratio_bfloat16_vs_torch_autocast": median["torch_bfloat16"] / median["ours_bfloat16"],
            "load_average_after": os.getloadavg()[0]}
  print(json.dumps(result))


if __name__ == "__main__":
  common.run(main)
