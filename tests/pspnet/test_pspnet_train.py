"""PSPNet on the shared runner: optimizer against NumPy torch-SGD, tiny end-to-end runs on a
generated CamVid tree, exact resume, 8 devices == 1 device (synchronized BN), summary counts,
bad input with PSPNet's own messages (the generic checks: tests/contract)."""
import json
import os
import pathlib
import re
import shutil
import subprocess
import sys

import jax
import numpy as np
import pytest
from PIL import Image

from pspnet_testlib import NUM_CLASSES, TinyPSPNet, tiny_config, write_camvid
from readingnotes_jax.errors import UserError
from readingnotes_jax.pspnet import data as pspnet_data
from readingnotes_jax.pspnet import predict, train
from readingnotes_jax.training import runner

ROOT = pathlib.Path(__file__).resolve().parents[2]
HERE = pathlib.Path(__file__).resolve().parent
REAL_BUILD_MODEL = train.build_model


@pytest.fixture(scope="module", autouse=True)
def tiny_network(tmp_path_factory):
  """The trainer builds TinyPSPNet (same interface and parameter groups) instead of PSPNet-50;
  builds and compiles are cached in a folder of this module."""
  with pytest.MonkeyPatch.context() as patch:
    patch.setattr(train, "build_model", lambda config: TinyPSPNet(
        len(pspnet_data.dataset(config).class_names)))
    patch.setenv("READINGNOTES_CACHE", str(tmp_path_factory.mktemp("cache")))
    yield


@pytest.fixture(scope="module")
def camvid(tmp_path_factory):
  return write_camvid(tmp_path_factory.mktemp("camvid"))


@pytest.fixture(scope="module")
def full_run(camvid, tmp_path_factory):
  workdir = tmp_path_factory.mktemp("full")
  scores = runner.train(tiny_config(camvid), str(workdir), train.make_task)
  return workdir, scores


def rows(workdir, key):
  lines = (workdir / "metrics.jsonl").read_text().splitlines()
  return [r for r in map(json.loads, lines) if key in r]


def torch_sgd_reference(params, grads_per_step, labels, base_lr, total, momentum, wd, mult):
  """torch.optim.SGD(momentum, weight_decay) with semseg's per-step poly lr per group."""
  params = {k: v.astype(np.float64) for k, v in params.items()}
  buffers = {k: np.zeros_like(v) for k, v in params.items()}
  for step, grads in enumerate(grads_per_step):
    lr = base_lr * (1 - step / total) ** 0.9
    for k in params:
      d_p = grads[k] + wd * params[k]
      buffers[k] = momentum * buffers[k] + d_p
      params[k] = params[k] - lr * (mult if labels[k] == "new" else 1.0) * buffers[k]
  return params


def test_optimizer_is_semseg_sgd():
  config = tiny_config("unused")
  config.optimizer.weight_decay = 0.01  # large enough to matter in float32.
  rng = np.random.default_rng(0)
  params = {"backbone": rng.normal(size=(3, 2)).astype(np.float32),
            "ppm": rng.normal(size=(4,)).astype(np.float32),
            "cls": rng.normal(size=(2, 2)).astype(np.float32)}
  grads = [{k: rng.normal(size=v.shape).astype(np.float32) for k, v in params.items()}
           for _ in range(5)]
  tx = train.make_optimizer(config)
  state, current = tx.init(params), params
  for step, g in enumerate(grads):
    direction, state = tx.update(g, state, current)
    lr = train.learning_rate(config, step, 7)
    current = jax.tree.map(lambda p, d: p - lr * d, current, direction)
  expected = torch_sgd_reference(params, grads, train.param_labels(params), 0.01, 7, 0.9, 0.01,
                                 10.0)
  for k in params:
    np.testing.assert_allclose(current[k], expected[k], rtol=1e-5, atol=1e-6)


def test_full_run_writes_metrics_curves_and_figures(full_run):
  workdir, scores = full_run
  train_rows = rows(workdir, "loss")
  assert [r["step"] for r in train_rows] == [1, 2, 3, 4, 5, 6]
  assert all(np.isfinite(r["loss"]) for r in train_rows)
  for r in train_rows:  # poly lr of the step that produced the row (steps count from 0).
    assert r["lr"] == pytest.approx(0.01 * (1 - (r["step"] - 1) / 6) ** 0.9)
    assert r["loss"] == pytest.approx(r["main_loss"] + 0.4 * r["aux_loss"], rel=1e-5)
  val = rows(workdir, "val_miou")
  assert [(r["step"], r["val_images"]) for r in val] == [(3, 2), (6, 3)]
  assert scores["val_miou"] == val[-1]["val_miou"] and 0 <= scores["val_miou"] <= 1
  assert len(scores["val_iou"]) == NUM_CLASSES
  figures = {p.name for p in (workdir / "figures").iterdir()}
  assert {"loss.png", "val_miou.png", "predictions.png", "confusion_matrix.png"} <= figures
  assert json.loads((workdir / "config.json").read_text())["trainer"] == "pspnet"
  # every 4 steps, at each evaluation (3, 6) and at the end; the last 3 kept.
  assert sorted(int(p.name) for p in (workdir / "checkpoints").iterdir()) == [3, 4, 6]


def test_resume_is_exact(full_run, camvid, tmp_path):
  """Stopped after 2 and then 3 more steps, the run ends bit for bit as the uninterrupted one."""
  full_dir, full_scores = full_run
  config = tiny_config(camvid)
  assert runner.train(config, str(tmp_path), train.make_task, stop_after_steps=2) == {}
  assert rows(tmp_path, "loss")[-1]["step"] == 2
  runner.train(config, str(tmp_path), train.make_task, stop_after_steps=3)
  scores = runner.train(config, str(tmp_path), train.make_task)
  keys = ("step", "loss", "main_loss", "aux_loss", "pixel_accuracy", "lr")
  assert [[r[k] for k in keys] for r in rows(tmp_path, "loss")] == \
         [[r[k] for k in keys] for r in rows(full_dir, "loss")]
  assert scores == full_scores
  a, meta_a = runner.restore_latest(full_dir, train.abstract_state(config))
  b, meta_b = runner.restore_latest(tmp_path, train.abstract_state(config))
  assert meta_a == meta_b
  jax.tree.map(np.testing.assert_array_equal, a, b)


def test_evaluate_and_load_predictor(full_run, camvid):
  workdir, scores = full_run
  result = runner.evaluate(tiny_config(camvid), str(workdir), train.make_task)
  assert result["val_miou"] == pytest.approx(scores["val_miou"])
  assert set(result["val_iou"]) == set(pspnet_data.DATASETS["camvid"].class_names)
  segment, names, palette = predict.load_segmenter(str(workdir))
  image = np.asarray(Image.open(camvid / "val" / "000.png"))
  labels = segment(image)
  assert labels.shape == image.shape[:2] and labels.dtype == np.int32
  assert labels.min() >= 0 and labels.max() < len(names) == len(palette) == NUM_CLASSES


def test_nonfinite_loss_stops_with_one_line(camvid, tmp_path):
  config = tiny_config(camvid, **{"optimizer.base_lr": 1e30})
  with pytest.raises(UserError, match="non-finite loss at step 2.*no checkpoint was written"):
    runner.train(config, str(tmp_path), train.make_task)
  assert not any((tmp_path / "checkpoints").iterdir())


def test_checkpoint_of_another_class_count_is_refused(full_run, camvid, tmp_path, monkeypatch):
  workdir = tmp_path / "run"
  shutil.copytree(full_run[0], workdir)
  before = {p: p.read_bytes() for p in workdir.rglob("*") if p.is_file()}
  monkeypatch.setattr(train, "build_model", lambda config: TinyPSPNet(12))
  with pytest.raises(UserError, match=r"checkpoint .*checkpoints/6 does not match this config .*"
                                     r"is \(\(11,\), 'float32'\), the config needs \(\(12,\)"):
    runner.train(tiny_config(camvid), str(workdir), train.make_task)
  assert {p: p.read_bytes() for p in workdir.rglob("*") if p.is_file()} == before


MESH_SCRIPT = """
import functools, json, os
os.environ["XLA_FLAGS"] += " --xla_force_host_platform_device_count=8"
import jax, numpy as np
from pspnet_testlib import TinyPSPNet, tiny_config
from readingnotes_jax.pspnet import predict, train
from readingnotes_jax.training import runner
from readingnotes_jax.training import mesh as mesh_lib
config = tiny_config("unused", batch_size=8)
model, tx = TinyPSPNet(), train.make_optimizer(config)
initial = jax.device_get(jax.jit(functools.partial(train.create_train_state, model, tx))(
    train.run_keys(0)[0]))
rng = np.random.default_rng(0)
batch = {"image": rng.normal(size=(8, 25, 25, 3)).astype(np.float32),
         "label": rng.integers(0, 11, (8, 25, 25)).astype(np.int32)}
batch["label"][:3, :12] = 255  # devices see different numbers of valid pixels.
out = {}
for n in (1, 8):
  mesh = mesh_lib.make_data_mesh(n)
  step = train.make_train_step(config, model, tx, mesh)
  state = mesh_lib.replicate(initial, mesh)
  for s in range(2):
    state, metrics = step(state, mesh_lib.shard_batch(batch, mesh), train.make_key(s),
                          np.float32(0.01))
  out[n] = jax.device_get((state, metrics))
diffs = jax.tree.leaves(jax.tree.map(lambda a, b: float(np.max(np.abs(a - b))), out[1], out[8]))
scale = jax.tree.leaves(jax.tree.map(lambda a: float(np.max(np.abs(a))), out[1]))
moved = float(np.max(np.abs(out[1][0]["batch_stats"]["backbone"]["bn0"]["mean"])))
print(json.dumps({"devices": jax.device_count(), "max_diff": max(diffs), "max_abs": max(scale),
                  "bn_mean_moved": moved}))
"""


def test_eight_devices_give_the_one_device_step():
  """Batch sharded over 8 CPU devices, state replicated: same step, BN statistics global."""
  env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(HERE)])}
  done = subprocess.run([sys.executable, "-c", MESH_SCRIPT], capture_output=True, text=True,
                        env=env, cwd=ROOT, timeout=600)
  assert done.returncode == 0, done.stderr[-3000:]
  result = json.loads(done.stdout.strip().splitlines()[-1])
  assert result["devices"] == 8 and result["bn_mean_moved"] > 0
  assert result["max_diff"] <= 1e-5 * max(1.0, result["max_abs"])


def run_cli(args, cache):
  env = {**os.environ, "PYTHONPATH": str(ROOT), "READINGNOTES_CACHE": str(cache)}
  return subprocess.run([sys.executable, "-m", "experiments.train", *args], capture_output=True,
                        text=True, env=env, cwd=ROOT, timeout=300)


def test_bad_input_exits_2_with_one_line_and_leaves_the_workdir(full_run, camvid, tmp_path):
  workdir = tmp_path / "run"
  shutil.copytree(full_run[0], workdir)
  before = {p: p.read_bytes() for p in workdir.rglob("*") if p.is_file()}
  broken = tmp_path / "broken"
  shutil.copytree(camvid, broken)
  Image.fromarray(np.full((33, 41), 20, np.uint8)).save(broken / "valannot" / "001.png")
  (broken / "train" / "002.png").write_bytes(b"not an image")
  config = f"{ROOT}/experiments/configs/pspnet/camvid_pspnet50.py:runlocal"
  cases = [  # (flags, message); the first fails while TFDS builds the data set (its progress
      # bars go to stdout).
      ([f"--config.data.path={broken}"], r"002\.png: unreadable image"),
      ([f"--config.data.path={tmp_path / 'missing'}"], r"data\.path=.*missing is not a folder"),
      ([f"--config.data.path={camvid}", "--config.data.crop_size=100"],
       r"data\.crop_size=100: PSPNet needs \(size - 1\) % 8 == 0"),
      ([f"--config.data.path={camvid}", "--config.data.source=kitti"], r"data\.source='kitti'"),
  ]
  for extra, message in cases:
    done = run_cli([f"--config={config}", f"--workdir={workdir}", *extra], tmp_path / "cache")
    assert done.returncode == 2, done.stderr[-2000:]
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("train.py: error: "), done.stderr[-2000:]
    assert re.search(message, lines[0]), lines[0]
  assert {p: p.read_bytes() for p in workdir.rglob("*") if p.is_file()} == before
  # The out-of-range label on its own (the unreadable image above is found first).
  (broken / "train" / "002.png").write_bytes((camvid / "train" / "002.png").read_bytes())
  done = run_cli([f"--config={config}", f"--workdir={workdir}",
                  f"--config.data.path={broken}"], tmp_path / "cache")
  assert done.returncode == 2
  [line] = done.stderr.strip().splitlines()
  assert "valannot/001.png: label values [20] outside" in line
  # An image/label size mismatch.
  Image.fromarray(np.zeros((30, 41), np.uint8)).save(broken / "valannot" / "001.png")
  done = run_cli([f"--config={config}", f"--workdir={workdir}",
                  f"--config.data.path={broken}"], tmp_path / "cache")
  assert done.returncode == 2
  [line] = done.stderr.strip().splitlines()
  assert re.search(r"valannot/001\.png: label is 30x41 but image .*val/001\.png is 33x41",
                   line), done.stderr[-1000:]
  assert {p: p.read_bytes() for p in workdir.rglob("*") if p.is_file()} == before


def test_summary_counts_the_official_ade20k_pspnet50(monkeypatch):
  """params.model equals semseg's PSPNet(layers=50, classes=150) parameter count."""
  from experiments.configs.pspnet import ade20k_pspnet50
  monkeypatch.setattr(train, "build_model", REAL_BUILD_MODEL)
  config = ade20k_pspnet50.get_config()
  config.batch_size, config.data.crop_size = 1, 65  # FLOPs at a small size, same counts.
  result = train.summary(config)
  assert result["params"]["model"] == 49_180_908
  assert result["params"]["model_without_aux"] == 46_782_550
  assert result["flops_per_step"] > 0 and result["num_classes"] == 150

