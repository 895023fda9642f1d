"""The training loop every paper shares, and the contract a paper's trainer meets.

A paper's `train.py` has `make_task(config, mesh) -> Task`: an object that
knows only what is the paper's own (its train state and compiled step, its
schedule, its data stream, its evaluators and figures). `train` below does the
rest, identically for every paper:

- restore-or-init: the latest checkpoint of `workdir/checkpoints` (its meta
  must match `task.identity()`: same seed, data, schedule), else
  `task.init_state(task.init_key())`;
- the step loop until `task.total`, or `stop_after_steps` steps of this
  process (then it saves and returns: a preemption drill);
- cadences from the config, in optimizer steps: `log_every_steps` (mean of
  the step metrics -> `metrics.jsonl`, TensorBoard and the progress bar; a
  non-finite value raises `UserError` and leaves the last good checkpoint),
  `eval_every_steps` (0: never; the evaluators of `config.evals`) and
  `checkpoint_every_steps`; the end of a schedule phase (`task.phase`
  changes: ProGAN's stages and fades) and the end of training log, evaluate,
  draw figures and checkpoint too, and a new phase gets `task.start_phase`;
- `config.json`, `metrics.jsonl`, `figures/*.png` and `tensorboard/`, written by
  process 0 only; all processes step, evaluate and checkpoint together.

A resumed run continues exactly as an uninterrupted one: tasks derive data
order and random keys from (seed, step, position), never from hidden state.
`evaluate` and `restore_latest` load a finished workdir for
`experiments.evaluate`, predictors and the stream.
"""
import dataclasses
import functools
import json
import pathlib
from typing import Any, Protocol

import jax
import ml_collections
import numpy as np

from readingnotes_jax.errors import UserError
from readingnotes_jax.training import loop, mesh as mesh_lib
from readingnotes_jax.training.checkpoint import Checkpointer
from readingnotes_jax.training.tensorboard import TensorBoardWriter


class Evaluator(Protocol):
  """One named evaluation (`config.evals` lists them); returns a flat dict of metrics."""

  def run(self, state: Any, *, step: int, position: int, final: bool) -> dict[str, Any]:
    """Scores `state` after optimizer step `step`; `final`: the end of training (or
    `experiments.evaluate`), where an evaluator may do its full protocol and figures."""


class SinglePhase:
  """`Task.phase` and `Task.start_phase` for a paper whose run is one phase (all but ProGAN)."""

  def phase(self, position: int) -> int:
    del position
    return 0

  def start_phase(self, state: Any, phase: int) -> Any:
    del phase
    return state


class Task(Protocol):
  """What a paper gives the runner (built by `<paper>.train.make_task(config, mesh)`).

  Attributes:
    unit: what a position counts, shown by the progress bar ("img" for ProGAN,
      whose schedule is in images; "step" for PSPNet).
    total: the position at which training ends.

  Optional: `workdir_files() -> {file name: bytes}`, what the paper's inference needs besides
  the checkpoint and config.json (FashionGAN: the vocabulary and the mean image of its
  training data), written into the workdir by process 0 when training starts.
  """
  unit: str
  total: int

  def identity(self) -> dict[str, Any]:
    """JSON values stored in every checkpoint that a resumed run must match."""

  def init_key(self) -> jax.Array:
    """The key `init_state` draws the initial parameters from (a function of the seed)."""

  def init_state(self, key: jax.Array) -> Any:
    """A fresh train state (PyTree of arrays) from `key`; the runner jits it, replicated on
    the mesh (the key is an argument: as a constant, XLA would fold the whole random
    initialisation at compile time, minutes for a ResNet)."""

  def phase(self, position: int) -> int:
    """The schedule phase at `position` (a constant for papers without phases)."""

  def start_phase(self, state: Any, phase: int) -> Any:
    """The state to enter `phase` with (ProGAN resets Adam); identity for most papers."""

  def train_step(self, state: Any, step: int, position: int
                 ) -> tuple[Any, dict[str, jax.Array], dict[str, Any], int]:
    """Optimizer step `step` (from 0) at `position`: reads this process's share of the
    batch, runs the compiled step and returns (state, metrics as device scalars,
    host values logged with them (learning rate, resolution ...), next position)."""

  def evaluators(self) -> dict[str, Evaluator]:
    """The evaluators named by `config.evals`, by name."""

  def figures(self, state: Any, figdir: pathlib.Path, step: int, position: int,
              rows: list[dict[str, Any]], scores: dict[str, Any] | None, final: bool) -> None:
    """Writes PNGs into `figdir` (process 0 only) at every checkpoint and evaluation
    (`scores`: its metrics), given the metrics rows so far."""

  def close(self) -> None:
    """Releases data readers."""


@dataclasses.dataclass
class _Cadence:
  log: int
  evaluate: int
  checkpoint: int

  @classmethod
  def of(cls, config: ml_collections.ConfigDict) -> "_Cadence":
    cadence = cls(config.log_every_steps, config.get("eval_every_steps", 0),
                  config.checkpoint_every_steps)
    for name, value in dataclasses.asdict(cadence).items():
      if value < (0 if name == "evaluate" else 1):
        raise UserError(f"{name}_every_steps={value}: give a positive number of steps")
    return cadence


def is_writer() -> bool:
  """Whether this process writes metrics, config and figures (process 0)."""
  return jax.process_index() == 0


def _check_stop(stop_after_steps: int | None) -> None:
  if stop_after_steps is not None and stop_after_steps < 1:
    raise UserError(f"--stop_after_steps={stop_after_steps}: give a positive number of steps")


def _check_trainer(config: ml_collections.ConfigDict, workdir: str) -> None:
  """A workdir another paper's trainer wrote (its config.json) is refused by name."""
  if (pathlib.Path(workdir) / "config.json").is_file():
    read_config(workdir, config.trainer)


def _check_seed(config: ml_collections.ConfigDict) -> None:
  """Data streams and noise seed NumPy generators, which take non-negative integers only."""
  if config.get("seed", 0) < 0:
    raise UserError(f"seed={config.seed}: use a non-negative integer")


def abstract_state(task: Task, mesh: jax.sharding.Mesh | None = None) -> Any:
  """Shapes and dtypes of the task's initial state (replicated on `mesh` if given), computed
  without running it."""
  shapes = jax.eval_shape(task.init_state, task.init_key())
  sharding = None if mesh is None else mesh_lib.replicated(mesh)
  return jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sharding), shapes)


def _check_identity(meta: dict[str, Any], identity: dict[str, Any], where: pathlib.Path) -> None:
  for key, want in identity.items():
    if meta.get(key) != want:
      raise UserError(f"checkpoint {where} was made with {key}={meta.get(key)!r}, the config "
                      f"gives {want!r}: use the config it was made with, or a new --workdir")


def train(config: ml_collections.ConfigDict, workdir: str, make_task,
          stop_after_steps: int | None = None) -> dict[str, Any]:
  """Trains (or resumes) `make_task(config, mesh)` in `workdir`.

  Returns the scores of the final evaluation, or {} when stopped early.
  Everything that can fail on bad input (config, data) fails before the
  workdir is touched.
  """
  _check_stop(stop_after_steps)
  _check_seed(config)
  _check_trainer(config, workdir)
  cadence = _Cadence.of(config)
  mesh = mesh_lib.make_data_mesh(config.num_devices or None)
  task = make_task(config, mesh)
  try:
    loop.enable_compilation_cache()
    workdir = loop.check_workdir(workdir)
    ckpt = Checkpointer(workdir / "checkpoints", max_to_keep=config.keep_checkpoints)
    try:
      return _train(config, workdir, task, mesh, ckpt, cadence, stop_after_steps)
    finally:
      ckpt.close()
  finally:
    task.close()


def _train(config, workdir, task, mesh, ckpt, cadence, stop_after_steps) -> dict[str, Any]:
  step, position = 0, 0
  if ckpt.latest_step() is None:
    state = jax.jit(task.init_state, out_shardings=mesh_lib.replicated(mesh))(task.init_key())
  else:
    state, meta = ckpt.restore(abstract_state(task, mesh))
    _check_identity(meta, task.identity(), ckpt.directory / str(ckpt.latest_step()))
    step, position = meta["step"], meta["position"]
  writer = (_Outputs(config, workdir, step, getattr(task, "workdir_files", dict)())
            if is_writer() else None)
  evaluators = task.evaluators()
  bar = loop.progress_bar(task.total, position, unit=task.unit)
  rate = loop.Rate()
  rate.update(position)
  history, steps_here, last_saved = [], 0, ckpt.latest_step()
  scores: dict[str, Any] = {}
  try:
    while position < task.total:
      phase = task.phase(position)
      before = position
      state, metrics, info, position = task.train_step(state, step, position)
      step += 1
      steps_here += 1
      history.append(metrics)
      done = position >= task.total
      phase_over = done or task.phase(position) != phase
      stopping = stop_after_steps is not None and steps_here >= stop_after_steps
      evaluate = phase_over or (cadence.evaluate > 0 and step % cadence.evaluate == 0)
      save = evaluate or stopping or step % cadence.checkpoint == 0
      if step % cadence.log == 0 or save:
        means = loop.mean_metrics(history)
        history = []
        loop.check_finite(step, means, last_saved)
        speed = rate.update(position)
        if writer:
          writer.log(step, {**info, f"{_plural(task.unit)}_per_second": speed, **means})
        bar.set_postfix_str(_describe(info, means, speed, task.unit), refresh=False)
      bar.update(position - before)
      if evaluate:
        if writer:
          writer.tensorboard.flush()  # the points so far show while evaluating.
        scores = run_evaluators(evaluators, state, step=step, position=position, final=done)
        if writer:
          writer.log(step, {**info, **scores})
        rate.update(position)  # evaluation time is not training speed.
      if writer and (evaluate or save):
        task.figures(state, writer.figdir, step, position, writer.rows(), scores if evaluate else None, final=done)
        writer.images(step)
      if phase_over and not done:
        state = task.start_phase(state, task.phase(position))
      if save:
        ckpt.save(step, state, {"step": step, "position": position, **task.identity()})
        last_saved = step
      if stopping:
        break
  finally:
    bar.close()
    if writer:
      writer.close()
  return scores if position >= task.total else {}


def build_evaluators(names, registry: dict[str, Any], *args) -> dict[str, Evaluator]:
  """`registry[name](*args)` for each name of `config.evals`, in order."""
  unknown = [name for name in names if name not in registry]
  if unknown:
    raise UserError(f"config.evals names {unknown[0]!r}: choose from {', '.join(sorted(registry))}")
  return {name: registry[name](*args) for name in names}


def run_evaluators(evaluators: dict[str, Evaluator], state: Any, **kwargs) -> dict[str, Any]:
  """The merged metrics of every evaluator, in `config.evals` order."""
  scores: dict[str, Any] = {}
  for evaluator in evaluators.values():
    scores.update(evaluator.run(state, **kwargs))
  return scores


def _plural(unit: str) -> str:
  return {"img": "images", "step": "steps", "pass": "passes"}.get(unit, unit + "s")


def _describe(info: dict[str, Any], means: dict[str, float], speed: float, unit: str) -> str:
  shown = [f"{k} {v:.3g}" for k, v in info.items() if isinstance(v, (int, float))][:2]
  shown += [f"{k} {v:.3f}" for k, v in list(means.items())[:3]]
  return f"{speed:.1f} {unit}/s " + " ".join(shown)


class _Outputs:
  """Process 0's files: config.json, metrics.jsonl, TensorBoard scalars and figure images."""

  def __init__(self, config, workdir: pathlib.Path, resume_step: int,
               files: dict[str, bytes]):
    loop.write_config(workdir, config)
    for name, data in files.items():
      loop.atomic_write(workdir / name, data)
    self.metrics = loop.MetricsWriter(workdir, resume_step)
    self.figdir = workdir / "figures"
    self.tensorboard = TensorBoardWriter(workdir / "tensorboard", resume_step=resume_step or None)
    self._seen: dict[pathlib.Path, float] = {}

  def log(self, step: int, values: dict[str, Any]) -> None:
    self.metrics.write(step, **values)
    self.tensorboard.scalars(step, values)

  def rows(self) -> list[dict[str, Any]]:
    return self.metrics.rows()

  def images(self, step: int) -> None:
    """Every figure written or rewritten since the last call, as a TensorBoard image."""
    for path in sorted(self.figdir.glob("*.png")):
      mtime = path.stat().st_mtime
      if self._seen.get(path) != mtime:
        self._seen[path] = mtime
        self.tensorboard.image_from_png(step, f"figures/{path.stem}", path)
    self.tensorboard.flush()

  def close(self) -> None:
    self.tensorboard.close()


def restore_latest(workdir: str | pathlib.Path, target: Any) -> tuple[Any, dict[str, Any]]:
  """(state, meta) of the latest checkpoint in `workdir` restored onto `target`'s
  shapes and shardings (a PyTree of jax.ShapeDtypeStruct, e.g. `abstract_state`)."""
  ckpt = Checkpointer(pathlib.Path(workdir) / "checkpoints")
  try:
    if ckpt.latest_step() is None:
      raise UserError(f"no checkpoint in {ckpt.directory}: train first with experiments.train")
    return ckpt.restore(target)
  finally:
    ckpt.close()


def read_config(workdir: str | pathlib.Path,
                trainer: str | None = None) -> ml_collections.ConfigDict:
  """The `config.json` a training run wrote into `workdir`; with `trainer`, a UserError unless
  that paper's trainer (`config.trainer`) wrote it."""
  path = pathlib.Path(workdir) / "config.json"
  if not path.exists():
    raise UserError(f"{path} not found: point at a workdir written by experiments.train")
  try:
    config = ml_collections.ConfigDict(json.loads(path.read_text()))
  except ValueError as e:
    raise UserError(f"{path} is not valid JSON ({e}): point at a workdir written by "
                    "experiments.train") from None
  if trainer is not None and config.get("trainer") != trainer:
    raise UserError(f"{workdir} was trained by {config.get('trainer')!r}, not {trainer}: "
                    f"give a {trainer} workdir")
  return config


def evaluate(config: ml_collections.ConfigDict, workdir: str, make_task) -> dict[str, Any]:
  """The config's evaluators on the latest checkpoint in `workdir` (their final protocol),
  and the task's final figures. Returns {"step", "position", **scores}.
  """
  _check_seed(config)
  _check_trainer(config, workdir)
  mesh = mesh_lib.make_data_mesh(config.num_devices or None)
  task = make_task(config, mesh)
  try:
    state, meta = restore_latest(workdir, abstract_state(task, mesh))
    scores = run_evaluators(task.evaluators(), state, step=meta["step"],
                            position=meta["position"], final=True)
    if is_writer():
      rows = loop.MetricsWriter.read(pathlib.Path(workdir))
      task.figures(state, pathlib.Path(workdir) / "figures", meta["step"], meta["position"],
                   rows, scores, final=True)
  finally:
    task.close()
  return {"step": meta["step"], "position": meta["position"], **scores}


def count_params(tree: Any) -> int:
  """Number of scalars in a PyTree of arrays or shapes."""
  return int(sum(np.prod(x.shape) for x in jax.tree.leaves(tree)))


def step_flops(step_fn, *abstract_args, **static) -> float:
  """XLA's FLOP count of one call of `step_fn` on abstract arguments (no computation)."""
  lowered = jax.jit(functools.partial(step_fn, **static)).lower(*abstract_args)
  cost = lowered.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  return float(cost.get("flops", float("nan")))
