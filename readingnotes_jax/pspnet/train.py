"""PSPNet training and evaluation as the authors trained it, with exact resume.

Matches hszhao/semseg `tool/train.py`:
- SGD, momentum 0.9, weight decay 1e-4 on every parameter (torch's coupled
  decay: the gradient gets `wd * param` before the momentum buffer), base lr
  0.01;
- poly learning rate `base_lr * (1 - it / max_iter) ** 0.9`, `it` counting
  optimizer steps from 0, `max_iter = epochs * (train images // batch)`
  (semseg's loader drops the last partial batch); the new modules (`ppm`,
  `cls`, `aux`) get 10x the backbone's rate;
- loss: main + 0.4 * aux cross entropy, label 255 ignored;
- BatchNorm statistics over the global batch (semseg trains with SyncBN):
  the step is one `jax.jit` program with the batch sharded over the data mesh
  and the state replicated, so XLA's reductions are global.
The cross entropy is a mean over the global batch's valid pixels (semseg's
DDP averages per-GPU means; the two agree when GPUs see equal valid counts).

Resume is exact: sample `i` of the augmented stream and its augmentation are
functions of (seed, i), step `s` reads samples `s * batch ...`, and the
dropout key of step `s` is `fold_in(dropout_key(seed), s)`; parameters, BatchNorm
statistics and optimizer state come from the checkpoint.

Validation follows semseg `tool/test.py` (`inference.py`: sliding windows,
flips, scales) on the validation split, every `eval.every_steps` steps on the
first `eval.periodic_images` images, and on the whole split at the end.
"""
import functools
import json
import pathlib
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from readingnotes_jax.data.segmentation_augment import SegmentationStream
from readingnotes_jax.errors import UserError
from readingnotes_jax.pspnet import data as pspnet_data
from readingnotes_jax.pspnet import figures as pspnet_figures
from readingnotes_jax.pspnet import inference
from readingnotes_jax.pspnet.model import PSPNet, pspnet_loss
from readingnotes_jax.training import figures, loop, mesh as mesh_lib
from readingnotes_jax.training.checkpoint import Checkpointer

_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
BACKBONE = "backbone"  # Parameters under this name train at the base rate, the rest at 10x.
# XLA's RngBitGenerator keys: the same numbers for any sharding of the batch (like threefry),
# and on XLA:CPU they compile about 10x faster than threefry with jax_threefry_partitionable
# (jax 0.10: one jax.random.normal of 216 values, ~9 s against ~1 s; PSPNet-50's init ~70 s).
# The numbers differ between CPU, GPU and TPU.
PRNG_IMPL = "rbg"


def make_key(seed: int) -> jax.Array:
  """A root key of `PRNG_IMPL`."""
  return jax.random.key(seed, impl=PRNG_IMPL)


def run_keys(seed: int) -> tuple[jax.Array, jax.Array]:
  """(initialisation key, dropout key); step `s` drops out with `fold_in(dropout key, s)`."""
  init_key, dropout_key = jax.random.split(make_key(seed))
  return init_key, dropout_key


def build_model(config: ml_collections.ConfigDict) -> PSPNet:
  """The PSPNet of `config.model` with the data set's number of classes."""
  m = config.model
  if m.dtype not in _DTYPES:
    raise UserError(f"model.dtype={m.dtype!r}: use one of {sorted(_DTYPES)}")
  return PSPNet(num_classes=len(pspnet_data.dataset(config).class_names), layers=m.layers,
                bins=tuple(m.bins), dropout=m.dropout, use_aux=m.use_aux,
                factorized_head=m.get("factorized_head", True),  # absent in older config.json
                dtype=_DTYPES[m.dtype], lowering=m.lowering or None)


def _check_config(config: ml_collections.ConfigDict, num_devices: int) -> None:
  """UserError for settings that cannot work, before anything is read or written."""
  for key, size in (("data.crop_size", config.data.crop_size),
                    ("eval.crop_size", config.eval.crop_size or config.data.crop_size)):
    if size < 9 or (size - 1) % 8:
      raise UserError(f"{key}={size}: PSPNet needs (size - 1) % 8 == 0, e.g. 473 or 713")
  if config.batch_size < 1 or config.batch_size % num_devices:
    raise UserError(f"batch_size={config.batch_size} does not split over {num_devices} "
                    "devices: use a positive multiple of the device count")
  if not config.eval.scales:
    raise UserError("eval.scales is empty: use (1.0,) or the multi-scale set")


def max_steps(config: ml_collections.ConfigDict, num_train_images: int) -> int:
  """`config.max_steps` if set, else semseg's `epochs * (images // batch)`."""
  if config.max_steps > 0:
    return config.max_steps
  steps = config.epochs * (num_train_images // config.batch_size)
  if steps < 1:
    raise UserError(f"{num_train_images} training images give no full batch of "
                    f"{config.batch_size}: lower batch_size or add data")
  return steps


def learning_rate(config: ml_collections.ConfigDict, step: int, total_steps: int) -> float:
  """semseg `poly_learning_rate` of the backbone at optimizer step `step` (from 0):
  base_lr * (1 - step / total_steps) ** power."""
  o = config.optimizer
  return o.base_lr * max(1.0 - step / total_steps, 0.0) ** o.power


def param_labels(params: Any) -> dict[str, str]:
  """'backbone' for the backbone, 'new' for the rest (ppm, cls, aux)."""
  return {name: BACKBONE if name == BACKBONE else "new" for name in params}


def make_optimizer(config: ml_collections.ConfigDict) -> optax.GradientTransformation:
  """torch.optim.SGD(momentum, weight_decay) without its learning rate: the update is
  `-lr * direction`, with the 10x of the new modules in the direction.

  The rate is an argument of the train step, so the compiled step does not
  depend on the schedule (one compile serves any base_lr or length).
  """
  o = config.optimizer

  def direction(multiplier: float) -> optax.GradientTransformation:
    return optax.chain(optax.add_decayed_weights(o.weight_decay), optax.trace(o.momentum),
                       optax.scale(multiplier))
  return optax.multi_transform({BACKBONE: direction(1.0), "new": direction(o.new_lr_multiplier)},
                               param_labels)


def create_train_state(model: PSPNet, tx: optax.GradientTransformation,
                       key: jax.Array) -> dict[str, Any]:
  """Parameters, BatchNorm statistics and optimizer state of a fresh model (jit it: the
  eager init of a ResNet-50 runs thousands of small ops)."""
  # Parameter shapes do not depend on the input size: init on a small image.
  variables = model.init(key, jnp.zeros((1, 33, 33, 3), jnp.float32), train=False)
  params = variables["params"]
  return {"params": params, "batch_stats": variables["batch_stats"],
          "opt_state": tx.init(params)}


def train_step(state: dict[str, Any], batch: dict[str, jax.Array], key: jax.Array,
               lr: jax.Array, *, model: PSPNet, tx: optax.GradientTransformation,
               aux_weight: float, ignore_label: int
               ) -> tuple[dict[str, Any], dict[str, jax.Array]]:
  """One SGD step at backbone rate `lr` on `batch` (`image` [N, H, W, 3] normalized,
  `label` [N, H, W]); `key` drives dropout."""
  labels = batch["label"]

  def loss_fn(params):
    (logits, aux_logits), updated = model.apply(
        {"params": params, "batch_stats": state["batch_stats"]}, batch["image"], train=True,
        rngs={"dropout": key}, mutable=["batch_stats"])
    loss, parts = pspnet_loss(logits, aux_logits, labels, aux_weight, ignore_label)
    return loss, (parts, updated["batch_stats"], logits)

  (loss, (parts, batch_stats, logits)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
      state["params"])
  direction, opt_state = tx.update(grads, state["opt_state"], state["params"])
  params = jax.tree.map(lambda p, d: p - lr * d, state["params"], direction)
  valid = labels != ignore_label
  correct = jnp.sum((jnp.argmax(logits, axis=-1) == labels) & valid)
  metrics = {"loss": loss, **parts,
             "pixel_accuracy": correct / jnp.maximum(jnp.sum(valid), 1)}
  return {"params": params, "batch_stats": batch_stats, "opt_state": opt_state}, metrics


def make_train_step(config: ml_collections.ConfigDict, model: PSPNet,
                    tx: optax.GradientTransformation, mesh: jax.sharding.Mesh):
  """`step(state, batch, key, lr)` jitted over `mesh` (state replicated, batch sharded)."""
  replicated = mesh_lib.replicated(mesh)
  step = functools.partial(train_step, model=model, tx=tx, aux_weight=config.loss.aux_weight,
                           ignore_label=config.loss.ignore_label)
  return jax.jit(step, in_shardings=(replicated, mesh_lib.batch_sharded(mesh), replicated,
                                     replicated),
                 out_shardings=(replicated, replicated), donate_argnums=(0,))


def make_predictor(config: ml_collections.ConfigDict, probability_fn, variables,
                   num_devices: int) -> inference.Predictor:
  """semseg test-time prediction with `config.eval` (batch rounded up to the device count)."""
  e = config.eval
  crop = e.crop_size or config.data.crop_size
  batch = -(-e.batch_size // num_devices) * num_devices
  return inference.Predictor(functools.partial(probability_fn, variables),
                             len(pspnet_data.dataset(config).class_names), (crop, crop),
                             e.base_size, tuple(e.scales), batch)


class _Validator:
  """Validation scores during and after training, their curves and figures."""

  def __init__(self, config, workdir: pathlib.Path, model: PSPNet, mesh, val_source):
    self.config, self.mesh, self.source = config, mesh, val_source
    self.figdir = workdir / "figures"
    self.probability_fn = inference.make_probability_fn(model, flip=config.eval.flip, mesh=mesh)

  def run(self, state, num_images: int, keep_examples: int = 0) -> inference.Evaluation:
    variables = {"params": state["params"], "batch_stats": state["batch_stats"]}
    predictor = make_predictor(self.config, self.probability_fn, variables, self.mesh.size)
    return inference.evaluate_source(predictor, self.source, num_images=num_images,
                                     keep_examples=keep_examples)

  def final(self, state, step: int) -> dict[str, Any]:
    evaluation = self.run(state, 0, keep_examples=self.config.figures.num_examples)
    save_evaluation_figures(self.config, evaluation, self.figdir, step)
    return evaluation.scores


def save_evaluation_figures(config, evaluation: inference.Evaluation,
                            figdir: pathlib.Path, step: int) -> None:
  """figures/predictions.png (overlays with a legend) and figures/confusion_matrix.png."""
  ds = pspnet_data.dataset(config)
  title = f"{ds.title} {config.data.val_split}, step {step}: mIoU {evaluation.scores['miou']:.3f}"
  if evaluation.examples:
    pspnet_figures.save_prediction_overlays(evaluation.examples, ds.class_names, ds.palette,
                                            figdir / "predictions.png", title=title)
  pspnet_figures.save_confusion_matrix(evaluation.confusion, ds.class_names,
                                       figdir / "confusion_matrix.png", title=title)


def save_curves(writer: loop.MetricsWriter, figdir: pathlib.Path) -> None:
  """figures/loss.png (training losses) and figures/val_miou.png (validation mIoU)."""
  rows = writer.rows()
  train_rows = [r for r in rows if "loss" in r]
  if train_rows:
    figures.save_curves([r["step"] for r in train_rows],
                        {k: [r[k] for r in train_rows] for k in ("loss", "main_loss", "aux_loss")},
                        figdir / "loss.png", xlabel="step", ylabel="cross entropy",
                        title="training loss (main + 0.4 aux)", logy=True)
  val_rows = [r for r in rows if "val_miou" in r]
  if val_rows:
    figures.save_curves([r["step"] for r in val_rows],
                        {"mIoU": [r["val_miou"] for r in val_rows],
                         "mAcc": [r["val_macc"] for r in val_rows],
                         "aAcc": [r["val_aacc"] for r in val_rows]},
                        figdir / "val_miou.png", xlabel="step", ylabel="score",
                        title="validation (sliding window)")


def _val_row(scores: dict[str, Any], num_images: int) -> dict[str, Any]:
  return {"val_miou": scores["miou"], "val_macc": scores["macc"], "val_aacc": scores["aacc"],
          "val_images": num_images}


def _meta(config, step: int, total_steps: int) -> dict[str, Any]:
  return {"step": step, "total_steps": total_steps, "seed": config.seed,
          "data_source": config.data.source,
          "num_classes": len(pspnet_data.dataset(config).class_names)}


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str,
                       stop_after_steps: int | None = None) -> dict[str, Any]:
  """Trains (or resumes) PSPNet in `workdir`; returns the final validation scores
  (empty when stopped early)."""
  if stop_after_steps is not None and stop_after_steps < 1:
    raise UserError(f"--stop_after_steps={stop_after_steps}: give a positive number of steps")
  mesh = mesh_lib.make_data_mesh(config.num_devices or None)
  _check_config(config, mesh.size)
  model = build_model(config)
  # Data first: a bad file stops the run before the workdir is touched.
  train_source = pspnet_data.load_split(config, config.data.train_split, scaled=True)
  val_source = pspnet_data.load_split(config, config.data.val_split, scaled=False)
  total_steps = max_steps(config, len(train_source))
  tx = make_optimizer(config)
  loop.enable_compilation_cache()
  workdir = loop.check_workdir(workdir)
  ckpt = Checkpointer(workdir / "checkpoints", max_to_keep=config.keep_checkpoints)
  try:
    state = jax.jit(functools.partial(create_train_state, model, tx),
                    out_shardings=mesh_lib.replicated(mesh))(run_keys(config.seed)[0])
    step = 0
    if ckpt.latest_step() is not None:
      state, meta = ckpt.restore(state)
      _check_meta(config, meta, ckpt.directory / str(ckpt.latest_step()), total_steps)
      step = meta["step"]
    loop.write_config(workdir, config)
    writer = loop.MetricsWriter(workdir, step)
    validator = _Validator(config, workdir, model, mesh, val_source)
    stream = SegmentationStream(train_source, crop_size=config.data.crop_size, seed=config.seed,
                                train=True)
    step_fn = make_train_step(config, model, tx, mesh)
    return _loop(config, workdir, state, step, total_steps, stop_after_steps, ckpt, writer,
                 validator, stream, step_fn, mesh)
  finally:
    ckpt.close()


def _loop(config, workdir, state, step, total_steps, stop_after_steps, ckpt, writer,
          validator, stream, step_fn, mesh) -> dict[str, Any]:
  dropout_key = run_keys(config.seed)[1]
  batch_size = config.batch_size
  bar = loop.progress_bar(total_steps, step, unit="step")
  rate = loop.Rate()
  rate.update(step * batch_size)
  history, steps_here, last_saved = [], 0, ckpt.latest_step()
  scores: dict[str, Any] = {}
  try:
    with stream:
      while step < total_steps:
        batch = stream.batch(step * batch_size, batch_size, jax.process_index(),
                             jax.process_count())
        lr = learning_rate(config, step, total_steps)
        state, metrics = step_fn(state, mesh_lib.shard_batch(batch, mesh),
                                 jax.random.fold_in(dropout_key, step), np.float32(lr))
        step += 1
        steps_here += 1
        history.append(metrics)
        done = step >= total_steps
        stopping = stop_after_steps is not None and steps_here >= stop_after_steps
        validate = done or (config.eval.every_steps > 0 and step % config.eval.every_steps == 0)
        save = done or stopping or step % config.checkpoint_every_steps == 0
        if step % config.log_every_steps == 0 or validate or save:
          means = loop.mean_metrics(history)
          history = []
          loop.check_finite(step, {k: means[k] for k in ("loss", "main_loss", "aux_loss")},
                            last_saved)
          ips = rate.update(step * batch_size)
          writer.write(step, lr=lr, images_per_second=ips, **means)
          bar.set_postfix_str(f"loss {means['loss']:.3f} acc {means['pixel_accuracy']:.3f} "
                              f"{ips:.1f} img/s", refresh=False)
        bar.update(1)
        if validate:
          if done:
            scores = validator.final(state, step)
            count = len(validator.source)
          else:
            count = config.eval.periodic_images or len(validator.source)
            scores = validator.run(state, count).scores
          writer.write(step, **_val_row(scores, min(count, len(validator.source))))
          save_curves(writer, validator.figdir)
          rate.update(step * batch_size)  # Validation time is not training speed.
        elif save:
          save_curves(writer, validator.figdir)
        if save:
          ckpt.save(step, state, _meta(config, step, total_steps))
          last_saved = step
        if stopping:
          break
  finally:
    bar.close()
  return scores if step >= total_steps else {}


def _check_meta(config, meta: dict[str, Any], where: pathlib.Path, total_steps: int) -> None:
  """UserError when the checkpoint was made by another run (seed, data, schedule)."""
  expected = _meta(config, meta["step"], total_steps)
  for key in ("num_classes", "data_source", "seed", "total_steps"):
    if meta.get(key) != expected[key]:
      raise UserError(f"checkpoint {where} was made with {key}={meta.get(key)!r}, the config "
                      f"gives {expected[key]!r}: use the config it was made with, or a new "
                      "--workdir")


def _load(config: ml_collections.ConfigDict, workdir: str
          ) -> tuple[PSPNet, dict[str, Any], dict[str, Any]]:
  """(model, {'params', 'batch_stats'}, meta) of the latest checkpoint in `workdir`."""
  model = build_model(config)
  ckpt = Checkpointer(pathlib.Path(workdir) / "checkpoints")
  try:
    if ckpt.latest_step() is None:
      raise UserError(f"no checkpoint in {ckpt.directory}: train first with experiments.train")
    target = jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), _abstract_state(config, model))
    state, meta = ckpt.restore(target)
  finally:
    ckpt.close()
  return model, {"params": state["params"], "batch_stats": state["batch_stats"]}, meta


def _abstract_state(config, model: PSPNet):
  """Shapes and dtypes of the train state (no computation)."""
  return jax.eval_shape(functools.partial(create_train_state, model, make_optimizer(config)),
                        make_key(0))


def evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """semseg `tool/test.py` scores of the latest checkpoint on the validation split.

  Returns `miou`, `macc`, `aacc` and per-class `iou` / `accuracy` by class
  name; writes figures/predictions.png and figures/confusion_matrix.png.
  """
  mesh = mesh_lib.make_data_mesh(config.num_devices or None)
  _check_config(config, 1)
  model, variables, meta = _load(config, workdir)
  source = pspnet_data.load_split(config, config.data.val_split, scaled=False)
  probability_fn = inference.make_probability_fn(model, flip=config.eval.flip, mesh=mesh)
  predictor = make_predictor(config, probability_fn, mesh_lib.replicate(variables, mesh),
                             mesh.size)
  evaluation = inference.evaluate_source(predictor, source,
                                         keep_examples=config.figures.num_examples)
  save_evaluation_figures(config, evaluation, pathlib.Path(workdir) / "figures", meta["step"])
  names = pspnet_data.dataset(config).class_names
  s = evaluation.scores
  return {"step": meta["step"], "miou": s["miou"], "macc": s["macc"], "aacc": s["aacc"],
          "images": len(source), "scales": list(config.eval.scales), "flip": config.eval.flip,
          "iou": dict(zip(names, s["iou_per_class"])),
          "accuracy": dict(zip(names, s["acc_per_class"]))}


def load_predictor(workdir: str, *, scales: tuple[float, ...] | None = None,
                   flip: bool | None = None):
  """(predict_fn(image uint8 [H, W, 3] RGB) -> int32 [H, W] labels, class_names, palette).

  Uses the latest checkpoint and `config.json` of a workdir written by
  experiments.train; `scales` and `flip` default to the config's `eval` ones.
  """
  path = pathlib.Path(workdir) / "config.json"
  if not path.exists():
    raise UserError(f"{path} not found: point at a workdir written by experiments.train")
  config = ml_collections.ConfigDict(json.loads(path.read_text()))
  if scales is not None:
    config.eval.scales = tuple(scales)
  if flip is not None:
    config.eval.flip = flip
  model, variables, _ = _load(config, workdir)
  probability_fn = inference.make_probability_fn(model, flip=config.eval.flip)
  predictor = make_predictor(config, probability_fn, variables, 1)
  ds = pspnet_data.dataset(config)
  return predictor, ds.class_names, ds.palette


def summary(config: ml_collections.ConfigDict) -> dict[str, Any]:
  """Parameter counts (BatchNorm scale/bias included, running statistics not) and the
  FLOPs of one training step at the config's batch and crop size (XLA cost analysis)."""
  model = build_model(config)
  _check_config(config, 1)
  abstract = _abstract_state(config, model)
  count = lambda tree: int(sum(np.prod(x.shape) for x in jax.tree.leaves(tree)))
  params = abstract["params"]
  size, n = config.data.crop_size, config.batch_size
  batch = {"image": jax.ShapeDtypeStruct((n, size, size, 3), jnp.float32),
           "label": jax.ShapeDtypeStruct((n, size, size), jnp.int32)}
  step = jax.jit(functools.partial(
      train_step, model=model, tx=make_optimizer(config), aux_weight=config.loss.aux_weight,
      ignore_label=config.loss.ignore_label))
  lowered = step.lower(abstract, batch, jax.eval_shape(lambda: make_key(0)),
                       jax.ShapeDtypeStruct((), jnp.float32))
  cost = lowered.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  flops = float(cost.get("flops", float("nan")))
  return {"params": {"model": count(params),
                     "model_without_aux": count({k: v for k, v in params.items() if k != "aux"}),
                     "backbone": count(params["backbone"])},
          "flops_per_step": flops, "batch_size": n, "crop_size": size,
          "flops_per_image": flops / n, "num_classes": model.num_classes,
          "layers": config.model.layers}
