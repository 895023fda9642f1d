"""Interpretable CNN trainer: the release's schedule, losses and SGD, two networks side by
side, the filter assignment, the evaluator, and bad input.

References: NumPy written here from network_init.m (learning rates), our_vl_nnloss.m
(logistic loss), our_cnn_train.m (MatConvNet's SGD with per-parameter multipliers).
Data are generated `PartsSet`s (the loaders are tested in test_icnn_data.py).
"""
import functools
import hashlib
import os
import pathlib
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments.configs.interpretable_cnn import ccp_vgg16, cub_vgg16, pascal_part_vgg16
from experiments.configs import variants
from readingnotes_jax.errors import UserError
from readingnotes_jax.interpretable_cnn import data as icnn_data
from readingnotes_jax.interpretable_cnn import evaluation, loss, train
from readingnotes_jax.training import mesh as mesh_lib, runner

ROOT = pathlib.Path(__file__).resolve().parents[2]
U32 = 2.0 ** -24


def parts_set(num_positive: int, num_negative: int, size: int, num_classes: int = 1,
              seed: int = 0) -> icnn_data.PartsSet:
  """Positives: a bright 8 px square on noise, its centre the one part; negatives: noise."""
  rng = np.random.default_rng(seed)
  n = num_positive + num_negative
  images = rng.integers(0, 90, (n, size, size, 3)).astype(np.uint8)
  parts = np.zeros((n, 1, 2), np.float32)
  for i in range(num_positive):
    x, y = rng.integers(0, size - 8, 2)
    images[i, y:y + 8, x:x + 8] = 250
    parts[i, 0] = (x + 4, y + 4)
  labels = (np.arange(n) % num_classes if num_classes > 1
            else (np.arange(n) < num_positive)).astype(np.int32)
  valid = np.arange(n)[:, None] < num_positive
  return icnn_data.PartsSet(images, labels, parts, valid, ("square",))


def fake_load_split(data_config, split):
  """Generated sets: train 16 + 16 at the config's size, test 12 + 12; a non-empty
  `data.category` gives three classes and no negatives."""
  counts = (16, 16) if split == "train" else (12, 12)
  k = 1 if data_config.category == "" else 3
  if k > 1:
    counts = (sum(counts), 0)
  return parts_set(*counts, data_config.image_size, num_classes=k, seed=split == "test")


@pytest.fixture
def fake_data(monkeypatch):
  monkeypatch.setattr(icnn_data, "load_split", fake_load_split)


def tiny_config(*overrides: str):
  """The contract suite's `:test` config with a Caffe AlexNet at width 6 on 67 px images: the
  trainer is the same for every network, and 8 conv layers compile faster than VGG-16's 16."""
  return ccp_vgg16.get_config(",".join(
      ("test", "model.arch=alexnet", "model.width=6", "data.image_size=67") + overrides))


def test_learning_rate_is_the_releases_logspace():
  """network_init.m: one category lr = [logspace(-4,-5,10), logspace(-5,-5,50)](1:50) (lrMag 1
  for VGG-16), several logspace(-4,-5,80) x labelNum; epoch e uses lr(min(e, numel(lr)))."""
  single = np.concatenate([np.logspace(-4, -5, 10), np.logspace(-5, -5, 50)])[:50]
  multi = np.logspace(-4, -5, 80) * 6
  for config, want in ((cub_vgg16.get_config(""), single),
                       (pascal_part_vgg16.get_config("multiclass"), multi)):
    got = [train.learning_rate(config, e) for e in range(1, len(want) + 6)]
    want = np.concatenate([want, np.full(5, want[-1])])
    np.testing.assert_allclose(got, want, rtol=1e-14)  # float64 both ways


def test_task_losses_are_the_releases():
  rng = np.random.default_rng(1)
  logits = rng.normal(0, 4, (16, 1)).astype(np.float32)
  labels = rng.integers(0, 2, 16).astype(np.int32)
  value, correct = train.task_loss(jnp.asarray(logits), jnp.asarray(labels))
  c = 2.0 * labels - 1.0
  x = logits[:, 0].astype(np.float64)
  want = np.mean(np.log1p(np.exp(-c * x)))  # our_vl_nnloss.m 'logistic', per image
  np.testing.assert_allclose(float(value), want, rtol=32 * U32)  # softplus + a 16-term mean
  assert int(correct) == np.sum(c * x >= 0)  # error_binary: c x < 0 is an error
  logits = rng.normal(0, 3, (16, 4)).astype(np.float32)
  labels = rng.integers(0, 4, 16).astype(np.int32)
  value, correct = train.task_loss(jnp.asarray(logits), jnp.asarray(labels))
  z = logits.astype(np.float64)
  log_softmax = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
  want = 4 * np.mean(-log_softmax[np.arange(16), labels])  # dzdx .* size(class, 3)
  np.testing.assert_allclose(float(value), want, rtol=64 * U32)
  assert int(correct) == np.sum(z.argmax(axis=1) == labels)


def test_sgd_update_is_matconvnets():
  """our_cnn_train.m: g' = g + wd * decay_mult * w; v = 0.9 v - g'; w += lr * lr_mult * v,
  with add_block_mask.m's multipliers: kernels 1 / 1, biases 2 / 0, beta 0.05 / 0."""
  rng = np.random.default_rng(2)
  params = {"conv6": {"kernel": rng.normal(size=(3, 3, 2, 2)), "bias": rng.normal(size=2)},
            "mask6": {"beta": rng.uniform(1.5, 3, 2)}}
  params = jax.tree.map(lambda a: a.astype(np.float32), params)
  config = tiny_config()
  tx = train.make_optimizer(config)
  got, opt_state = params, tx.init(params)
  want = jax.tree.map(lambda a: a.astype(np.float64), params)
  velocity = jax.tree.map(np.zeros_like, want)
  multipliers = {"kernel": (1.0, 1.0), "bias": (2.0, 0.0), "beta": (0.05, 0.0)}
  for lr in (0.1, 0.05):
    grads = jax.tree.map(lambda a: rng.normal(size=a.shape).astype(np.float32), params)
    got, opt_state = train.sgd_update(tx, got, grads, opt_state, jnp.float32(lr))
    for layer, names in want.items():
      for name in names:
        lr_mult, decay_mult = multipliers[name]
        g = grads[layer][name] + 5e-4 * decay_mult * want[layer][name]
        velocity[layer][name] = 0.9 * velocity[layer][name] - g
        want[layer][name] = want[layer][name] + lr * lr_mult * velocity[layer][name]
  # float32: about ten roundings of values below 5 in magnitude.
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=0, atol=5 * 16 * U32), got, want)


def test_filter_weight_scales_the_added_feature_gradient_only():
  """`loss.filter_weight` w with the release's loss: the gradient on the maps is w times the
  release's added one (`loss.release_gradients`), beta's stays the release's update rule."""
  rng = np.random.default_rng(3)
  x = jnp.asarray(rng.uniform(0, 2, (4, 3, 3, 5)).astype(np.float32))
  beta = jnp.asarray(rng.uniform(1.5, 3, 5).astype(np.float32))
  labels = jnp.asarray([1, 0, 1, 0])
  w = 250.0

  def weighted(x, beta):
    return loss.filter_loss(train.scale_gradient(x, jnp.float32(w)), labels, "release",
                            beta=beta, epoch=2)
  dx, dbeta = jax.grad(weighted, argnums=(0, 1))(x, beta)
  c = x.shape[-1]
  want_dx, want_dbeta = loss.release_gradients(
      x, beta, jnp.broadcast_to(labels[:, None] > 0, (4, c)), jnp.ones(c), jnp.ones(c),
      jnp.ones(c, bool), 2)
  # filter_loss's mean reduction divides both by the batch size; w multiplies dx exactly
  # in float32 up to one rounding.
  np.testing.assert_allclose(dx, w * want_dx / 4, rtol=2 * U32, atol=1e-30)
  np.testing.assert_allclose(dbeta, want_dbeta / 4, rtol=2 * U32)


def _tiny_task(config):
  return train.make_task(config, mesh_lib.make_data_mesh(1))


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
  """(workdir, final scores, task) of a 2-step run of both networks on generated data."""
  with pytest.MonkeyPatch.context() as patch:
    patch.setattr(icnn_data, "load_split", fake_load_split)
    config = tiny_config("max_steps=2", "eval_every_steps=0", "checkpoint_every_steps=2")
    workdir = tmp_path_factory.mktemp("icnn_run")
    scores = runner.train(config, str(workdir), train.make_task)
    yield workdir, scores, _tiny_task(config)


def test_side_by_side_networks_do_not_interact(tiny_run, fake_data):
  """Both networks start from the same weights; the ordinary one trained next to the
  interpretable one ends where it ends alone (same batches, same dropout keys)."""
  workdir, _, both = tiny_run
  state = jax.jit(both.init_state)(both.init_key())
  shared = {k: v for k, v in state["interpretable"]["params"].items() if not k.startswith("mask")}
  jax.tree.map(np.testing.assert_array_equal, shared, state["ordinary"]["params"])
  alone = _tiny_task(tiny_config("model.interpretable=False", "train_ordinary=False"))
  single = jax.jit(alone.init_state)(alone.init_key())
  for step in range(2):
    single, _, _, _ = alone.train_step(single, step, step)
  trained, _ = runner.restore_latest(workdir, runner.abstract_state(both))
  # Two programs: the same float32 arithmetic in another order. The contract suite's bar for
  # that after a few steps, norm-wise per array: ||a - b|| <= 1e-4 ||a|| (a shared batch or
  # gradient would move whole arrays by far more).
  def close(path, a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    assert np.linalg.norm(a - b) <= 1e-4 * np.linalg.norm(a) + 1e-12, jax.tree_util.keystr(path)
  jax.tree_util.tree_map_with_path(close, trained["ordinary"], jax.device_get(single["ordinary"]))
  # The masks and the filter loss train the interpretable network differently.
  assert np.any(trained["interpretable"]["params"]["conv6"]["kernel"]
                != trained["ordinary"]["params"]["conv6"]["kernel"])


def test_several_categories_assign_filters_by_activation(fake_data):
  """After a step the assignment of each masked layer is `update_filter_assignment` of its
  input maps' maxima under the step's parameters (our_cnn_train.m `sliceMag`)."""
  config = tiny_config("model.num_classes=3", "data.category=animals", "train_ordinary=False")
  task = _tiny_task(config)
  state = jax.jit(task.init_state)(task.init_key())
  assert set(state["interpretable"]["assignment"]) == {"mask6", "mask7"}
  params = state["interpretable"]["params"]
  batch = icnn_data.batch(task.train_set, config.seed, 0, config.batch_size, config.data.augment)
  _, aux = jax.jit(functools.partial(task.models["interpretable"].apply, train=False))(
      {"params": params}, batch["image"])
  new, metrics, _, _ = task.train_step(state, 0, 0)
  assert np.isfinite(float(metrics["loss"]))
  labels = jax.nn.one_hot(batch["label"], 3)
  for name in ("mask6", "mask7"):
    ema, filter_class = loss.update_filter_assignment(
        jnp.zeros_like(new["interpretable"]["assignment"][name]["ema"]),
        jnp.max(aux["mask_inputs"][name], axis=(1, 2)), labels)
    np.testing.assert_allclose(new["interpretable"]["assignment"][name]["ema"], ema,
                               rtol=4 * U32)
    np.testing.assert_array_equal(new["interpretable"]["assignment"][name]["filter_class"],
                                  filter_class)


def test_paper_formulation_adds_lambda_times_the_mutual_information_loss(fake_data):
  """`formulation="paper"` in the trainer: the step's filter loss is the sum over both masked
  layers and their filters of -MI (`mutual_information_loss`, checked against NumPy in
  test_icnn_loss.py) on the maps of the step's parameters, the total adds it times
  `loss.filter_weight`, and a few steps stay finite."""
  config = tiny_config("loss.formulation=paper", "loss.filter_weight=0.5", "train_ordinary=False")
  task = _tiny_task(config)
  state = jax.jit(task.init_state)(task.init_key())
  batch = icnn_data.batch(task.train_set, config.seed, 0, config.batch_size, config.data.augment)
  # The masked layers' inputs come before any dropout (and AlexNet has no BatchNorm), so the
  # evaluation-mode maps are the training step's.
  _, aux = jax.jit(functools.partial(task.models["interpretable"].apply, train=False))(
      {"params": state["interpretable"]["params"]}, batch["image"])
  want = sum(float(jnp.sum(loss.mutual_information_loss(x))) for x in aux["mask_inputs"].values())
  for step in range(3):
    state, metrics, _, _ = task.train_step(state, step, step)
    metrics = {k: float(v) for k, v in metrics.items()}
    assert all(np.isfinite(v) for v in metrics.values()), metrics
    if step == 0:
      # float32 sums over a few thousand terms of size ~1: a few hundred U32 relative.
      assert metrics["filter_loss"] == pytest.approx(want, rel=1e-4)
    assert metrics["loss"] == pytest.approx(metrics["task_loss"] + 0.5 * metrics["filter_loss"],
                                            rel=1e-5, abs=1e-5)


def test_run_scores_both_networks_and_draws_figures(tiny_run, fake_data):
  """The evaluator's scores for both networks (location instability recomputed here from
  the networks' own maps with a NumPy argmax), the figures, and `runner.evaluate`."""
  workdir, scores, task = tiny_run
  config = task.config
  for prefix in ("", "ordinary_"):
    for key in ("accuracy", "location_instability", "part_hit_fraction"):
      assert np.isfinite(scores[prefix + key]), prefix + key
  state, _ = runner.restore_latest(workdir, runner.abstract_state(task))
  test_set = task.test_set
  for name, prefix in (("interpretable", ""), ("ordinary", "ordinary_")):
    model = task.models[name]
    logits, aux = jax.jit(functools.partial(model.apply, train=False))(
        {"params": state[name]["params"]}, train.normalize(test_set.images))
    maps = np.asarray(aux["filters"], np.float64)
    n, h, w, c = maps.shape
    peaks, top = np.zeros((n, c, 2)), np.zeros((n, c))
    stride, offset = model.feature_geometry()
    for i in range(n):
      for f in range(c):
        row, col = np.unravel_index(np.argmax(maps[i, :, :, f]), (h, w))
        peaks[i, f] = (offset + stride * col, offset + stride * row)
        top[i, f] = maps[i, row, col, f]
    want, _ = evaluation.location_instability(peaks, top, test_set.parts, test_set.part_valid,
                                              config.data.image_size, config.eval.top_k)
    np.testing.assert_allclose(scores[prefix + "location_instability"], want, rtol=1e-6)
    margin = (2 * test_set.labels - 1) * np.asarray(logits)[:, 0]
    assert scores[prefix + "accuracy"] == np.mean(margin >= 0)
  names = {p.name for p in (workdir / "figures").glob("*.png")}
  assert {"loss.png", "location_instability.png", "instability_per_filter.png",
          "activation_maps.png", "top_images_interpretable.png",
          "top_images_ordinary.png"} <= names
  again = runner.evaluate(config, str(workdir), train.make_task)
  assert again["location_instability"] == scores["location_instability"]


def test_summary_counts_both_networks():
  config = tiny_config()
  result = train.summary(config)
  shapes = jax.eval_shape(functools.partial(train.build_model(config).init, train=False),
                          jax.random.key(0), jnp.zeros((1, 67, 67, 3)))
  count = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(shapes["params"]))
  betas = 16 + 16  # one per channel of conv5 and conv6 (256 x 6 / 96)
  assert result["params"] == {"interpretable": count, "ordinary": count - betas}
  assert result["flops_per_step"] > 0


@pytest.mark.parametrize("override, message", [
    ("loss.formulation=mine", "unknown filter-loss formulation 'mine'"),
    ("model.arch=vgg19", "model.arch='vgg19'"),
    ("model.arch=vgg16,data.image_size=48", "multiple of 32"),
    ("model.interpretable=False", "train_ordinary=True"),
    ("batch_size=0", "batch_size=0")])
def test_bad_config_fails_before_reading_data(override, message, monkeypatch):
  def load_split(*args):
    raise AssertionError("data read before the config was checked")
  monkeypatch.setattr(icnn_data, "load_split", load_split)
  with pytest.raises(UserError, match=message):
    _tiny_task(tiny_config(override))


def test_labels_beyond_the_classes_are_refused(fake_data):
  with pytest.raises(UserError, match="model.num_classes=2"):
    _tiny_task(tiny_config("model.num_classes=2", "data.category=animals"))


def test_unknown_formulation_exits_2_and_leaves_the_workdir(tmp_path):
  """Through the command: one line on stderr, exit code 2, the workdir's files unchanged."""
  (tmp_path / "metrics.jsonl").write_text('{"step": 1}\n')
  before = hashlib.sha1((tmp_path / "metrics.jsonl").read_bytes()).hexdigest()
  result = subprocess.run(
      [sys.executable, "-m", "experiments.train",
       "--config=experiments/configs/interpretable_cnn/ccp_vgg16.py:test",
       "--config.loss.formulation=mine", f"--workdir={tmp_path}"],
      cwd=ROOT, capture_output=True, text=True, timeout=600,
      env={**os.environ, "READINGNOTES_DATA": str(tmp_path / "none")})
  assert result.returncode == 2, result.stderr[-2000:]
  lines = result.stderr.strip().splitlines()
  assert len(lines) == 1 and "unknown filter-loss formulation 'mine'" in lines[0]
  assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.jsonl"]
  assert hashlib.sha1((tmp_path / "metrics.jsonl").read_bytes()).hexdigest() == before
