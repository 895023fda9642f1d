"""ProGAN on the shared runner, tiny generated IDX data: growth, figures, evaluation, loaders.

Resume, bad input, non-finite loss and 8 devices are the contract suite's (tests/contract).
"""
import gzip
import json
import os
import pathlib
import struct
import subprocess
import sys

import jax
import numpy as np
import pytest

from experiments.configs import variants
from experiments.configs.progan import fashion_mnist_32
from readingnotes_jax.errors import UserError
from readingnotes_jax.progan import data as progan_data
from readingnotes_jax.progan import predict, train
from readingnotes_jax.training import runner
from readingnotes_jax.training.checkpoint import Checkpointer

ROOT = pathlib.Path(__file__).resolve().parents[2]


def write_idx(folder: pathlib.Path, n: int = 64, seed: int = 0) -> None:
  """Fashion-MNIST-format IDX files of random blobs (magic 0x803 / 0x801)."""
  rng = np.random.default_rng(seed)
  yy, xx = np.mgrid[:28, :28]
  centers = rng.uniform(8, 20, (n, 2))
  images = (255 * np.exp(-((yy - centers[:, :1, None]) ** 2 + (xx - centers[:, 1:, None]) ** 2)
                         / 30.0)).astype(np.uint8)
  labels = rng.integers(0, 10, n).astype(np.uint8)
  folder.mkdir(parents=True, exist_ok=True)
  with gzip.open(folder / "train-images-idx3-ubyte.gz", "wb") as f:
    f.write(struct.pack(">IIII", 0x803, n, 28, 28) + images.tobytes())
  with gzip.open(folder / "train-labels-idx1-ubyte.gz", "wb") as f:
    f.write(struct.pack(">II", 0x801, n) + labels.tobytes())


def tiny_config(data_path: pathlib.Path, **overrides):
  """The `:test` variant (8 -> 16 px, 16 steps of 8 images, tiny nets) on `data_path`."""
  c = fashion_mnist_32.get_config("test")
  c.data.path = str(data_path)
  for key, value in overrides.items():
    variants.set_path(c, key, value)
  return c


@pytest.fixture(scope="module")
def data_path(tmp_path_factory):
  path = tmp_path_factory.mktemp("idx")
  write_idx(path)
  return path


@pytest.fixture(scope="module")
def full_run(data_path, tmp_path_factory):
  workdir = tmp_path_factory.mktemp("full")
  scores = runner.train(tiny_config(data_path), str(workdir), train.make_task)
  return workdir, scores


def loss_rows(workdir):
  rows = [json.loads(l) for l in (workdir / "metrics.jsonl").read_text().splitlines()]
  return [r for r in rows if "d_loss" in r]


def final_state(workdir, config):
  return runner.restore_latest(workdir, train.abstract_state(config))


def test_full_run_writes_metrics_figures_and_grows(full_run):
  workdir, scores = full_run
  rows = loss_rows(workdir)
  assert [r["step"] for r in rows] == list(range(1, 17))
  assert {r["resolution"] for r in rows} == {8, 16}
  fade = [r["alpha"] for r in rows if r["resolution"] == 16 and r["alpha"] < 1]
  assert fade == sorted(fade) and 0 <= fade[0] < 0.5 < fade[-1] < 1
  assert all(np.isfinite(r["d_loss"]) and np.isfinite(r["g_loss"]) for r in rows)
  evals = [json.loads(l) for l in (workdir / "metrics.jsonl").read_text().splitlines()
           if "swd" in l]
  assert len(evals) == 3  # one per phase: 8 stable, 16 fade, 16 stable (final).
  assert "swd_levels" in evals[-1] and "ms_ssim" in evals[-1]
  assert scores["swd"] == evals[-1]["swd"]
  figs = {p.name for p in (workdir / "figures").iterdir()}
  assert {"samples_final.png", "swd.png", "interpolation.png"} <= figs
  assert any(n.startswith("samples_phase00_8px") for n in figs)
  assert json.loads((workdir / "config.json").read_text())["model"]["resolution"] == 16


def test_resume_mid_fade_is_exact(full_run, data_path, tmp_path):
  """Stopped in the middle of the fade (steps 5-8), the run ends bit for bit as the full one."""
  full_dir, _ = full_run
  config = tiny_config(data_path)
  runner.train(config, str(tmp_path), train.make_task, stop_after_steps=6)
  rows = loss_rows(tmp_path)
  assert rows[-1]["step"] == 6 and rows[-1]["resolution"] == 16 and rows[-1]["alpha"] < 1
  runner.train(config, str(tmp_path), train.make_task)
  keys = ("step", "d_loss", "g_loss", "wasserstein", "gradient_penalty", "alpha")
  assert [[r[k] for k in keys] for r in loss_rows(tmp_path)] == \
         [[r[k] for k in keys] for r in loss_rows(full_dir)]
  a, meta_a = final_state(full_dir, config)
  b, meta_b = final_state(tmp_path, config)
  assert meta_a == meta_b
  jax.tree.map(np.testing.assert_array_equal, a, b)


def test_incompatible_checkpoint_is_reported_and_kept(full_run, data_path):
  """Another width: the checkpoint does not match; it is reported and not replaced."""
  full_dir, _ = full_run
  before = sorted(p.name for p in (full_dir / "checkpoints").iterdir())
  config = tiny_config(data_path, **{"model.fmap_max": 16})
  with pytest.raises(UserError, match="does not match"):
    runner.train(config, str(full_dir), train.make_task)
  assert sorted(p.name for p in (full_dir / "checkpoints").iterdir()) == before


def test_corrupt_checkpoint_is_reported(full_run, data_path, tmp_path):
  config = tiny_config(data_path)
  runner.train(config, str(tmp_path), train.make_task, stop_after_steps=3)
  step_dir = tmp_path / "checkpoints" / "3"
  for f in (step_dir / "state").rglob("*"):
    if f.is_file() and f.parent.name == "d":
      f.write_bytes(b"garbage")
  with pytest.raises(UserError, match="checkpoints/3"):
    runner.train(config, str(tmp_path), train.make_task)
  assert step_dir.exists()


def test_evaluate_command_prints_json_and_writes_eval_json(full_run, data_path, tmp_path):
  workdir, scores = full_run
  cfg = tmp_path / "tiny.py"
  cfg.write_text(
      "import pathlib, sys\n"
      f"sys.path.insert(0, {str(ROOT / 'tests' / 'progan')!r})\n"
      "from test_train import tiny_config\n"
      f"def get_config(arg=''):\n  return tiny_config(pathlib.Path({str(data_path)!r}))\n")
  r = subprocess.run([sys.executable, "-m", "experiments.evaluate", f"--config={cfg}",
                      f"--workdir={workdir}"], cwd=ROOT, capture_output=True, text=True,
                     timeout=600)
  assert r.returncode == 0, r.stderr[-2000:]
  result = json.loads(r.stdout.strip().splitlines()[-1])
  assert result == json.loads((workdir / "eval.json").read_text())
  assert result["step"] == 16 and result["position"] == 128
  # Same EMA generator, same evaluation seeds: the training run's final scores.
  assert result["swd"] == pytest.approx(scores["swd"])
  assert result["ms_ssim"] == pytest.approx(scores["ms_ssim"])


def test_swd_reals_are_mirrored_when_training_mirrors(data_path):
  """util_scripts.py `evaluate_metrics` mirrors about half of the real images the metrics use
  when the run mirrors its training data (`misc.apply_mirror_augment`)."""
  with_mirror = progan_data.TrainingData(tiny_config(data_path, **{"data.mirror": True}))
  without = progan_data.TrainingData(tiny_config(data_path))
  mirrored, plain = with_mirror.eval_reals(64), without.eval_reals(64)
  with_mirror.close()
  without.close()
  flipped = np.all(mirrored == plain[:, :, ::-1], axis=(1, 2, 3))
  kept = np.all(mirrored == plain, axis=(1, 2, 3))
  assert not np.any(flipped & kept)  # no left-right symmetric blob: the two are told apart.
  assert np.all(flipped | kept)
  # Binomial(64, 1/2) falls outside 16..48 with probability 1e-5.
  assert 16 <= flipped.sum() <= 48


def test_load_ema_generator_matches_the_checkpoint(full_run, data_path):
  workdir, _ = full_run
  generate, latent_size = predict.load_generator(str(workdir))
  assert latent_size == 16
  latents = np.random.default_rng(0).standard_normal((3, 16)).astype(np.float32)
  images = generate(latents)
  config = tiny_config(data_path)
  G, D = train.build_models(config)
  state, _ = final_state(workdir, config)
  expected = G.apply(state["g_ema"], latents, level=4)
  np.testing.assert_allclose(images, expected, rtol=1e-5, atol=1e-5)
  assert images.shape == (3, 16, 16, 1)


def test_summary_counts_parameters_of_every_level():
  from experiments.configs.progan import celeba_hq_1024
  result = train.summary(celeba_hq_1024.get_config())
  # networks.py G_paper / D_paper at 1024: final-resolution layers plus the lower
  # ToRGB (G) / FromRGB (D) layers kept for fading (tests/progan/test_progan_model.py
  # derives both from the layer formulas).
  assert result["params"] == {"generator": 23_071_507 + 7_608,
                              "discriminator": 23_077_137 + 10_112}
  assert result["batch_size"] == 4  # config.py preset-v2-1gpu at 1024 px.
  assert result["flops_per_step"] > 4 * 1e12  # > 1 TFLOP per 1024x1024 image and step.


def test_stream_walks_the_latent_space_of_a_training_workdir(full_run):
  """The live view's ProGAN source loads the EMA generator from the workdir written above."""
  from readingnotes_jax.stream import sources
  source = sources.progan_walk_source(str(full_run[0]))
  frames = source.open()
  first, second = next(frames), next(frames)
  assert first.shape == (256, 256, 3) and first.dtype == np.uint8  # 16 px zoomed 16x.
  assert first.std() > 0 and not np.array_equal(first, second)
