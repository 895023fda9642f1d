"""FashionGAN training, the release's three trainings as the phases of one run, with exact resume.

zhusz/ICCV17-fashionGAN trains three programs one after the other; here they are the
phases of one run (positions are optimizer steps, `config.steps` gives each phase's):
1. "design_coding" (language/train_te.py): the 2-layer RNN and its attribute heads, summed
   cross-entropies, plain SGD (the release: batch 1, lr 0.01, then 0.001 after 50k steps;
   `coder.*`). Frozen afterwards: its last hidden state d conditions both GANs (the release
   precomputes it, encode_hn2_rnn_100_2_full.mat).
2. "shape" (sr1/train.lua): G_shape and D_shape, Adam 2e-4, beta1 0.5, batch 4. D on the
   real map with its condition (target 1), on another record's map and condition with this
   record's text ("wrong", 0) and on G_shape's map (0), weighted real + wrong_weight x wrong +
   fake_weight x fake (`loss.*`: 0.1 / 0.9 as the paper and the release's logged errD; the
   release's backward passes use 1 / 1); then G_shape: BCE(D(fake), 1) + 100 x pixel-wise
   cross-entropy to the true map.
3. "image" (ih1/train.lua): G_image and D_image alike on the colour-coded, blurred true map,
   + 100 x L1 to the photo (relative to the training set's mean image).
   `model.image_generator` "encoder_decoder" (ih1) or "unet" (ih1_skip, the demo's, with the
   patch D); `model.compositional` renders each region under its mask (paper section 3.3);
   `model.compare_plain` also trains the plain G_image (and its D) side by side on the same
   batches and noise, so the two are compared like for like. `model.image_noise=False` (not
   in the release) gives G_image zeros for z. `model.g_ema_beta` > 0 (not in
   the release) also keeps an exponential moving average of each G_image's parameters,
   ema <- params + (ema - params) x beta after every step (ProGAN's `Gs`), and BatchNorm
   running averages of its own: after each step the averaged G runs forward on the step's
   batch in training mode, updating them as G's are (G's own are statistics of the raw
   parameters' activations; BigGAN's "standing statistics" and SWA's `bn_update` likewise
   re-estimate them for averaged weights). Evaluation, figures and the edit command use it.
The release's G step reads D's output on the fake computed before D's update; here G's loss
uses D after its update (as pix2pix and the DCGAN ports do). BatchNorm statistics: G's
update once per step, D's once per forward of the D step (real, wrong, fake), as torch's
three forwards do.

Resume is exact: batch `s` is `data.batch(train set, seed, s, batch)`, the noise of step `s`
is drawn on the host from (seed, s), U-Net dropout from `fold_in(dropout key, s)`.

Evaluator "fashion" (`evaluation.py`), after each phase on what exists by then: the design
coding's attribute accuracy on the test sentences; G_shape's `shape_iou` and
`category_accuracy`; G_image's `colour_accuracy`, `swd` (x1e3 against the test photos) and,
with Inception weights (`config.fid_weights` or $READINGNOTES_FID_WEIGHTS), `fid` against
them, of every G_image variant (the plain one's prefixed "plain_" when compared); the
generators run as `eval.batch_norm` says (`Generation`). Each test photo is paired with the
sentences of `eval.sentences_per_photo` other test photos (the paper's test pairs: a photo
with another's description).
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

from readingnotes_jax.data import ccp_fashion
from readingnotes_jax.errors import UserError
from readingnotes_jax.fashiongan import compose, data as fashion_data, evaluation, losses, model
from readingnotes_jax.fashiongan import figures as fashion_figures
from readingnotes_jax.metrics import fid, inception, swd
from readingnotes_jax.nn import precision
from readingnotes_jax.training import figures, mesh as mesh_lib, runner

PHASES = ("design_coding", "shape", "image")
IMAGE_GENERATORS = ("encoder_decoder", "unet")
COMPOSITIONAL, PLAIN = "compositional", "plain"
PRNG_IMPL = "rbg"
_NOISE_STREAM = 2  # Salt of the noise draws (fashiongan.data uses 1 for wrong pairs).


def phase_ends(config: ml_collections.ConfigDict) -> tuple[int, int, int]:
  """Cumulative optimizer steps at the end of each phase."""
  return tuple(int(x) for x in np.cumsum([config.steps[p] for p in PHASES]))


def image_noise(config: ml_collections.ConfigDict) -> bool:
  """`model.image_noise`, True (the release) where absent, as in config.json of older workdirs."""
  return config.model.get("image_noise", True)


def image_variants(config: ml_collections.ConfigDict) -> tuple[str, ...]:
  """The G_image variants a run trains, the config's own first."""
  main = COMPOSITIONAL if config.model.compositional else PLAIN
  if config.model.compare_plain and config.model.compositional:
    return (main, PLAIN)
  return (main,)


def _check_config(config: ml_collections.ConfigDict, num_devices: int) -> None:
  for name in PHASES:
    if config.steps[name] < 1:
      raise UserError(f"steps.{name}={config.steps[name]}: every phase needs at least 1 step")
  for key, value in (("batch_size", config.batch_size),
                     ("coder.batch_size", config.coder.batch_size)):
    if value < 1 or value % num_devices:
      raise UserError(f"{key}={value} does not split over {num_devices} devices: use a "
                      "positive multiple of the device count")
  if config.model.image_generator not in IMAGE_GENERATORS:
    raise UserError(f"model.image_generator={config.model.image_generator!r}: use one of "
                    f"{', '.join(IMAGE_GENERATORS)}")
  if config.data.image_size not in model.SIZES:
    raise UserError(f"data.image_size={config.data.image_size}: use one of {model.SIZES}")
  if not 0 <= config.model.g_ema_beta < 1:
    raise UserError(f"model.g_ema_beta={config.model.g_ema_beta}: use 0 (no average) or a "
                    "decay in (0, 1)")
  if config.model.compare_plain and not config.model.compositional:
    raise UserError("model.compare_plain=True trains the plain G_image next to the "
                    "compositional one: set model.compositional=True")


class Networks:
  """The flax modules of a run (the coder's vocabulary and heads come from the data)."""

  def __init__(self, config: ml_collections.ConfigDict, vocab_size: int,
               attributes: tuple[tuple[str, int], ...]):
    m, size = config.model, config.data.image_size
    dtype = precision.compute_dtype(m.dtype)
    common = dict(size=size, features=m.features, dtype=dtype)
    self.coder = model.DesignCoder(vocab_size=vocab_size, attributes=tuple(attributes),
                                   hidden_size=model.RNN_HIDDEN)
    self.g_shape = model.ShapeGenerator(**common)
    self.d_shape = model.ShapeDiscriminator(**common)
    unet = m.image_generator == "unet"
    noise = image_noise(config)
    self.g_image, self.d_image = {}, {}
    for variant in image_variants(config):
      compositional = variant == COMPOSITIONAL
      if unet:
        self.g_image[variant] = model.UNetImageGenerator(compositional=compositional,
                                                         noise=noise, **common)
        self.d_image[variant] = model.PatchImageDiscriminator(**common)
      else:
        self.g_image[variant] = model.ImageGenerator(compositional=compositional, noise=noise,
                                                     **common)
        self.d_image[variant] = model.ImageDiscriminator(**common)
    self.attribute_names = tuple(name for name, _ in attributes)


def gan_learning_rate(config, phase: str) -> float:
  """`optimizer.learning_rate`, or for the shape phase `optimizer.shape_learning_rate` when > 0."""
  o = config.optimizer
  return o.shape_learning_rate if phase == "shape" and o.shape_learning_rate > 0 else o.learning_rate


def _adam(config, phase: str) -> optax.GradientTransformation:
  """torch optim.adam of sr1/ih1 train.lua: lr 2e-4, beta1 0.5, beta2 0.999, eps 1e-8."""
  o = config.optimizer
  return optax.adam(gan_learning_rate(config, phase), b1=o.beta1, b2=o.beta2, eps=1e-8)


def _coder_tx(config) -> optax.GradientTransformation:
  """train_te.py's SGD: `coder.learning_rate`, divided by 10 from `coder.decay_step` on."""
  c = config.coder
  schedule = optax.piecewise_constant_schedule(c.learning_rate, {c.decay_step: 0.1})
  return optax.sgd(schedule)


def _gan_state(generator, discriminator, tx, key, g_inputs, d_inputs) -> dict[str, Any]:
  kg, kd = jax.random.split(key)
  g = model.initialize(generator, kg, *g_inputs, train=False)
  d = model.initialize(discriminator, kd, *d_inputs, train=False)
  return {"g": g, "d": d, "g_opt": tx.init(g["params"]), "d_opt": tx.init(d["params"])}


def _apply_bn(module, variables, *args, **kwargs):
  """(output, new batch_stats) of a train-mode forward (BatchNorm statistics updated)."""
  out, updated = module.apply(variables, *args, train=True, mutable=["batch_stats"], **kwargs)
  return out, updated["batch_stats"]


def coder_step(state, batch, *, nets: Networks, tx) -> tuple[Any, dict[str, jax.Array]]:
  """One SGD step of the design coder on the batch's sentences and attributes."""
  def loss_fn(params):
    _, heads = nets.coder.apply({"params": params}, batch["words"], batch["lengths"])
    return losses.design_coding_loss(heads, batch["attributes"], nets.attribute_names)

  (_, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(state["params"])
  updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
  return {"params": optax.apply_updates(state["params"], updates), "opt_state": opt_state}, {
      f"coder_{k}": v for k, v in metrics.items()}


def design_coding(nets: Networks, coder_params, words, lengths) -> jax.Array:
  """d [B, 100] of the frozen coder."""
  return jax.lax.stop_gradient(nets.coder.apply({"params": coder_params}, words, lengths)[0])


def gan_step(gan, d_code, real, wrong, g_inputs, d_condition, wrong_condition, g_loss, *,
             generator, discriminator, tx, loss_config, rngs=None):
  """One D step then one G step of either stage; returns (gan state, metrics).

  `g_inputs`: G's positional inputs; `g_loss(fake_logits, g_output) -> (loss, metrics)` adds
  the stage's supervised term; `real`, `wrong`: D's positive and wrong-text inputs.
  """
  rngs = rngs or {}
  g_vars = gan["g"]

  def g_forward(params):
    return _apply_bn(generator, {"params": params, "batch_stats": g_vars["batch_stats"]},
                     *g_inputs, rngs=rngs)

  # One G forward serves both steps: its output is D's fake, and its VJP takes the G loss's
  # gradient (computed with the updated D) back to G's parameters.
  fake, g_vjp, g_stats = jax.vjp(g_forward, g_vars["params"], has_aux=True)

  def d_loss_fn(params):
    stats = gan["d"]["batch_stats"]
    logits = {}
    for name, x, condition in (("real", real, d_condition), ("wrong", wrong, wrong_condition),
                               ("fake", jax.lax.stop_gradient(fake), d_condition)):
      logits[name], stats = _apply_bn(discriminator, {"params": params, "batch_stats": stats},
                                      x, d_code, condition)
    loss, metrics = losses.discriminator_loss(
        logits["real"], logits["wrong"], logits["fake"], wrong_weight=loss_config.wrong_weight,
        fake_weight=loss_config.fake_weight)
    return loss, (metrics, stats)

  (_, (d_metrics, d_stats)), d_grads = jax.value_and_grad(d_loss_fn, has_aux=True)(
      gan["d"]["params"])
  updates, d_opt = tx.update(d_grads, gan["d_opt"], gan["d"]["params"])
  d_params = optax.apply_updates(gan["d"]["params"], updates)

  def g_loss_fn(out):
    fake_logits, _ = _apply_bn(discriminator, {"params": d_params, "batch_stats": d_stats},
                               out, d_code, d_condition)
    return g_loss(fake_logits, out)

  (_, g_metrics), out_grads = jax.value_and_grad(g_loss_fn, has_aux=True)(fake)
  (g_grads,) = g_vjp(out_grads)
  updates, g_opt = tx.update(g_grads, gan["g_opt"], g_vars["params"])
  new = {"g": {"params": optax.apply_updates(g_vars["params"], updates), "batch_stats": g_stats},
         "d": {"params": d_params, "batch_stats": d_stats}, "g_opt": g_opt, "d_opt": d_opt}
  return new, {**d_metrics, **g_metrics}


def shape_step(gan, coder_params, batch, *, nets: Networks, tx, config):
  """One step of G_shape / D_shape (sr1/train.lua `fDx`, `fGx`)."""
  d_code = design_coding(nets, coder_params, batch["words"], batch["lengths"])
  one_hot = lambda labels: jax.nn.one_hot(labels, compose.NUM_LABELS, dtype=jnp.float32)
  labels = batch["labels"]
  g_loss = lambda fake_logits, out: losses.shape_generator_loss(
      fake_logits, out, labels, segmentation_weight=config.loss.segmentation_weight)
  gan, metrics = gan_step(
      gan, d_code, one_hot(labels), one_hot(batch["wrong_labels"]),
      (batch["z"], d_code, batch["shape_condition"]), batch["shape_condition"],
      batch["wrong_shape_condition"], g_loss, generator=nets.g_shape,
      discriminator=nets.d_shape, tx=tx, loss_config=config.loss)
  return gan, {f"shape_{k}": v for k, v in metrics.items()}


def image_step(gans, coder_params, batch, key, *, nets: Networks, tx, config):
  """One step of every G_image / D_image variant (ih1/train.lua) on the same batch and noise."""
  d_code = design_coding(nets, coder_params, batch["words"], batch["lengths"])
  condition = compose.colour_condition(batch["labels"])
  wrong_condition = compose.colour_condition(batch["wrong_labels"])
  masks = compose.region_masks(batch["labels"])
  g_inputs = (batch["z"], d_code, condition, masks)
  g_loss = lambda fake_logits, out: losses.image_generator_loss(
      fake_logits, out, batch["image"], l1_weight=config.loss.l1_weight)
  new, metrics = {}, {}
  for i, variant in enumerate(nets.g_image):
    new[variant], m = gan_step(
        gans[variant], d_code, batch["image"], batch["wrong_image"],
        g_inputs, condition, wrong_condition, g_loss,
        generator=nets.g_image[variant], discriminator=nets.d_image[variant], tx=tx,
        loss_config=config.loss, rngs={"dropout": key})
    beta = config.model.g_ema_beta
    if beta > 0:
      ema = gans[variant]["g_ema"]
      params = jax.tree.map(lambda e, p: p + (e - p) * beta, ema["params"],
                            new[variant]["g"]["params"])
      _, stats = _apply_bn(nets.g_image[variant],
                           {"params": params, "batch_stats": ema["batch_stats"]},
                           *g_inputs, rngs={"dropout": key})
      new[variant]["g_ema"] = {"params": params, "batch_stats": stats}
    prefix = "image_" if i == 0 else f"{variant}_image_"
    metrics.update({prefix + k: v for k, v in m.items()})
  return new, metrics


def local(tree: Any) -> Any:
  """One local device's copy of a replicated tree, for evaluation in this process."""
  return jax.tree.map(lambda a: a.addressable_data(0) if isinstance(a, jax.Array) else a, tree)


def _per_sample(module, variables, *inputs, key=None):
  """`module` in train mode on each sample alone (a batch of 1), BatchNorm statistics of
  that sample, updates discarded, dropout from `key` (one per sample): demo_full.lua's
  protocol (`G1:forward` / `G2:forward` one record at a time, never `:evaluate()`)."""
  def one(key, *sample):
    rngs = {} if key is None else {"dropout": key}
    out, _ = module.apply(variables, *(x[None] for x in sample), train=True,
                          mutable=["batch_stats"], rngs=rngs)
    return out[0]
  keys = None if key is None else jax.random.split(key, inputs[0].shape[0])
  return jax.vmap(one)(keys, *inputs)


BATCH_NORM_MODES = ("running", "per_sample")


def _inference(module, variables, *inputs, batch_norm: str, key=None):
  """`module` at inference: "running" uses the BatchNorm running averages (no dropout);
  "per_sample" is `_per_sample` (demo_full.lua's protocol)."""
  if batch_norm == "per_sample":
    return _per_sample(module, variables, *inputs, key=key)
  return module.apply(variables, *inputs, train=False)


class Generation:
  """Jitted inference of the trained networks, used by the evaluator, the figures and
  `fashiongan.edit`: the coder's d, G_shape's segmentation read as demo_full.lua does
  (`compose.demo_segmentation`), then G_image on it. `batch_norm` (`config.eval.batch_norm`):
  "running" (the BatchNorm running averages, as any BatchNorm network is usually run) or
  "per_sample" (as the release's demo runs its generators: one record at a time in training
  mode, `_per_sample`; over the 8 x 8 and smaller maps of G_shape and the U-Net's 1 x 1
  bottleneck one record's statistics remove most of what z and d add)."""

  def __init__(self, nets: Networks, batch_norm: str = "running"):
    if batch_norm not in BATCH_NORM_MODES:
      raise UserError(f"eval.batch_norm={batch_norm!r}: use one of {BATCH_NORM_MODES}")
    self.nets = nets

    @jax.jit
    def segment(coder_params, g_shape, words, lengths, z, shape_condition):
      d_code = nets.coder.apply({"params": coder_params}, words, lengths)[0]
      logits = _inference(nets.g_shape, g_shape, z, d_code, shape_condition,
                          batch_norm=batch_norm)
      return d_code, compose.demo_segmentation(logits)

    @functools.partial(jax.jit, static_argnames="variant")
    def render(g_image, d_code, z, labels, key, *, variant):
      return _inference(nets.g_image[variant], g_image, z, d_code,
                        compose.colour_condition(labels), compose.region_masks(labels),
                        batch_norm=batch_norm, key=key)

    self._segment, self._render = segment, render

  def __call__(self, state, words, lengths, shape_conditions, z_shape, z_image, key,
               variants=None) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """(generated labels int [B, S, S], {variant: image float [B, S, S, 3] relative to the
    mean image}) for one batch of sentences and shape conditions (U-Net dropout: `key`)."""
    d_code, labels = self._segment(state["coder"]["params"], _variables(state["shape"]["g"]),
                                   words, lengths, z_shape, shape_conditions)
    images = {v: np.asarray(self._render(_image_variables(state["image"][v]), d_code, z_image,
                                         labels, key, variant=v))
              for v in (self.nets.g_image if variants is None else variants)}
    return np.asarray(labels), images


def _variables(g: dict[str, Any]) -> dict[str, Any]:
  return {"params": g["params"], "batch_stats": g["batch_stats"]}


def _image_variables(gan: dict[str, Any]) -> dict[str, Any]:
  """A G_image's inference variables: its moving average and that average's BatchNorm
  statistics when kept (`model.g_ema_beta`), else its own."""
  return gan.get("g_ema", _variables(gan["g"]))


def test_pairs(count: int, per_photo: int, seed: int) -> np.ndarray:
  """int [count * per_photo, 2]: (photo, photo whose sentence it gets), each photo with
  `per_photo` distinct others, drawn from `seed`."""
  if count < 2:
    raise UserError(f"the test split has {count} photo(s): pairing photos with other photos' "
                    "sentences needs at least 2")
  rng = np.random.default_rng([seed, 3])
  k = min(per_photo, count - 1)
  offsets = 1 + rng.choice(count - 1, size=k, replace=False)
  photos = np.repeat(np.arange(count), k)
  return np.stack([photos, (photos + np.tile(offsets, count)) % count], axis=1)


def noise(seed: int, stream: int, index: int, shape: tuple[int, ...]) -> np.ndarray:
  """float32 N(0, 1) noise, a pure function of (seed, stream, index)."""
  return np.random.default_rng([seed, _NOISE_STREAM, stream, index]).standard_normal(
      shape).astype(np.float32)


def inference_key(seed: int, stream: int, index: int) -> jax.Array:
  """The dropout key of inference batch `index` of `stream`, a pure function of them."""
  return jax.random.key(int(np.random.default_rng([seed, _NOISE_STREAM, stream, index, 1])
                            .integers(2 ** 31)), impl=PRNG_IMPL)


class FashionEvaluation:
  """Evaluator "fashion" (see the module docstring); keeps its last generations (`self.last`)
  for the figures."""

  def __init__(self, task: "Task"):
    self.task = task
    self.generation = Generation(task.nets, task.config.eval.batch_norm)
    test, train = task.test_set, task.train_set
    self.pairs = test_pairs(len(test), task.config.eval.sentences_per_photo, task.config.seed)
    self.classifier = evaluation.CategoryClassifier(train.labels,
                                                    evaluation.lower_group(train.attributes))
    self.last: dict[str, Any] = {}
    self.fid_path = inception.fid_weights_path(task.config)
    self._extractor, self._real_features = None, None
    if self.fid_path is None:
      logging.warning("FID skipped: no Inception weights (set config.fid_weights or %s to "
                      "pytorch-fid's %s); SWD is reported", inception.WEIGHTS_ENV,
                      inception.WEIGHTS_FILE)
    coder = task.nets.coder
    self._coder_heads = jax.jit(lambda p, w, n: coder.apply({"params": p}, w, n)[1])

  def _coder_scores(self, coder_params) -> dict[str, float]:
    test, nets = self.task.test_set, self.task.nets
    heads = jax.device_get(self._coder_heads(coder_params, test.words, test.lengths))
    return {f"coder_accuracy_{name}": float(np.mean(np.argmax(heads[name], -1)
                                                    == test.attributes[:, k]))
            for k, name in enumerate(nets.attribute_names)}

  def _fid(self, images: np.ndarray, reals: np.ndarray) -> float:
    """FID of generated `images` against the paired test photos `reals` (their features
    computed once), with the standard FID Inception (`metrics.inception`)."""
    batch = self.task.config.eval.batch_size
    if self._extractor is None:
      self._extractor = inception.inception_extractor(
          *inception.load_fid_inception(self.fid_path))
      self._real_features, _ = fid.extract_features(reals, self._extractor, batch)
    features, _ = fid.extract_features(images, self._extractor, batch)
    return fid.frechet_distance(*fid.feature_statistics(self._real_features),
                                *fid.feature_statistics(features))

  def generate(self, state, pairs: np.ndarray, variants: list[str], stream: int
               ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """(labels int [P, S, S], {variant: uint8 RGB [P, S, S, 3]}) for (photo, sentence's photo)
    `pairs` [P, 2] of the test split, in batches of `eval.batch_size` (one compiled shape);
    the noise of each batch drawn from (seed, stream, batch start)."""
    test, e, seed = self.task.test_set, self.task.config.eval, self.task.config.seed
    n, size = len(pairs), self.task.config.data.image_size
    labels = np.zeros((n, size, size), np.int32)
    images = {v: np.zeros((n, size, size, 3), np.uint8) for v in variants}
    mean = test.mean_image if test.mean_image is not None else 0.0
    for start in range(0, n, e.batch_size):
      rows = pairs[np.arange(start, start + e.batch_size) % n]  # the last batch wraps around.
      got_labels, got_images = self.generation(
          state, test.words[rows[:, 1]], test.lengths[rows[:, 1]],
          test.shape_conditions[rows[:, 0]],
          noise(seed, 2 * stream, start, (e.batch_size, model.NOISE_SIZE)),
          noise(seed, 2 * stream + 1, start, (e.batch_size, model.NOISE_SIZE)),
          inference_key(seed, stream, start), variants)
      count = min(e.batch_size, n - start)
      labels[start:start + count] = got_labels[:count]
      for v in variants:
        images[v][start:start + count] = figures.to_uint8(got_images[v][:count] + mean,
                                                          (0.0, 1.0))
    return labels, images

  def run(self, state, *, step: int, position: int, final: bool) -> dict[str, Any]:
    del step, final
    task, test = self.task, self.task.test_set
    done = sum(position >= end for end in phase_ends(task.config))
    state = local(state)
    scores = self._coder_scores(state["coder"]["params"])
    if done < 2:
      return scores
    variants = list(task.nets.g_image) if done >= 3 else []
    photos, partners = self.pairs[:, 0], self.pairs[:, 1]
    labels, images = self.generate(state, self.pairs, variants, stream=0)
    scores["shape_iou"] = float(np.mean(evaluation.shape_iou(test.labels[photos], labels)))
    requested_group = evaluation.lower_group(test.attributes[partners])
    scores["category_accuracy"] = float(np.mean(self.classifier.predict(labels)
                                                == requested_group))
    scores["category_accuracy_real"] = float(np.mean(
        self.classifier.predict(test.labels) == evaluation.lower_group(test.attributes)))
    for i, v in enumerate(variants):
      prefix = "" if i == 0 else f"{v}_"
      if test.attribute_sizes == tuple(ccp_fashion.ATTRIBUTES):
        hits, total = evaluation.colour_hits(
            evaluation.requested_colours(test.attributes[partners]),
            evaluation.garment_colours(images[v], labels))
        scores[f"{prefix}colour_accuracy"] = hits / max(total, 1)
      if test.images is not None:
        scores[f"{prefix}swd"] = swd.sliced_wasserstein_distance(
            images[v], test.images[photos], seed=task.config.seed, drange=(0, 255))["swd"]
        if self.fid_path is not None:
          scores[f"{prefix}fid"] = self._fid(images[v], test.images[photos])
    self.last = {"pairs": self.pairs, "labels": labels, "images": images}
    if variants:
      others = (np.arange(1, 6) % len(test))
      five_labels, five_images = self.generate(
          state, np.stack([np.zeros_like(others), others], 1), variants[:1], stream=1)
      self.last["five"] = {"photo": 0, "others": others, "labels": five_labels,
                           "images": five_images[variants[0]]}
    scores["test_pairs"] = len(self.pairs)
    return scores


EVALUATORS = {"fashion": FashionEvaluation}


class Task:
  """FashionGAN for `training.runner`: positions are optimizer steps, one phase per training
  of the release (`PHASES`)."""
  unit = "step"

  def __init__(self, config: ml_collections.ConfigDict, mesh: jax.sharding.Mesh,
               saved: fashion_data.FashionSet | None = None):
    """`saved`: a workdir's `fashion_data.INFERENCE_FILE` (`read_inference`), for inference
    without the data (`fashiongan.edit`); it has no records to train or evaluate on."""
    _check_config(config, mesh.size)
    self.config, self.mesh = config, mesh
    # Data first: a bad file stops the run before the workdir is touched.
    if saved is None:
      self.train_set = fashion_data.load_split(config.data, "train")
      self.test_set = fashion_data.load_split(config.data, "test")
    else:
      self.train_set = self.test_set = saved
    if self.train_set.images is None:
      raise UserError(f"{config.data.path}: no photos (supervision_signals/G2.h5): the image "
                      "stage needs them")
    self.nets = Networks(config, len(self.train_set.vocabulary), self.train_set.attribute_sizes)
    self.ends = phase_ends(config)
    self.total = self.ends[-1]
    self.adam = {phase: _adam(config, phase) for phase in PHASES[1:]}
    self.coder_tx = _coder_tx(config)
    self.dropout_key = jax.random.key(config.seed + 1, impl=PRNG_IMPL)
    self._steps: dict[int, Any] = {}
    self._evaluators: dict[str, Any] = {}

  def identity(self) -> dict[str, Any]:
    c = self.config
    return {"seed": c.seed, "data_source": c.data.source, "image_size": c.data.image_size,
            "steps": [c.steps[p] for p in PHASES], "image_variants": list(self.nets.g_image),
            "image_generator": c.model.image_generator,
            # What the average holds (workdirs of commit da17ada averaged the parameters only).
            "g_ema": "params, batch_stats" if c.model.g_ema_beta > 0 else False,
            # Only when off, so workdirs made before the key resume.
            **({} if image_noise(c) else {"image_noise": False}),
            "vocabulary_size": len(self.train_set.vocabulary)}

  def init_key(self) -> jax.Array:
    return jax.random.key(self.config.seed, impl=PRNG_IMPL)

  def workdir_files(self) -> dict[str, bytes]:
    return {fashion_data.INFERENCE_FILE: fashion_data.inference_bytes(self.train_set)}

  def init_state(self, key: jax.Array) -> dict[str, Any]:
    kc, ks, *ki = jax.random.split(key, 2 + len(self.nets.g_image))
    size = self.config.data.image_size
    words, lengths = jnp.zeros((1, 2), jnp.int32), jnp.ones((1,), jnp.int32)
    coder = model.initialize(self.nets.coder, kc, words, lengths)
    z = jnp.zeros((1, model.NOISE_SIZE))
    d_code = jnp.zeros((1, model.CODING_SIZE))
    shape_condition = jnp.zeros((1, compose.CONSTRAINT_SIZE, compose.CONSTRAINT_SIZE,
                                 len(compose.MERGED_CLASS_NAMES)))
    seg = jnp.zeros((1, size, size, compose.NUM_LABELS))
    image = jnp.zeros((1, size, size, 3))
    masks = jnp.zeros((1, size, size, compose.NUM_LABELS))
    return {
        "coder": {"params": coder["params"],
                  "opt_state": self.coder_tx.init(coder["params"])},
        "shape": _gan_state(self.nets.g_shape, self.nets.d_shape, self.adam["shape"], ks,
                            (z, d_code, shape_condition), (seg, d_code, shape_condition)),
        "image": {v: self._image_state(v, k, (z, d_code, image, masks), (image, d_code, image))
                  for v, k in zip(self.nets.g_image, ki)},
    }

  def _image_state(self, variant: str, key: jax.Array, g_inputs, d_inputs) -> dict[str, Any]:
    gan = _gan_state(self.nets.g_image[variant], self.nets.d_image[variant], self.adam["image"],
                     key, g_inputs, d_inputs)
    if self.config.model.g_ema_beta > 0:
      gan["g_ema"] = jax.tree.map(jnp.copy, _variables(gan["g"]))
    return gan

  def phase(self, position: int) -> int:
    return int(sum(position >= end for end in self.ends[:-1]))

  def start_phase(self, state, phase: int):
    del phase
    return state

  def _compiled(self, phase: int):
    if phase not in self._steps:
      replicated, sharded = mesh_lib.replicated(self.mesh), mesh_lib.batch_sharded(self.mesh)
      if phase == 0:
        fn = functools.partial(coder_step, nets=self.nets, tx=self.coder_tx)
        self._steps[0] = jax.jit(fn, in_shardings=(replicated, sharded),
                                 out_shardings=(replicated, replicated), donate_argnums=(0,))
      elif phase == 1:
        fn = functools.partial(shape_step, nets=self.nets, tx=self.adam["shape"],
                               config=self.config)
        self._steps[1] = jax.jit(fn, in_shardings=(replicated, replicated, sharded),
                                 out_shardings=(replicated, replicated), donate_argnums=(0,))
      else:
        fn = functools.partial(image_step, nets=self.nets, tx=self.adam["image"],
                               config=self.config)
        self._steps[2] = jax.jit(fn, in_shardings=(replicated, replicated, sharded, replicated),
                                 out_shardings=(replicated, replicated), donate_argnums=(0,))
    return self._steps[phase]

  def _batch(self, step: int, batch_size: int, keys: tuple[str, ...]) -> dict[str, np.ndarray]:
    batch = fashion_data.batch(self.train_set, self.config.seed, step, batch_size)
    batch["z"] = noise(self.config.seed, 2, step, (batch_size, model.NOISE_SIZE))
    share = batch_size // jax.process_count()
    start = jax.process_index() * share
    return mesh_lib.shard_batch({k: batch[k][start:start + share] for k in keys}, self.mesh)

  def train_step(self, state, step: int, position: int):
    phase = self.phase(position)
    fn = self._compiled(phase)
    if phase == 0:
      batch = self._batch(step, self.config.coder.batch_size, ("words", "lengths", "attributes"))
      coder, metrics = fn(state["coder"], batch)
      state = {**state, "coder": coder}
      lr = self.config.coder.learning_rate * (0.1 if step >= self.config.coder.decay_step else 1)
    elif phase == 1:
      batch = self._batch(step, self.config.batch_size,
                          ("words", "lengths", "labels", "wrong_labels", "shape_condition",
                           "wrong_shape_condition", "z"))
      shape, metrics = fn(state["shape"], state["coder"]["params"], batch)
      state = {**state, "shape": shape}
      lr = gan_learning_rate(self.config, "shape")
    else:
      batch = self._batch(step, self.config.batch_size,
                          ("words", "lengths", "labels", "wrong_labels", "image", "wrong_image",
                           "z"))
      image, metrics = fn(state["image"], state["coder"]["params"], batch,
                          jax.random.fold_in(self.dropout_key, step))
      state = {**state, "image": image}
      lr = gan_learning_rate(self.config, "image")
    return state, metrics, {"phase": phase, "lr": lr}, position + 1

  def evaluators(self) -> dict[str, Any]:
    self._evaluators = runner.build_evaluators(self.config.evals, EVALUATORS, self)
    return self._evaluators

  def figures(self, state, figdir: pathlib.Path, step: int, position: int, rows, scores,
              final: bool) -> None:
    """Loss curves; after an evaluation of the image phase, the held-out grids."""
    del position
    fashion_figures.save_loss_curves(rows, figdir, list(self.nets.g_image))
    evaluator = self._evaluators.get("fashion")
    if scores and evaluator is not None and evaluator.last.get("images"):
      fashion_figures.save_evaluation_figures(self, evaluator.last, figdir, step)

  def close(self) -> None:
    pass


def make_task(config: ml_collections.ConfigDict, mesh: jax.sharding.Mesh) -> Task:
  return Task(config, mesh)


def summary(config: ml_collections.ConfigDict) -> dict[str, Any]:
  """Parameter counts per network and the FLOPs of one optimizer step of each phase at the
  config's batch and size (XLA cost analysis). Reads the training split for the vocabulary."""
  task = Task(config, mesh_lib.make_data_mesh(1))
  state = jax.eval_shape(task.init_state, task.init_key())
  size, n = config.data.image_size, config.batch_size
  spec = lambda shape, dtype=jnp.float32: jax.ShapeDtypeStruct(shape, dtype)
  words = spec((n, task.train_set.words.shape[1]), jnp.int32)
  gan = {"words": words, "lengths": spec((n,), jnp.int32), "labels": spec((n, size, size), jnp.int32),
         "wrong_labels": spec((n, size, size), jnp.int32), "z": spec((n, model.NOISE_SIZE))}
  condition = spec((n, compose.CONSTRAINT_SIZE, compose.CONSTRAINT_SIZE,
                    len(compose.MERGED_CLASS_NAMES)))
  m = config.coder.batch_size
  coder_batch = {"words": spec((m, words.shape[1]), jnp.int32), "lengths": spec((m,), jnp.int32),
                 "attributes": spec((m, len(task.nets.attribute_names)), jnp.int32)}
  flops = {
      "design_coding": runner.step_flops(coder_step, state["coder"], coder_batch,
                                         nets=task.nets, tx=task.coder_tx),
      "shape": runner.step_flops(shape_step, state["shape"], state["coder"]["params"],
                                 {**gan, "shape_condition": condition,
                                  "wrong_shape_condition": condition},
                                 nets=task.nets, tx=task.adam["shape"], config=config),
      "image": runner.step_flops(image_step, state["image"], state["coder"]["params"],
                                 {**gan, "image": spec((n, size, size, 3)),
                                  "wrong_image": spec((n, size, size, 3))},
                                 jax.eval_shape(lambda: jax.random.key(0, impl=PRNG_IMPL)),
                                 nets=task.nets, tx=task.adam["image"], config=config)}
  params = {"design_coder": runner.count_params(state["coder"]["params"]),
            "g_shape": runner.count_params(state["shape"]["g"]["params"]),
            "d_shape": runner.count_params(state["shape"]["d"]["params"])}
  for v, s in state["image"].items():
    params[f"g_image_{v}"] = runner.count_params(s["g"]["params"])
    params[f"d_image_{v}"] = runner.count_params(s["d"]["params"])
  return {"params": params, "flops_per_step": flops, "batch_size": n, "image_size": size,
          "vocabulary_size": len(task.train_set.vocabulary)}
