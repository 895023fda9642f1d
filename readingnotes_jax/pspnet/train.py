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
flips, scales) on the validation split, every `eval_every_steps` steps on the
first `eval.periodic_images` images, and on the whole split at the end.
"""
import functools
import logging
import pathlib
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from readingnotes_jax.data.segmentation_augment import SegmentationStream
from readingnotes_jax.errors import UserError
from readingnotes_jax.nn import precision, resnet_weights, torch_weights
from readingnotes_jax.pspnet import data as pspnet_data
from readingnotes_jax.pspnet import figures as pspnet_figures
from readingnotes_jax.pspnet import inference
from readingnotes_jax.pspnet.model import PSPNet, pspnet_loss
from readingnotes_jax.training import figures, mesh as mesh_lib, runner

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
  return PSPNet(num_classes=len(pspnet_data.dataset(config).class_names), layers=m.layers,
                width=m.get("width", 64),  # absent in older config.json
                bins=tuple(m.bins), dropout=m.dropout, use_aux=m.use_aux,
                factorized_head=m.get("factorized_head", True),  # absent in older config.json
                dtype=precision.compute_dtype(m.dtype), lowering=m.lowering or None)


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


def with_backbone_init(state: dict[str, Any], path: str,
                       mesh: jax.sharding.Mesh) -> dict[str, Any]:
  """`state` with the backbone's parameters and BatchNorm statistics read from `path`.

  semseg's `model/pspnet.py` builds its backbone with `resnet50(pretrained=True)`,
  the ImageNet model `initmodel/resnet50_v2.pth` (`resnet101_v2.pth` for
  PSPNet-101); `path` is such a file, another source of `nn.resnet_weights`
  (a deep-stem `.pth` or `.npz`, or a `save_resnet_checkpoint` directory). Its
  `fc.*` is left out, with one log line; the loaded arrays are replicated on
  `mesh`. The heads keep their random initialisation and the optimizer state
  its zero momentum.
  """
  target = {"params": state["params"][BACKBONE], "batch_stats": state["batch_stats"][BACKBONE]}
  try:
    loaded, ignored = resnet_weights.load_resnet_weights(path, target)
  except UserError as e:
    raise UserError(f"model.backbone_init: {e}") from e
  logging.warning("model.backbone_init: backbone weights from %s (left out: %s)", path,
                  torch_weights.listed(ignored) or "nothing")
  loaded = mesh_lib.replicate(loaded, mesh)
  return {**state, "params": {**state["params"], BACKBONE: loaded["params"]},
          "batch_stats": {**state["batch_stats"], BACKBONE: loaded["batch_stats"]}}


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


class Segmentation:
  """Evaluator "segmentation": semseg `tool/test.py` scores on the validation split.

  Periodic runs score the first `eval.periodic_images` images (0: all); the
  final run scores the whole split with per-class scores and keeps
  `figures.num_examples` examples for the overlay figure.
  """

  def __init__(self, task: "Task"):
    self.config, self.mesh, self.source = task.config, task.mesh, task.val_source
    self.probability_fn = inference.make_probability_fn(task.model, flip=self.config.eval.flip,
                                                        mesh=self.mesh)
    self.last: inference.Evaluation | None = None

  def run(self, state, *, step: int, position: int, final: bool) -> dict[str, Any]:
    del step, position
    variables = {"params": state["params"], "batch_stats": state["batch_stats"]}
    predictor = make_predictor(self.config, self.probability_fn, variables, self.mesh.size)
    count = 0 if final else self.config.eval.periodic_images
    self.last = inference.evaluate_source(
        predictor, self.source, num_images=count,
        keep_examples=self.config.figures.num_examples if final else 0)
    s = self.last.scores
    scores = {"val_miou": s["miou"], "val_macc": s["macc"], "val_aacc": s["aacc"],
              "val_images": min(count or len(self.source), len(self.source))}
    if final:
      names = pspnet_data.dataset(self.config).class_names
      scores.update(val_iou=dict(zip(names, s["iou_per_class"])),
                    val_accuracy=dict(zip(names, s["acc_per_class"])),
                    scales=list(self.config.eval.scales), flip=self.config.eval.flip)
    return scores


EVALUATORS = {"segmentation": Segmentation}


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


def save_curves(rows: list[dict[str, Any]], figdir: pathlib.Path) -> None:
  """figures/loss.png (training losses) and figures/val_miou.png (validation mIoU)."""
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


class Task(runner.SinglePhase):
  """PSPNet for `training.runner`: positions are optimizer steps; one phase."""
  unit = "step"

  def __init__(self, config: ml_collections.ConfigDict, mesh: jax.sharding.Mesh):
    _check_config(config, mesh.size)
    self.config, self.mesh = config, mesh
    self.model = build_model(config)
    # Data first: a bad file stops the run before the workdir is touched.
    self.train_source = pspnet_data.load_split(config, config.data.train_split, scaled=True)
    self.val_source = pspnet_data.load_split(config, config.data.val_split, scaled=False)
    self.total = max_steps(config, len(self.train_source))
    self.tx = make_optimizer(config)
    self.dropout_key = run_keys(config.seed)[1]
    self.num_classes = len(pspnet_data.dataset(config).class_names)
    self._stream = None
    self._step_fn = None
    self._evaluators = {}

  def identity(self) -> dict[str, Any]:
    return {"seed": self.config.seed, "data_source": self.config.data.source,
            "num_classes": self.num_classes, "total_steps": self.total}

  def init_key(self) -> jax.Array:
    return run_keys(self.config.seed)[0]

  def init_state(self, key: jax.Array) -> dict[str, Any]:
    """A random state. `model.backbone_init` replaces its backbone just before the first
    step (`train_step` at step 0), not here: the runner also traces this function for
    shapes when it resumes or evaluates, which must not need the file, and under jit the
    weights would become constants of the program (ResNet-101: 170 MB)."""
    return create_train_state(self.model, self.tx, key)

  def train_step(self, state, step: int, position: int):
    if step == 0 and self.config.model.get("backbone_init"):  # a fresh run: resumes start later
      state = with_backbone_init(state, self.config.model.backbone_init, self.mesh)
    if self._stream is None:
      self._stream = SegmentationStream(self.train_source, crop_size=self.config.data.crop_size,
                                        seed=self.config.seed, train=True).__enter__()
      self._step_fn = make_train_step(self.config, self.model, self.tx, self.mesh)
    n = self.config.batch_size
    batch = self._stream.batch(step * n, n, jax.process_index(), jax.process_count())
    lr = learning_rate(self.config, step, self.total)
    state, metrics = self._step_fn(state, mesh_lib.shard_batch(batch, self.mesh),
                                   jax.random.fold_in(self.dropout_key, step), np.float32(lr))
    return state, metrics, {"lr": lr}, position + 1

  def evaluators(self) -> dict[str, Any]:
    self._evaluators = runner.build_evaluators(self.config.evals, EVALUATORS, self)
    return self._evaluators

  def figures(self, state, figdir: pathlib.Path, step: int, position: int, rows, scores,
              final: bool) -> None:
    """Loss and validation curves; at the end, prediction overlays and the confusion matrix."""
    del state, position
    save_curves(rows, figdir)
    segmentation = self._evaluators.get("segmentation")
    if final and scores and segmentation is not None and segmentation.last is not None:
      save_evaluation_figures(self.config, segmentation.last, figdir, step)

  def close(self) -> None:
    if self._stream is not None:
      self._stream.__exit__(None, None, None)


def make_task(config: ml_collections.ConfigDict, mesh: jax.sharding.Mesh) -> Task:
  return Task(config, mesh)


def abstract_state(config: ml_collections.ConfigDict, model: PSPNet | None = None):
  """Shapes and dtypes of the train state (no computation)."""
  model = model or build_model(config)
  return jax.eval_shape(functools.partial(create_train_state, model, make_optimizer(config)),
                        make_key(0))


def summary(config: ml_collections.ConfigDict) -> dict[str, Any]:
  """Parameter counts (BatchNorm scale/bias included, running statistics not) and the
  FLOPs of one training step at the config's batch and crop size (XLA cost analysis)."""
  model = build_model(config)
  _check_config(config, 1)
  abstract = abstract_state(config, model)
  params = abstract["params"]
  size, n = config.data.crop_size, config.batch_size
  batch = {"image": jax.ShapeDtypeStruct((n, size, size, 3), jnp.float32),
           "label": jax.ShapeDtypeStruct((n, size, size), jnp.int32)}
  flops = runner.step_flops(train_step, abstract, batch, jax.eval_shape(lambda: make_key(0)),
                            jax.ShapeDtypeStruct((), jnp.float32), model=model,
                            tx=make_optimizer(config), aux_weight=config.loss.aux_weight,
                            ignore_label=config.loss.ignore_label)
  return {"params": {"model": runner.count_params(params),
                     "model_without_aux": runner.count_params(
                         {k: v for k, v in params.items() if k != "aux"}),
                     "backbone": runner.count_params(params["backbone"])},
          "flops_per_step": flops, "batch_size": n, "crop_size": size,
          "flops_per_image": flops / n, "num_classes": model.num_classes,
          "layers": config.model.layers}
