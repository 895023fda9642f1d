"""The one parser of every config's `get_config(arg)` argument.

`arg` is a comma-separated list, applied left to right, of variant names the
config file defines (`runlocal`: the CPU demo; `test`: seconds on a CPU, run
by the contract suite; paper-specific ones such as PSPNet's `ms`) and
`key=value` overrides (values read as Python literals, else as strings):

  --config experiments/configs/pspnet/camvid_pspnet50.py:runlocal,model.dtype=bfloat16,model.bins=(1,2,4,8)
"""
import ast
from collections.abc import Callable

import ml_collections

Variant = Callable[[ml_collections.ConfigDict], None]


def split_arg(arg: str) -> list[str]:
  """Splits at commas outside brackets: "a,k=(1,2),b" -> ["a", "k=(1,2)", "b"]."""
  items, depth, current = [], 0, ""
  for char in arg:
    depth += (char in "([{") - (char in ")]}")
    if char == "," and depth == 0:
      items.append(current)
      current = ""
    else:
      current += char
  items.append(current)
  return [item.strip() for item in items if item.strip()]


def parse_value(text: str):
  try:
    return ast.literal_eval(text)
  except (ValueError, SyntaxError):
    return text


def set_path(config: ml_collections.ConfigDict, key: str, value) -> None:
  """`config.a.b = value` for key "a.b"; unknown keys raise KeyError naming the key."""
  *parents, last = key.split(".")
  node = config
  for name in parents:
    node = node[name]
  if last not in node:
    raise KeyError(f"config has no key {key!r}")
  if isinstance(node[last], tuple) and isinstance(value, (list, tuple, int, float)):
    value = tuple(value) if isinstance(value, (list, tuple)) else (value,)
  node[last] = value


def apply(config: ml_collections.ConfigDict, arg: str,
          variants: dict[str, Variant]) -> ml_collections.ConfigDict:
  """Applies `arg` (see the module docstring) to `config` and returns it."""
  for item in split_arg(arg or ""):
    if "=" in item:
      key, text = item.split("=", 1)
      set_path(config, key.strip(), parse_value(text.strip()))
    elif item in variants:
      variants[item](config)
    else:
      raise ValueError(f"unknown config variant {item!r}: use {', '.join(sorted(variants))} "
                       "or key=value, comma-separated")
  return config
