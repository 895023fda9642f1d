"""detect_track.train: the evaluation protocol on constructed detections with known scores, the
two phases (detector, then D&T from it), bad input through the commands."""
import importlib.util
import json
import os
import pathlib
import shutil
import subprocess
import sys

import cv2
import jax
import numpy as np
import pytest

from experiments.configs.detect_track import mot_dt_resnet50, vid_rfcn_resnet50
from readingnotes_jax.detect_track import data as dt_data
from readingnotes_jax.detect_track import train as dt_train
from readingnotes_jax.training import mesh as mesh_lib, runner
from readingnotes_jax.training.checkpoint import Checkpointer

ROOT = pathlib.Path(__file__).resolve().parents[2]
CONFIG = ROOT / "experiments/configs/detect_track/mot_dt_resnet50.py"


def _tiny_data():
  spec = importlib.util.spec_from_file_location("tiny_data", ROOT / "tests/contract/tiny_data.py")
  tiny_data = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(tiny_data)
  return tiny_data


@pytest.fixture(scope="module")
def mot_root(tmp_path_factory):
  root = tmp_path_factory.mktemp("mot")
  with pytest.MonkeyPatch.context() as patch:
    patch.setenv("READINGNOTES_CACHE", str(root / "cache"))
    yield pathlib.Path(_tiny_data().write("mot", root)["data.path"])


def _config(mot_root, **overrides):
  config = mot_dt_resnet50.get_config("test")
  config.data.path = str(mot_root)
  for key, value in overrides.items():
    config[key] = value
  return config


def _perfect_outputs(frames, factor, order, tracks_right):
  """`predict_pairs` outputs whose detections are exactly the ground truth (at the eval
  canvas's scale `factor`), each frame's RoIs in `order(t)`, and the RoI tracker moving each
  box onto the same identity's box in t + 1 (or, if not `tracks_right`, far away)."""
  count, slots = len(frames), 8
  out = {"boxes": np.zeros((count, 1, slots, 4)), "scores": np.zeros((count, 1, slots)),
         "valid": np.zeros((count, 1, slots), bool), "roi_boxes": np.zeros((count, slots, 4)),
         "roi_valid": np.zeros((count, slots), bool), "roi_probs": np.zeros((count, slots, 2)),
         "tracked_boxes": np.zeros((count, slots, 4))}
  for t in range(count):
    boxes, ids = frames.boxes[t][order(t)], frames.track_ids[t][order(t)]
    n = len(boxes)
    out["boxes"][t, 0, :n], out["scores"][t, 0, :n], out["valid"][t, 0, :n] = boxes * factor, 0.9, True
    out["roi_boxes"][t, :n], out["roi_valid"][t, :n] = boxes * factor, True
    out["roi_probs"][t, :n] = [0.1, 0.9]
    nxt = min(t + 1, count - 1)
    for k, track_id in enumerate(ids):
      target = frames.boxes[nxt][frames.track_ids[nxt] == track_id][0]
      out["tracked_boxes"][t, k] = target * factor if tracks_right else [0, 0, 1, 1]
  return out


def test_evaluation_scores_perfect_detections_and_tracks(mot_root):
  """Detections equal to the ground truth: both mAPs 1; with the RoI tracks right, linking
  follows each person (MOTA, IDF1 1, no switch) even though every frame lists its RoIs in
  another order."""
  frames = dt_data.Frames(mot_root / "PETS09-S2L1")
  config = _config(mot_root)
  factors = np.full(len(frames), 0.5)
  order = lambda t: np.roll(np.arange(len(frames.boxes[t])), t)
  scores, tracks = dt_train.score_sequence(_perfect_outputs(frames, 0.5, order, True), factors,
                                           frames, len(frames), config)
  assert scores["map_detector"] == pytest.approx(1.0) and scores["map"] == pytest.approx(1.0)
  assert scores["mota"] == pytest.approx(1.0) and scores["idf1"] == pytest.approx(1.0)
  assert scores["id_switches"] == 0 and scores["num_tracks"] == 3 == len(tracks)
  # Without usable tracks the equal scores tie, Viterbi takes the first box of each frame,
  # and the rotated order makes it hop between people.
  scores, _ = dt_train.score_sequence(_perfect_outputs(frames, 0.5, order, False), factors,
                                      frames, len(frames), config)
  assert scores["map_detector"] == pytest.approx(1.0)
  assert scores["id_switches"] > 0 and scores["idf1"] < 1.0


@pytest.fixture(scope="module")
def two_phase_run(mot_root, tmp_path_factory):
  """(workdir, the state after the detector phase, the final state, the initial state)."""
  config = _config(mot_root)
  workdir = tmp_path_factory.mktemp("dt_run")
  task = dt_train.make_task(config, mesh_lib.make_data_mesh(1))
  initial = jax.device_get(jax.jit(task.init_state)(task.init_key()))
  runner.train(config, str(workdir), dt_train.make_task)
  assert config.detector.iterations == 3  # its last checkpoint is the phase's end, kept.
  ckpt = Checkpointer(workdir / "checkpoints")
  try:
    states = {when: jax.device_get(ckpt.restore(runner.abstract_state(task), step)[0])
              for when, step in (("detector", 3), ("final", ckpt.latest_step()))}
  finally:
    ckpt.close()
  return workdir, states["detector"], states["final"], initial


def _changed(a, b):
  return any(not np.array_equal(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def test_detector_phase_leaves_the_tracking_layer_and_dt_starts_a_fresh_solver(two_phase_run):
  workdir, detector, final, initial = two_phase_run
  assert _changed(initial["params"]["detector"]["head"], detector["params"]["detector"]["head"])
  jax.tree.map(np.testing.assert_array_equal, initial["params"]["rfcn_disp"],
               detector["params"]["rfcn_disp"])
  # Saved at the phase's end, after `start_phase`: D&T's solver starts with zero momentum.
  momenta = [x for x in jax.tree.leaves(detector["opt_state"])
             if np.ndim(x) and np.issubdtype(np.asarray(x).dtype, np.floating)]
  assert momenta and not any(np.any(m) for m in momenta)
  assert _changed(detector["params"]["rfcn_disp"], final["params"]["rfcn_disp"])
  rows = [json.loads(l) for l in (workdir / "metrics.jsonl").read_text().splitlines()]
  assert [r["phase"] for r in rows if "loss" in r] == [0, 0, 0, 1, 1, 1]
  assert all("track_loss" in r for r in rows if r.get("phase") == 1 and "loss" in r)
  scores = [r for r in rows if "map" in r]
  assert len(scores) == 2 and {"map_detector", "mota", "idf1", "id_switches"} <= set(scores[-1])
  assert {"tracks.png", "tracks.mp4", "loss.png"} <= {p.name for p in (workdir / "figures").iterdir()}


def _run(module, *args):
  return subprocess.run([sys.executable, "-m", module, *args], cwd=ROOT, capture_output=True,
                        text=True, env=os.environ, timeout=600)


def _digest(folder):
  return {str(p): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_bad_input_exits_2_and_changes_nothing(two_phase_run, mot_root, tmp_path):
  workdir = two_phase_run[0]
  before = _digest(workdir)
  no_gt = tmp_path / "no_gt"
  shutil.copytree(mot_root / "PETS09-S2L1", no_gt)
  (no_gt / "gt" / "gt.txt").unlink()
  bad_box = tmp_path / "bad_box"
  shutil.copytree(mot_root / "PETS09-S2L1", bad_box)
  lines = (bad_box / "gt" / "gt.txt").read_text().splitlines()
  lines[4] = ",".join(lines[4].split(",")[:4] + ["0", "-3"] + lines[4].split(",")[6:])
  (bad_box / "gt" / "gt.txt").write_text("\n".join(lines) + "\n")
  resized = tmp_path / "resized"
  shutil.copytree(mot_root / "PETS09-S2L1", resized)
  frame = resized / "img1" / "000003.jpg"
  cv2.imwrite(str(frame), np.zeros((40, 50, 3), np.uint8))
  base = [f"--config={CONFIG}:test", f"--config.data.path={mot_root}", f"--workdir={workdir}"]
  cases = {
      "no gt.txt": (["experiments.evaluate", *base, f"--config.data.eval_dir={no_gt}"],
                    "gt/gt.txt"),
      "box of non-positive size": (["experiments.evaluate", *base,
                                    f"--config.data.eval_dir={bad_box}"], "gt.txt:5"),
      "another class count": (["experiments.evaluate", *base, "--config.model.num_classes=2"],
                              "does not match"),
      "a frame of another size": (["experiments.evaluate", *base,
                                   f"--config.data.eval_dir={resized}"], "000003.jpg: frame is 50x40"),
  }
  for case, (args, expected) in cases.items():
    r = _run(*args)
    # One line on stderr, also for a frame found bad while TFDS copies the sequence (its
    # progress bars go to stdout).
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(lines) == 1 and "error:" in lines[0], (case, r.stderr[-2000:])
    assert expected in lines[0], (case, lines[0])
  assert _digest(workdir) == before


def test_match_pairs_best_overlaps_first():
  from readingnotes_jax.detect_track import predict  # pylint: disable=import-outside-toplevel
  moved = np.array([[0, 0, 9, 9], [20, 0, 29, 9], [50, 50, 59, 59]], float)
  boxes = np.array([[21, 0, 30, 9], [1, 0, 10, 9], [0, 1, 9, 10], [80, 80, 89, 89]], float)
  # Detection 1 and 2 both overlap track 0 (IoU 9*10/(2*100-90) = 0.818 each); the tie goes
  # to the lower index; detection 3 overlaps nothing.
  assert predict.match(moved, boxes, 0.5) == {0: 1, 1: 0}
  assert predict.match(moved, boxes, 0.9) == {}


def test_online_tracker_keeps_ids_with_the_roi_tracker(two_phase_run, mot_root, monkeypatch):
  """The network's step replaced by perfect detections and a perfect RoI tracker: every
  person keeps one id over the sequence; then the trained network on real frames."""
  from readingnotes_jax.detect_track import predict  # pylint: disable=import-outside-toplevel
  from readingnotes_jax.stream import processors  # pylint: disable=import-outside-toplevel
  workdir = two_phase_run[0]
  frames = dt_data.Frames(mot_root / "PETS09-S2L1")
  tracker = predict.load_tracker(str(workdir), min_score=0.0)
  c = tracker.config
  factor = dt_data.prepare(frames.image(0), np.zeros((0, 4)), scale=c.eval.scale,
                           max_size=c.data.max_size, canvas=tuple(c.data.image_size)).factor
  seen = {}
  state = {"t": 0}

  def perfect(variables, pair, sizes, carried, valid):
    del variables, pair, sizes
    t = state["t"]
    gt, ids = frames.boxes[t], frames.track_ids[t]
    out_boxes = np.zeros((8, 4), np.float32)
    out_boxes[:len(gt)] = gt[::-1] * factor  # listed in another order than the ids
    moved = np.zeros_like(carried[0])
    for k in range(int(valid.sum())):
      previous_box = carried[0, k] / factor
      match_id = frames.track_ids[t - 1][np.argmin(np.abs(frames.boxes[t - 1] - previous_box).sum(1))]
      moved[k] = gt[ids == match_id][0] * factor
    return {"boxes": out_boxes, "scores": np.where(np.arange(8) < len(gt), 0.9, 0.0),
            "valid": np.arange(8) < len(gt), "moved": moved}

  monkeypatch.setattr(tracker, "_step", perfect)
  for t in range(len(frames)):
    state["t"] = t
    tracked = tracker.update(frames.image(t))
    for box, track_id in zip(tracked.boxes, tracked.ids):
      gt_id = frames.track_ids[t][np.argmin(np.abs(frames.boxes[t] - box).sum(1))]
      assert seen.setdefault(int(track_id), gt_id) == gt_id
  assert len(seen) == 3
  monkeypatch.undo()
  draw = processors.load("detect_track", str(workdir)).fn
  for t in range(3):
    out = draw(frames.image(t))
    assert out.shape == frames.image(t).shape and out.dtype == np.uint8


def test_tube_tracks_split_where_the_score_drops_or_the_box_jumps():
  from readingnotes_jax.detect_track import linking  # pylint: disable=import-outside-toplevel
  scores = np.array([0.9, 0.8, 0.2, 0.7, 0.6, 0.1, 0.9, 0.9])
  boxes = np.array([[0, 0, 9, 9]] * 7 + [[50, 50, 59, 59]], float)  # the last box jumps
  boxes[1] += 1  # IoU 81 / 119 = 0.68 with the first: the same track
  tube = linking.Tube(frames=np.arange(8) + 10, box_indices=np.zeros(8, int), boxes=boxes,
                      scores=scores, rescored=scores, path_score=0.0)
  tracks = dt_train.tube_tracks([tube, tube._replace(scores=np.full(8, 0.1))], 0.5, 0.3)
  assert [(k, f.tolist()) for k, f, _, _ in tracks] == [(1, [10, 11]), (2, [13, 14]), (3, [16]),
                                                         (4, [17])]
  np.testing.assert_array_equal(tracks[0][2], boxes[:2])
  assert len(dt_train.tube_tracks([tube], 0.5, 0.7)) == 5  # 0.68 < 0.7 cuts the first run


def test_detector_phase_alternates_vid_pairs_and_det_images(tmp_path):
  """With data.det_split the detector passes alternate VID pairs (even positions, with track
  ids) and DET images (odd, ids -1), as rfcn_train.m alternates its two lists; D&T reads VID."""
  with pytest.MonkeyPatch.context() as patch:
    patch.setenv("READINGNOTES_CACHE", str(tmp_path / "cache"))
    config = vid_rfcn_resnet50.get_config("test")
    config.data.path = _tiny_data().write("imagenet_vid", tmp_path)["data.path"]
    config.dt.iterations = 2
    task = dt_train.make_task(config, mesh_lib.make_data_mesh(1))
    # The pass itself is replaced by one that hands back the batch it was given.
    task._step_fn = lambda phase: (lambda state, batch, key: (state, jax.device_get(batch)))  # pylint: disable=protected-access
    ids = [task.train_step(None, p, p)[1]["gt_ids"] for p in range(8)]
  assert task.passes == (6, 2)
  for position, gt_ids in enumerate(ids):
    from_det = position < 6 and position % 2 == 1
    assert (gt_ids == -1).all() == from_det, position
