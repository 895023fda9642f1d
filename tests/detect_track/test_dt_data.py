"""detect_track.data: MOT boxes in Caffe's convention, prep_im_for_blob's resizing, the pair
stream as a function of (seed, position), on tiny generated MOTChallenge sequences."""
import importlib.util
import pathlib

import ml_collections
import numpy as np
import pytest

from readingnotes_jax.detect_track import data as dt_data
from readingnotes_jax.errors import UserError

ROOT = pathlib.Path(__file__).resolve().parents[2]


def _tiny_data():
  spec = importlib.util.spec_from_file_location("tiny_data", ROOT / "tests/contract/tiny_data.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


@pytest.fixture(scope="module")
def mot_root(tmp_path_factory):
  root = tmp_path_factory.mktemp("mot")
  with pytest.MonkeyPatch.context() as patch:
    patch.setenv("READINGNOTES_CACHE", str(root / "cache"))
    path = _tiny_data().write("mot", root)["data.path"]
    yield pathlib.Path(path)


def _config(path, **data):
  c = ml_collections.ConfigDict({
      "seed": 3,
      "data": {"path": str(path), "tau": 1, "train_scales": (40, 56), "max_size": 96,
               "image_size": (64, 96), "flip": True, "max_boxes": 8, **data}})
  return c


def test_mot_boxes_become_pixel_inclusive_corners(mot_root):
  """gt.txt (left, top, width, height), 1-based -> (left - 1, top - 1, left + width - 2,
  top + height - 2), read back from the generated file itself."""
  frames = dt_data.Frames(mot_root / "PETS09-S2L1")
  first = (mot_root / "PETS09-S2L1/gt/gt.txt").read_text().splitlines()[0].split(",")
  left, top, width, height = map(float, first[2:6])
  np.testing.assert_allclose(frames.boxes[0][0], [left - 1, top - 1, left + width - 2,
                                                  top + height - 2], atol=1e-4)
  assert frames.track_ids[0][0] == int(first[1])


@pytest.mark.parametrize("flip", [False, True])
def test_prepare_scales_flips_and_pads(flip):
  rng = np.random.default_rng(0)
  image = rng.integers(0, 256, (40, 60, 3), dtype=np.uint8)
  boxes = np.array([[0, 0, 9, 19], [30, 10, 59, 39]], np.float32)
  p = dt_data.prepare(image, boxes, scale=20, max_size=1000, canvas=(32, 48), flip=flip)
  # Short side 40 -> 20: factor 0.5, image 20 x 30 at the top left of the canvas.
  assert p.factor == 0.5 and p.size == (20, 30)
  expected = np.minimum(boxes * 0.5, [29, 19, 29, 19])  # boxes * im_scale, clipped (py-R-FCN)
  if flip:  # x -> width - 1 - x, corners swapped.
    expected = np.stack([29 - expected[:, 2], expected[:, 1], 29 - expected[:, 0],
                         expected[:, 3]], 1)
  np.testing.assert_allclose(p.boxes, expected)
  assert p.image.shape == (32, 48, 3) and not p.image[20:].any() and not p.image[:, 30:].any()
  # The long side caps the factor (max_size), and so does the canvas.
  assert dt_data.prepare(image, boxes, scale=40, max_size=30, canvas=(64, 96)).factor == 0.5
  assert dt_data.prepare(image, boxes, scale=80, max_size=1000, canvas=(40, 96)).factor == 1.0


def test_pairs_are_a_function_of_seed_and_position(mot_root):
  config = _config(mot_root)
  frames = dt_data.Frames(mot_root / "PETS09-S2L1")
  stream = dt_data.PairStream(frames, config)
  # Ten frames of one sequence: pairs (t, t + 1) for t = 0..8.
  np.testing.assert_array_equal(stream.pairs, np.stack([np.arange(9), np.arange(1, 10)], 1))
  whole = stream.batch(4, 4)
  again = dt_data.PairStream(dt_data.Frames(mot_root / "PETS09-S2L1"), config).batch(4, 4)
  for key, value in whole.items():
    np.testing.assert_array_equal(value, again[key])
    # Process 1 of 2 reads the second half of the same global batch.
    np.testing.assert_array_equal(stream.batch(4, 4, 1, 2)[key], value[2:])
  assert whole["frames"].shape == (4, 2, 64, 96, 3)
  # A pair's frames share their scale, and each person keeps its id across the two frames.
  np.testing.assert_array_equal(whole["image_scales"][:, 0], whole["image_scales"][:, 1])
  ids = whole["gt_ids"]
  assert (np.sort(ids[:, 0], axis=1) == np.sort(ids[:, 1], axis=1)).all()
  reseeded = _config(mot_root)
  reseeded.seed = 4
  other = dt_data.PairStream(frames, reseeded).batch(4, 4)
  assert not np.array_equal(other["frames"], whole["frames"])


def test_missing_sequence_is_one_clear_error(mot_root, tmp_path):
  with pytest.raises(UserError, match="does not exist"):
    dt_data.sequence_dir(_config(mot_root), "MOT17-02")
  (tmp_path / "empty").mkdir()
  with pytest.raises(UserError, match="not a MOTChallenge sequence"):
    dt_data.Frames(tmp_path / "empty")


def test_prepare_crops_a_larger_image_to_the_canvas():
  """Scale 80 makes the 40 x 60 image 80 x 120; the canvas (32, 48) keeps the window at
  (u, v) = (0.5, 0.25) of the room left: rows 24..55, columns 18..65."""
  image = np.zeros((40, 60, 3), np.uint8)
  boxes = np.array([[10, 14, 19, 21], [0, 0, 7, 7], [20, 10, 29, 19]], np.float32)
  p = dt_data.prepare(image, boxes, scale=80, max_size=1000, canvas=(32, 48), crop=(0.5, 0.25))
  assert p.factor == 2.0 and p.size == (32, 48)
  # Box 0 -> (20, 28, 38, 42) - (18, 24): fully inside. Box 1 -> (0, 0, 14, 14): outside the
  # window, kept False. Box 2 -> (40, 20, 58, 38) - (18, 24) = (22, -4, 40, 14): 15 of its 19
  # rows inside (more than half), clipped at the top.
  np.testing.assert_allclose(p.boxes[0], [2, 4, 20, 18])
  np.testing.assert_allclose(p.boxes[2], [22, 0, 40, 14])
  np.testing.assert_array_equal(p.keep, [True, False, True])


def test_det_sample_keeps_evenly_spaced_images_per_class_as_imdb_sample_cls():
  """Hand-worked `round(linspace(1, n, m))` picks, MATLAB rounding (halves away from zero)."""
  labels = [np.array([0]), np.array([1]), np.array([0, 1]), np.array([0]), np.array([2]),
            np.array([0]), np.array([], np.int64), np.array([0, 0])]
  # Class 0 is in images 0, 2, 3, 5, 7: linspace(1, 5, 3) = 1, 3, 5 -> images 0, 3, 7.
  # Class 1 in images 1, 2 (both kept); class 2 in image 4; class 3 nowhere.
  np.testing.assert_array_equal(dt_data.det_sample(labels, 3, 4), [0, 3, 7, 1, 2, 4])
  # Four images, three picks: linspace(1, 4, 3) = 1, 2.5, 4 rounds to 1, 3, 4 (not 1, 2, 4).
  four = [np.array([0])] * 4
  np.testing.assert_array_equal(dt_data.det_sample(four, 3, 1), [0, 2, 3])
  np.testing.assert_array_equal(dt_data.det_sample(four, 10, 1), [0, 1, 2, 3])


@pytest.fixture(scope="module")
def vid_root(tmp_path_factory):
  root = tmp_path_factory.mktemp("vid")
  with pytest.MonkeyPatch.context() as patch:
    patch.setenv("READINGNOTES_CACHE", str(root / "cache"))
    yield pathlib.Path(_tiny_data().write("imagenet_vid", root)["data.path"])


def test_det_stream_draws_two_det_images_a_pair(vid_root):
  config = _config(vid_root, source="imagenet_vid", det_split="det_train", det_per_class=2000)
  frames = dt_data.det_frames(config)
  # Five DET images written, one of a class outside VID (dropped by the builder); airplane
  # (label 0) in two, zebra (label 29) in two.
  assert len(frames) == 4 and sorted(int(l[0]) for l in frames.labels) == [0, 0, 29, 29]
  stream = dt_data.DetStream(frames, config)
  np.testing.assert_array_equal(sorted(stream.images), [0, 1, 2, 3])
  batch = stream.batch(0, 6)
  assert batch["frames"].shape == (6, 2, 64, 96, 3)
  valid = batch["gt_labels"] > 0
  assert valid.sum(axis=2).tolist() == [[1, 1]] * 6  # one object an image, no track ids
  assert set(batch["gt_labels"][valid].tolist()) <= {1, 30}
  assert (batch["gt_ids"] == -1).all()
  again = dt_data.DetStream(dt_data.det_frames(config), config).batch(0, 6)
  for key, value in batch.items():
    np.testing.assert_array_equal(value, again[key])
  with pytest.raises(UserError, match="needs data.source=imagenet_vid"):
    dt_data.det_frames(_config(vid_root, source="mot", det_split="det_train"))


def test_detector_pairs_start_at_evenly_spaced_frames_as_imdb_sample_frames(vid_root):
  videos = np.array(["a"] * 6 + ["b"] * 5)
  # a: linspace(1, 6, 3) = 1, 3.5, 6 -> frames 1, 4, 6 (halves away from zero); b: 1, 3, 5.
  np.testing.assert_array_equal(dt_data.spaced_frames(videos, 3), [0, 3, 5, 6, 8, 10])
  np.testing.assert_array_equal(dt_data.spaced_frames(videos, 30), np.arange(11))
  # The tiny tree's train videos have 6 and 5 frames, in that order: pairs (t, t + 1) whose
  # t is picked; a video's last frame has no next one.
  config = _config(vid_root, source="imagenet_vid", train_split="train")
  frames = dt_data.train_frames(config)[0]
  np.testing.assert_array_equal(frames.videos, np.repeat(frames.videos[[0, 6]], [6, 5]))
  stream = dt_data.PairStream(frames, config, frames_per_video=3)
  np.testing.assert_array_equal(stream.pairs, [[0, 1], [3, 4], [6, 7], [8, 9]])
