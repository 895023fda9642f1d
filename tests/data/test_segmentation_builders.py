"""Segmentation builders on tiny generated trees in each data set's layout."""
import pathlib

import numpy as np
import PIL.Image
import pytest
import scipy.io

from readingnotes_jax.data import ade20k, camvid, ccp, cityscapes, segmentation, tfds_local, voc
from readingnotes_jax.errors import UserError

_RNG = np.random.default_rng(0)


def _image(path: pathlib.Path, h: int = 6, w: int = 8) -> np.ndarray:
  """Writes a random RGB image (format from the suffix) and returns its pixels."""
  pixels = _RNG.integers(0, 256, (h, w, 3), dtype=np.uint8)
  path.parent.mkdir(parents=True, exist_ok=True)
  PIL.Image.fromarray(pixels).save(path)
  return pixels


def _grey(path: pathlib.Path, values: np.ndarray) -> None:
  path.parent.mkdir(parents=True, exist_ok=True)
  PIL.Image.fromarray(values.astype(np.uint8), mode="L").save(path)


def _read_all(builder, split):
  source = tfds_local.load(builder, split)
  return [segmentation.image_and_label(source[i]) + (source[i]["file_name"].decode(),)
          for i in range(len(source))]


# CamVid ---------------------------------------------------------------------


def _camvid_tree(root: pathlib.Path, n_train: int = 3, n_val: int = 2) -> dict:
  """SegNet CamVid layout; returns {file name: (image, raw label)} per split."""
  written = {}
  for split, n in (("train", n_train), ("val", n_val)):
    lines = []
    for i in range(n):
      name = f"{split}/f{i}.png"
      raw = _RNG.integers(0, 12, (6, 8))
      raw[0, 0], raw[0, 1] = 11, 10  # void and the last class in every label
      written[name] = (_image(root / name), raw)
      _grey(root / f"{split}annot/f{i}.png", raw)
      lines.append(f"{name} {split}annot/f{i}.png")
    (root / f"{split}.txt").write_text("\n".join(lines) + "\n")
  return written


def test_camvid_counts_void_and_order(tmp_path):
  written = _camvid_tree(tmp_path / "camvid")
  builder = camvid.CamVid(source_dir=tmp_path / "camvid", data_dir=tmp_path / "cache")
  for split, n in (("train", 3), ("val", 2)):
    records = _read_all(builder, split)
    assert [r[2] for r in records] == [f"{split}/f{i}.png" for i in range(n)]
    for image, label, name in records:
      expected_image, raw = written[name]
      np.testing.assert_array_equal(image, expected_image)
      np.testing.assert_array_equal(label, np.where(raw == 11, 255, raw))
      assert label.dtype == np.uint8
  assert camvid.CamVid.num_classes() == 11 and camvid.PALETTE.shape == (11, 3)


def test_camvid_absolute_segnet_paths(tmp_path):
  written = _camvid_tree(tmp_path / "camvid", n_train=1, n_val=1)
  (tmp_path / "camvid" / "train.txt").write_text(
      "/SegNet/CamVid/train/f0.png /SegNet/CamVid/trainannot/f0.png\n")
  builder = camvid.CamVid(source_dir=tmp_path / "camvid", data_dir=tmp_path / "cache")
  (image, label, name), = _read_all(builder, "train")
  np.testing.assert_array_equal(image, written["train/f0.png"][0])


def _assert_build_fails(builder, *fragments):
  with pytest.raises(UserError) as error:
    tfds_local.prepare(builder)
  message = str(error.value)
  assert "\n" not in message
  for fragment in fragments:
    assert fragment in message
  # Nothing half-written is left: no version folder, the next build starts afresh.
  assert not pathlib.Path(builder.data_path).exists()


def test_camvid_size_mismatch(tmp_path):
  root = tmp_path / "camvid"
  _camvid_tree(root)
  _grey(root / "valannot/f1.png", np.zeros((5, 8)))
  builder = camvid.CamVid(source_dir=root, data_dir=tmp_path / "cache")
  _assert_build_fails(builder, "valannot/f1.png", "5x8", "6x8")
  _grey(root / "valannot/f1.png", np.zeros((6, 8)))  # Fixed: the build now succeeds.
  assert len(tfds_local.load(builder, "val")) == 2


def test_camvid_label_out_of_range(tmp_path):
  root = tmp_path / "camvid"
  _camvid_tree(root)
  raw = np.zeros((6, 8))
  raw[2, 3] = 12
  _grey(root / "trainannot/f2.png", raw)
  _assert_build_fails(camvid.CamVid(source_dir=root, data_dir=tmp_path / "cache"),
                      "trainannot/f2.png", "[12]", "0-11")


def test_camvid_unreadable_image(tmp_path):
  root = tmp_path / "camvid"
  _camvid_tree(root)
  (root / "train/f1.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
  _assert_build_fails(camvid.CamVid(source_dir=root, data_dir=tmp_path / "cache"),
                      "train/f1.png", "unreadable image")


def test_camvid_missing_image_and_list(tmp_path):
  root = tmp_path / "camvid"
  _camvid_tree(root)
  (root / "val/f0.png").unlink()
  _assert_build_fails(camvid.CamVid(source_dir=root, data_dir=tmp_path / "cache"), "val/f0.png")
  (root / "val.txt").unlink()
  _assert_build_fails(camvid.CamVid(source_dir=root, data_dir=tmp_path / "cache2"), "val.txt")


def test_missing_source_folder(tmp_path):
  with pytest.raises(UserError, match="does not exist"):
    camvid.CamVid(source_dir=tmp_path / "nowhere", data_dir=tmp_path / "cache")


def test_rgb_label_rejected(tmp_path):
  root = tmp_path / "camvid"
  _camvid_tree(root)
  _image(root / "trainannot/f0.png")
  _assert_build_fails(camvid.CamVid(source_dir=root, data_dir=tmp_path / "cache"),
                      "trainannot/f0.png", "RGB")


# ADE20K ---------------------------------------------------------------------


def test_ade20k_reduce_zero_label(tmp_path):
  root = tmp_path / "ADEChallengeData2016"
  raws = {}
  for folder, names in (("training", ["ADE_train_00000001", "ADE_train_00000002"]),
                        ("validation", ["ADE_val_00000001"])):
    for name in names:
      _image(root / "images" / folder / f"{name}.jpg")
      raw = _RNG.integers(0, 151, (6, 8))
      raw[0, :3] = (0, 1, 150)
      _grey(root / "annotations" / folder / f"{name}.png", raw)
      raws[f"images/{folder}/{name}.jpg"] = raw
  builder = ade20k.ADE20K(source_dir=root, data_dir=tmp_path / "cache")
  train, val = _read_all(builder, "train"), _read_all(builder, "val")
  assert len(train) == 2 and len(val) == 1
  for image, label, name in train + val:
    raw = raws[name]
    np.testing.assert_array_equal(label, np.where(raw == 0, 255, raw - 1))
    assert image.shape == (6, 8, 3)
  assert len(ade20k.CLASS_NAMES) == 150 and ade20k.CLASS_NAMES[0] == "wall"


def test_ade20k_missing_folder(tmp_path):
  root = tmp_path / "ADEChallengeData2016"
  _image(root / "images/training/a.jpg")
  _grey(root / "annotations/training/a.png", np.ones((6, 8)))
  _assert_build_fails(ade20k.ADE20K(source_dir=root, data_dir=tmp_path / "cache"),
                      "images/validation")


# Cityscapes -----------------------------------------------------------------


def test_cityscapes_label_ids_to_train_ids(tmp_path):
  root = tmp_path / "cityscapes"
  # Known rows of cityscapesScripts' labels.py: (id, trainId).
  known = [(0, 255), (1, 255), (6, 255), (7, 0), (8, 1), (9, 255), (11, 2), (17, 5),
           (23, 10), (24, 11), (26, 13), (29, 255), (30, 255), (31, 16), (33, 18)]
  raw = np.array([k[0] for k in known] + [7], np.uint8).reshape(2, 8)
  expected = np.array([k[1] for k in known] + [0], np.uint8).reshape(2, 8)
  for split, city in (("train", "aachen"), ("train", "bremen"), ("val", "lindau")):
    stem = f"{city}_000000_000019"
    _image(root / "leftImg8bit" / split / city / f"{stem}_leftImg8bit.png", 2, 8)
    _grey(root / "gtFine" / split / city / f"{stem}_gtFine_labelIds.png", raw)
  builder = cityscapes.Cityscapes(source_dir=root, data_dir=tmp_path / "cache")
  train = _read_all(builder, "train")
  assert [r[2] for r in train] == ["leftImg8bit/train/aachen/aachen_000000_000019_leftImg8bit.png",
                                   "leftImg8bit/train/bremen/bremen_000000_000019_leftImg8bit.png"]
  for _, label, _ in train + _read_all(builder, "val"):
    np.testing.assert_array_equal(label, expected)
  assert len(cityscapes.CLASS_NAMES) == 19 == len(cityscapes.PALETTE)


def test_cityscapes_unknown_id(tmp_path):
  root = tmp_path / "cityscapes"
  for split in ("train", "val"):
    _image(root / f"leftImg8bit/{split}/c/c_0_leftImg8bit.png", 2, 2)
    _grey(root / f"gtFine/{split}/c/c_0_gtFine_labelIds.png", np.array([[7, 7], [7, 34]]))
  _assert_build_fails(cityscapes.Cityscapes(source_dir=root, data_dir=tmp_path / "cache"),
                      "c_0_gtFine_labelIds.png", "[34]", "0-33")


# PASCAL VOC + SBD -----------------------------------------------------------


def _voc_palette_png(path: pathlib.Path, indices: np.ndarray) -> None:
  image = PIL.Image.fromarray(indices.astype(np.uint8), mode="P")
  image.putpalette(segmentation.bit_palette(256).ravel().tolist())
  path.parent.mkdir(parents=True, exist_ok=True)
  image.save(path)


def test_voc_palette_and_train_aug(tmp_path):
  voc_root, sbd_root = tmp_path / "VOC2012", tmp_path / "sbd"
  lists = {"train": ["2007_a", "2007_b"], "val": ["2007_c"]}
  sbd_lists = {"train": ["2007_b", "2007_c", "2008_d"], "val": ["2008_e"]}
  labels = {}
  for image_id in ["2007_a", "2007_b", "2007_c", "2008_d", "2008_e"]:
    _image(voc_root / "JPEGImages" / f"{image_id}.jpg")
    indices = _RNG.integers(0, 21, (6, 8))
    if image_id in lists["train"] + lists["val"]:
      indices[0, 0] = 255  # VOC's border label
      _voc_palette_png(voc_root / "SegmentationClass" / f"{image_id}.png", indices)
    labels[image_id] = indices
    sbd_label = _RNG.integers(0, 21, (6, 8)).astype(np.uint8)  # SBD's own, different
    if image_id not in lists["train"] + lists["val"]:
      sbd_label = indices.astype(np.uint8)
    (sbd_root / "cls").mkdir(parents=True, exist_ok=True)
    scipy.io.savemat(sbd_root / "cls" / f"{image_id}.mat",
                     {"GTcls": {"Segmentation": sbd_label, "Boundaries": np.zeros(1)}})
  for split in ("train", "val"):
    (voc_root / "ImageSets/Segmentation").mkdir(parents=True, exist_ok=True)
    (voc_root / f"ImageSets/Segmentation/{split}.txt").write_text("\n".join(lists[split]))
    (sbd_root / f"{split}.txt").write_text("\n".join(sbd_lists[split]) + "\n")

  plain = voc.VOC2012(source_dir=voc_root, data_dir=tmp_path / "cache")
  tfds_local.prepare(plain)
  assert set(plain.info.splits) == {"train", "val"}
  builder = voc.VOC2012(source_dir=voc_root, sbd_dir=sbd_root, data_dir=tmp_path / "cache")
  assert builder.data_path != plain.data_path
  train_aug = _read_all(builder, "train_aug")
  # (SBD train + SBD val + VOC train) - VOC val = {a, b, d, e}.
  assert [r[2] for r in train_aug] == [f"JPEGImages/{i}.jpg"
                                       for i in ["2007_a", "2007_b", "2008_d", "2008_e"]]
  for _, label, name in train_aug + _read_all(builder, "val"):
    np.testing.assert_array_equal(label, labels[pathlib.Path(name).stem])
  assert len(_read_all(builder, "train")) == 2
  assert voc.train_aug_ids(["a", "b"], ["c"], {"b", "c", "d"}) == ["a", "b", "d"]
  np.testing.assert_array_equal(voc.PALETTE[:3], [[0, 0, 0], [128, 0, 0], [0, 128, 0]])
  np.testing.assert_array_equal(segmentation.bit_palette(256)[255], [224, 224, 192])


def test_voc_bad_sbd_mat(tmp_path):
  voc_root, sbd_root = tmp_path / "VOC2012", tmp_path / "sbd"
  _image(voc_root / "JPEGImages/x.jpg")
  _voc_palette_png(voc_root / "SegmentationClass/x.png", np.zeros((6, 8)))
  _image(voc_root / "JPEGImages/y.jpg")
  (voc_root / "ImageSets/Segmentation").mkdir(parents=True)
  (voc_root / "ImageSets/Segmentation/train.txt").write_text("x\n")
  (voc_root / "ImageSets/Segmentation/val.txt").write_text("x\n")
  (sbd_root / "cls").mkdir(parents=True)
  scipy.io.savemat(sbd_root / "cls/y.mat", {"wrong": np.zeros((6, 8))})
  (sbd_root / "train.txt").write_text("y\n")
  (sbd_root / "val.txt").write_text("")
  _assert_build_fails(voc.VOC2012(source_dir=voc_root, sbd_dir=sbd_root,
                                  data_dir=tmp_path / "cache"), "y.mat", "GTcls")


# Clothing Co-Parsing ----------------------------------------------------------


def test_ccp_mat_labels_and_split(tmp_path):
  root = tmp_path / "ccp"
  raws = {}
  for number in ("0001", "0002", "0801"):
    _image(root / "photos" / f"{number}.jpg", 8, 5)
    raw = _RNG.integers(0, 59, (8, 5)).astype(np.uint8)
    raw[0, 0] = 58
    (root / "annotations/pixel-level").mkdir(parents=True, exist_ok=True)
    scipy.io.savemat(root / "annotations/pixel-level" / f"{number}.mat", {"groundtruth": raw})
    raws[f"photos/{number}.jpg"] = raw
  _image(root / "photos" / "0003.jpg", 8, 5)  # image-level only: not in the splits
  builder = ccp.CCP(source_dir=root, data_dir=tmp_path / "cache")
  train, val = _read_all(builder, "train"), _read_all(builder, "val")
  assert [r[2] for r in train] == ["photos/0001.jpg", "photos/0002.jpg"]
  assert [r[2] for r in val] == ["photos/0801.jpg"]
  for image, label, name in train + val:
    np.testing.assert_array_equal(label, raws[name])
    assert image.shape == (8, 5, 3)


def test_ccp_label_out_of_range(tmp_path):
  root = tmp_path / "ccp"
  _image(root / "photos/0001.jpg", 8, 5)
  (root / "annotations/pixel-level").mkdir(parents=True)
  scipy.io.savemat(root / "annotations/pixel-level/0001.mat",
                   {"groundtruth": np.full((8, 5), 59, np.uint8)})
  _assert_build_fails(ccp.CCP(source_dir=root, data_dir=tmp_path / "cache"),
                      "0001.mat", "[59]", "0-58")


@pytest.mark.parametrize("value", [2.5, np.nan, np.inf])
def test_label_values_that_are_not_whole_ids_are_refused(value):
  raw = np.full((3, 4), 2.0)
  np.testing.assert_array_equal(segmentation.map_labels(raw, ccp.CCP.LABEL_LUT, "a.mat"),
                                ccp.CCP.LABEL_LUT[np.full((3, 4), 2)])
  raw[1, 2] = value
  with pytest.raises(UserError, match="a.mat: label holds float64 values that are not whole"):
    segmentation.map_labels(raw, ccp.CCP.LABEL_LUT, "a.mat")


# Real data --------------------------------------------------------------------


@pytest.fixture(scope="module")
def real_camvid(data_dir, tmp_path_factory):
  builder = camvid.CamVid(source_dir=data_dir / "camvid",
                          data_dir=tmp_path_factory.mktemp("camvid_cache"))
  tfds_local.prepare(builder)
  return builder


def test_real_camvid(real_camvid):
  train, val = tfds_local.load(real_camvid, "train"), tfds_local.load(real_camvid, "val")
  assert (len(train), len(val)) == (367, 101)
  for source in (train, val):
    image, label = segmentation.image_and_label(source[len(source) - 1])
    assert image.shape == (360, 480, 3) and label.shape == (360, 480)
    assert set(np.unique(label).tolist()) <= set(range(11)) | {255}


def test_real_ccp(data_dir, tmp_path):
  names = scipy.io.loadmat(data_dir / "ccp" / "label_list.mat")["label_list"].ravel()
  assert [str(n[0]) for n in names] == list(ccp.CLASS_NAMES)
  builder = ccp.CCP(source_dir=data_dir / "ccp", data_dir=tmp_path)
  train, val = tfds_local.load(builder, "train"), tfds_local.load(builder, "val")
  assert (len(train), len(val)) == (800, 100)
  for source in (train, val):
    image, label = segmentation.image_and_label(source[len(source) - 1])
    assert image.shape[1:] == (550, 3) and label.shape == image.shape[:2]
    assert 0 < label.max() < 59


@pytest.mark.parametrize("content", [b"", b"MATLAB 5.0 MAT-file" * 4, "half"])
def test_ccp_corrupt_label_is_one_line(tmp_path, content):
  """Empty, garbage and truncated .mat files: scipy raises OSError, IndexError or
  MatReadError (not a ValueError); each must become UserError naming the file."""
  path = tmp_path / "0001.mat"
  if content == "half":
    scipy.io.savemat(path, {"groundtruth": np.zeros((40, 30), np.uint8)})
    content = path.read_bytes()[:150]
  path.write_bytes(content)
  with pytest.raises(UserError, match="0001.mat: unreadable CCP label"):
    ccp.read_label(path)
