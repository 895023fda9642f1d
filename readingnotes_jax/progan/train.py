"""ProGAN training and evaluation: WGAN-GP, progressive growing, EMA generator, exact resume.

Matches train.py (`train_progressive_gan`, `process_reals`) and loss.py
(`G_wgan_acgan`, `D_wgangp_acgan`) of tkarras/progressive_growing_of_gans:
one D step then one G step per minibatch; Adam(0, 0.99, 1e-8) whose state is
reset whenever lod's floor or ceiling changes (every phase change); generator
EMA with beta 0.999 (`Gs`) used for samples and metrics. Losses are averaged
over the minibatch (the official code sums per GPU; Adam is invariant to the
scale). The networks run at the current level's resolution, the official ones
at the final one; the gradient penalty is the official full-resolution one
(`full_resolution_grad_norms`).

Steps are compiled once per (level, fading): the fade factor `alpha` and the
learning rates are traced arguments. Everything a resumed run needs follows
from the checkpoint: parameters and optimizer states (arrays) and the step,
images seen and phase (meta); data order and random keys are functions of
(seed, images seen) and (seed, step).
"""
from collections.abc import Callable
import functools
import math
import pathlib
import time
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from readingnotes_jax.errors import UserError
from readingnotes_jax.nn import precision
from readingnotes_jax.nn.resample import downsample_avg_2x, upsample_nearest_2x
from readingnotes_jax.progan import data as progan_data
from readingnotes_jax.progan import evaluation
from readingnotes_jax.progan.model import Discriminator, Generator
from readingnotes_jax.progan.schedule import Schedule, Stage
from readingnotes_jax.training import figures, mesh as mesh_lib, runner



def build_models(config: ml_collections.ConfigDict) -> tuple[Generator, Discriminator]:
  m = config.model
  common = dict(resolution=m.resolution, num_channels=m.num_channels, label_size=m.label_size,
                fmap_base=m.fmap_base, fmap_decay=m.fmap_decay, fmap_max=m.fmap_max,
                dtype=precision.compute_dtype(m.dtype), lowering=m.lowering or None)
  return (Generator(latent_size=m.latent_size, **common),
          Discriminator(mbstd_group_size=m.mbstd_group_size, fused_scale=m.fused_scale,
                        **common))


def build_schedule(config: ml_collections.ConfigDict, num_devices: int) -> Schedule:
  s = config.schedule
  return Schedule(final_resolution=config.model.resolution, start_resolution=s.start_resolution,
                  training_kimg=s.training_kimg, transition_kimg=s.transition_kimg,
                  total_kimg=s.total_kimg, minibatch_base=s.minibatch_base,
                  minibatch=s.minibatch, g_lr_base=s.g_lr_base, d_lr_base=s.d_lr_base,
                  g_lr=s.g_lr, d_lr=s.d_lr, batch_multiple=num_devices)


def _adam(config):
  o = config.optimizer
  return optax.scale_by_adam(b1=o.b1, b2=o.b2, eps=o.eps)


def create_state(config, G: Generator, D: Discriminator, key: jax.Array) -> dict[str, Any]:
  """Networks (all levels), EMA generator (a copy of G at init) and Adam states."""
  m = config.model
  kg, kd = jax.random.split(key)
  latents = jnp.zeros((1, m.latent_size), jnp.float32)
  labels = jnp.zeros((1, m.label_size), jnp.float32) if m.label_size else None
  images = jnp.zeros((1, m.resolution, m.resolution, m.num_channels), jnp.float32)
  g = G.init(kg, latents, labels)
  d = D.init(kd, images)
  adam = _adam(config)
  return {"g": g, "d": d, "g_ema": jax.tree.map(jnp.copy, g),
          "g_opt": adam.init(g), "d_opt": adam.init(d)}


def reset_optimizers(config, state: dict[str, Any]) -> dict[str, Any]:
  adam = _adam(config)
  return {**state, "g_opt": adam.init(state["g"]), "d_opt": adam.init(state["d"])}


def fade_reals(reals: jax.Array, alpha: jax.Array) -> jax.Array:
  """Cross-fades real images between levels like the official `process_reals` (lerp by lod frac)."""
  blurred = upsample_nearest_2x(downsample_avg_2x(reals))
  return blurred + (reals - blurred) * alpha


def _label_penalty(logits, labels):
  """The AC-GAN term of loss.py: softmax cross-entropy of the label logits, 0 when unconditional."""
  return 0.0 if labels is None else optax.softmax_cross_entropy(logits, labels)


def full_resolution_grad_norms(level_grads: jax.Array, level: int,
                               final_level: int) -> jax.Array:
  """Per-image norms of dD/dx of the official full-resolution D, from dD/dx at `level`.

  The official networks always run at the final resolution (networks.py `G_paper`
  / `D_paper`, recursive structure; train.py `process_reals`): an image x of
  the current level enters D as U x, its nearest upscaling by s = 2**(final -
  level), and D average-pools it by s (by 2s for the lower branch of a fade,
  the same pooling composed with a 2x one) before FromRGB. So D_full(X) =
  D_level(P X) with P the s x s average pool, P U = identity, and the official
  interpolate lerp(U real, U fake, u) is U lerp(real, fake, u). By the chain
  rule dD_full/dX at U x is P^T (dD_level/dx), and P^T spreads each level
  pixel's gradient g evenly over its s^2 pixels, g / s^2 each: their squares
  sum to s^2 (g / s^2)^2 = g^2 / s^2, hence |dD_full/dX| = |dD_level/dx| / s
  (8x smaller at 4 px in a 32 px run, 256x in a 1024 px one). The WGAN-GP
  penalty on these norms is the official one, computed at the level's size.
  """
  norms = jnp.sqrt(jnp.sum(jnp.square(level_grads.astype(jnp.float32)), axis=(1, 2, 3)))
  return norms / 2.0 ** (final_level - level)


def discriminator_loss(d_params, reals, fakes, labels, mix, alpha, *, D, config, level, fading):
  """loss.py `D_wgangp_acgan`, averaged over the minibatch, and its metrics.

  `reals` and `fakes` are at `level`'s resolution (reals already cross-faded),
  `mix` [N, 1, 1, 1] the interpolation factors; the gradient penalty holds the
  gradient norm of the official full-resolution D to `wgan_target`
  (`full_resolution_grad_norms`).
  """
  lc = config.loss
  disc = functools.partial(D.apply, level=level, alpha=alpha, fading=fading)
  real_scores, real_logits = disc(d_params, reals)
  fake_scores, fake_logits = disc(d_params, fakes)
  mixed = reals + (fakes - reals) * mix
  mixed_grads = jax.grad(lambda x: jnp.sum(disc(d_params, x)[0]))(mixed)
  norms = full_resolution_grad_norms(mixed_grads, level,
                                     int(round(math.log2(config.model.resolution))))
  penalty = jnp.square(norms - lc.wgan_target)
  loss = (fake_scores - real_scores
          + penalty * (lc.wgan_lambda / lc.wgan_target ** 2)
          + jnp.square(real_scores) * lc.wgan_epsilon
          + (_label_penalty(real_logits, labels) + _label_penalty(fake_logits, labels))
          * lc.cond_weight)
  return jnp.mean(loss), {"d_loss": jnp.mean(loss),
                          "wasserstein": jnp.mean(real_scores - fake_scores),
                          "gradient_penalty": jnp.mean(penalty)}


def train_step(state, batch, key, alpha, g_lr, d_lr, *, G, D, config, level, fading):
  """One D step then one G step (loss.py `D_wgangp_acgan`, `G_wgan_acgan`), then the EMA update."""
  lc, m = config.loss, config.model
  adam = _adam(config)
  reals = batch["image"]
  if fading:
    reals = fade_reals(reals, alpha)
  n = reals.shape[0]
  labels = jax.nn.one_hot(batch["label"], m.label_size) if m.label_size else None
  key_d, key_mix, key_g = jax.random.split(key, 3)
  gen = functools.partial(G.apply, level=level, alpha=alpha, fading=fading)
  disc = functools.partial(D.apply, level=level, alpha=alpha, fading=fading)

  def d_loss_fn(d_params):
    latents = jax.random.normal(key_d, (n, m.latent_size))
    fakes = jax.lax.stop_gradient(gen(state["g"], latents, labels))
    mix = jax.random.uniform(key_mix, (n, 1, 1, 1))
    return discriminator_loss(d_params, reals, fakes, labels, mix, alpha, D=D, config=config,
                              level=level, fading=fading)

  d_grads, d_metrics = jax.grad(d_loss_fn, has_aux=True)(state["d"])
  d_updates, d_opt = adam.update(d_grads, state["d_opt"])
  d_params = jax.tree.map(lambda p, u: p - d_lr * u, state["d"], d_updates)

  def g_loss_fn(g_params):
    latents = jax.random.normal(key_g, (n, m.latent_size))
    scores, logits = disc(d_params, gen(g_params, latents, labels))
    loss = -scores + _label_penalty(logits, labels) * lc.cond_weight
    return jnp.mean(loss)

  g_loss, g_grads = jax.value_and_grad(g_loss_fn)(state["g"])
  g_updates, g_opt = adam.update(g_grads, state["g_opt"])
  g_params = jax.tree.map(lambda p, u: p - g_lr * u, state["g"], g_updates)
  beta = config.g_ema_beta
  g_ema = jax.tree.map(lambda e, p: p + (e - p) * beta, state["g_ema"], g_params)
  new_state = {"g": g_params, "d": d_params, "g_ema": g_ema, "g_opt": g_opt, "d_opt": d_opt}
  return new_state, {**d_metrics, "g_loss": g_loss}


def make_train_step(config, G, D, mesh):
  """`step(state, batch, key, alpha, g_lr, d_lr, level=, fading=)`, jitted over the mesh."""
  replicated = mesh_lib.replicated(mesh)
  return jax.jit(functools.partial(train_step, G=G, D=D, config=config),
                 static_argnames=("level", "fading"), donate_argnums=(0,),
                 out_shardings=(replicated, replicated))


def make_generate(G: Generator, final_resolution: int, chunk: int):
  """`generate(params, latents, labels, stage)` -> NumPy images at the final resolution.

  Lower levels are nearest-upsampled to the final size, as the official G does
  for its output at lod > 0, so metrics compare like with like. Latents run in
  chunks of `chunk` (the last one padded), so each stage compiles once.
  """
  @functools.partial(jax.jit, static_argnames=("level", "fading"))
  def run(params, latents, labels, alpha, *, level, fading):
    images = G.apply(params, latents, labels, level=level, alpha=alpha, fading=fading)
    for _ in range(int(math.log2(final_resolution)) - level):
      images = upsample_nearest_2x(images)
    return images

  def generate(params, latents, labels, stage: Stage) -> np.ndarray:
    n = len(latents)
    pad = -n % chunk
    latents = np.pad(latents, ((0, pad), (0, 0)))
    labels = None if labels is None else np.pad(labels, ((0, pad), (0, 0)))
    out = [run(params, latents[i:i + chunk], None if labels is None else labels[i:i + chunk],
               np.float32(stage.alpha), level=stage.level, fading=stage.fading)
           for i in range(0, n + pad, chunk)]
    return np.concatenate(jax.device_get(out))[:n]
  return generate


def _fixed_latents(config, count: int, salt: int) -> tuple[np.ndarray, np.ndarray | None]:
  rng = np.random.default_rng([config.seed, salt])
  latents = rng.standard_normal((count, config.model.latent_size)).astype(np.float32)
  labels = None
  if config.model.label_size:
    labels = np.eye(config.model.label_size, dtype=np.float32)[
        np.arange(count) % config.model.label_size]
  return latents, labels


class Task:
  """ProGAN for `training.runner`: positions count real images shown; one phase per
  (resolution, fade or stable) of the schedule, entered with fresh Adam states."""
  unit = "img"

  def __init__(self, config: ml_collections.ConfigDict, mesh: jax.sharding.Mesh):
    self.config, self.mesh = config, mesh
    self.schedule = build_schedule(config, mesh.size)
    self.total = self.schedule.total_images
    self.G, self.D = build_models(config)
    self.data = progan_data.TrainingData(config)
    self.step_fn = make_train_step(config, self.G, self.D, mesh)
    self.reset = jax.jit(functools.partial(reset_optimizers, config),
                         out_shardings=mesh_lib.replicated(mesh), donate_argnums=(0,))
    self.generate = make_generate(self.G, config.model.resolution, config.eval.batch_size)
    self.base_key = jax.random.key(config.seed)
    self.last_stage: Stage | None = None  # stage of the last step run, what evaluations show.

  def identity(self) -> dict[str, Any]:
    # The two discriminator orders share one parameter tree, so a checkpoint names its order;
    # checkpoints from before `model.fused_scale` (pool-after order) name none and do not resume.
    return {"seed": self.config.seed, "fused_scale": bool(self.config.model.fused_scale)}

  def init_key(self) -> jax.Array:
    return self.base_key

  def init_state(self, key: jax.Array) -> dict[str, Any]:
    return create_state(self.config, self.G, self.D, key)

  def phase(self, position: int) -> int:
    return self.schedule.stage(position).phase

  def start_phase(self, state, phase: int):
    del phase
    return self.reset(state)

  def train_step(self, state, step: int, position: int):
    stage = self.schedule.stage(position)
    batch = self.data.batch(position, stage.batch_size, stage.resolution,
                            jax.process_index(), jax.process_count())
    state, metrics = self.step_fn(state, mesh_lib.shard_batch(batch, self.mesh),
                                  jax.random.fold_in(self.base_key, step),
                                  np.float32(stage.alpha), np.float32(stage.g_lr),
                                  np.float32(stage.d_lr), level=stage.level, fading=stage.fading)
    self.last_stage = stage
    position += stage.batch_size
    info = {"images_seen": position, "resolution": stage.resolution, "alpha": stage.alpha}
    return state, metrics, info, position

  def eval_stage(self, position: int) -> Stage:
    """The stage evaluations render: the last step's, or the one before `position`."""
    return self.last_stage or self.schedule.stage(max(position - 1, 0))

  def generator(self, state, position: int) -> Callable:
    """`generate(latents, labels)` of the EMA generator at the evaluation stage."""
    stage = self.eval_stage(position)
    return lambda z, y: self.generate(state["g_ema"], z, y, stage)

  def evaluators(self) -> dict[str, Any]:
    return runner.build_evaluators(self.config.evals, evaluation.EVALUATORS, self.config,
                                   self.data, self.generator)

  def samples(self, params, stage: Stage) -> np.ndarray:
    latents, labels = _fixed_latents(self.config, self.config.figures.grid_size, salt=1)
    return self.generate(params, latents, labels, stage)

  def figures(self, state, figdir: pathlib.Path, step: int, position: int, rows, scores,
              final: bool) -> None:
    """At each phase end: a sample grid and the SWD curve; at the end, interpolations."""
    del step
    if scores is None:
      return
    stage, params = self.eval_stage(position), state["g_ema"]
    kind = "fade" if stage.fading else "stable"
    name = "final" if final else f"phase{stage.phase:02d}_{stage.resolution}px_{kind}"
    figures.save_image_grid(self.samples(params, stage), figdir / f"samples_{name}.png",
                            ncols=int(math.sqrt(self.config.figures.grid_size)))
    swd_rows = [r for r in rows if "swd" in r]
    if swd_rows:
      curves = {"average": [r["swd"] for r in swd_rows]}
      for level_name in swd_rows[-1]["swd_levels"]:
        curves[f"{level_name} px"] = [r["swd_levels"].get(level_name, float("nan"))
                                      for r in swd_rows]
      figures.save_curves([r["images_seen"] / 1000 for r in swd_rows], curves,
                          figdir / "swd.png", xlabel="thousand real images shown",
                          ylabel="SWD x1e3 (EMA generator)", title="Sliced Wasserstein distance")
    if final:
      self.interpolation(params, stage, figdir)

  def interpolation(self, params, stage: Stage, figdir: pathlib.Path) -> None:
    """Rows of spherical interpolations between pairs of fixed latents."""
    rows, steps = 4, 10
    ends, labels = _fixed_latents(self.config, 2 * rows, salt=2)
    a, b = ends[:rows], ends[rows:]
    t = np.linspace(0.0, 1.0, steps, dtype=np.float32)[None, :, None]
    na, nb = a / np.linalg.norm(a, axis=1, keepdims=True), b / np.linalg.norm(b, axis=1, keepdims=True)
    omega = np.arccos(np.clip(np.sum(na * nb, axis=1), -1, 1))[:, None, None]
    z = (np.sin((1 - t) * omega) * a[:, None] + np.sin(t * omega) * b[:, None]) / np.sin(omega)
    z = z.reshape(rows * steps, -1).astype(np.float32)
    y = None if labels is None else np.repeat(labels[:rows], steps, axis=0)
    images = self.generate(params, z, y, stage)
    figures.save_image_grid(images, figdir / "interpolation.png", ncols=steps)

  def close(self) -> None:
    self.data.close()


def make_task(config: ml_collections.ConfigDict, mesh: jax.sharding.Mesh) -> Task:
  return Task(config, mesh)


def abstract_state(config: ml_collections.ConfigDict) -> dict[str, Any]:
  """Shapes and dtypes of the train state (no computation)."""
  G, D = build_models(config)
  return jax.eval_shape(functools.partial(create_state, config, G, D), jax.random.key(0))


def summary(config: ml_collections.ConfigDict) -> dict[str, Any]:
  """Parameter counts (all levels) and FLOPs of one train step at the final resolution."""
  G, D = build_models(config)
  schedule = build_schedule(config, 1)
  abstract = abstract_state(config)
  stage = schedule.stage(schedule.total_images - 1)
  m = config.model
  batch = {"image": jax.ShapeDtypeStruct((stage.batch_size, m.resolution, m.resolution,
                                          m.num_channels), jnp.float32),
           "label": jax.ShapeDtypeStruct((stage.batch_size,), jnp.int32)}
  f32 = jax.ShapeDtypeStruct((), jnp.float32)
  flops = runner.step_flops(train_step, abstract, batch,
                            jax.eval_shape(lambda: jax.random.key(0)), f32, f32, f32,
                            G=G, D=D, config=config, level=stage.level, fading=False)
  return {"params": {"generator": runner.count_params(abstract["g"]),
                     "discriminator": runner.count_params(abstract["d"])},
          "flops_per_step": flops, "batch_size": stage.batch_size,
          "resolution": m.resolution, "flops_per_image": flops / stage.batch_size}
