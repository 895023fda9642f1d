"""Shared command-line handling of experiments.train / evaluate / summary.

Flags: `--config path.py[:ARG]` (a file whose `get_config(arg)` returns a
ConfigDict), `--config.KEY=VALUE` overrides, `--workdir`, and per-command
extras. A config with `xla_cpu_ynn = True` hands XLA:CPU's dots (and the YNN fusion types
in its `xla_cpu_ynn_types`, if set) to YNNPACK
(`readingnotes_jax.nn.conv.enable_xla_cpu_ynn`). Any `UserError` (and any bad
flag) ends the process with one line on stderr and exit code 2; log records (warnings such as
the bfloat16-to-float32 fallback on a CPU without bfloat16 dots) go to stdout, so that line
stays alone on stderr.
"""
import importlib
import logging
import sys
from typing import Callable

from absl import flags
from ml_collections import config_flags

from readingnotes_jax.errors import UserError
from readingnotes_jax.nn import conv


def define_config_flags(with_workdir: bool) -> None:
  config_flags.DEFINE_config_file("config", None, "experiment config: path.py[:ARG]",
                                  lock_config=True)
  if with_workdir:
    flags.DEFINE_string("workdir", None, "folder for checkpoints, metrics and figures")


def paper_module(config):
  """`readingnotes_jax.<config.trainer>.train`: the paper's `make_task(config, mesh)` (the
  `training.runner.Task` contract) and `summary(config)`."""
  return importlib.import_module(f"readingnotes_jax.{config.trainer}.train")


def _inner(error: BaseException) -> BaseException:
  """The innermost exception `error` was raised from or while handling."""
  while True:
    inner = error.__cause__ or (None if error.__suppress_context__ else error.__context__)
    if inner is None:
      return error
    error = inner


def _reason(error: BaseException) -> str:
  """The last line of `_inner(error)`: ml_collections wraps a config file's own error (an
  unknown variant, a missing file) in a traceback or a report of several lines; an unknown
  key is a KeyError or AttributeError whose text is the quoted key."""
  inner = _inner(error)
  lines = [line.strip() for line in str(inner).splitlines() if line.strip()]
  reason = lines[-1].strip('"') if lines else type(inner).__name__
  if isinstance(inner, (KeyError, AttributeError)) and reason.strip("'").isidentifier():
    return f"unknown config key {reason}"
  return reason


def run(main: Callable[[flags.FlagValues], None], argv: list[str] | None = None) -> None:
  """Parses flags and runs `main(FLAGS)`; bad input -> one line on stderr, exit 2."""
  argv = sys.argv if argv is None else argv
  prog = argv[0].rsplit("/", 1)[-1]
  # force: absl's first log record at import time (orbax's) gave the root logger a stderr handler.
  logging.basicConfig(stream=sys.stdout, format="%(levelname)s:%(name)s: %(message)s", force=True)
  try:
    try:
      flags.FLAGS(argv)
      if flags.FLAGS["config"].value is not None:
        flags.FLAGS.config.get("trainer")  # a config file that failed to load raises here
    except flags.Error as e:
      first = str(e).splitlines()[0]  # "flag --config=...: Error whilst parsing config file:"
      raise UserError(f"{first} {_reason(e)}" if first.endswith(":") else first) from None
    except (KeyError, AttributeError, ValueError, TypeError, OSError, SyntaxError) as e:
      # ml_collections reports unknown keys and bad config files this way.
      raise UserError(f"bad --config: {_reason(e)}") from None
    if flags.FLAGS["config"].value is None:
      raise UserError("--config is required, e.g. --config experiments/configs/progan/fashion_mnist_32.py:runlocal")
    if "workdir" in flags.FLAGS and not flags.FLAGS.workdir:
      raise UserError("--workdir is required: the folder for checkpoints, metrics and figures")
    if flags.FLAGS.config.get("xla_cpu_ynn", False):  # before the backend starts
      conv.enable_xla_cpu_ynn(flags.FLAGS.config.get("xla_cpu_ynn_types", "individual_dot"))
    main(flags.FLAGS)
  except UserError as e:
    print(f"{prog}: error: {e}", file=sys.stderr)
    sys.exit(2)
