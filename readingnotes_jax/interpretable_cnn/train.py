"""Interpretable CNNs training and evaluation as the authors' release trains them, with exact resume.

Matches zqs1022/interpretableCNN (code/tool/main/network_init.m, our_cnn_train.m,
our_vl_simplenn.m, our_vl_nnloss.m):
- task loss: one category against negatives, the logistic loss log(1 + e^{-c x})
  with c = +1 / -1 (`ourloss_logistic`); several categories, softmax cross
  entropy times the number of categories (`ourloss_softmaxlog`, whose backward
  multiplies by it). The release sums over the batch and divides gradients by
  the batch size; here the loss is the batch mean (the same updates);
- the filter loss on the inputs of both masked layers (`loss.filter_loss`):
  `loss.formulation` "release" (the hand-added gradients and the learned beta;
  `loss.filter_weight` multiplies the added feature-map gradient, 1 in the release,
  beta's update rule is left as it is) or "paper" (-MI(X; T) times
  `loss.filter_weight`, the paper's lambda);
  filters are assigned to categories by the EMA of their per-category maximum
  activation (`loss.update_filter_assignment`, after every step, several
  categories only; one category: every filter serves it);
- MatConvNet's SGD: momentum 0.9, weight decay 5e-4, per-parameter learning-rate
  and decay multipliers of the release's new layers (add_block.m, add_block_mask.m:
  weights 1 / 1, biases 2 / 0, beta 0.05 / 0; BatchNorm scale and bias 1 / 0):
  v = 0.9 v - (g + wd w), w += lr v;
- learning rate per epoch (1-based e): lr_scale * logspace(lr_start, lr_end) over
  the first `lr_decay_epochs` epochs, then lr_end (one category:
  [logspace(-4, -5, 10), 1e-5 ...], 50 epochs; several: logspace(-4, -5, 80));
  the release's filter gradient decays as 1 / e;
- batch 32 (VGG-16), the training images mirrored with probability 0.5.
The release fine-tunes ImageNet-trained backbones; no weights are loaded here, so
`model.initializer` "he" with `model.input_scale` about 1 / 64 (unit-variance inputs) trains
a whole network from scratch (`ccp_vgg16:runlocal`, at 100x the release's learning rates).

With `train_ordinary` the state holds the interpretable network and its ordinary
counterpart (same architecture, no masks, no filter loss), initialised from the
same key, trained side by side on the same batches with the same dropout keys:
every comparison is like for like. Resume is exact: batch `s` is
`data.batch(train set, seed, s, batch)` (a function of (seed, s)), its dropout key
`fold_in(dropout key, s)`, the epoch `s * batch // N + 1`; parameters, optimizer
states and filter assignments come from the checkpoint.

Evaluator "interpretability" (`config.evals`): accuracy, location instability
and part-hit fraction (`evaluation.py`) on `load_split(config.data, "test")`, for
each network (the ordinary one's keys prefixed `ordinary_`).
"""
import functools
import math
import pathlib
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from readingnotes_jax.errors import UserError
from readingnotes_jax.interpretable_cnn import data as icnn_data
from readingnotes_jax.interpretable_cnn import evaluation, figures as icnn_figures, loss
from readingnotes_jax.interpretable_cnn import model as icnn_model
from readingnotes_jax.nn import precision
from readingnotes_jax.training import figures, mesh as mesh_lib, runner

MASKED_LAYERS = ("mask6", "mask7")
INTERPRETABLE, ORDINARY = "interpretable", "ordinary"
# Learning-rate and weight-decay multipliers by parameter name (add_block.m, add_block_mask.m
# `learningRate` / `weightDecay`); every other parameter (conv kernels): 1 and 1.
MULTIPLIERS = {"bias": (2.0, 0.0), "beta": (0.05, 0.0), "scale": (1.0, 0.0)}
# XLA's RngBitGenerator keys: on XLA:CPU they compile far faster than threefry, and give
# the same numbers for any sharding of the batch.
PRNG_IMPL = "rbg"


def run_keys(seed: int) -> tuple[jax.Array, jax.Array]:
  """(initialisation key, dropout key); step `s` drops out with `fold_in(dropout key, s)`."""
  init_key, dropout_key = jax.random.split(jax.random.key(seed, impl=PRNG_IMPL))
  return init_key, dropout_key


def network_names(config: ml_collections.ConfigDict) -> tuple[str, ...]:
  """The networks a run trains: ("interpretable", "ordinary") with `train_ordinary`."""
  if not config.model.interpretable:
    return (ORDINARY,)
  return (INTERPRETABLE, ORDINARY) if config.train_ordinary else (INTERPRETABLE,)


def build_model(config: ml_collections.ConfigDict, interpretable: bool | None = None):
  """The network of `config.model` (`interpretable` overrides `model.interpretable`)."""
  m = config.model
  if m.arch not in icnn_model.ARCHITECTURES:
    raise UserError(f"model.arch={m.arch!r}: use one of {', '.join(icnn_model.ARCHITECTURES)}")
  icnn_model.check_formulation(config.loss.formulation)
  common = dict(num_classes=m.num_classes, width=m.width,
                interpretable=m.interpretable if interpretable is None else interpretable,
                formulation=config.loss.formulation, dtype=precision.compute_dtype(m.dtype),
                lowering=m.lowering or None)
  if m.arch == "resnet":
    return icnn_model.InterpretableResNet(layers=m.layers, **common)
  return icnn_model.ARCHITECTURES[m.arch](initializer=m.initializer, input_scale=m.input_scale,
                                          dropout=m.dropout, **common)


def _check_config(config: ml_collections.ConfigDict, num_devices: int) -> None:
  """UserError for settings that cannot work, before anything is read or written."""
  icnn_model.check_formulation(config.loss.formulation)
  if config.model.arch not in icnn_model.ARCHITECTURES:
    raise UserError(f"model.arch={config.model.arch!r}: use one of "
                    f"{', '.join(icnn_model.ARCHITECTURES)}")
  if config.train_ordinary and not config.model.interpretable:
    raise UserError("train_ordinary=True trains the ordinary counterpart next to the "
                    "interpretable network: set model.interpretable=True, or train_ordinary=False")
  if config.batch_size < 1 or config.batch_size % num_devices:
    raise UserError(f"batch_size={config.batch_size} does not split over {num_devices} "
                    "devices: use a positive multiple of the device count")
  size = config.data.image_size
  if config.model.arch != "alexnet" and (size < 32 or size % 32):
    raise UserError(f"data.image_size={size}: {config.model.arch} needs a multiple of 32 "
                    "(its maps halve five times), e.g. 224")
  if config.model.num_classes < 1:
    raise UserError(f"model.num_classes={config.model.num_classes}: 1 for one category "
                    "against negatives, else the number of categories")
  if config.optimizer.lr_decay_epochs < 1:
    raise UserError(f"optimizer.lr_decay_epochs={config.optimizer.lr_decay_epochs}: give at "
                    "least 1")


def _check_labels(config, parts_set: icnn_data.PartsSet, split: str) -> None:
  k = config.model.num_classes
  top = int(parts_set.labels.max()) if len(parts_set.labels) else 0
  if (k == 1 and top > 1) or top >= max(k, 2):
    raise UserError(f"the {split} split has labels up to {top} but model.num_classes={k}: use "
                    f"{top + 1} classes (or 1 for one category against negatives)")


def epoch_of(step: int, batch_size: int, num_train: int) -> int:
  """The 1-based epoch of optimizer step `step` (the release's `iter`)."""
  return step * batch_size // num_train + 1


def total_steps(config: ml_collections.ConfigDict, num_train: int) -> int:
  """`config.max_steps` if set, else the steps that show every image `epochs` times."""
  if config.max_steps > 0:
    return config.max_steps
  return -(-config.epochs * num_train // config.batch_size)


def learning_rate(config: ml_collections.ConfigDict, epoch: int) -> float:
  """network_init.m: lr_scale * logspace(log10 lr_start, log10 lr_end, lr_decay_epochs)[e],
  lr_end after that (epoch `e` 1-based)."""
  o = config.optimizer
  if o.lr_decay_epochs == 1:
    return o.lr_scale * o.lr_end
  t = min(epoch - 1, o.lr_decay_epochs - 1) / (o.lr_decay_epochs - 1)
  return o.lr_scale * 10.0 ** ((1 - t) * math.log10(o.lr_start) + t * math.log10(o.lr_end))


def _multiplier(params: Any, which: int) -> Any:
  return jax.tree_util.tree_map_with_path(
      lambda path, _: MULTIPLIERS.get(path[-1].key, (1.0, 1.0))[which], params)


def make_optimizer(config: ml_collections.ConfigDict) -> optax.GradientTransformation:
  """MatConvNet's SGD direction (our_cnn_train.m `accumulateGradients`) without the
  learning rate: g + wd * w for the decayed parameters, then momentum; the train step
  applies `lr * multiplier` (`sgd_update`)."""
  o = config.optimizer
  decayed = lambda params: jax.tree.map(lambda m: m > 0, _multiplier(params, 1))
  return optax.chain(optax.add_decayed_weights(o.weight_decay, mask=decayed),
                     optax.trace(o.momentum))


def sgd_update(tx: optax.GradientTransformation, params: Any, grads: Any, opt_state: Any,
               lr: jax.Array) -> tuple[Any, Any]:
  """(params, opt_state) after one MatConvNet SGD step at learning rate `lr`: the direction
  of `make_optimizer`, times `lr` and each parameter's multiplier (`MULTIPLIERS`)."""
  direction, opt_state = tx.update(grads, opt_state, params)
  params = jax.tree.map(lambda p, d, m: p - lr * m * d, params, direction,
                        _multiplier(params, 0))
  return params, opt_state


def task_loss(logits: jax.Array, labels: jax.Array) -> tuple[jax.Array, jax.Array]:
  """(batch mean of the release's task loss, number of correct predictions).

  One logit (one category): log(1 + e^{-c x}) with c = 2 label - 1; correct when
  c x >= 0 (our_cnn_train.m `error_binary` counts c x < 0). K logits: K times the
  softmax cross entropy; correct when the argmax is the label.
  """
  logits = logits.astype(jnp.float32)
  if logits.shape[-1] == 1:
    margin = (2.0 * labels - 1.0) * logits[:, 0]
    return jnp.mean(jax.nn.softplus(-margin)), jnp.sum(margin >= 0)
  k = logits.shape[-1]
  cross_entropy = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
  return k * jnp.mean(cross_entropy), jnp.sum(jnp.argmax(logits, axis=-1) == labels)


@jax.custom_vjp
def scale_gradient(x: jax.Array, factor: jax.Array) -> jax.Array:
  """x, whose gradient is multiplied by `factor` on the way back."""
  del factor
  return x


def _scale_gradient_fwd(x, factor):
  return x, factor


def _scale_gradient_bwd(factor, g):
  return (g * factor).astype(g.dtype), None


scale_gradient.defvjp(_scale_gradient_fwd, _scale_gradient_bwd)


def _positives(labels: jax.Array, num_classes: int) -> jax.Array:
  """The filter loss's labels: [B] (one category) or one-hot [B, K]."""
  return labels if num_classes == 1 else jax.nn.one_hot(labels, num_classes, dtype=jnp.int32)


def create_network_state(model, tx: optax.GradientTransformation, key: jax.Array,
                         image_size: int) -> dict[str, Any]:
  """Parameters (and BatchNorm statistics), optimizer state and, for an interpretable
  network with several categories, the filter assignment of each masked layer."""
  variables = model.init(key, jnp.zeros((1, image_size, image_size, 3), jnp.float32),
                         train=False)
  state = {"params": variables["params"], "opt_state": tx.init(variables["params"])}
  if "batch_stats" in variables:
    state["batch_stats"] = variables["batch_stats"]
  if model.interpretable and model.num_classes > 1:
    _, aux = jax.eval_shape(functools.partial(model.apply, train=False), variables,
                            jnp.zeros((1, image_size, image_size, 3), jnp.float32))
    state["assignment"] = {
        name: {"ema": jnp.zeros((x.shape[-1], model.num_classes), jnp.float32),
               "filter_class": jnp.full((x.shape[-1],), -1, jnp.int32)}
        for name, x in aux["mask_inputs"].items()}
  return state


def _network_step(state, batch, key, lr, epoch, *, model, tx, config, class_density):
  """One SGD step of one network; returns (state, metrics)."""
  labels = batch["label"]
  k = model.num_classes
  positives = _positives(labels, k)
  formulation = config.loss.formulation

  def loss_fn(params):
    variables = {"params": params}
    if "batch_stats" in state:
      variables["batch_stats"] = state["batch_stats"]
    (logits, aux), updated = model.apply(variables, batch["image"], train=True,
                                         rngs={"dropout": key}, mutable=["batch_stats"])
    task, correct = task_loss(logits, labels)
    filter_loss = jnp.zeros((), jnp.float32)
    weight = jnp.float32(config.loss.filter_weight)
    if model.interpretable:
      for name, x in aux["mask_inputs"].items():
        assignment = state.get("assignment", {}).get(name)
        release = formulation == "release"
        filter_loss += loss.filter_loss(
            scale_gradient(x, weight) if release else x, positives, formulation,
            filter_class=None if assignment is None else assignment["filter_class"],
            beta=params[name]["beta"] if release else None, epoch=epoch,
            class_density=class_density)
    total = task + (filter_loss if formulation == "release" else weight * filter_loss)
    return total, (task, filter_loss, correct, updated, aux["mask_inputs"])

  (total, (task, filter_loss, correct, updated, mask_inputs)), grads = jax.value_and_grad(
      loss_fn, has_aux=True)(state["params"])
  params, opt_state = sgd_update(tx, state["params"], grads, state["opt_state"], lr)
  new = {**state, "params": params, "opt_state": opt_state}
  if "batch_stats" in state:
    new["batch_stats"] = updated["batch_stats"]
  if "assignment" in state:
    new["assignment"] = {}
    for name, x in mask_inputs.items():
      ema, filter_class = loss.update_filter_assignment(
          state["assignment"][name]["ema"], jnp.max(jax.lax.stop_gradient(x), axis=(1, 2)),
          positives)
      new["assignment"][name] = {"ema": ema, "filter_class": filter_class}
  metrics = {"loss": total, "task_loss": task, "accuracy": correct / labels.shape[0]}
  if model.interpretable:
    if formulation == "paper":
      metrics["filter_loss"] = filter_loss
    else:
      metrics["beta"] = jnp.mean(jnp.concatenate([params[n]["beta"] for n in MASKED_LAYERS]))
  return new, metrics


def train_step(state: dict[str, Any], batch: dict[str, jax.Array], key: jax.Array,
               lr: jax.Array, epoch: jax.Array, *, models: dict[str, Any],
               tx: optax.GradientTransformation, config: ml_collections.ConfigDict,
               class_density: np.ndarray | None) -> tuple[dict[str, Any], dict[str, jax.Array]]:
  """One step of every network in `models` on the same `batch` with the same dropout `key`
  at learning rate `lr` in 1-based `epoch`. Metrics of the first network unprefixed, of
  the ordinary counterpart next to it prefixed "ordinary_"."""
  new, metrics = {}, {}
  for i, (name, model) in enumerate(models.items()):
    new[name], network_metrics = _network_step(state[name], batch, key, lr, epoch, model=model,
                                               tx=tx, config=config,
                                               class_density=class_density)
    prefix = "" if i == 0 else f"{name}_"
    metrics.update({prefix + k: v for k, v in network_metrics.items()})
  return new, metrics


def make_train_step(config, models, tx, mesh, class_density):
  """`step(state, batch, key, lr, epoch)` jitted over `mesh` (state replicated, batch sharded)."""
  replicated = mesh_lib.replicated(mesh)
  step = functools.partial(train_step, models=models, tx=tx, config=config,
                           class_density=class_density)
  return jax.jit(step, in_shardings=(replicated, mesh_lib.batch_sharded(mesh), replicated,
                                     replicated, replicated),
                 out_shardings=(replicated, replicated), donate_argnums=(0,))


def class_density_of(config, parts_set: icnn_data.PartsSet) -> np.ndarray | None:
  """Each category's fraction of the training images (our_cnn_train.m `density`), K > 1."""
  k = config.model.num_classes
  if k == 1:
    return None
  return np.bincount(parts_set.labels, minlength=k)[:k].astype(np.float32) / len(parts_set.labels)


def normalize(images: np.ndarray) -> np.ndarray:
  """uint8 RGB -> the networks' input (as `data.batch`): float32 minus the mean pixel."""
  return images.astype(np.float32) - icnn_data.IMAGENET_MEAN_RGB


def make_forward(model):
  """`forward(variables, images) -> (logits, filters)` in evaluation mode, jitted."""
  def forward(variables, images):
    logits, aux = model.apply(variables, images, train=False)
    return logits, aux["filters"]
  return jax.jit(forward)


def local_variables(network_state: dict[str, Any]) -> dict[str, Any]:
  """The network's variables as one local device's copy (the state is replicated), for
  evaluation and figures in this process."""
  variables = {k: network_state[k] for k in ("params", "batch_stats") if k in network_state}
  return jax.tree.map(lambda a: a.addressable_data(0) if isinstance(a, jax.Array) else a,
                      variables)


class NetworkEvaluation:
  """One network on a parts set: `accuracy`, `instability` (and per filter), `hit_fraction`,
  and the per-image `peaks` [N, C, 2] (image coordinates) and `scores` [N, C]."""

  def __init__(self, forward, variables, parts_set: icnn_data.PartsSet, geometry, *,
               batch_size: int, top_k: int, hit_radius: float):
    n, size = len(parts_set.labels), parts_set.images.shape[1]
    cells, scores, correct = [], [], 0
    for start in range(0, n, batch_size):
      images = normalize(parts_set.images[start:start + batch_size])
      count = len(images)
      padded = np.concatenate([images, np.zeros((batch_size - count, *images.shape[1:]),
                                                np.float32)])
      logits, maps = jax.device_get(forward(variables, padded))
      maps = np.asarray(maps[:count], np.float32)
      cells.append(evaluation.peak_positions(maps))
      scores.append(maps.max(axis=(1, 2)))
      _, batch_correct = task_loss(jnp.asarray(logits[:count]),
                                   jnp.asarray(parts_set.labels[start:start + count]))
      correct += int(batch_correct)
    self.peaks = evaluation.feature_to_image(np.concatenate(cells), *geometry)
    self.scores = np.concatenate(scores)
    self.accuracy = correct / n
    self.instability, self.per_filter = evaluation.location_instability(
        self.peaks, self.scores, parts_set.parts, parts_set.part_valid, size, top_k)
    self.hit_fraction = evaluation.part_hit_fraction(
        self.peaks, self.scores, parts_set.parts, parts_set.part_valid, size, hit_radius, top_k)


class Interpretability:
  """Evaluator "interpretability": accuracy, location instability and part-hit fraction of
  every network on the test split (`data.eval_dir` names another folder); keeps the last
  results (`self.last`: network -> `NetworkEvaluation`) for the figures."""

  def __init__(self, task: "Task"):
    self.task = task
    self.forwards = {name: make_forward(model) for name, model in task.models.items()}
    self.last: dict[str, NetworkEvaluation] = {}

  def run(self, state, *, step: int, position: int, final: bool) -> dict[str, Any]:
    del step, position, final
    e = self.task.config.eval
    scores = {}
    for i, name in enumerate(self.task.models):
      result = NetworkEvaluation(self.forwards[name], local_variables(state[name]),
                                 self.task.test_set, self.task.models[name].feature_geometry(),
                                 batch_size=e.batch_size, top_k=e.top_k,
                                 hit_radius=e.hit_radius)
      self.last[name] = result
      prefix = "" if i == 0 else f"{name}_"
      scores.update({f"{prefix}accuracy": result.accuracy,
                     f"{prefix}location_instability": result.instability,
                     f"{prefix}part_hit_fraction": result.hit_fraction})
    scores["test_images"] = len(self.task.test_set.labels)
    return scores


EVALUATORS = {"interpretability": Interpretability}


class Task(runner.SinglePhase):
  """Interpretable CNN (and its ordinary counterpart) for `training.runner`; positions are
  optimizer steps; one phase."""
  unit = "step"

  def __init__(self, config: ml_collections.ConfigDict, mesh: jax.sharding.Mesh):
    _check_config(config, mesh.size)
    self.config, self.mesh = config, mesh
    self.models = {name: build_model(config, interpretable=name == INTERPRETABLE)
                   for name in network_names(config)}
    # Data first: a bad file stops the run before the workdir is touched.
    self.train_set = icnn_data.load_split(config.data, "train")
    self.test_set = icnn_data.load_split(config.data, "test")
    _check_labels(config, self.train_set, "train")
    _check_labels(config, self.test_set, "test")
    self.num_train = len(self.train_set.labels)
    self.total = total_steps(config, self.num_train)
    self.tx = make_optimizer(config)
    self.class_density = class_density_of(config, self.train_set)
    self.dropout_key = run_keys(config.seed)[1]
    self._step_fn = None
    self._evaluators = {}

  def identity(self) -> dict[str, Any]:
    return {"seed": self.config.seed, "data_source": self.config.data.source,
            "num_classes": self.config.model.num_classes, "total_steps": self.total,
            "networks": list(self.models), "formulation": self.config.loss.formulation}

  def init_key(self) -> jax.Array:
    return run_keys(self.config.seed)[0]

  def init_state(self, key: jax.Array) -> dict[str, Any]:
    """Every network from the same key: the ordinary one starts from the interpretable one's
    weights (Flax draws each layer's initial weights from its name)."""
    return {name: create_network_state(model, self.tx, key, self.config.data.image_size)
            for name, model in self.models.items()}

  def train_step(self, state, step: int, position: int):
    if self._step_fn is None:
      self._step_fn = make_train_step(self.config, self.models, self.tx, self.mesh,
                                      self.class_density)
    n = self.config.batch_size
    batch = icnn_data.batch(self.train_set, self.config.seed, step, n, self.config.data.augment)
    share = n // jax.process_count()
    start = jax.process_index() * share
    batch = {k: v[start:start + share] for k, v in batch.items()}
    epoch = epoch_of(step, n, self.num_train)
    lr = learning_rate(self.config, epoch)
    state, metrics = self._step_fn(state, mesh_lib.shard_batch(batch, self.mesh),
                                   jax.random.fold_in(self.dropout_key, step), np.float32(lr),
                                   np.float32(epoch))
    return state, metrics, {"lr": lr, "epoch": epoch}, position + 1

  def evaluators(self) -> dict[str, Any]:
    self._evaluators = runner.build_evaluators(self.config.evals, EVALUATORS, self)
    return self._evaluators

  def initial_variables(self) -> dict[str, dict[str, Any]]:
    """Each network's variables at initialisation (recomputed from the init key)."""
    state = jax.jit(self.init_state)(self.init_key())
    return {name: local_variables(s) for name, s in state.items()}

  def figures(self, state, figdir: pathlib.Path, step: int, position: int, rows, scores,
              final: bool) -> None:
    """Loss and evaluation curves; after the final evaluation, the filters' top images with
    their peaks, activation maps before and after training, and instability per filter."""
    del position
    save_curves(rows, figdir, list(self.models))
    evaluator = self._evaluators.get("interpretability")
    if not (final and scores) or evaluator is None or not evaluator.last:
      return
    f = self.config.figures
    size = self.config.data.image_size
    chosen = {name: icnn_figures.chosen_filters(len(result.per_filter), f.num_filters)
              for name, result in evaluator.last.items()}
    for name, result in evaluator.last.items():
      icnn_figures.save_top_images(
          self.test_set, result, chosen[name], f.num_images,
          self.models[name].feature_geometry()[0], figdir / f"top_images_{name}.png",
          title=f"{name} network, step {step}: top test images of filters {chosen[name]}")
    icnn_figures.save_instability_bars(
        {name: r.per_filter for name, r in evaluator.last.items()},
        figdir / "instability_per_filter.png",
        title=f"location instability per filter, step {step} ({size} px test images)")
    image_ids = np.flatnonzero(self.test_set.part_valid.any(axis=1))[:f.num_images]
    images = self.test_set.images[image_ids]
    before, after = self.initial_variables(), {n: local_variables(state[n]) for n in self.models}
    maps = {}
    for name, model in self.models.items():
      forward = evaluator.forwards[name]
      for when, variables in (("initial", before[name]), (f"step {step}", after[name])):
        maps[f"{name}, {when}"] = np.asarray(
            forward(variables, normalize(images))[1])[..., chosen[name][0]]
    icnn_figures.save_activation_maps(images, maps, figdir / "activation_maps.png",
                                      title="filter activations (after ReLU) before and after "
                                            "training, test images")

  def close(self) -> None:
    pass


def save_curves(rows: list[dict[str, Any]], figdir: pathlib.Path, networks: list[str]) -> None:
  """figures/loss.png (task loss of every network) and figures/location_instability.png."""
  prefixes = {name: "" if i == 0 else f"{name}_" for i, name in enumerate(networks)}
  train_rows = [r for r in rows if "task_loss" in r]
  if train_rows:
    figures.save_curves([r["step"] for r in train_rows],
                        {f"{name} task loss": [r[p + "task_loss"] for r in train_rows]
                         for name, p in prefixes.items()},
                        figdir / "loss.png", xlabel="step", ylabel="loss",
                        title="training task loss", logy=True)
  eval_rows = [r for r in rows if "location_instability" in r]
  if eval_rows:
    figures.save_curves([r["step"] for r in eval_rows],
                        {f"{name}": [r[p + "location_instability"] for r in eval_rows]
                         for name, p in prefixes.items()},
                        figdir / "location_instability.png", xlabel="step",
                        ylabel="location instability (lower is better)",
                        title="test split")


def make_task(config: ml_collections.ConfigDict, mesh: jax.sharding.Mesh) -> Task:
  return Task(config, mesh)


def summary(config: ml_collections.ConfigDict) -> dict[str, Any]:
  """Parameter counts per network and the FLOPs of one training step of all networks at the
  config's batch and image size (XLA cost analysis)."""
  _check_config(config, 1)
  models = {name: build_model(config, interpretable=name == INTERPRETABLE)
            for name in network_names(config)}
  tx = make_optimizer(config)
  size, n = config.data.image_size, config.batch_size
  key = jax.eval_shape(lambda: run_keys(0)[0])
  abstract = {name: jax.eval_shape(functools.partial(create_network_state, m, tx,
                                                     image_size=size), key)
              for name, m in models.items()}
  batch = {"image": jax.ShapeDtypeStruct((n, size, size, 3), jnp.float32),
           "label": jax.ShapeDtypeStruct((n,), jnp.int32)}
  k = config.model.num_classes
  density = None if k == 1 else np.full((k,), 1.0 / k, np.float32)
  scalar = jax.ShapeDtypeStruct((), jnp.float32)
  flops = runner.step_flops(train_step, abstract, batch, key, scalar, scalar, models=models,
                            tx=tx, config=config, class_density=density)
  return {"params": {name: runner.count_params(s["params"]) for name, s in abstract.items()},
          "flops_per_step": flops, "batch_size": n, "image_size": size,
          "flops_per_image": flops / n, "arch": config.model.arch,
          "formulation": config.loss.formulation}
