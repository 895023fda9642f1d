"""Weights from hszhao/semseg's PyTorch PSPNet checkpoints.

`load_semseg_checkpoint` maps the state dict of semseg `model/pspnet.py`
`PSPNet` (as saved by `tool/train.py`: `{'epoch', 'state_dict', 'optimizer'}`,
keys prefixed `module.` by DistributedDataParallel) onto `PSPNet` here:

  layer0.{0,3,6} / .{1,4,7}         -> backbone/stem/conv{1,2,3} / bn{1,2,3}
  layerS.B.convI / bnI              -> backbone/layerS/blockB/convI / bnI
  layerS.B.downsample.0 / .1        -> backbone/layerS/blockB/downsample_conv / _bn
  ppm.features.K.1 / .2             -> ppm/convK / bnK
  cls.0 / .1 / .4 (and aux.*)       -> cls/conv / bn / classifier (and aux/*)

Conv weights go from OIHW to HWIO; BN weight/bias/running_mean/running_var to
scale/bias (params) and mean/var (batch_stats); `num_batches_tracked` is
ignored. Every other difference (a missing, extra or mis-shaped key) raises
UserError naming the key.

Using the released models (semseg README, Google Drive folder
https://drive.google.com/open?id=15wx9vOM0euyizq-M1uINgN0_wjVRf9J3, files
`exp/<dataset>/pspnet<layers>/model/train_epoch_<epochs>.pth`):

  | checkpoint                          | num_classes | layers | crop | base size |
  | ade20k/pspnet50  train_epoch_100    | 150         | 50     | 473  | 512       |
  | ade20k/pspnet101 train_epoch_100    | 150         | 101    | 473  | 512       |
  | voc2012/pspnet50/101 train_epoch_50 | 21          | 50/101 | 473  | 512       |
  | cityscapes/pspnet50/101 ep. 200     | 19          | 50/101 | 713  | 2048      |

  model, variables = load_semseg_checkpoint("train_epoch_100.pth", 150, 50)
  logits = model.apply(variables, images, train=False)   # [N, 473, 473, 150]

Images as semseg `tool/test.py` feeds them: RGB, values 0..255, minus mean
255 * (0.485, 0.456, 0.406), divided by std 255 * (0.229, 0.224, 0.225), NHWC,
H and W with (H - 1) % 8 == 0 (sliding windows of the crop size for larger
images). Reading a `.pth` file needs torch (`pip install torch`, CPU is
enough); a state dict of NumPy arrays needs nothing. For bfloat16 compute or
another conv lowering: `model.clone(dtype=jnp.bfloat16, lowering="xla")`.
"""
import os
import re
from collections.abc import Mapping
from typing import Any

import flax
import jax
import jax.numpy as jnp
import numpy as np

from readingnotes_jax.errors import UserError
from readingnotes_jax.nn import torch_weights
from readingnotes_jax.pspnet.model import PSPNet

_HEAD_MODULES = {"conv": "0", "bn": "1", "classifier": "4"}


def _module_name(path: tuple[str, ...]) -> str:
  """semseg module name of a flax module path, e.g. ('ppm', 'bn2') -> 'ppm.features.2.2'."""
  if path[:2] == ("backbone", "stem"):
    kind, index = re.fullmatch(r"(conv|bn)(\d)", path[2]).groups()
    return f"layer0.{3 * (int(index) - 1) + (kind == 'bn')}"
  if path[0] == "backbone":
    layer, block, module = path[1], path[2].removeprefix("block"), path[3]
    module = {"downsample_conv": "downsample.0", "downsample_bn": "downsample.1"}.get(
        module, module)
    return f"{layer}.{block}.{module}"
  if path[0] == "ppm":
    kind, index = re.fullmatch(r"(conv|bn)(\d+)", path[1]).groups()
    return f"ppm.features.{index}.{1 if kind == 'conv' else 2}"
  return f"{path[0]}.{_HEAD_MODULES[path[1]]}"


def semseg_key(collection: str, path: tuple[str, ...]) -> str:
  """semseg state-dict key of one flax variable, e.g. ('params', ('cls', 'conv', 'kernel'))."""
  return torch_weights.torch_key(_module_name(path[:-1]), collection, path[-1])


def _layers_hint(state: Mapping[str, np.ndarray], layers: int) -> str:
  """': the checkpoint looks like layers=N' when its stage-3 depth says so, else a generic hint."""
  blocks = {m.group(1) for m in map(re.compile(r"layer3\.(\d+)\.").match, state) if m}
  found = {6: 50, 23: 101, 36: 152}.get(len(blocks))
  if found is not None and found != layers:
    return f": the checkpoint looks like layers={found}, pass that"
  return ": is it a semseg PSPNet checkpoint of these layers and classes?"


def load_semseg_checkpoint(path_or_state_dict: Any, num_classes: int,
                           layers: int) -> tuple[PSPNet, dict[str, Any]]:
  """Builds `PSPNet(num_classes, layers)` and its variables from a semseg checkpoint.

  Args:
    path_or_state_dict: a `.pth` path (needs torch) or an `.npz` of its state dict,
      the checkpoint dict with 'state_dict', or a state dict of torch tensors or
      NumPy arrays.
    num_classes: classes of the checkpoint (150 ADE20K, 21 VOC, 19 Cityscapes).
    layers: backbone depth of the checkpoint (50, 101 or 152).

  Returns:
    (model, variables) with variables {"params", "batch_stats"} as float32 jax
    arrays; the aux head is kept when the checkpoint has one (released ones do).
    `model.apply(variables, images_nhwc, train=False)` equals semseg's
    `model.eval()(images_nchw)` transposed.

  Raises:
    UserError: unreadable file, or a key missing, left over or of the wrong shape.
  """
  source = path_or_state_dict
  if isinstance(source, (str, os.PathLike)):
    source = torch_weights.read_state_dict_file(source, "checkpoint", "give a semseg .pth file")
  state = torch_weights.numpy_state_dict(
      source, "checkpoint", "pass the .pth path or checkpoint['state_dict']")
  classifier = state.get("cls.4.weight")
  if classifier is not None and classifier.shape[0] != num_classes:
    raise UserError(f"checkpoint has {classifier.shape[0]} classes (cls.4.weight), not "
                    f"num_classes={num_classes}: pass num_classes={classifier.shape[0]}")
  model = PSPNet(num_classes, layers=layers,
                 use_aux=any(key.startswith("aux.") for key in state))
  shapes = jax.eval_shape(lambda: model.init(
      jax.random.key(0), jnp.zeros((1, 9, 9, 3)), train=False))
  match = torch_weights.match_state_dict(
      state, {path: leaf.shape for path, leaf in flax.traverse_util.flatten_dict(
          flax.core.unfreeze(shapes)).items()}, semseg_key)
  hint = _layers_hint(state, layers)
  if match.misshaped:
    key, shape, expected = match.misshaped[0]
    raise UserError(f"checkpoint key {key} has shape {shape}, expected {expected}{hint}")
  if match.missing:
    missing = sorted(match.missing, key=torch_weights.natural_order)
    raise UserError(f"checkpoint lacks {missing[0]} (and {len(missing) - 1} more keys) of "
                    f"PSPNet(layers={layers}){hint}")
  if match.unexpected:
    raise UserError(f"checkpoint key {match.unexpected[0]} (and {len(match.unexpected) - 1} "
                    f"more) has no place in PSPNet(layers={layers}){hint}")
  return model, jax.device_put(flax.traverse_util.unflatten_dict(match.variables))
