"""PyTorch state dicts onto Flax variables: reading, key matching and reporting.

Shared by the converters of released PyTorch weights: `pspnet.convert` (semseg's
PSPNet), `metrics.inception` (pytorch-fid's InceptionV3) and `nn.resnet_weights`
(ImageNet ResNets). torch modules and our Flax modules store the same numbers as

  Conv2d.weight [O, I, H, W]        -> kernel [H, W, I, O]
  Linear.weight [out, in]           -> kernel [in, out]
  *.bias                            -> bias
  BatchNorm2d.weight / .bias        -> params scale / bias
  BatchNorm2d.running_mean / _var   -> batch_stats mean / var

and `num_batches_tracked` has no counterpart (our BatchNorm's momentum is fixed).
A converter names the torch module of each Flax module path; `match_state_dict`
then places every array and collects every key it cannot place.
"""
from collections.abc import Callable, Mapping
import dataclasses
import os
import pickle
import re
from typing import Any

import numpy as np

from readingnotes_jax.errors import UserError

LEAF_NAMES = {("params", "kernel"): "weight", ("params", "bias"): "bias",
              ("params", "scale"): "weight", ("batch_stats", "mean"): "running_mean",
              ("batch_stats", "var"): "running_var"}


def torch_key(module: str, collection: str, leaf: str) -> str:
  """State-dict key of Flax variable `collection`/.../`leaf` of torch module `module`."""
  return f"{module}.{LEAF_NAMES[collection, leaf]}"


def read_state_dict_file(path: str | os.PathLike, what: str, fix: str) -> Any:
  """What a `.pth` (torch.load, tensors only) or an `.npz` (NumPy) file holds.

  Args:
    path: the file.
    what: what the file should be, for messages ("FID weights", "checkpoint").
    fix: the end of every message: what to give instead.

  Raises:
    UserError: the file is absent or unreadable, or a `.pth` without torch installed.
  """
  path = os.fspath(path)
  if not os.path.isfile(path):
    raise UserError(f"{what} {path} not found: {fix}")
  if path.endswith(".npz"):
    try:
      with np.load(path, allow_pickle=False) as data:
        return {key: data[key] for key in data.files}
    except (OSError, ValueError, EOFError) as e:
      raise UserError(f"cannot read {what} {path}: {e}".splitlines()[0] + f": {fix}") from e
  try:
    import torch  # pylint: disable=import-outside-toplevel
  except ImportError as e:
    raise UserError(f"reading {path} needs torch (pip install torch, the CPU wheel is enough), "
                    f"or give an .npz of its state dict") from e
  try:
    return torch.load(path, map_location="cpu", weights_only=True)
  except (OSError, RuntimeError, EOFError, ValueError, pickle.UnpicklingError) as e:
    raise UserError(f"cannot read {what} {path}: {e}".splitlines()[0] + f": {fix}") from e


def numpy_state_dict(source: Any, what: str, fix: str) -> dict[str, np.ndarray]:
  """{key: float32 array} of a state dict, or of a training checkpoint's 'state_dict'.

  Torch tensors are converted; `module.` prefixes (DistributedDataParallel) are
  removed and `num_batches_tracked` entries dropped. Raises UserError (`what`:
  `fix`) when `source` is not a mapping.
  """
  if isinstance(source, Mapping) and "state_dict" in source:
    source = source["state_dict"]
  if not isinstance(source, Mapping):
    raise UserError(f"{what}: expected a state dict, got {type(source).__name__}: {fix}")
  state = {}
  for key, value in source.items():
    key = key.removeprefix("module.")
    if key.endswith("num_batches_tracked"):
      continue
    if hasattr(value, "detach"):
      value = value.detach().cpu().float().numpy()
    state[key] = np.array(value, np.float32)  # a copy: torch buffers change in place
  return state


def to_flax_layout(value: np.ndarray) -> np.ndarray:
  """Conv OIHW -> HWIO, Linear [out, in] -> [in, out]; vectors as they are."""
  if value.ndim == 4:
    return value.transpose(2, 3, 1, 0)
  if value.ndim == 2:
    return value.T
  return value


def to_torch_shape(shape: tuple[int, ...]) -> tuple[int, ...]:
  """The torch shape of a Flax variable shape (inverse of `to_flax_layout`)."""
  if len(shape) == 4:
    return (shape[3], shape[2], shape[0], shape[1])
  return tuple(reversed(shape))


def natural_order(key: str) -> list:
  """Sort key putting 'layer3.10.x' after 'layer3.9.x'."""
  return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", key)]


def listed(keys: list[str], limit: int = 3) -> str:
  """'a, b, c (and 4 more)'."""
  shown = ", ".join(keys[:limit])
  return shown + (f" (and {len(keys) - limit} more)" if len(keys) > limit else "")


@dataclasses.dataclass
class Match:
  """A state dict placed onto Flax variables.

  Attributes:
    variables: {(collection, *module path, leaf): array in Flax layout} of the placed keys.
    missing: keys the variables need and the state dict lacks, in variable order.
    unexpected: keys of the state dict no variable takes, in natural order.
    misshaped: (key, its shape, the shape expected in torch layout), in variable order.
  """
  variables: dict[tuple[str, ...], np.ndarray]
  missing: list[str]
  unexpected: list[str]
  misshaped: list[tuple[str, tuple[int, ...], tuple[int, ...]]]

  def problems(self) -> str:
    """'missing keys ...; unexpected keys ...; mis-shaped keys k (1, 2) (expected (3,))', or ''."""
    misshaped = [f"{key} {shape} (expected {expected})" for key, shape, expected in self.misshaped]
    return "; ".join(f"{label} {listed(keys)}" for label, keys in (
        ("missing keys", self.missing), ("unexpected keys", self.unexpected),
        ("mis-shaped keys", misshaped)) if keys)


def match_state_dict(state: Mapping[str, np.ndarray],
                     shapes: Mapping[tuple[str, ...], tuple[int, ...]],
                     key_of: Callable[[str, tuple[str, ...]], str]) -> Match:
  """Places `state` onto the variables of `shapes`.

  Args:
    state: {key: array} in torch layout (`numpy_state_dict`).
    shapes: {(collection, *module path, leaf): shape} of the Flax variables, e.g.
      `flax.traverse_util.flatten_dict` of `jax.eval_shape(model.init, ...)`.
    key_of: `key_of(collection, (*module path, leaf))` -> the variable's state-dict key.

  Returns:
    A `Match`; its `variables` are float32 copies in Flax layout, C-contiguous.
  """
  variables, missing, misshaped, expected_keys = {}, [], [], set()
  for (collection, *path), shape in shapes.items():
    key = key_of(collection, tuple(path))
    expected_keys.add(key)
    if key not in state:
      missing.append(key)
      continue
    value = to_flax_layout(state[key])
    if value.shape != tuple(shape):
      misshaped.append((key, tuple(state[key].shape), to_torch_shape(tuple(shape))))
      continue
    variables[(collection, *path)] = np.ascontiguousarray(value)
  unexpected = sorted(set(state) - expected_keys, key=natural_order)
  return Match(variables, missing, unexpected, misshaped)
