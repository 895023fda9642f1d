"""Interpretable CNNs' data: load_split on generated CCP + CamVid trees, batches, real CCP."""
import pathlib
import types

import numpy as np
import PIL.Image
import pytest
import scipy.io

from readingnotes_jax.data import ccp, parts, tfds_local
from readingnotes_jax.errors import UserError
from readingnotes_jax.interpretable_cnn import data

_RNG = np.random.default_rng(0)
_HAIR, _SKIN = ccp.CLASS_NAMES.index("hair"), ccp.CLASS_NAMES.index("skin")


def _write_ccp(root: pathlib.Path, numbers, height: int = 16, width: int = 12) -> None:
  """Photos with hair at rows 2-4 and a face at rows 4-8, columns shifted by the number."""
  (root / "annotations" / "pixel-level").mkdir(parents=True)
  (root / "photos").mkdir()
  for number in numbers:
    PIL.Image.fromarray(_RNG.integers(0, 256, (height, width, 3), dtype=np.uint8)).save(
        root / "photos" / f"{number:04d}.jpg", format="PNG")
    label = np.zeros((height, width), np.uint8)
    left = number % 4
    label[2:4, left:left + 4] = _HAIR
    label[4:8, left:left + 4] = _SKIN
    scipy.io.savemat(root / "annotations" / "pixel-level" / f"{number:04d}.mat",
                     {"groundtruth": label})


def _write_camvid(root: pathlib.Path, counts: dict[str, int]) -> None:
  """CamVid-layout images (32 x 24) without people: 15 crops each."""
  for split, n in counts.items():
    (root / split).mkdir(parents=True)
    lines = []
    for i in range(n):
      PIL.Image.fromarray(_RNG.integers(0, 256, (24, 32, 3), dtype=np.uint8)).save(
          root / split / f"{i}.png")
      PIL.Image.fromarray(np.full((24, 32), 3, np.uint8)).save(root / split / f"{i}_L.png")
      lines.append(f"{split}/{i}.png {split}/{i}_L.png")
    (root / f"{split}.txt").write_text("\n".join(lines) + "\n")


@pytest.fixture(name="trees", scope="module")
def trees_fixture(tmp_path_factory):
  root = tmp_path_factory.mktemp("icnn_data")
  _write_ccp(root / "ccp", [1, 2, 3, 4, 5, 701, 702, 703])
  _write_ccp(root / "other", [1, 2])
  _write_camvid(root / "camvid", {"train": 2, "val": 1})
  return root


@pytest.fixture(autouse=True)
def _cache(trees, monkeypatch):
  monkeypatch.setenv("READINGNOTES_CACHE", str(trees / "cache"))


def _config(trees, **overrides):
  values = {"source": "ccp", "path": str(trees / "ccp"), "image_size": 8, "category": "",
            "eval_dir": "", "negatives_path": str(trees / "camvid")}
  return types.SimpleNamespace(**{**values, **overrides})


def test_load_split_positives_then_evenly_spaced_negatives(trees):
  train = data.load_split(_config(trees), "train")
  positives = tfds_local.load(parts.CCPParts(source_dir=trees / "ccp", image_size=8), "train")
  negatives = tfds_local.load(parts.CamVidNegatives(source_dir=trees / "camvid", image_size=8),
                              "train")
  assert len(positives) == 5 and len(negatives) == 30
  # 5 of 30 evenly spaced: round(linspace(0, 29, 5)) = 0, 7, 14, 22, 29 (half to even).
  expected_images = [positives[i]["image"] for i in range(5)] + [
      negatives[i]["image"] for i in (0, 7, 14, 22, 29)]
  np.testing.assert_array_equal(train.images, np.stack(expected_images))
  np.testing.assert_array_equal(train.labels, [1] * 5 + [0] * 5)
  assert train.labels.dtype == np.int32 and train.images.dtype == np.uint8
  assert train.part_names == parts.CCP_PART_NAMES
  hair, face = parts.CCP_PART_NAMES.index("hair"), parts.CCP_PART_NAMES.index("face")
  np.testing.assert_array_equal(train.part_valid[:5].sum(axis=1), 2)
  assert not train.part_valid[5:].any() and not train.parts[5:].any()
  for row, number in enumerate([1, 2, 3, 4, 5]):  # 12 x 16 photo -> 8 x 8: x * 2/3, y / 2.
    left = number % 4
    np.testing.assert_allclose(train.parts[row, hair], ((left + 2) * 2 / 3, 3 / 2), atol=1e-5)
    np.testing.assert_allclose(train.parts[row, face], ((left + 2) * 2 / 3, 6 / 2), atol=1e-5)
  test = data.load_split(_config(trees), "test")
  np.testing.assert_array_equal(test.labels, [1, 1, 1, 0, 0, 0])  # CamVid val: 15 crops.


def test_eval_dir_is_the_test_split(trees):
  test = data.load_split(_config(trees, eval_dir=str(trees / "other")), "test")
  np.testing.assert_array_equal(test.labels, [1, 1, 0, 0])  # Photos 0001-0002: normally train.
  train = data.load_split(_config(trees, eval_dir=str(trees / "other")), "train")
  assert len(train.labels) == 10  # eval_dir only replaces the test split.


@pytest.mark.parametrize("overrides, split, fragment", [
    ({"source": "imagenet"}, "train", "data.source='imagenet'"),
    ({}, "val", "split 'val'"),
    ({"path": "/nonexistent/ccp"}, "train", "data.path=/nonexistent/ccp is not a folder"),
    ({"eval_dir": "/nonexistent/x"}, "test", "data.eval_dir=/nonexistent/x"),
    ({"category": "bird"}, "train", "CCP has one category"),
    ({"image_size": 0}, "train", "data.image_size=0"),
])
def test_bad_config(trees, overrides, split, fragment):
  with pytest.raises(UserError) as error:
    data.load_split(_config(trees, **overrides), split)
  assert fragment in str(error.value) and "\n" not in str(error.value)


def test_default_folders_from_readingnotes_data(trees, monkeypatch):
  monkeypatch.setenv("READINGNOTES_DATA", str(trees))
  train = data.load_split(_config(trees, path="", negatives_path=""), "train")
  assert len(train.labels) == 10
  monkeypatch.setenv("READINGNOTES_DATA", str(trees / "nowhere"))
  with pytest.raises(UserError, match="READINGNOTES_DATA to a folder holding ccp/"):
    data.load_split(_config(trees, path=""), "train")


def _write_pascal_part(root: pathlib.Path) -> None:
  """One VOC2010 image per split: a bird (head annotated) and a cat (no parts)."""
  (root / "ImageSets" / "Main").mkdir(parents=True)
  (root / "Annotations_Part").mkdir()
  (root / "JPEGImages").mkdir()
  bird, cat = np.zeros((2, 10, 12), np.uint8)
  bird[0:4, 0:6] = cat[5:10, 4:12] = 1
  head = np.zeros_like(bird)
  head[0:2, 0:2] = 1
  fields = [(f, object) for f in ("class", "mask", "parts")]
  objects = np.zeros((1, 2), fields)
  objects[0, 0] = ("bird", bird, np.array([[("head", head)]], [("part_name", object),
                                                                ("mask", object)]))
  objects[0, 1] = ("cat", cat, np.zeros((0, 0)))
  for split, image_id in (("train", "2008_000001"), ("val", "2008_000002")):
    (root / "ImageSets" / "Main" / f"{split}.txt").write_text(image_id + "\n")
    PIL.Image.fromarray(_RNG.integers(0, 256, (10, 12, 3), dtype=np.uint8)).save(
        root / "JPEGImages" / f"{image_id}.jpg")
    scipy.io.savemat(root / "Annotations_Part" / f"{image_id}.mat",
                     {"anno": {"imname": image_id, "objects": objects}})


def test_pascal_part_multiclass_has_no_negatives(tmp_path, trees):
  _write_pascal_part(tmp_path / "voc")
  config = _config(trees, source="pascal_part", path=str(tmp_path / "voc"),
                   negatives_path="/nonexistent")
  for split in ("train", "test"):
    parts_set = data.load_split(config, split)
    np.testing.assert_array_equal(parts_set.labels, [0, 1])  # Bird, cat.
    assert parts_set.part_names[0] == "bird/head"
    np.testing.assert_array_equal(parts_set.part_valid.sum(axis=1), [1, 0])
    # Head pixels x 0-2, y 0-2 in a 6 x 4 box -> 8 x 8: centre (1, 1) * (8/6, 8/4).
    np.testing.assert_allclose(parts_set.parts[0, 0], (4 / 3, 2), atol=1e-5)
  bird = data.load_split(_config(trees, source="pascal_part", path=str(tmp_path / "voc"),
                                 category="bird"), "train")
  np.testing.assert_array_equal(bird.labels, [1, 0])


# Batches --------------------------------------------------------------------------


def _parts_set(num_images: int = 5, size: int = 4) -> data.PartsSet:
  images = _RNG.integers(0, 256, (num_images, size, size, 3), dtype=np.uint8)
  return data.PartsSet(images=images, labels=np.arange(num_images, dtype=np.int32),
                       parts=np.zeros((num_images, 1, 2), np.float32),
                       part_valid=np.zeros((num_images, 1), bool), part_names=("p",))


def test_batch_is_a_pure_function_of_seed_and_index():
  parts_set = _parts_set()
  first = data.batch(parts_set, 3, 7, 4, augment=True)
  again = data.batch(parts_set, 3, 7, 4, augment=True)
  for key in ("image", "label"):
    np.testing.assert_array_equal(first[key], again[key])
  other = data.batch(parts_set, 3, 8, 4, augment=True)
  assert not np.array_equal(first["image"], other["image"])
  assert first["image"].dtype == np.float32 and first["label"].dtype == np.int32


def test_batch_order_follows_the_epoch_permutations():
  """Stream element i is record perm_e[i mod N], perm_e from NumPy's PCG64 seeded [seed, e]."""
  parts_set, seed, batch_size = _parts_set(5), 11, 3
  labels = np.concatenate([data.batch(parts_set, seed, index, batch_size, False)["label"]
                           for index in range(5)])  # Positions 0-14: epochs 0, 1, 2.
  expected = np.concatenate([np.random.default_rng([seed, e]).permutation(5) for e in range(3)])
  np.testing.assert_array_equal(labels, expected)
  for e in range(3):
    assert sorted(labels[5 * e:5 * e + 5]) == list(range(5))  # Each epoch a permutation.
  assert not np.array_equal(labels[:5], labels[5:10])


def test_batch_values_and_mirroring():
  parts_set = _parts_set(5)
  plain = data.batch(parts_set, 0, 0, 40, augment=False)
  mean = np.array([123.68, 116.779, 103.939], np.float32)
  np.testing.assert_array_equal(plain["image"],
                                parts_set.images[plain["label"]].astype(np.float32) - mean)
  mirrored = data.batch(parts_set, 0, 0, 40, augment=True)
  np.testing.assert_array_equal(mirrored["label"], plain["label"])
  flipped = np.array([not np.array_equal(m, p) for m, p in zip(mirrored["image"], plain["image"])])
  np.testing.assert_array_equal(mirrored["image"][flipped], plain["image"][flipped][:, :, ::-1])
  assert 8 <= flipped.sum() <= 32  # A fair coin per image: 40 draws.
  # The flip of an element depends on its stream position, not on how batches cut the stream.
  small = data.batch(parts_set, 0, 5, 4, augment=True)  # Positions 20-23.
  np.testing.assert_array_equal(small["image"], mirrored["image"][20:24])


# Real data ------------------------------------------------------------------------


def test_real_ccp_subset(data_dir, tmp_path, monkeypatch):
  """Photos 0695-0706 (6 train, 6 test) and 4 + 4 CamVid images (28 and 12 crops without
  people), linked from the real data."""
  monkeypatch.setenv("READINGNOTES_CACHE", str(tmp_path / "cache"))
  ccp_dir = tmp_path / "ccp"
  (ccp_dir / "annotations" / "pixel-level").mkdir(parents=True)
  (ccp_dir / "photos").mkdir()
  for number in range(695, 707):
    for sub, suffix in (("photos", "jpg"), ("annotations/pixel-level", "mat")):
      (ccp_dir / sub / f"{number:04d}.{suffix}").symlink_to(
          data_dir / "ccp" / sub / f"{number:04d}.{suffix}")
  camvid_dir = tmp_path / "camvid"
  for split in ("train", "val"):
    lines = (data_dir / "camvid" / f"{split}.txt").read_text().splitlines()[:4]
    for path in (p for line in lines for p in line.split()):
      (camvid_dir / path).parent.mkdir(parents=True, exist_ok=True)
      (camvid_dir / path).symlink_to(data_dir / "camvid" / path)
    (camvid_dir / f"{split}.txt").write_text("\n".join(lines) + "\n")
  config = types.SimpleNamespace(source="ccp", path=str(ccp_dir), image_size=32, category="",
                                 eval_dir="", negatives_path=str(camvid_dir))
  for split in ("train", "test"):
    parts_set = data.load_split(config, split)
    positives = parts_set.labels == 1
    assert positives.sum() == 6 and (~positives).sum() == 6
    assert parts_set.images.shape == (12, 32, 32, 3)
    inside = parts_set.parts[parts_set.part_valid]
    assert inside.min() > 0 and inside.max() < 32
    names = parts_set.part_names
    face, shoe = names.index("face"), names.index("left_shoe")
    assert parts_set.part_valid[positives, face].all()
    both = parts_set.part_valid[:, face] & parts_set.part_valid[:, shoe]
    assert both.sum() >= 4  # Standing people, photographed head to toe.
    assert (parts_set.parts[both, face, 1] < parts_set.parts[both, shoe, 1]).all()
