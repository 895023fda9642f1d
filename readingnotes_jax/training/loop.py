"""Pieces every trainer's loop shares: metrics file, config file, compile cache, progress bar."""
import json
import math
import os
import pathlib
import sys
import time
from typing import Any, Iterable

import jax
import numpy as np
import tqdm

from readingnotes_jax.errors import UserError


def enable_compilation_cache(directory: str | None = None) -> str:
  """Turns on JAX's persistent compilation cache so a rerun skips compiles.

  The folder is `directory`, else `$READINGNOTES_CACHE/jax`, else
  `~/.cache/readingnotes_jax/jax`.
  """
  if directory is None:
    root = os.environ.get("READINGNOTES_CACHE",
                          os.path.join(os.path.expanduser("~"), ".cache", "readingnotes_jax"))
    directory = os.path.join(root, "jax")
  os.makedirs(directory, exist_ok=True)
  jax.config.update("jax_compilation_cache_dir", directory)
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
  jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
  return directory


def atomic_write(path: pathlib.Path, data: str | bytes) -> None:
  """Writes `path` through a temporary file renamed into place: never a partial file."""
  tmp = path.with_name(path.name + ".tmp")
  if isinstance(data, bytes):
    tmp.write_bytes(data)
  else:
    tmp.write_text(data)
  os.replace(tmp, path)


def write_config(workdir: pathlib.Path, config: Any) -> None:
  """Writes `workdir/config.json` (atomically)."""
  atomic_write(workdir / "config.json", config.to_json_best_effort(indent=2, sort_keys=True))


class MetricsWriter:
  """Appends one JSON object per line, each with `step`, to `workdir/metrics.jsonl`.

  On resume from checkpoint step S, rows with step > S (written after that
  checkpoint by the interrupted run) are dropped, so the file reads like an
  uninterrupted run's.
  """

  def __init__(self, workdir: pathlib.Path, resume_step: int):
    self.path = workdir / "metrics.jsonl"
    if self.path.exists():
      kept = [line for line in self.path.read_text().splitlines()
              if line.strip() and json.loads(line)["step"] <= resume_step]
      atomic_write(self.path, "".join(line + "\n" for line in kept))

  def write(self, step: int, **values: Any) -> None:
    row = {"step": int(step), **{k: jsonable(v) for k, v in values.items()}}
    with self.path.open("a") as f:
      f.write(json.dumps(row) + "\n")

  def rows(self) -> list[dict[str, Any]]:
    return self.read(self.path.parent)

  @staticmethod
  def read(workdir: pathlib.Path) -> list[dict[str, Any]]:
    """The rows of `workdir/metrics.jsonl` ([] when there is none)."""
    path = workdir / "metrics.jsonl"
    if not path.exists():
      return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def jsonable(v: Any) -> Any:
  """`v` with arrays and NumPy scalars as JSON types (dicts and lists recursively)."""
  if isinstance(v, dict):
    return {str(k): jsonable(x) for k, x in v.items()}
  if isinstance(v, (list, tuple)):
    return [jsonable(x) for x in v]
  if isinstance(v, (np.ndarray, jax.Array)) or np.isscalar(v):
    v = np.asarray(v)
    return v.item() if v.ndim == 0 else v.tolist()
  return v


def check_finite(step: int, metrics: dict[str, float], last_checkpoint: int | None) -> None:
  """Raises UserError when a logged loss is NaN or infinite."""
  bad = {k: v for k, v in metrics.items() if not math.isfinite(v)}
  if bad:
    name, value = next(iter(bad.items()))
    kept = (f"the last good checkpoint (step {last_checkpoint}) is intact"
            if last_checkpoint is not None else "no checkpoint was written")
    raise UserError(f"non-finite loss at step {step} ({name}={value}); {kept}: "
                    "lower the learning rate or check the data, then rerun")


def progress_bar(total: int, initial: int, unit: str) -> tqdm.tqdm:
  """A tqdm bar on stderr; quiet (no redraw storm) when stderr is not a terminal."""
  return tqdm.tqdm(total=total, initial=initial, unit=unit, unit_scale=True,
                   dynamic_ncols=True, file=sys.stderr,
                   mininterval=0.5 if sys.stderr.isatty() else 10.0)


class Rate:
  """Items per second over the last interval."""

  def __init__(self):
    self._t, self._n = time.perf_counter(), 0

  def update(self, n: int) -> float:
    t = time.perf_counter()
    rate = (n - self._n) / max(t - self._t, 1e-9)
    self._t, self._n = t, n
    return rate


def mean_metrics(history: Iterable[dict[str, Any]]) -> dict[str, float]:
  """Averages a list of per-step metric dicts (device arrays fetched once)."""
  history = jax.device_get(list(history))
  keys = history[0].keys()
  return {k: float(np.mean([h[k] for h in history])) for k in keys}


def check_workdir(workdir: str) -> pathlib.Path:
  path = pathlib.Path(workdir)
  if path.exists() and not path.is_dir():
    raise UserError(f"--workdir {workdir} exists and is not a folder: choose another path")
  path.mkdir(parents=True, exist_ok=True)
  return path
