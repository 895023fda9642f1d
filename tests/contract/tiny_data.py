"""Tiny but valid data trees for every `config.data.source` of the experiments.

`write(source, root)` writes a few deterministic images in the source's own
on-disk layout and returns the config overrides that point the project's
loaders at them:

    overrides = tiny_data.write("voc2012", tmp_path)
    # {"data.path": ".../VOCdevkit/VOC2012", "data.sbd_path": ".../benchmark_RELEASE/dataset"}

Each tree goes into `root / FOLDERS[source]`, the folder the loaders look for
below `$READINGNOTES_DATA`, so one root can hold every source and
`READINGNOTES_DATA=root` finds them without overrides too. Images are
learnable-ish: in segmentation trees every class has its own colour (plus
noise), and in MNIST-format trees the blob's position follows the label.
"""
from __future__ import annotations

import gzip
import pathlib
import struct

import numpy as np
import PIL.Image
import scipy.io

from readingnotes_jax.data import segmentation

SOURCES = ("fashion_mnist", "mnist", "image_folder", "camvid", "ade20k", "cityscapes",
           "voc2012", "ccp", "mot", "imagenet_vid")
# Source -> folder below `root` (the default folders of locate.py, progan/data.py and
# pspnet/data.py's DATASETS); voc2012 also writes SBD into `SBD_FOLDER`.
FOLDERS = {
    "fashion_mnist": "fashion-mnist",
    "mnist": "mnist",
    "image_folder": "image_folder",
    "camvid": "camvid",
    "ade20k": "ADEChallengeData2016",
    "cityscapes": "cityscapes",
    "voc2012": "VOCdevkit/VOC2012",
    "ccp": "ccp",
    "mot": "mot15",
    "imagenet_vid": "ILSVRC2015",
}
SBD_FOLDER = "benchmark_RELEASE/dataset"

HEIGHT, WIDTH = 33, 41          # Segmentation images (odd, not square).
N_TRAIN, N_VAL = 6, 3           # Segmentation examples per split.
N_IDX_TRAIN, N_IDX_TEST = 64, 16
N_FOLDER_IMAGES, FOLDER_SIZE = 32, 32
FOLDER_CLASSES = ("blue", "red", "green", "yellow")  # As _COLORS.

# Raw ids of the four classes drawn in every segmentation image (top band, left,
# right, box) and the raw id of void (None: the data set has none).
_CLASSES = {
    "camvid": ((0, 1, 3, 8), 11),           # sky, building, road, car; void.
    "ade20k": ((3, 2, 7, 21), 0),           # sky, building, road, car; other.
    "cityscapes": ((23, 11, 7, 26), 0),     # sky, building, road, car; unlabeled.
    "voc2012": ((0, 15, 12, 7), 255),       # background, person, dog, car; border.
    "ccp": ((0, 19, 41, 51), None),         # null, hair, skin, t-shirt.
}
# Colour of each class slot; void pixels are grey.
_COLORS = np.array([[70, 130, 180], [200, 60, 40], [60, 170, 60], [230, 210, 40]], np.uint8)
_VOID_COLOR = np.array([128, 128, 128], np.uint8)
_SEEDS = {source: i for i, source in enumerate(SOURCES)}


def write(source: str, root: pathlib.Path, *, seed: int = 0) -> dict[str, object]:
  """Writes a tiny tree of `source` below `root`; returns its config overrides.

  Args:
    source: a `config.data.source` (one of `SOURCES`).
    root: folder to write into (created); the tree goes to `root / FOLDERS[source]`.
    seed: NumPy seed; the same seed writes the same pixels.

  Returns:
    Dotted config keys -> values: `data.path`, and `data.sbd_path` for voc2012,
    `data.negatives_path` for ccp.
  """
  if source not in SOURCES:
    raise ValueError(f"unknown data source {source!r}: use one of {', '.join(SOURCES)}")
  root = pathlib.Path(root)
  folder = root / FOLDERS[source]
  rng = np.random.default_rng([seed, _SEEDS[source]])
  if source in ("fashion_mnist", "mnist"):
    _write_mnist(folder, rng)
  elif source == "image_folder":
    _write_image_folder(folder, rng)
  elif source == "voc2012":
    _write_voc(folder, root / SBD_FOLDER, rng)
    return {"data.path": str(folder), "data.sbd_path": str(root / SBD_FOLDER)}
  elif source == "ccp":
    return _write_ccp_with_negatives(folder, root, rng)
  elif source == "mot":
    write_mot(folder, rng)
  elif source == "imagenet_vid":
    write_vid(folder, rng)
  else:
    {"camvid": _write_camvid, "ade20k": _write_ade20k, "cityscapes": _write_cityscapes}[source](
        folder, rng)
  return {"data.path": str(folder)}


# MNIST-format IDX files ------------------------------------------------------


def _idx_bytes(array: np.ndarray) -> bytes:
  """uint8 IDX file: zero bytes, type 0x08, ndim, big-endian dims, values."""
  header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
  return header + array.astype(np.uint8).tobytes()


def _write_mnist(folder: pathlib.Path, rng: np.random.Generator) -> None:
  """`{train,t10k}-{images-idx3,labels-idx1}-ubyte.gz`: 28x28 blobs placed by label."""
  folder.mkdir(parents=True, exist_ok=True)
  yy, xx = np.mgrid[:28, :28]
  for prefix, n in (("train", N_IDX_TRAIN), ("t10k", N_IDX_TEST)):
    labels = (np.arange(n) + rng.integers(0, 10, n)) % 10
    angles = 2 * np.pi * labels / 10
    cy = 14 + 7 * np.sin(angles) + rng.uniform(-1, 1, n)
    cx = 14 + 7 * np.cos(angles) + rng.uniform(-1, 1, n)
    dist2 = (yy - cy[:, None, None]) ** 2 + (xx - cx[:, None, None]) ** 2
    images = (255 * np.exp(-dist2 / 18.0)).astype(np.uint8)
    for kind, array in (("images-idx3", images), ("labels-idx1", labels.astype(np.uint8))):
      (folder / f"{prefix}-{kind}-ubyte.gz").write_bytes(
          gzip.compress(_idx_bytes(array), mtime=0))


# Image folder -----------------------------------------------------------------


def _write_image_folder(folder: pathlib.Path, rng: np.random.Generator) -> None:
  """`<class>/NNN.png`: RGB 32x32, a class-coloured background with a pale disc."""
  yy, xx = np.mgrid[:FOLDER_SIZE, :FOLDER_SIZE]
  for i in range(N_FOLDER_IMAGES):
    k = i % len(FOLDER_CLASSES)
    image = np.broadcast_to(_COLORS[k], (FOLDER_SIZE, FOLDER_SIZE, 3)).astype(int)
    cy, cx = rng.uniform(8, FOLDER_SIZE - 8, 2)
    image[(yy - cy) ** 2 + (xx - cx) ** 2 < 36] = 240
    _save_rgb(folder / FOLDER_CLASSES[k] / f"{i:03d}.png", _noisy(image, rng))


# Segmentation -----------------------------------------------------------------


def _noisy(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
  return np.clip(image.astype(int) + rng.integers(-25, 26, image.shape), 0, 255).astype(np.uint8)


def _save_rgb(path: pathlib.Path, image: np.ndarray) -> None:
  path.parent.mkdir(parents=True, exist_ok=True)
  PIL.Image.fromarray(image, mode="RGB").save(path, quality=95)  # quality: JPEG only.


def _save_grey(path: pathlib.Path, label: np.ndarray) -> None:
  path.parent.mkdir(parents=True, exist_ok=True)
  PIL.Image.fromarray(label.astype(np.uint8), mode="L").save(path)


def _scene(rng: np.random.Generator, source: str) -> tuple[np.ndarray, np.ndarray]:
  """(uint8 HxWx3 image, uint8 HxW raw label) of one street-like scene.

  A top band of class 0, classes 1 | 2 split at a random column below it, a
  random box of class 3 outlined in void (when the data set has void).
  """
  ids, void = _CLASSES[source]
  slots = np.ones((HEIGHT, WIDTH), np.int64)
  slots[:, rng.integers(WIDTH // 4, 3 * WIDTH // 4):] = 2
  slots[:rng.integers(HEIGHT // 4, HEIGHT // 2)] = 0
  bh, bw = rng.integers(8, 14), rng.integers(10, 18)
  top, left = rng.integers(HEIGHT // 3, HEIGHT - bh), rng.integers(0, WIDTH - bw)
  slots[top:top + bh, left:left + bw] = 3
  image = _COLORS[slots]
  label = np.asarray(ids, np.uint8)[slots]
  if void is not None:
    edge = np.zeros_like(slots, bool)
    edge[top:top + bh, left:left + bw] = True
    edge[top + 1:top + bh - 1, left + 1:left + bw - 1] = False
    label[edge] = void
    image[edge] = _VOID_COLOR
  return _noisy(image, rng), label


def _write_camvid(folder: pathlib.Path, rng: np.random.Generator) -> None:
  """SegNet layout: `{split}/NNN.png`, `{split}annot/NNN.png` (grey 0-10, void 11) and
  `{split}.txt` with absolute `/SegNet/CamVid/...` paths."""
  for split, n in (("train", N_TRAIN), ("val", N_VAL)):
    lines = []
    for i in range(n):
      image, label = _scene(rng, "camvid")
      _save_rgb(folder / split / f"{i:03d}.png", image)
      _save_grey(folder / f"{split}annot" / f"{i:03d}.png", label)
      lines.append(f"/SegNet/CamVid/{split}/{i:03d}.png /SegNet/CamVid/{split}annot/{i:03d}.png")
    (folder / f"{split}.txt").write_text("\n".join(lines) + "\n")


def _write_ade20k(folder: pathlib.Path, rng: np.random.Generator) -> None:
  """`images/{training,validation}/ADE_*.jpg`, `annotations/.../ADE_*.png` (grey 0-150)."""
  for split, sub, n in (("train", "training", N_TRAIN), ("val", "validation", N_VAL)):
    for i in range(1, n + 1):
      image, label = _scene(rng, "ade20k")
      _save_rgb(folder / "images" / sub / f"ADE_{split}_{i:08d}.jpg", image)
      _save_grey(folder / "annotations" / sub / f"ADE_{split}_{i:08d}.png", label)


def _write_cityscapes(folder: pathlib.Path, rng: np.random.Generator) -> None:
  """`leftImg8bit/{split}/<city>/*_leftImg8bit.png`, `gtFine/.../*_gtFine_labelIds.png`."""
  cities = {"train": ("aachen", "bochum"), "val": ("frankfurt",)}
  for split, n in (("train", N_TRAIN), ("val", N_VAL)):
    for i in range(n):
      city = cities[split][i % len(cities[split])]
      stem = f"{city}_{i:06d}_000019"
      image, label = _scene(rng, "cityscapes")
      _save_rgb(folder / "leftImg8bit" / split / city / f"{stem}_leftImg8bit.png", image)
      _save_grey(folder / "gtFine" / split / city / f"{stem}_gtFine_labelIds.png", label)


def _write_ccp(folder: pathlib.Path, rng: np.random.Generator) -> None:
  """`photos/NNNN.jpg`, `annotations/pixel-level/NNNN.mat` (`groundtruth`, 0-58);
  0001-0006 are train, 0801-0803 val (the builder's fixed split)."""
  (folder / "annotations" / "pixel-level").mkdir(parents=True, exist_ok=True)
  for number in [*range(1, N_TRAIN + 1), *range(801, 801 + N_VAL)]:
    image, label = _scene(rng, "ccp")
    _save_rgb(folder / "photos" / f"{number:04d}.jpg", image)
    scipy.io.savemat(folder / "annotations" / "pixel-level" / f"{number:04d}.mat",
                     {"groundtruth": label})


def _write_ccp_with_negatives(folder: pathlib.Path, root: pathlib.Path,
                              rng: np.random.Generator) -> dict[str, object]:
  """CCP (`_write_ccp`) and a CamVid tree in `root / FOLDERS["camvid"]`: Interpretable CNN's
  "ccp" configs take their negatives from CamVid crops without people
  (`data.negatives_path`; the tiny scenes hold none); FashionGAN's have no such key."""
  _write_ccp(folder, rng)
  _write_camvid(root / FOLDERS["camvid"], rng)
  return {"data.path": str(folder), "data.negatives_path": str(root / FOLDERS["camvid"])}


# VOC 2012 ids: train, val, and SBD's train / val lists chosen so that
# train_aug = (SBD train + SBD val + VOC train) - VOC val has N_TRAIN ids.
_VOC_LISTS = {"train": ("2007_000032", "2007_000039", "2007_000063"),
              "val": ("2007_000033", "2007_000042", "2007_000061")}
_SBD_LISTS = {"train": ("2007_000039", "2008_000002", "2008_000003"),
              "val": ("2007_000042", "2008_000008")}


def _write_voc(folder: pathlib.Path, sbd: pathlib.Path, rng: np.random.Generator) -> None:
  """VOC2012: `JPEGImages/*.jpg`, `SegmentationClass/*.png` (palette, 0-20, 255
  borders), `ImageSets/Segmentation/{train,val,trainval}.txt`; SBD:
  `cls/*.mat` (`GTcls.Segmentation`, 0-20) and `{train,val}.txt`.

  train_aug: the 3 VOC train ids, 2008_000002/3 (SBD train) and 2008_000008
  (SBD val); SBD's 2007_000039 (in VOC train) and 2007_000042 (in VOC val)
  check the overlap rules.
  """
  voc_ids = set(_VOC_LISTS["train"] + _VOC_LISTS["val"])
  sbd_ids = set(_SBD_LISTS["train"] + _SBD_LISTS["val"])
  palette = segmentation.bit_palette(256).ravel().tolist()
  lists = folder / "ImageSets" / "Segmentation"
  lists.mkdir(parents=True, exist_ok=True)
  (sbd / "cls").mkdir(parents=True, exist_ok=True)
  for image_id in sorted(voc_ids | sbd_ids):
    image, label = _scene(rng, "voc2012")
    _save_rgb(folder / "JPEGImages" / f"{image_id}.jpg", image)
    if image_id in voc_ids:
      png = PIL.Image.fromarray(label, mode="P")
      png.putpalette(palette)
      (folder / "SegmentationClass").mkdir(exist_ok=True)
      png.save(folder / "SegmentationClass" / f"{image_id}.png")
    if image_id in sbd_ids:  # SBD has no border label: borders are background.
      segmentation_ids = np.where(label == 255, 0, label).astype(np.uint8)
      present = np.setdiff1d(segmentation_ids, [0]).astype(np.uint8)
      scipy.io.savemat(sbd / "cls" / f"{image_id}.mat", {"GTcls": {
          "Segmentation": segmentation_ids, "CategoriesPresent": present}})
  for split, ids in _VOC_LISTS.items():
    (lists / f"{split}.txt").write_text("\n".join(ids) + "\n")
  (lists / "trainval.txt").write_text("\n".join(sorted(voc_ids)) + "\n")
  for split, ids in _SBD_LISTS.items():
    (sbd / f"{split}.txt").write_text("\n".join(ids) + "\n")



# MOTChallenge sequences ------------------------------------------------------

# Sequence name -> (frames, height, width, people, as a video): the names of D&T's configs.
MOT_SEQUENCES = {"PETS09-S2L1": (10, 72, 100, 3, False), "TUD-Stadtmitte": (6, 60, 80, 2, True)}


def write_mot(folder: pathlib.Path, rng: np.random.Generator) -> None:
  """Sequences of dark rectangles ("people") walking over a noisy background, in the
  MOTChallenge layout: seqinfo.ini, gt/gt.txt (MOT15's 10 fields), frames in img1/ or, for
  the second sequence, one MJPG .avi."""
  import cv2  # pylint: disable=import-outside-toplevel
  for name, (count, height, width, people, as_video) in MOT_SEQUENCES.items():
    seq = folder / name
    (seq / "gt").mkdir(parents=True, exist_ok=True)
    start = rng.uniform([0, 0], [width - 20, height - 30], (people, 2))
    speed = rng.uniform(-2, 2, (people, 2))
    size = rng.uniform([10, 20], [16, 28], (people, 2))
    lines, frames = [], []
    for t in range(count):
      image = _noisy(np.full((height, width, 3), 170, np.uint8), rng)
      for k in range(people):
        x, y = np.clip(start[k] + t * speed[k], 0, [width - size[k, 0], height - size[k, 1]])
        w, h = size[k]
        image[int(y):int(y + h), int(x):int(x + w)] = _COLORS[k % len(_COLORS)] // 3
        lines.append(f"{t + 1},{k + 1},{x + 1:.2f},{y + 1:.2f},{w:.2f},{h:.2f},1,-1,-1,-1")
      frames.append(image)
    (seq / "gt" / "gt.txt").write_text("\n".join(lines) + "\n")
    (seq / "seqinfo.ini").write_text(
        f"[Sequence]\nname={name}\nimDir=img1\nframeRate=10\nseqLength={count}\n"
        f"imWidth={width}\nimHeight={height}\nimExt=.jpg\n")
    if as_video:
      writer = cv2.VideoWriter(str(seq / f"{name}.avi"), cv2.VideoWriter_fourcc(*"MJPG"), 10,
                               (width, height))
      for image in frames:
        writer.write(image[..., ::-1].copy())
      writer.release()
    else:
      for t, image in enumerate(frames):
        _save_rgb(seq / "img1" / f"{t + 1:06d}.jpg", image)


# ImageNet VID (ILSVRC2015 layout) ---------------------------------------------

VID_HEIGHT, VID_WIDTH = 60, 84
# Split -> {video: frames}; two classes (airplane, zebra) per video.
VID_VIDEOS = {"train": {"ILSVRC2015_VID_train_0000/ILSVRC2015_train_00000000": 6,
                        "ILSVRC2015_VID_train_0000/ILSVRC2015_train_00000001": 5},
              "val": {"ILSVRC2015_val_00000000": 4, "ILSVRC2015_val_00000001": 3}}
VID_WNIDS = ("n02691156", "n02391049")


def write_vid(root: pathlib.Path, rng: np.random.Generator) -> None:
  """Videos of two moving rectangles (an airplane, a zebra) with XML annotations (pixel-
  inclusive corners, track ids), ImageSets/VID/train_1.txt and val.txt; five DET images
  with ImageSets/DET/train.txt."""
  val_lines = []
  for split, videos in VID_VIDEOS.items():
    for video, count in videos.items():
      start = rng.uniform([0, 0], [VID_WIDTH - 30, VID_HEIGHT - 24], (2, 2))
      speed = rng.uniform(-2, 2, (2, 2))
      for t in range(count):
        image = _noisy(np.full((VID_HEIGHT, VID_WIDTH, 3), 150, np.uint8), rng)
        objects = []
        for k, wnid in enumerate(VID_WNIDS):
          x, y = np.clip(start[k] + t * speed[k], 0, [VID_WIDTH - 26, VID_HEIGHT - 20]).astype(int)
          image[y:y + 20, x:x + 26] = _COLORS[k] // 2
          objects.append(f"<object><trackid>{k}</trackid><name>{wnid}</name><bndbox>"
                         f"<xmax>{x + 25}</xmax><xmin>{x}</xmin><ymax>{y + 19}</ymax>"
                         f"<ymin>{y}</ymin></bndbox><occluded>0</occluded>"
                         "<generated>0</generated></object>")
        name = f"{video}/{t:06d}"
        _save_rgb(root / "Data" / "VID" / split / f"{name}.JPEG", image)
        xml = root / "Annotations" / "VID" / split / f"{name}.xml"
        xml.parent.mkdir(parents=True, exist_ok=True)
        xml.write_text(f"<annotation><size><width>{VID_WIDTH}</width><height>{VID_HEIGHT}"
                       f"</height></size>{''.join(objects)}</annotation>\n")
        if split == "val":
          val_lines.append(f"{name} {len(val_lines) + 1}")
  lists = root / "ImageSets" / "VID"
  lists.mkdir(parents=True, exist_ok=True)
  (lists / "train_1.txt").write_text("".join(f"{v} 1\n" for v in VID_VIDEOS["train"]))
  (lists / "val.txt").write_text("\n".join(val_lines) + "\n")
  # DET train images (the detector stage's second list): one VID-class object each, and one
  # image whose only object is of another class (dropped, as imdb_remove_cls.m does).
  det_lines = []
  for i, wnid in enumerate(VID_WNIDS + VID_WNIDS + ("n00007846",)):
    image = _noisy(np.full((VID_HEIGHT, VID_WIDTH, 3), 150, np.uint8), rng)
    x, y = 8 + 9 * i, 6 + 4 * i
    image[y:y + 20, x:x + 26] = _COLORS[i % 2] // 2
    name = f"ILSVRC2014_train_0000/ILSVRC2014_train_{i:08d}"
    _save_rgb(root / "Data" / "DET" / "train" / f"{name}.JPEG", image)
    xml = root / "Annotations" / "DET" / "train" / f"{name}.xml"
    xml.parent.mkdir(parents=True, exist_ok=True)
    xml.write_text(f"<annotation><object><name>{wnid}</name><bndbox><xmin>{x}</xmin>"
                   f"<ymin>{y}</ymin><xmax>{x + 25}</xmax><ymax>{y + 19}</ymax></bndbox>"
                   "</object></annotation>\n")
    det_lines.append(f"{name} {i + 1}\n")
  (root / "ImageSets" / "DET").mkdir(parents=True, exist_ok=True)
  (root / "ImageSets" / "DET" / "train.txt").write_text("".join(det_lines))
