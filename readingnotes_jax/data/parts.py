"""Object images with part locations (Interpretable CNNs' data), as TFDS builders over local files.

Every positive record is one object, square at `image_size`:
- `image`: uint8 [S, S, 3] RGB;
- `label`: int64, the object's index in the builder's `class_names`;
- `parts`: float32 [P, 2], (x, y) of each of `part_names` in continuous
  coordinates of the S x S image (x = column + 0.5 at a pixel's centre, the
  image spans [0, S]); zeros where not valid;
- `part_valid`: bool [P].

The square image is a box of the photo resized to S x S (`crop_resize`): OpenCV
area averaging when the box shrinks, bilinear otherwise, both with half-pixel
centres, so a point (x, y) of the photo lands exactly at `map_points(...)`.
Parts are computed in the photo and mapped, never read off resized labels.

Builders (split `test` for evaluation; with `all_test=True` every example of
the folder is `test`, for `--config.data.eval_dir`):
- `CCPParts`: Clothing Co-Parsing people, parts from the pixel labels;
- `CUBParts`: CUB-200-2011, box crops and the 15 annotated parts;
- `PascalParts`: PASCAL-Part animals over VOC2010, mask-box crops, part groups;
- `CamVidNegatives`: square CamVid crops without people, the negatives.

The release (zqs1022/interpretableCNN, code/data_input/*/getI.m) crops an
object's box and resizes it to 224 x 224 (`imresize(..., tarSize)`), as here.
"""
from __future__ import annotations

import io
import math
import pathlib
from collections.abc import Iterator, Sequence
from typing import Any, ClassVar

import cv2
import numpy as np
import PIL.Image
import scipy.io
import scipy.ndimage
import tensorflow_datasets as tfds

from readingnotes_jax.data import camvid, ccp, segmentation, tfds_local
from readingnotes_jax.errors import UserError


def read_rgb(path: pathlib.Path) -> np.ndarray:
  """uint8 HxWx3 RGB pixels of an image file (grey images replicated, as getI.m does)."""
  data = segmentation.read_bytes(path)
  try:
    with PIL.Image.open(io.BytesIO(data)) as image:
      return np.asarray(image.convert("RGB"))
  except (OSError, ValueError, PIL.Image.DecompressionBombError) as e:
    raise UserError(f"{path}: unreadable image ({e}): replace or remove the file") from e


def crop_resize(image: np.ndarray, box: tuple[int, int, int, int], size: int) -> np.ndarray:
  """The pixels of `box` = (x0, y0, x1, y1) (integers, inside the image) resized to size x size."""
  x0, y0, x1, y1 = box
  shrinks = x1 - x0 >= size and y1 - y0 >= size
  return cv2.resize(image[y0:y1, x0:x1], (size, size),
                    interpolation=cv2.INTER_AREA if shrinks else cv2.INTER_LINEAR)


def map_points(points: np.ndarray, box: tuple[int, int, int, int], size: int) -> np.ndarray:
  """Continuous (x, y) of the photo -> the same points in `crop_resize(image, box, size)`."""
  x0, y0, x1, y1 = box
  scale = np.array([size / (x1 - x0), size / (y1 - y0)])
  return ((np.asarray(points, np.float64) - [x0, y0]) * scale).astype(np.float32)


def centroid(mask: np.ndarray) -> np.ndarray:
  """(x, y) mean of the pixel centres of a non-empty boolean mask."""
  rows, cols = np.nonzero(mask)
  return np.array([cols.mean() + 0.5, rows.mean() + 0.5])


class PartsBuilder(tfds_local.LocalFilesBuilder):
  """Base of the positives builders: features, splits, parallel decoding.

  Subclasses set `part_names` and `class_names` before calling this
  constructor, implement `_items()` (split -> items in listing order) and
  `_examples(item)` (the item's examples as feature dicts).
  """

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES: ClassVar[dict[str, str]] = {"1.0.0": "First version."}
  part_names: tuple[str, ...]
  class_names: tuple[str, ...]

  def __init__(self, *, source_dir, image_size: int, all_test: bool = False,
               data_dir=None, **kwargs: Any) -> None:
    if image_size < 1:
      raise UserError(f"data.image_size={image_size}: use a positive number of pixels")
    self.image_size = image_size
    self.all_test = all_test
    super().__init__(source_dir=source_dir, data_dir=data_dir, **kwargs)

  def _cache_tag(self) -> str:
    return f"{self.image_size}px{'-alltest' if self.all_test else ''}"

  def _info(self) -> tfds.core.DatasetInfo:
    size, num_parts = self.image_size, len(self.part_names)
    tensor = lambda shape, dtype: tfds.features.Tensor(
        shape=shape, dtype=dtype, encoding=tfds.features.Encoding.BYTES)
    return tfds_local.LocalDatasetInfo(
        builder=self,
        description=(self.__doc__ or "").strip().splitlines()[0],
        features=tfds.features.FeaturesDict({
            "image": tensor((size, size, 3), np.uint8),
            "label": tfds.features.Tensor(shape=(), dtype=np.int64),
            "parts": tensor((num_parts, 2), np.float32),
            "part_valid": tensor((num_parts,), np.bool_),
        }),
        disable_shuffling=True,
    )

  def _items(self) -> dict[str, list[Any]]:
    raise NotImplementedError

  def _examples(self, item: Any) -> list[dict[str, Any]]:
    raise NotImplementedError

  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    del dl_manager
    items = self._items()
    if self.all_test:
      items = {"test": [item for split_items in items.values() for item in split_items]}
    items = {split: split_items for split, split_items in items.items() if split_items}
    if not items:
      raise UserError(f"no examples found in {self.source_dir}: check the folder layout")
    return {split: self._generate_examples(split_items) for split, split_items in items.items()}

  def _generate_examples(self, items: Sequence[Any]) -> Iterator[tuple[int, dict[str, Any]]]:
    key = 0
    for examples in segmentation.ordered_map(self._examples, items):
      for example in examples:
        yield key, example
        key += 1
    if not key:
      raise UserError(f"none of the {len(items)} listed images in {self.source_dir} holds an "
                      f"object of {', '.join(self.class_names)}: check data.category")

  def _record(self, image: np.ndarray, box: tuple[int, int, int, int], label: int,
              points: np.ndarray, valid: np.ndarray) -> dict[str, Any]:
    """The record of the object in `box` of `image`, parts given in photo coordinates."""
    parts = np.where(valid[:, None], map_points(points, box, self.image_size), 0)
    return {"image": crop_resize(image, box, self.image_size), "label": label,
            "parts": parts.astype(np.float32), "part_valid": valid.astype(bool)}


# Clothing Co-Parsing ---------------------------------------------------------

CCP_TEST_IDS = range(701, 901)
# Parts of a person from CCP's labels: each the centroid of these labels' pixels, except
# `face` (the highest sizeable skin component) and the shoes (footwear split at its centroid).
CCP_PART_LABELS = {
    "hair": ("hair",),
    "face": ("skin",),
    "upper_clothes": ("blazer", "blouse", "cape", "cardigan", "coat", "hoodie", "jacket",
                      "jumper", "shirt", "sweater", "sweatshirt", "t-shirt", "top", "vest"),
    "lower_clothes": ("jeans", "leggings", "pants", "shorts", "skirt"),
    "left_shoe": ("boots", "clogs", "flats", "heels", "loafers", "pumps", "sandals", "shoes",
                  "sneakers", "wedges"),
    "bag": ("bag", "purse", "wallet"),
    "belt": ("belt",),
}
CCP_PART_NAMES = ("hair", "face", "upper_clothes", "lower_clothes", "left_shoe", "right_shoe",
                  "bag", "belt")
MIN_PART_FRACTION = 1e-4  # A part needs this fraction of the photo's pixels (46 at 550x832).
FACE_MIN_SKIN_FRACTION = 0.05  # Skin components this small (of all skin) are not faces.


# Label id -> index in CCP_PART_NAMES of the part its pixels may belong to (len = none).
_CCP_PART_OF_LABEL = np.full(len(ccp.CLASS_NAMES), len(CCP_PART_NAMES), np.int64)
for _name, _labels in CCP_PART_LABELS.items():
  _CCP_PART_OF_LABEL[[ccp.CLASS_NAMES.index(label) for label in _labels]] = (
      CCP_PART_NAMES.index(_name))


def ccp_parts(label: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """(x, y) [P, 2] and valid [P] of `CCP_PART_NAMES` in a CCP label map (photo coordinates).

  A part is valid with at least `MIN_PART_FRACTION` of the photo's pixels. `face`: the
  8-connected skin component with the highest centroid (the first in scan order on ties)
  among those holding at least `FACE_MIN_SKIN_FRACTION` of the skin. `left_shoe` /
  `right_shoe` (left and right in the image): the footwear pixels whose centres lie left
  of / not left of the footwear's centroid.
  """
  none = len(CCP_PART_NAMES)
  part = _CCP_PART_OF_LABEL[label]
  rows, columns = np.indices(label.shape) + 0.5  # Pixel centres.
  skin = part == CCP_PART_NAMES.index("face")
  components, count = scipy.ndimage.label(skin, structure=np.ones((3, 3)))
  sizes = np.bincount(components.ravel(), minlength=count + 1)[1:]
  mean_rows = (np.bincount(components.ravel(), weights=rows.ravel(), minlength=count + 1)[1:]
               / np.maximum(sizes, 1))
  faces = np.flatnonzero(sizes >= FACE_MIN_SKIN_FRACTION * sizes.sum())
  face = np.zeros_like(skin)
  if faces.size:
    face = components == faces[np.argmin(mean_rows[faces])] + 1
  part[skin & ~face] = none
  footwear = part == CCP_PART_NAMES.index("left_shoe")
  if footwear.any():
    part[footwear & (columns >= columns[footwear].mean())] = CCP_PART_NAMES.index("right_shoe")
  part = part.ravel()
  counts = np.bincount(part, minlength=none + 1)[:none]
  sums = np.stack([np.bincount(part, weights=w.ravel(), minlength=none + 1)[:none]
                   for w in (columns, rows)], axis=-1)
  valid = counts >= max(1.0, MIN_PART_FRACTION * label.size)
  points = np.where(valid[:, None], sums / np.maximum(counts, 1)[:, None], 0.0)
  return points, valid


class CCPParts(PartsBuilder):
  """Clothing Co-Parsing people with part centroids from the pixel labels.

  Examples: each `annotations/pixel-level/NNNN.mat` with its `photos/NNNN.jpg`;
  photos 0701-0900 are `test`, the others `train`. The whole photo is resized to
  S x S, each axis on its own, as getI.m resizes every object box to 224 x 224
  (padding the portrait photos to squares would give the positives bars that the
  negatives lack, a cue for the classifier).
  """

  name = "ccp_parts"

  def __init__(self, **kwargs: Any) -> None:
    self.part_names = CCP_PART_NAMES
    self.class_names = ("person",)
    super().__init__(**kwargs)

  def _items(self) -> dict[str, list[tuple[pathlib.Path, pathlib.Path]]]:
    labels = segmentation.require_dir(self.source_dir / "annotations" / "pixel-level",
                                      "CCP's pixel-level labels (annotations/pixel-level/NNNN.mat)")
    photos = segmentation.require_dir(self.source_dir / "photos", "CCP's photos (photos/NNNN.jpg)")
    items = {"train": [], "test": []}
    for label in sorted(labels.glob("*.mat")):
      if not label.stem.isdigit():
        raise UserError(f"{label}: expected a numbered label file NNNN.mat")
      split = "test" if int(label.stem) in CCP_TEST_IDS else "train"
      items[split].append((photos / f"{label.stem}.jpg", label))
    return items

  def _examples(self, item: tuple[pathlib.Path, pathlib.Path]) -> list[dict[str, Any]]:
    photo, label_path = item
    if not photo.is_file():
      raise UserError(f"{label_path}: its photo {photo} is missing: add the photo or remove "
                      "the label file")
    image = read_rgb(photo)
    # CCP's own reading of `groundtruth` and its id check (readingnotes_jax.data.ccp).
    raw = ccp.read_label(label_path)
    label = segmentation.map_labels(raw, ccp.CCP.LABEL_LUT, label_path)
    height, width = image.shape[:2]
    if label.shape != (height, width):
      raise UserError(f"{label_path}: label is {label.shape[0]}x{label.shape[1]} but photo "
                      f"{photo} is {height}x{width}: fix the pair")
    points, valid = ccp_parts(label)
    return [self._record(image, (0, 0, width, height), 0, points, valid)]


# CUB-200-2011 ----------------------------------------------------------------


def _rows(path: pathlib.Path, num_fields: int, what: str) -> list[tuple[int, list[str]]]:
  """(line number, fields) of the non-empty lines of a list file; `num_fields` at least."""
  if not path.is_file():
    raise UserError(f"{path} not found: expected {what}")
  rows = []
  for number, line in enumerate(segmentation.read_bytes(path).decode().splitlines(), 1):
    fields = line.split()
    if fields and len(fields) < num_fields:
      raise UserError(f"{path} line {number}: {line.strip()!r} is not {what}")
    if fields:
      rows.append((number, fields))
  return rows


def _numbers(path: pathlib.Path, number: int, fields: Sequence[str], kind: type) -> list:
  try:
    return [kind(float(f)) for f in fields]
  except ValueError as e:
    raise UserError(f"{path} line {number}: {' '.join(fields)!r} holds a non-number") from e


class CUBParts(PartsBuilder):
  """CUB-200-2011 birds cropped to their boxes, with the 15 annotated parts.

  Source folder: `images.txt` (id, path below `images/`), `image_class_labels.txt`,
  `train_test_split.txt` (1 = train), `bounding_boxes.txt` (id x y width height),
  `parts/parts.txt` (id name), `parts/part_locs.txt` (image id, part id, x, y,
  visible) and, to name a category, `classes.txt`. `category` "" keeps every bird
  (the release's `cub200`), else one class by id or name. The box (its integer
  hull, clipped to the photo) is resized to S x S as getI.m does; a part is valid
  when visible and inside the box. Coordinates of the files are taken as
  continuous positions.
  """

  name = "cub_parts"

  def __init__(self, *, source_dir, category: str = "", **kwargs: Any) -> None:
    root = pathlib.Path(source_dir).expanduser()
    self.category = str(category)
    part_rows = _rows(root / "parts" / "parts.txt", 2, "'part_id name'")
    self.part_ids = tuple(_numbers(root / "parts" / "parts.txt", n, f[:1], int)[0]
                          for n, f in part_rows)
    self.part_names = tuple(" ".join(f[1:]) for _, f in part_rows)
    self.class_id, name = self._category(root)
    self.class_names = (name,)
    super().__init__(source_dir=source_dir, **kwargs)

  def _category(self, root: pathlib.Path) -> tuple[int | None, str]:
    if not self.category:
      return None, "bird"
    path = root / "classes.txt"
    for number, fields in _rows(path, 2, "'class_id name'"):
      class_id = _numbers(path, number, fields[:1], int)[0]
      if self.category in (fields[1], str(class_id), f"{class_id:03d}"):
        return class_id, fields[1]
    raise UserError(f"data.category={self.category!r} is not a class of {path}: use a class id "
                    "or name from that file, or '' for every bird")

  def _cache_tag(self) -> str:
    return super()._cache_tag() + (f"-class{self.class_id}" if self.class_id else "")

  def _table(self, name: str, num_fields: int, what: str, kind: type,
             images: dict[int, Any]) -> dict[int, tuple[int, list]]:
    """image id -> (line number, values) of a per-image list file, ids checked."""
    path = self.source_dir / name
    table = {}
    for number, fields in _rows(path, num_fields, what):
      image_id, *values = _numbers(path, number, fields[:num_fields], kind)
      if int(image_id) not in images:
        raise UserError(f"{path} line {number}: image id {int(image_id)} is not in images.txt")
      table[int(image_id)] = (number, values)
    missing = sorted(set(images) - set(table))
    if missing:
      raise UserError(f"{path}: no line for image id {missing[0]} of images.txt "
                      f"({len(missing)} missing): use the data set's complete files")
    return table

  def _items(self) -> dict[str, list[dict[str, Any]]]:
    images_path = self.source_dir / "images.txt"
    images = {}
    for number, fields in _rows(images_path, 2, "'image_id path'"):
      images[_numbers(images_path, number, fields[:1], int)[0]] = (number, fields[1])
    labels = self._table("image_class_labels.txt", 2, "'image_id class_id'", int, images)
    is_train = self._table("train_test_split.txt", 2, "'image_id is_training'", int, images)
    boxes = self._table("bounding_boxes.txt", 5, "'image_id x y width height'", float, images)
    locs_path = self.source_dir / "parts" / "part_locs.txt"
    part_index = {part_id: k for k, part_id in enumerate(self.part_ids)}
    # Per image and part: x, y, visible, line number (zeros: no line, not visible).
    locs = {image_id: np.zeros((len(self.part_ids), 4)) for image_id in images}
    for number, fields in _rows(locs_path, 5, "'image_id part_id x y visible'"):
      image_id, part_id, x, y, visible = _numbers(locs_path, number, fields[:5], float)
      if int(image_id) not in images:
        raise UserError(f"{locs_path} line {number}: image id {int(image_id)} is not in "
                        "images.txt")
      if int(part_id) not in part_index:
        raise UserError(f"{locs_path} line {number}: part id {int(part_id)} is not in "
                        "parts/parts.txt")
      locs[int(image_id)][part_index[int(part_id)]] = (x, y, visible, number)
    items = {"train": [], "test": []}
    for image_id, (number, relative) in images.items():
      if self.class_id is not None and labels[image_id][1][0] != self.class_id:
        continue
      split = "train" if is_train[image_id][1][0] == 1 else "test"
      items[split].append({"path": self.source_dir / "images" / relative, "line": number,
                           "box": boxes[image_id], "locs": locs[image_id]})
    return items

  def _examples(self, item: dict[str, Any]) -> list[dict[str, Any]]:
    path, locs = item["path"], item["locs"]
    if not path.is_file():
      raise UserError(f"{self.source_dir / 'images.txt'} line {item['line']}: image {path} is "
                      "missing: add it or use the data set's complete folder")
    image = read_rgb(path)
    height, width = image.shape[:2]
    for x, y, visible, number in locs:
      if visible and not (0 <= x <= width and 0 <= y <= height):
        raise UserError(f"{self.source_dir / 'parts' / 'part_locs.txt'} line {int(number)}: "
                        f"part at ({x:g}, {y:g}) lies outside the {width}x{height} image {path}")
    number, (x, y, box_width, box_height) = item["box"]
    box = (max(math.floor(x), 0), max(math.floor(y), 0),
           min(math.ceil(x + box_width), width), min(math.ceil(y + box_height), height))
    if box[2] <= box[0] or box[3] <= box[1]:
      raise UserError(f"{self.source_dir / 'bounding_boxes.txt'} line {number}: box "
                      f"({x:g}, {y:g}, {box_width:g}, {box_height:g}) is empty inside the "
                      f"{width}x{height} image {path}")
    points = locs[:, :2]
    valid = ((locs[:, 2] > 0) & (points[:, 0] >= box[0]) & (points[:, 0] <= box[2])
             & (points[:, 1] >= box[1]) & (points[:, 1] <= box[3]))
    return [self._record(image, box, 0, points, valid)]


# PASCAL-Part -----------------------------------------------------------------

# The release's part groups of the six animals (code/data_input/data_input_VOC/getPart.m,
# `partMerge` over `part2ind`), by PASCAL-Part part name; other parts are not used.
_LEGS4 = {"front_legs": ("lfleg", "lfpa", "rfleg", "rfpa"),
          "back_legs": ("lbleg", "lbpa", "rbleg", "rbpa")}
_HOOFED_LEGS = {"front_legs": ("lfuleg", "lflleg", "rfuleg", "rflleg"),
                "back_legs": ("lbuleg", "lblleg", "rbuleg", "rblleg")}
_HORNED = {"head": ("head", "leye", "reye", "lear", "rear", "muzzle", "lhorn", "rhorn"),
           "torso": ("torso", "neck"), **_HOOFED_LEGS}
PASCAL_PART_GROUPS = {
    "bird": {"head": ("head", "leye", "reye", "beak"),
             "torso": ("torso", "neck", "lwing", "rwing"),
             "legs": ("lleg", "lfoot", "rleg", "rfoot"), "tail": ("tail",)},
    "cat": {"head": ("head", "leye", "reye", "lear", "rear", "nose"),
            "torso": ("torso", "neck"), **_LEGS4, "tail": ("tail",)},
    "cow": _HORNED,
    "dog": {"head": ("head", "leye", "reye", "lear", "rear", "nose", "muzzle"),
            "torso": ("torso", "neck"), **_LEGS4, "tail": ("tail",)},
    "horse": {"head": ("head", "leye", "reye", "lear", "rear", "muzzle"),
              "torso": ("torso", "neck"),
              "front_legs": _HOOFED_LEGS["front_legs"] + ("lfho", "rfho"),
              "back_legs": _HOOFED_LEGS["back_legs"] + ("lbho", "rbho")},
    "sheep": _HORNED,
}
PASCAL_SPLIT_LISTS = {"train": "train.txt", "test": "val.txt"}  # In ImageSets/Main.


PascalObject = tuple[str, np.ndarray, list[tuple[str, np.ndarray]]]


def read_pascal_part(path: pathlib.Path) -> list[PascalObject]:
  """(class, mask, [(part name, mask), ...]) of each object of a PASCAL-Part `.mat` file."""
  try:
    anno = scipy.io.loadmat(path, squeeze_me=True, struct_as_record=False)["anno"]
    objects = []
    for obj in np.atleast_1d(anno.objects):
      parts = [(str(part.part_name), np.asarray(part.mask, bool))
               for part in np.atleast_1d(obj.parts)]
      objects.append((str(getattr(obj, "class")), np.asarray(obj.mask, bool), parts))
    return objects
  except (OSError, ValueError, KeyError, TypeError, AttributeError,
          scipy.io.matlab.MatReadError) as e:
    raise UserError(f"{path}: unreadable PASCAL-Part annotation, expected struct anno.objects "
                    f"with class, mask and parts ({type(e).__name__}: {e})") from e


class PascalParts(PartsBuilder):
  """PASCAL-Part animals over VOC2010, each object cropped to its mask's box.

  Source folder: VOC2010's `JPEGImages/` and `ImageSets/Main/{train,val}.txt`
  (train -> `train`, val -> `test`) with PASCAL-Part's `Annotations_Part/<id>.mat`
  beside them; listed images without a `.mat` are skipped. Every object of
  `category` (one of `PASCAL_PART_GROUPS`) is an example; with `category` "" the
  six animals are classes 0-5 and the parts are named `<class>/<group>`. A part
  group's position is the centroid of its parts' pixels inside the object mask
  (each object's own masks; the release also lets later objects occlude earlier ones).
  """

  name = "pascal_parts"

  def __init__(self, *, category: str = "", **kwargs: Any) -> None:
    if category and category not in PASCAL_PART_GROUPS:
      raise UserError(f"data.category={category!r}: use one of {', '.join(PASCAL_PART_GROUPS)} "
                      "or '' for all six as classes")
    self.category = category
    self.class_names = (category,) if category else tuple(PASCAL_PART_GROUPS)
    if category:
      self.part_names = tuple(PASCAL_PART_GROUPS[category])
    else:
      self.part_names = tuple(f"{c}/{group}" for c in self.class_names
                              for group in PASCAL_PART_GROUPS[c])
    super().__init__(**kwargs)

  def _cache_tag(self) -> str:
    return super()._cache_tag() + (f"-{self.category}" if self.category else "")

  def _items(self) -> dict[str, list[str]]:
    lists = self.source_dir / "ImageSets" / "Main"
    annotations = segmentation.require_dir(self.source_dir / "Annotations_Part",
                                           "PASCAL-Part's Annotations_Part/<id>.mat")
    return {split: [image_id for image_id in segmentation.read_list(lists / name)
                    if (annotations / f"{image_id}.mat").is_file()]
            for split, name in PASCAL_SPLIT_LISTS.items()}

  def _examples(self, image_id: str) -> list[dict[str, Any]]:
    mat = self.source_dir / "Annotations_Part" / f"{image_id}.mat"
    objects = [o for o in read_pascal_part(mat) if o[0] in self.class_names]
    if not objects:
      return []
    photo = self.source_dir / "JPEGImages" / f"{image_id}.jpg"
    if not photo.is_file():
      raise UserError(f"{mat}: its image {photo} is missing: add VOC2010's JPEGImages")
    image = read_rgb(photo)
    records = []
    for class_name, mask, parts in objects:
      if mask.shape != image.shape[:2] or any(m.shape != mask.shape for _, m in parts):
        raise UserError(f"{mat}: a {class_name} mask is not the {image.shape[0]}x"
                        f"{image.shape[1]} size of its image {photo}")
      if not mask.any():
        continue
      rows, cols = np.nonzero(mask)
      box = (int(cols.min()), int(rows.min()), int(cols.max()) + 1, int(rows.max()) + 1)
      points = np.zeros((len(self.part_names), 2))
      valid = np.zeros(len(self.part_names), bool)
      prefix = f"{class_name}/" if not self.category else ""
      for group, names in PASCAL_PART_GROUPS[class_name].items():
        members = [m for name, m in parts if name in names]
        group_mask = mask & np.logical_or.reduce(members) if members else None
        if group_mask is not None and group_mask.any():
          k = self.part_names.index(prefix + group)
          points[k], valid[k] = centroid(group_mask), True
      records.append(self._record(image, box, self.class_names.index(class_name), points,
                                  valid))
    return records


# Negatives -------------------------------------------------------------------


class CamVidNegatives(camvid.CamVid):
  """Square CamVid crops without a Pedestrian or Bicyclist pixel: the negatives.

  Per image (CamVid's `train` and `val` lists) squares of half the shorter side
  on an evenly spaced `CROP_GRID` of positions (x at 0, 75, ..., 300 and y at 0,
  90, 180 at 480x360; whole-height crops are rarely free of people: 155 of 1101
  in train, 0 of 303 in val), in row-major order, each kept when its label has
  no pixel of `PEOPLE_IDS`, resized to S x S. Record: `image` only.
  """

  name = "camvid_negatives"
  VERSION = tfds.core.Version("1.0.0")
  PEOPLE_IDS = (camvid.CLASS_NAMES.index("Pedestrian"), camvid.CLASS_NAMES.index("Bicyclist"))
  CROP_GRID = (5, 3)  # Positions along x, along y.

  def __init__(self, *, source_dir, image_size: int, data_dir=None, **kwargs: Any) -> None:
    if image_size < 1:
      raise UserError(f"data.image_size={image_size}: use a positive number of pixels")
    self.image_size = image_size
    super().__init__(source_dir=source_dir, data_dir=data_dir, **kwargs)

  def _cache_tag(self) -> str:
    return f"{self.image_size}px"

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds_local.LocalDatasetInfo(
        builder=self,
        description=(self.__doc__ or "").strip().splitlines()[0],
        features=tfds.features.FeaturesDict({"image": tfds.features.Tensor(
            shape=(self.image_size, self.image_size, 3), dtype=np.uint8,
            encoding=tfds.features.Encoding.BYTES)}),
        disable_shuffling=True,
    )

  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    del dl_manager
    return {split: self._generate_examples(self._pairs(split)) for split in ("train", "val")}

  def _crops(self, pair: segmentation.Pair) -> list[np.ndarray]:
    image = read_rgb(pair.image)
    label = segmentation.read_png_label(pair.label)
    height, width = image.shape[:2]
    if label.shape != (height, width):
      raise UserError(f"{pair.label}: label is {label.shape[0]}x{label.shape[1]} but image "
                      f"{pair.image} is {height}x{width}: fix the pair")
    side = max(min(height, width) // 2, 1)
    crops = []
    for y in np.unique(np.round(np.linspace(0, height - side, self.CROP_GRID[1])).astype(int)):
      for x in np.unique(np.round(np.linspace(0, width - side, self.CROP_GRID[0])).astype(int)):
        if not np.isin(label[y:y + side, x:x + side], self.PEOPLE_IDS).any():
          crops.append(crop_resize(image, (x, y, x + side, y + side), self.image_size))
    return crops

  def _generate_examples(self, pairs: Sequence[segmentation.Pair]
                         ) -> Iterator[tuple[int, dict[str, Any]]]:
    if not pairs:
      raise UserError(f"no examples found in {self.source_dir}: check the folder layout")
    key = 0
    for crops in segmentation.ordered_map(self._crops, pairs):
      for crop in crops:
        yield key, {"image": crop}
        key += 1
    if not key:
      raise UserError(f"no crop without people in the {len(pairs)} images listed in "
                      f"{self.source_dir}: use CamVid's images for the negatives")
