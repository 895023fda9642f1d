"""Part builders (readingnotes_jax.data.parts) on tiny generated trees in each data set's layout.

Photos are written losslessly (PNG bytes, whatever the file's suffix) with sizes that
are integer multiples of the output size, so the expected square image is a NumPy
box average and the expected parts are the planted positions divided by the factors.
"""
import pathlib

import numpy as np
import PIL.Image
import pytest
import scipy.io

from readingnotes_jax.data import camvid, ccp, parts, tfds_local
from readingnotes_jax.errors import UserError

_RNG = np.random.default_rng(0)


def _photo(path: pathlib.Path, height: int, width: int) -> np.ndarray:
  pixels = _RNG.integers(0, 256, (height, width, 3), dtype=np.uint8)
  path.parent.mkdir(parents=True, exist_ok=True)
  PIL.Image.fromarray(pixels).save(path, format="PNG")
  return pixels


def _box_mean(pixels: np.ndarray, fy: int, fx: int) -> np.ndarray:
  """Independent reference of an integer-factor area resize: mean of fy x fx blocks."""
  h, w, c = pixels.shape
  return pixels.reshape(h // fy, fy, w // fx, fx, c).astype(np.float64).mean(axis=(1, 3))


def _records(builder, split):
  source = tfds_local.load(builder, split)
  return [source[i] for i in range(len(source))]


def _assert_fails(builder, *fragments, split="train"):
  with pytest.raises(UserError) as error:
    tfds_local.load(builder, split)
  message = str(error.value)
  assert "\n" not in message
  for fragment in fragments:
    assert fragment in message, message


# CCP --------------------------------------------------------------------------

_ID = {name: i for i, name in enumerate(ccp.CLASS_NAMES)}
_CCP_H, _CCP_W, _CCP_S = 48, 36, 12  # Factors 4 (y) and 3 (x).


def _ccp_label() -> tuple[np.ndarray, dict[str, tuple[float, float]]]:
  """A person drawn as rectangles; returns the label and each part's centroid (photo px)."""
  label = np.zeros((_CCP_H, _CCP_W), np.uint8)
  expected = {}

  def rect(name, top, bottom, left, right, part=None):
    label[top:bottom, left:right] = _ID[name]
    if part:  # Centre of the rectangle's pixel centres in continuous coordinates.
      expected[part] = ((left + right) / 2, (top + bottom) / 2)

  rect("hair", 1, 4, 14, 22, "hair")
  rect("skin", 0, 1, 2, 3)  # One skin pixel above everything: < 5% of the skin, not a face.
  rect("skin", 4, 9, 15, 21, "face")
  rect("skin", 12, 26, 4, 8)  # An arm: larger than the face, lower.
  rect("blouse", 10, 20, 12, 24, "upper_clothes")
  rect("t-shirt", 20, 22, 12, 24)  # Same part as the blouse: merged below.
  expected["upper_clothes"] = ((12 + 24) / 2, (10 * 15 + 2 * 21) / 12)
  rect("jeans", 22, 40, 12, 24, "lower_clothes")
  rect("shoes", 42, 46, 10, 16, "left_shoe")
  rect("sneakers", 43, 47, 20, 28, "right_shoe")
  rect("purse", 24, 30, 28, 34, "bag")
  return label, expected


def _write_ccp(root: pathlib.Path, numbers) -> dict[int, tuple[np.ndarray, np.ndarray]]:
  written = {}
  for number in numbers:
    photo = _photo(root / "photos" / f"{number:04d}.jpg", _CCP_H, _CCP_W)
    label, _ = _ccp_label()
    if number % 2:  # Odd photos have no bag.
      label[label == _ID["purse"]] = 0
    (root / "annotations" / "pixel-level").mkdir(parents=True, exist_ok=True)
    scipy.io.savemat(root / "annotations" / "pixel-level" / f"{number:04d}.mat",
                     {"groundtruth": label})
    written[number] = (photo, label)
  return written


def test_ccp_parts_images_and_split(tmp_path):
  written = _write_ccp(tmp_path / "ccp", [1, 2, 701, 900, 901])
  builder = parts.CCPParts(source_dir=tmp_path / "ccp", image_size=_CCP_S,
                           data_dir=tmp_path / "cache")
  _, expected = _ccp_label()
  names = parts.CCP_PART_NAMES
  assert builder.part_names == names
  for split, numbers in (("train", [1, 2, 901]), ("test", [701, 900])):
    records = _records(builder, split)
    assert len(records) == len(numbers)
    for record, number in zip(records, numbers):
      photo, _ = written[number]
      assert record["image"].shape == (_CCP_S, _CCP_S, 3)
      np.testing.assert_allclose(record["image"], _box_mean(photo, 4, 3), atol=0.5 + 1e-9)
      assert record["label"] == 0
      for k, name in enumerate(names):
        has_part = name in expected and not (name == "bag" and number % 2)
        assert record["part_valid"][k] == has_part, (number, name)
        if has_part:
          x, y = expected[name]
          np.testing.assert_allclose(record["parts"][k], (x / 3, y / 4), atol=1e-5)
        else:
          np.testing.assert_array_equal(record["parts"][k], (0, 0))


def test_ccp_parts_minimum_size():
  """A part needs MIN_PART_FRACTION of the photo: 1e-4 x 200 x 150 = 3 pixels."""
  label = np.zeros((200, 150), np.uint8)
  label[5:6, 5:7] = _ID["belt"]  # 2 pixels: too small.
  label[0:1, 50:53] = _ID["hair"]  # 3 pixels: enough.
  points, valid = parts.ccp_parts(label)  # No skin, so no face.
  assert valid.tolist() == [name == "hair" for name in parts.CCP_PART_NAMES]
  np.testing.assert_allclose(points[0], (51.5, 0.5))


def test_ccp_shoes_split_at_centroid():
  """Footwear of uneven halves: the split is at the centroid of all footwear pixels."""
  label = np.zeros((20, 40), np.uint8)
  label[10:12, 0:10] = _ID["boots"]  # 20 pixels, centres x 0.5 .. 9.5.
  label[10:12, 30:32] = _ID["boots"]  # 4 pixels, centres x 30.5, 31.5.
  points, valid = parts.ccp_parts(label)
  footwear_x = np.r_[np.tile(np.arange(10) + 0.5, 2), np.tile([30.5, 31.5], 2)]
  left = footwear_x < footwear_x.mean()  # The mean is 10.5: all of the first block.
  left_k, right_k = (parts.CCP_PART_NAMES.index(n) for n in ("left_shoe", "right_shoe"))
  assert valid[left_k] and valid[right_k]
  np.testing.assert_allclose(points[left_k], (footwear_x[left].mean(), 11.0))
  np.testing.assert_allclose(points[right_k], (footwear_x[~left].mean(), 11.0))


def test_ccp_missing_photo_and_size_mismatch(tmp_path):
  root = tmp_path / "ccp"
  _write_ccp(root, [1, 2])
  (root / "photos" / "0002.jpg").unlink()
  _assert_fails(parts.CCPParts(source_dir=root, image_size=4, data_dir=tmp_path / "cache"),
                "0002.mat", "0002.jpg", "missing")
  _photo(root / "photos" / "0002.jpg", _CCP_H + 1, _CCP_W)
  _assert_fails(parts.CCPParts(source_dir=root, image_size=4, data_dir=tmp_path / "cache"),
                "0002.mat", "0002.jpg")
  assert not list((tmp_path / "cache").rglob("*.array_record*"))  # Nothing half-written.


def test_failed_build_leaves_a_good_build_intact(tmp_path):
  _write_ccp(tmp_path / "good", [1, 2])
  good = parts.CCPParts(source_dir=tmp_path / "good", image_size=4, data_dir=tmp_path / "cache")
  before = [r["image"] for r in _records(good, "train")]
  files = sorted(p for p in (tmp_path / "cache").rglob("*") if p.is_file())
  stamps = [(p, p.stat().st_mtime_ns) for p in files]
  _write_ccp(tmp_path / "bad", [1, 2])
  (tmp_path / "bad" / "photos" / "0001.jpg").unlink()
  _assert_fails(parts.CCPParts(source_dir=tmp_path / "bad", image_size=4,
                               data_dir=tmp_path / "cache"), "0001.jpg")
  assert [(p, p.stat().st_mtime_ns) for p in files] == stamps
  again = parts.CCPParts(source_dir=tmp_path / "good", image_size=4, data_dir=tmp_path / "cache")
  for a, b in zip(before, [r["image"] for r in _records(again, "train")]):
    np.testing.assert_array_equal(a, b)


def test_all_test_puts_every_example_in_test(tmp_path):
  _write_ccp(tmp_path / "ccp", [1, 2, 3])
  builder = parts.CCPParts(source_dir=tmp_path / "ccp", image_size=4, all_test=True,
                           data_dir=tmp_path / "cache")
  assert len(tfds_local.load(builder, "test")) == 3
  with pytest.raises(UserError, match="no split 'train'"):
    tfds_local.load(builder, "train")


# CUB-200-2011 -------------------------------------------------------------------

_CUB_PARTS = ("back", "beak", "left eye")  # A 3-part parts.txt (the real one has 15).


def _write_cub(root: pathlib.Path) -> dict:
  """Three images (two classes); returns what the test expects per image id."""
  (root / "parts").mkdir(parents=True)
  (root / "classes.txt").write_text("1 001.Albatross\n2 002.Auklet\n")
  (root / "parts" / "parts.txt").write_text(
      "".join(f"{i + 1} {name}\n" for i, name in enumerate(_CUB_PARTS)))
  images = {1: ("001.Albatross/a_1.jpg", 1, 1), 2: ("001.Albatross/a_2.jpg", 1, 0),
            3: ("002.Auklet/b_3.jpg", 2, 0)}
  # Box x y w h: 24 x 12 boxes into 12 x 12 images (factors x 2, y 1).
  boxes = {1: (8, 4, 24, 12), 2: (0, 0, 24, 12), 3: (10, 20, 24, 12)}
  # (x, y, visible) per part; part 3 of image 1 is visible but outside its box.
  locs = {1: [(20, 10, 1), (0, 0, 0), (40, 30, 1)],
          2: [(3.5, 2.25, 1), (23, 11, 1), (0, 0, 0)],
          3: [(12, 25, 1), (30, 31, 1), (33, 32, 1)]}
  expected = {}
  for image_id, (path, _, _) in images.items():
    pixels = _photo(root / "images" / path, 36, 48)
    x, y, w, h = boxes[image_id]
    crop = _box_mean(pixels[y:y + h, x:x + w], 1, 2)
    points = np.array([[(px - x) / 2, py - y] for px, py, _ in locs[image_id]])
    valid = np.array([v == 1 and x <= px <= x + w and y <= py <= y + h
                      for px, py, v in locs[image_id]])
    expected[image_id] = (crop, np.where(valid[:, None], points, 0), valid)
  (root / "images.txt").write_text("".join(f"{i} {p}\n" for i, (p, _, _) in images.items()))
  (root / "image_class_labels.txt").write_text(
      "".join(f"{i} {c}\n" for i, (_, c, _) in images.items()))
  (root / "train_test_split.txt").write_text(
      "".join(f"{i} {t}\n" for i, (_, _, t) in images.items()))
  (root / "bounding_boxes.txt").write_text(
      "".join(f"{i} {x:.1f} {y:.1f} {w:.1f} {h:.1f}\n" for i, (x, y, w, h) in boxes.items()))
  (root / "parts" / "part_locs.txt").write_text("".join(
      f"{i} {k + 1} {x:.2f} {y:.2f} {v}\n" for i, loc in locs.items()
      for k, (x, y, v) in enumerate(loc)))
  return expected


@pytest.mark.parametrize("category, splits", [
    ("", {"train": [1], "test": [2, 3]}),
    ("001.Albatross", {"train": [1], "test": [2]}),
    ("2", {"test": [3]}),
])
def test_cub_crops_parts_and_categories(tmp_path, category, splits):
  expected = _write_cub(tmp_path / "cub")
  builder = parts.CUBParts(source_dir=tmp_path / "cub", image_size=12, category=category,
                           data_dir=tmp_path / "cache")
  assert builder.part_names == _CUB_PARTS
  assert builder.class_names == ({"": "bird", "001.Albatross": "001.Albatross",
                                  "2": "002.Auklet"}[category],)
  for split, ids in splits.items():
    records = _records(builder, split)
    assert len(records) == len(ids)
    for record, image_id in zip(records, ids):
      crop, points, valid = expected[image_id]
      np.testing.assert_allclose(record["image"], crop, atol=0.5 + 1e-9)
      np.testing.assert_array_equal(record["part_valid"], valid)
      np.testing.assert_allclose(record["parts"], points, atol=1e-5)
      assert record["label"] == 0
  if "train" not in splits:
    with pytest.raises(UserError, match="no split 'train'"):
      tfds_local.load(builder, "train")


def test_cub_unknown_category(tmp_path):
  _write_cub(tmp_path / "cub")
  with pytest.raises(UserError, match="'003' is not a class"):
    parts.CUBParts(source_dir=tmp_path / "cub", image_size=4, category="003",
                   data_dir=tmp_path / "cache")


@pytest.mark.parametrize("damage, fragments", [
    (lambda root: (root / "parts" / "part_locs.txt").write_text(
        (root / "parts" / "part_locs.txt").read_text() + "7 1 3.0 4.0 1\n"),
     ("part_locs.txt line 10", "image id 7 is not in images.txt")),
    (lambda root: (root / "parts" / "part_locs.txt").write_text(
        (root / "parts" / "part_locs.txt").read_text().replace("12.00 25.00 1", "49.00 25.00 1")),
     ("part_locs.txt line 7", "(49, 25)", "outside the 48x36 image", "b_3.jpg")),
    (lambda root: (root / "images" / "001.Albatross" / "a_2.jpg").unlink(),
     ("images.txt line 2", "a_2.jpg", "missing")),
    (lambda root: (root / "bounding_boxes.txt").write_text("1 8 4 24 12\n2 0 0 24 12\n"),
     ("bounding_boxes.txt", "no line for image id 3")),
    (lambda root: (root / "parts" / "part_locs.txt").write_text("1 9 3.0 4.0 1\n"),
     ("part_locs.txt line 1", "part id 9")),
])
def test_cub_bad_files(tmp_path, damage, fragments):
  _write_cub(tmp_path / "cub")
  damage(tmp_path / "cub")
  _assert_fails(parts.CUBParts(source_dir=tmp_path / "cub", image_size=4,
                               data_dir=tmp_path / "cache"), *fragments)


# PASCAL-Part --------------------------------------------------------------------

_VOC_H, _VOC_W = 30, 40


def _mask(top, bottom, left, right):
  mask = np.zeros((_VOC_H, _VOC_W), np.uint8)
  mask[top:bottom, left:right] = 1
  return mask


def _struct_array(rows, fields):
  """A MATLAB struct array (1 x n) for scipy.io.savemat."""
  array = np.zeros((1, len(rows)), dtype=[(f, object) for f in fields])
  for i, row in enumerate(rows):
    for f in fields:
      array[0, i][f] = row[f]
  return array


def _write_pascal(root: pathlib.Path) -> None:
  """VOC2010 ids: 2008_000001 (train: a bird with head + tail, a cat with no parts),
  2008_000002 (val: one bird, its legs two parts), 2008_000003 (train: no .mat)."""
  (root / "ImageSets" / "Main").mkdir(parents=True)
  (root / "Annotations_Part").mkdir()
  (root / "ImageSets" / "Main" / "train.txt").write_text("2008_000001\n2008_000003\n")
  (root / "ImageSets" / "Main" / "val.txt").write_text("2008_000002\n")
  part_fields = ("part_name", "mask")
  bird = {"class": "bird", "class_ind": 3, "mask": _mask(4, 16, 8, 32), "parts": _struct_array(
      [{"part_name": "head", "mask": _mask(4, 8, 8, 12)},
       {"part_name": "beak", "mask": _mask(4, 6, 12, 14)},
       {"part_name": "tail", "mask": _mask(12, 16, 28, 32)}], part_fields)}
  cat = {"class": "cat", "class_ind": 8, "mask": _mask(20, 30, 0, 10),
         "parts": np.zeros((0, 0))}
  lone_bird = {"class": "bird", "class_ind": 3, "mask": _mask(0, 30, 0, 20),
               "parts": _struct_array([{"part_name": "lleg", "mask": _mask(20, 30, 0, 4)},
                                       {"part_name": "rfoot", "mask": _mask(28, 30, 16, 20)}],
                                      part_fields)}
  fields = ("class", "class_ind", "mask", "parts")
  for image_id, objects in (("2008_000001", [bird, cat]), ("2008_000002", [lone_bird])):
    _photo(root / "JPEGImages" / f"{image_id}.jpg", _VOC_H, _VOC_W)
    scipy.io.savemat(root / "Annotations_Part" / f"{image_id}.mat",
                     {"anno": {"imname": image_id, "objects": _struct_array(objects, fields)}})
  _photo(root / "JPEGImages" / "2008_000003.jpg", _VOC_H, _VOC_W)


def _pixel_centroid(*boxes):
  """Mean pixel centre (x, y) of the union of disjoint boxes (top, bottom, left, right)."""
  xs, ys, n = 0.0, 0.0, 0
  for top, bottom, left, right in boxes:
    count = (bottom - top) * (right - left)
    xs, ys, n = xs + count * (left + right) / 2, ys + count * (top + bottom) / 2, n + count
  return np.array([xs / n, ys / n])


def test_pascal_bird_groups(tmp_path):
  _write_pascal(tmp_path / "voc")
  builder = parts.PascalParts(source_dir=tmp_path / "voc", image_size=6, category="bird",
                              data_dir=tmp_path / "cache")
  assert builder.part_names == ("head", "torso", "legs", "tail")
  (train,) = _records(builder, "train")
  # The bird's box: x 8-32, y 4-16 (24 x 12) -> 6 x 6: factors 4 (x), 2 (y).
  photo = np.asarray(PIL.Image.open(tmp_path / "voc" / "JPEGImages" / "2008_000001.jpg"))
  np.testing.assert_allclose(train["image"], _box_mean(photo[4:16, 8:32], 2, 4), atol=0.5 + 1e-9)
  head = _pixel_centroid((4, 8, 8, 12), (4, 6, 12, 14))
  tail = _pixel_centroid((12, 16, 28, 32))
  np.testing.assert_array_equal(train["part_valid"], [True, False, False, True])
  np.testing.assert_allclose(train["parts"][0], (head - (8, 4)) / (4, 2), atol=1e-5)
  np.testing.assert_allclose(train["parts"][3], (tail - (8, 4)) / (4, 2), atol=1e-5)
  (test,) = _records(builder, "test")  # Box 20 x 30 -> factors 10/3, 5: parts only.
  legs = _pixel_centroid((20, 30, 0, 4), (28, 30, 16, 20))
  np.testing.assert_array_equal(test["part_valid"], [False, False, True, False])
  np.testing.assert_allclose(test["parts"][2], legs * (6 / 20, 6 / 30), atol=1e-5)


def test_pascal_multiclass(tmp_path):
  _write_pascal(tmp_path / "voc")
  builder = parts.PascalParts(source_dir=tmp_path / "voc", image_size=6,
                              data_dir=tmp_path / "cache")
  assert builder.class_names == ("bird", "cat", "cow", "dog", "horse", "sheep")
  assert builder.part_names[:6] == ("bird/head", "bird/torso", "bird/legs", "bird/tail",
                                    "cat/head", "cat/torso")
  assert len(builder.part_names) == 4 + 5 + 4 + 5 + 4 + 4
  records = _records(builder, "train")
  assert [int(r["label"]) for r in records] == [0, 1]
  assert records[1]["part_valid"].sum() == 0  # The cat has no parts.
  assert records[0]["part_valid"][[0, 3]].all() and records[0]["part_valid"].sum() == 2


def test_pascal_bad_inputs(tmp_path):
  with pytest.raises(UserError, match="'zebra'"):
    parts.PascalParts(source_dir=tmp_path, image_size=6, category="zebra")
  _write_pascal(tmp_path / "voc")
  _assert_fails(parts.PascalParts(source_dir=tmp_path / "voc", image_size=6, category="dog",
                                  data_dir=tmp_path / "cache"), "holds an object of dog")
  (tmp_path / "voc" / "JPEGImages" / "2008_000002.jpg").unlink()
  _assert_fails(parts.PascalParts(source_dir=tmp_path / "voc", image_size=6, category="bird",
                                  data_dir=tmp_path / "cache"),
                "2008_000002.mat", "2008_000002.jpg", "missing")
  _photo(tmp_path / "voc" / "JPEGImages" / "2008_000002.jpg", _VOC_H, _VOC_W)
  (tmp_path / "voc" / "Annotations_Part" / "2008_000001.mat").write_bytes(b"not a mat file")
  _assert_fails(parts.PascalParts(source_dir=tmp_path / "voc", image_size=6, category="bird",
                                  data_dir=tmp_path / "cache2"), "2008_000001.mat", "unreadable")


# CamVid negatives ---------------------------------------------------------------


def test_camvid_negatives_skip_crops_with_people(tmp_path):
  root = tmp_path / "camvid"
  photos = {}
  for split, n in (("train", 2), ("val", 1)):
    lines = []
    for i in range(n):
      photos[split, i] = _photo(root / split / f"f{i}.png", 36, 48)
      label = np.full((36, 48), 3, np.uint8)
      if split == "train" and i == 0:
        label[30, 3] = 9  # A pedestrian pixel: only in the crop at (x 0, y 18).
        label[0, 47] = 10  # A bicyclist pixel: only in the crop at (x 30, y 0).
      PIL.Image.fromarray(label).save(root / f"{split}annot_f{i}.png")
      lines.append(f"{split}/f{i}.png {split}annot_f{i}.png")
    (root / f"{split}.txt").write_text("\n".join(lines) + "\n")
  builder = parts.CamVidNegatives(source_dir=root, image_size=9, data_dir=tmp_path / "cache")
  # Half the shorter side: 18; x at round(linspace(0, 30, 5)) = 0, 8, 15, 22, 30 (half to
  # even), y at 0, 9, 18; row-major.
  grid = [(x, y) for y in (0, 9, 18) for x in (0, 8, 15, 22, 30)]
  expected = [photos["train", 0][y:y + 18, x:x + 18] for x, y in grid
              if (x, y) not in ((0, 18), (30, 0))]
  expected += [photos["train", 1][y:y + 18, x:x + 18] for x, y in grid]
  records = _records(builder, "train")
  assert len(records) == 13 + 15
  for record, crop in zip(records, expected):
    np.testing.assert_allclose(record["image"], _box_mean(crop, 2, 2), atol=0.5 + 1e-9)
  assert len(_records(builder, "val")) == 15
  assert camvid.CLASS_NAMES[9] == "Pedestrian" and camvid.CLASS_NAMES[10] == "Bicyclist"


def test_camvid_negatives_none_free(tmp_path):
  root = tmp_path / "camvid"
  _photo(root / "train" / "f0.png", 8, 8)
  PIL.Image.fromarray(np.full((8, 8), 9, np.uint8)).save(root / "l0.png")
  (root / "train.txt").write_text("train/f0.png l0.png\n")
  (root / "val.txt").write_text("train/f0.png l0.png\n")
  _assert_fails(parts.CamVidNegatives(source_dir=root, image_size=4, data_dir=tmp_path / "c"),
                "no crop without people")
