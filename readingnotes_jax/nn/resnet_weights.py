"""Initial weights for `nn.resnet.ResNet` from files: ImageNet PyTorch models or our checkpoints.

`load_resnet_weights(source, target)` reads
- semseg's ImageNet models `initmodel/resnet50_v2.pth`, `resnet101_v2.pth`,
  `resnet152_v2.pth` (hszhao/semseg `model/resnet.py`: `ResNet(Bottleneck, ...,
  deep_base=True)`, which `resnet50(pretrained=True)` fills from that file with
  `strict=False`): deep stem `conv1` (3x3/2, 64), `conv2` (64), `conv3` (128),
  `bn1..bn3`;
- classic-stem ResNets as torchvision's `models/resnet.py` saves them
  (`resnet50-0676ba61.pth`, ...): `conv1` 7x7/2 and `bn1`; torchvision's
  Bottleneck strides its 3x3 conv, as ours with `stride_in_1x1=False`;
- either one as an `.npz` of the same keys, or as a state dict in memory;
- a directory written by `save_resnet_checkpoint` (the project's orbax wrapper,
  `training.checkpoint`, with state {"params", "batch_stats"} of this ResNet),
  e.g. the backbone of a trained PSPNet:
    save_resnet_checkpoint(directory, {"params": state["params"]["backbone"],
                                       "batch_stats": state["batch_stats"]["backbone"]}).

Keys of a state dict, for either stem (flax paths under the ResNet):

  conv{i}.weight, bn{i}.*               -> stem/conv{i}, stem/bn{i}
  layerS.B.conv{i}.weight, bn{i}.*      -> layerS/blockB/conv{i}, bn{i}
  layerS.B.downsample.0 / .1            -> layerS/blockB/downsample_conv / downsample_bn
  fc.weight, fc.bias                    ignored (the ImageNet classifier)
  layerS.* of a stage the model omits   ignored (`ResNet.outputs` ends before it)

with the layouts of `nn.torch_weights`. Any other key, a key the model needs
and the file lacks, a shape that differs (another depth or width) or a stem of
the other kind raises UserError naming it.
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
from readingnotes_jax.nn.resnet import STAGE_BLOCKS, ResNet
from readingnotes_jax.training.checkpoint import Checkpointer

_FIX = ("give semseg's initmodel/resnet{50,101,152}_v2.pth, a torchvision ResNet .pth, an .npz "
        "of either, or a directory written by save_resnet_checkpoint")
_SUBMODULES = {"downsample_conv": "downsample.0", "downsample_bn": "downsample.1"}


def variable_shapes(model: ResNet) -> Any:
  """{"params", "batch_stats"} of `model` as jax.ShapeDtypeStruct (nothing computed)."""
  return jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 33, 33, 3)),
                                           train=False))


def torch_key(collection: str, path: tuple[str, ...]) -> str:
  """State-dict key of one ResNet variable, e.g. ('params', ('layer1', 'block0',
  'downsample_conv', 'kernel')) -> 'layer1.0.downsample.0.weight'."""
  *module, leaf = path
  if module[0] == "stem":
    name = module[1]
  else:
    layer, block, submodule = module
    name = f"{layer}.{block.removeprefix('block')}.{_SUBMODULES.get(submodule, submodule)}"
  return torch_weights.torch_key(name, collection, leaf)


def _describe_model(params: Mapping[str, Any]) -> str:
  """'ResNet-50 (width 64, deep stem)' from a ResNet's params (or their shapes)."""
  blocks = tuple(len(params[f"layer{s}"]) for s in range(1, 5) if f"layer{s}" in params)
  depth = {v: f"ResNet-{k}" for k, v in STAGE_BLOCKS.items()}.get(
      blocks, f"ResNet with blocks {blocks} in layer1..layer{len(blocks)}")
  stem = "deep stem" if "conv2" in params["stem"] else "7x7 stem"
  return f"{depth} (width {params['stem']['conv1']['kernel'].shape[-1]}, {stem})"


def _describe_file(state: Mapping[str, np.ndarray]) -> str:
  """What a state dict looks like, e.g. 'ResNet-101 (width 64, 7x7 stem)', from its keys."""
  blocks = tuple(len({m.group(1) for m in map(re.compile(rf"layer{s}\.(\d+)\.").match, state)
                      if m}) for s in range(1, 5))
  depth = {v: f"ResNet-{k}" for k, v in STAGE_BLOCKS.items()}.get(
      blocks, f"a network with blocks {blocks} in layer1..layer4")
  if "conv1.weight" not in state:
    return f"{depth} without a stem conv1"
  stem = "deep stem" if "conv2.weight" in state else "7x7 stem"
  return f"{depth} (width {state['conv1.weight'].shape[0]}, {stem})"


def _ignored(key: str, stages: set[str]) -> bool:
  """fc.* and the keys of stages the model does not build."""
  stage = re.match(r"(layer\d)\.", key)
  return key.startswith("fc.") or (stage is not None and stage.group(1) not in stages)


def load_resnet_weights(source: Any, target: Any) -> tuple[dict[str, Any], list[str]]:
  """The variables of a ResNet from `source` (see the module docstring).

  Args:
    source: a `.pth` or `.npz` path, a checkpoint directory of `save_resnet_checkpoint`,
      or a state dict (torch tensors or NumPy arrays).
    target: {"params", "batch_stats"} of the ResNet to fill, as arrays or
      jax.ShapeDtypeStruct (`variable_shapes(model)`, or a PSPNet's "backbone" parts).

  Returns:
    (variables, ignored): {"params", "batch_stats"} as float32 NumPy arrays in
    `target`'s structure, and the state-dict keys left out on purpose (fc.*,
    stages the model omits), in natural order.

  Raises:
    UserError: an unreadable or absent file, another stem, or keys missing, left
      over or of the wrong shape (named).
  """
  target = flax.core.unfreeze(target)
  model = _describe_model(target["params"])
  if isinstance(source, (str, os.PathLike)) and os.path.isdir(source):
    return _restore(os.fspath(source), target, model), []
  where = "ResNet weights"
  if isinstance(source, (str, os.PathLike)):
    where = f"ResNet weights {os.fspath(source)}"
    source = torch_weights.read_state_dict_file(source, "ResNet weights", _FIX)
  state = torch_weights.numpy_state_dict(source, where, _FIX)
  model_deep = "conv2" in target["params"]["stem"]
  if "conv1.weight" in state and ("conv2.weight" in state) != model_deep:
    want = ("deep-stem weights (semseg's resnet*_v2.pth)" if model_deep
            else "7x7-stem weights (torchvision's)")
    raise UserError(f"{where} hold {_describe_file(state)}, the model is {model}: give {want} "
                    f"or a ResNet with deep_stem={not model_deep}")
  stages = {name for name in target["params"] if name != "stem"}
  ignored = {key for key in state if _ignored(key, stages)}
  match = torch_weights.match_state_dict(
      {k: v for k, v in state.items() if k not in ignored},
      {path: leaf.shape for path, leaf in flax.traverse_util.flatten_dict(target).items()},
      torch_key)
  if match.problems():
    raise UserError(f"{where} hold {_describe_file(state)} and do not fit {model}: "
                    f"{match.problems()}")
  return (flax.traverse_util.unflatten_dict(match.variables),
          sorted(ignored, key=torch_weights.natural_order))


def _restore(directory: str, target: dict[str, Any], model: str) -> dict[str, Any]:
  """The latest checkpoint of `save_resnet_checkpoint` in `directory`, as NumPy arrays."""
  abstract = jax.tree.map(lambda leaf: jax.ShapeDtypeStruct(leaf.shape, leaf.dtype), target)
  checkpointer = Checkpointer(directory, async_save=False)
  try:
    state, _ = checkpointer.restore(abstract)
  except UserError as e:
    raise UserError(f"ResNet weights {directory} are not a checkpoint of {model} "
                    f"(save_resnet_checkpoint writes one): {e}") from e
  finally:
    checkpointer.close()
  return jax.device_get(state)


def save_resnet_checkpoint(directory: str | os.PathLike, variables: Mapping[str, Any]) -> None:
  """Writes {"params", "batch_stats"} of a ResNet to a new `directory` for
  `load_resnet_weights` (an orbax checkpoint, step 0, through training.checkpoint)."""
  if os.path.exists(directory) and os.listdir(directory):
    raise UserError(f"{os.fspath(directory)} exists and is not empty: choose a new directory")
  state = {"params": variables["params"], "batch_stats": variables["batch_stats"]}
  checkpointer = Checkpointer(directory, max_to_keep=1, async_save=False)
  try:
    checkpointer.save(0, state, {"model": _describe_model(flax.core.unfreeze(state["params"]))})
  finally:
    checkpointer.close()
