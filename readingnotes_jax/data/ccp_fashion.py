"""Clothing Co-Parsing as a stand-in for FashionGAN's DeepFashion data: 7-class maps, sentences.

FashionGAN (Zhu et al., ICCV 2017) trains on 128 x 128 DeepFashion photos with a
7-class segmentation (`CLASS_NAMES`: the paper's section 4 order, the values of the
release's `b_` maps) and one sentence each. CCP (readingnotes_jax.data.ccp) has 59
pixel labels and no sentences; here

- `fashion_labels` maps the 59 labels to the 7 classes (`CCP_TO_FASHION`, below) and
  splits CCP's single `skin` label into face, legs and arms (`split_skin`);
- `describe` writes a sentence from the photo's largest upper and lower garments and
  their measured colours ("a woman in a blue shirt and black pants") and returns the
  same facts as attribute indices (`ATTRIBUTES`), so generated images can be scored
  against them;
- `CCPFashion` builds the photos, padded to squares and resized to S x S, with those
  maps, sentences and attributes (a TFDS builder, read without TensorFlow).

The mapping follows what the authors did for their own 18-label parser in the complete
demo (zhusz/ICCV17-fashionGAN, complete_demo/script2.m, `label_assign`): hat with hair,
sunglasses with the face, scarf with the upper clothes, dress, skirt, belt and bag with
the lower clothes, shoes with the legs. Table (CCP label -> class):

  background:    null, accessories (CCP does not say where they are)
  hair:          hair, hat
  face:          sunglasses, glasses, earrings; skin (`split_skin`)
  upper_clothes: blazer, blouse, bodysuit, bra, cape, cardigan, coat, hoodie, jacket, jumper,
                 necklace, scarf, shirt, suit, sweater, sweatshirt, t-shirt, tie, top, vest
  lower_clothes: bag, belt, dress, intimate, jeans, leggings, panties, pants, purse, romper,
                 shorts, skirt, swimwear, wallet
  legs:          boots, clogs, flats, heels, loafers, pumps, sandals, shoes, sneakers, socks,
                 stockings, tights, wedges; skin
  arms:          bracelet, gloves, ring, watch; skin

CCP photos are women's street fashion (chictopia.com) without gender tags, so every
sentence says "a woman".
"""
from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any, ClassVar

import cv2
import numpy as np
import scipy.ndimage
import tensorflow_datasets as tfds

from readingnotes_jax.data import ccp, parts, segmentation, tfds_local
from readingnotes_jax.errors import UserError

CLASS_NAMES = ("background", "hair", "face", "upper_clothes", "lower_clothes", "legs", "arms")
BACKGROUND, HAIR, FACE, UPPER, LOWER, LEGS, ARMS = range(len(CLASS_NAMES))
_CLASS_MEMBERS = {
    BACKGROUND: ("null", "accessories"),
    HAIR: ("hair", "hat"),
    FACE: ("sunglasses", "glasses", "earrings"),
    UPPER: ("blazer", "blouse", "bodysuit", "bra", "cape", "cardigan", "coat", "hoodie", "jacket",
            "jumper", "necklace", "scarf", "shirt", "suit", "sweater", "sweatshirt", "t-shirt",
            "tie", "top", "vest"),
    LOWER: ("bag", "belt", "dress", "intimate", "jeans", "leggings", "panties", "pants", "purse",
            "romper", "shorts", "skirt", "swimwear", "wallet"),
    LEGS: ("boots", "clogs", "flats", "heels", "loafers", "pumps", "sandals", "shoes",
           "sneakers", "socks", "stockings", "tights", "wedges"),
    ARMS: ("bracelet", "gloves", "ring", "watch"),
}
SKIN = ccp.CLASS_NAMES.index("skin")
_UNSPLIT = 255  # Skin before `split_skin`.
CCP_TO_FASHION = np.full(len(ccp.CLASS_NAMES), _UNSPLIT, np.uint8)
for _label, _members in _CLASS_MEMBERS.items():
  CCP_TO_FASHION[[ccp.CLASS_NAMES.index(m) for m in _members]] = _label
assert (CCP_TO_FASHION == _UNSPLIT).sum() == 1 and CCP_TO_FASHION[SKIN] == _UNSPLIT

# Garments a sentence names (CCP label names), the largest of each group.
UPPER_GARMENTS = ("blazer", "blouse", "bodysuit", "cape", "cardigan", "coat", "hoodie", "jacket",
                  "jumper", "shirt", "suit", "sweater", "sweatshirt", "t-shirt", "top", "vest")
LOWER_GARMENTS = ("dress", "jeans", "leggings", "pants", "romper", "shorts", "skirt")
PLURAL_GARMENTS = frozenset({"jeans", "leggings", "pants", "shorts"})
COLOURS = ("black", "white", "grey", "red", "orange", "yellow", "green", "blue", "purple",
           "pink", "brown", "beige")
# (name, classes) of the attribute vector; index 0 of each is "none" (no such garment).
ATTRIBUTES = (("upper", 1 + len(UPPER_GARMENTS)), ("upper_colour", 1 + len(COLOURS)),
              ("lower", 1 + len(LOWER_GARMENTS)), ("lower_colour", 1 + len(COLOURS)))
MIN_GARMENT_FRACTION = 0.005  # A garment is named with at least this fraction of the pixels.
_LOWER_GARMENT_IDS = np.array([ccp.CLASS_NAMES.index(g) for g in LOWER_GARMENTS])
TEST_IDS = ccp.VAL_IDS  # Photos 0801-0900, as readingnotes_jax.data.ccp's `val`.


def split_skin(classes: np.ndarray, skin: np.ndarray, lower_garment: np.ndarray) -> np.ndarray:
  """`classes` with the `skin` pixels labelled FACE, LEGS or ARMS.

  By adjacency and position, on 8-connected skin components:
  - face: of the components holding at least `parts.FACE_MIN_SKIN_FRACTION` of the skin,
    those touching hair (8-neighbours) if any, the one with the highest centroid. When the
    upper clothes start below its top row, its part from that row down stays face only in
    pieces within the columns of the part above (the neck), not in pieces reaching wider
    (shoulders and arms joined to the neck);
  - the other skin, again in components: legs when touching legs-class pixels (shoes,
    socks, stockings, tights) or when the centroid lies below `leg_row`, the middle row of
    the lower garment (`lower_garment`, the pixels of `LOWER_GARMENTS`: pants end at the
    ankles, skirts at the thighs, so hands at the hips stay above it), or of the person
    (non-background pixels) without one; arms otherwise.

  Args:
    classes: uint8 [H, W] class ids (`CLASS_NAMES`) of the non-skin pixels.
    skin: bool [H, W].
    lower_garment: bool [H, W].
  """
  out = classes.copy()
  if not skin.any():
    return out
  structure = np.ones((3, 3), bool)
  rows = np.arange(skin.shape[0], dtype=np.float64)[:, None] + 0.5  # Pixel centres.
  components, count = scipy.ndimage.label(skin, structure=structure)
  ids = np.arange(1, count + 1)
  sizes, centres = _sizes_and_mean_rows(components, count, rows)
  near_hair = _dilate(classes == HAIR) & skin
  touch_hair = np.isin(ids, components[near_hair])
  sizeable = sizes >= parts.FACE_MIN_SKIN_FRACTION * sizes.sum()
  candidates = sizeable & touch_hair if (sizeable & touch_hair).any() else sizeable
  rest = skin.copy()
  if candidates.any():
    face = components == ids[candidates][np.argmin(centres[candidates])]
    upper_rows = np.flatnonzero((classes == UPPER).any(axis=1))
    if upper_rows.size and upper_rows[0] > np.flatnonzero(face.any(axis=1))[0]:
      face = _cut_face(face, upper_rows[0])
    out[face] = FACE
    rest &= ~face
  if not rest.any():
    return out
  components, count = scipy.ndimage.label(rest, structure=structure)
  ids = np.arange(1, count + 1)
  _, centres = _sizes_and_mean_rows(components, count, rows)
  near_legs = _dilate(classes == LEGS) & rest
  touch_legs = np.isin(ids, components[near_legs])
  reference = lower_garment if lower_garment.any() else (classes != BACKGROUND) | skin
  reference_rows = np.flatnonzero(reference.any(axis=1))
  leg_row = (reference_rows[0] + reference_rows[-1] + 1) / 2
  legs = touch_legs | (centres >= leg_row)
  out[rest] = np.where(legs, LEGS, ARMS)[components[rest] - 1]
  return out


def _sizes_and_mean_rows(components: np.ndarray, count: int, rows: np.ndarray
                         ) -> tuple[np.ndarray, np.ndarray]:
  """(pixel count, mean of `rows` [H, 1]) of components 1..count of a label image [H, W]:
  `scipy.ndimage.sum_labels` and `mean` in one pass of `np.bincount` each (scipy's took
  20 ms per CCP photo)."""
  r, c = np.nonzero(components)  # the components' pixels, in raster order.
  labels = components[r, c]
  sizes = np.bincount(labels, minlength=count + 1)[1:].astype(np.float64)
  row_sums = np.bincount(labels, rows[r, 0], minlength=count + 1)[1:]
  return sizes, row_sums / sizes


def _dilate(mask: np.ndarray) -> np.ndarray:
  """Binary dilation of bool [H, W] by the 3 x 3 square (8-neighbours; nothing outside the
  image), as `scipy.ndimage.binary_dilation(mask, np.ones((3, 3)))` (11 -> 0.7 ms on a CCP map)."""
  return cv2.dilate(mask.astype(np.uint8), np.ones((3, 3), np.uint8)).astype(bool)


def _cut_face(face: np.ndarray, cut: int) -> np.ndarray:
  """`face` above row `cut`, plus each 8-connected piece below it that stays within the
  columns of the part above (the neck), not those reaching wider (shoulders, arms)."""
  head, below = face.copy(), face.copy()
  head[cut:], below[:cut] = False, False
  columns = np.flatnonzero(head.any(axis=0))
  pieces, _ = scipy.ndimage.label(below, structure=np.ones((3, 3), bool))
  for index, (_, cols) in enumerate(scipy.ndimage.find_objects(pieces), 1):
    if columns[0] <= cols.start and cols.stop - 1 <= columns[-1]:
      head |= pieces == index
  return head


def fashion_labels(raw: np.ndarray) -> np.ndarray:
  """uint8 [H, W] `CLASS_NAMES` ids of a CCP label map (ids 0..58): `CCP_TO_FASHION`, then
  `split_skin`."""
  classes = CCP_TO_FASHION[raw]
  skin = raw == SKIN
  return split_skin(np.where(skin, BACKGROUND, classes).astype(np.uint8), skin,
                    np.isin(raw, _LOWER_GARMENT_IDS))


def colour_name(rgb: Sequence[float]) -> str:
  """The `COLOURS` name of an RGB colour (0..255), by hue, saturation and value.

  v = max / 255, s = (max - min) / max, h the HSV hue in degrees. In order: v < 0.2 black;
  s < 0.2 white (v >= 0.75), black (v < 0.3) or grey; beige for h in [15, 65) with
  s < 0.5 and v >= 0.6; brown for h in [10, 50) with v < 0.55; pink for reds (h < 15 or
  h >= 345) with s < 0.5 and v >= 0.7; else by hue: red < 15, orange < 40, yellow < 70,
  green < 165, blue < 255, purple < 290, pink < 345, red.
  """
  r, g, b = (float(c) / 255 for c in rgb)
  high, low = max(r, g, b), min(r, g, b)
  value, chroma = high, high - low
  saturation = chroma / high if high > 0 else 0.0
  if value < 0.2:
    return "black"
  if saturation < 0.2:
    return "white" if value >= 0.75 else "black" if value < 0.3 else "grey"
  if high == r:
    hue = 60 * (((g - b) / chroma) % 6)
  elif high == g:
    hue = 60 * ((b - r) / chroma + 2)
  else:
    hue = 60 * ((r - g) / chroma + 4)
  if 15 <= hue < 65 and saturation < 0.5 and value >= 0.6:
    return "beige"
  if 10 <= hue < 50 and value < 0.55:
    return "brown"
  if (hue < 15 or hue >= 345) and saturation < 0.5 and value >= 0.7:
    return "pink"
  for name, end in (("red", 15), ("orange", 40), ("yellow", 70), ("green", 165),
                    ("blue", 255), ("purple", 290), ("pink", 345)):
    if hue < end:
      return name
  return "red"


def _largest(raw: np.ndarray, garments: Sequence[str]) -> str | None:
  counts = np.bincount(raw.ravel(), minlength=len(ccp.CLASS_NAMES))
  best = max(garments, key=lambda g: counts[ccp.CLASS_NAMES.index(g)])
  return best if counts[ccp.CLASS_NAMES.index(best)] >= MIN_GARMENT_FRACTION * raw.size else None


def _phrase(colour: str, garment: str) -> str:
  if garment in PLURAL_GARMENTS:
    return f"{colour} {garment}"
  return f"{'an' if colour[0] in 'aeiou' else 'a'} {colour} {garment}"


def describe(raw: np.ndarray, photo: np.ndarray) -> tuple[str, np.ndarray]:
  """(sentence, attributes) of a CCP photo from its labels.

  The largest upper garment and the largest lower garment (`UPPER_GARMENTS`,
  `LOWER_GARMENTS`) with at least `MIN_GARMENT_FRACTION` of the pixels, each named with
  `colour_name` of the per-channel median of its pixels: "a woman in a white blouse and
  blue jeans", "a woman in a red dress", "a woman" (none). Attributes: int64 [4], see
  `ATTRIBUTES` (garment and colour indices + 1, 0 = none).
  """
  words = []
  attributes = np.zeros(len(ATTRIBUTES), np.int64)
  for k, garments in enumerate((UPPER_GARMENTS, LOWER_GARMENTS)):
    garment = _largest(raw, garments)
    if garment is None:
      continue
    colour = colour_name(np.median(photo[raw == ccp.CLASS_NAMES.index(garment)], axis=0))
    attributes[2 * k] = garments.index(garment) + 1
    attributes[2 * k + 1] = COLOURS.index(colour) + 1
    words.append(_phrase(colour, garment))
  return "a woman" + (" in " + " and ".join(words) if words else ""), attributes


def square_resize(photo: np.ndarray, classes: np.ndarray, size: int
                  ) -> tuple[np.ndarray, np.ndarray]:
  """Photo and class map padded to a centred square, resized to size x size.

  The photo's padding mirrors it (OpenCV's BORDER_REFLECT_101: no streaks of repeated edge
  pixels for the generator to learn), the map's is background; the photo is
  resized by OpenCV's area averaging (bilinear when enlarging), the map by the nearest
  source pixel centre.
  """
  height, width = classes.shape
  side = max(height, width)
  top, left = (side - height) // 2, (side - width) // 2
  pads = (top, side - height - top, left, side - width - left)
  photo = cv2.copyMakeBorder(photo, *pads, cv2.BORDER_REFLECT_101)
  classes = np.pad(classes, ((pads[0], pads[1]), (pads[2], pads[3])))
  photo = cv2.resize(photo, (size, size),
                     interpolation=cv2.INTER_AREA if side >= size else cv2.INTER_LINEAR)
  nearest = ((np.arange(size) + 0.5) * side / size).astype(np.int64)
  return photo, classes[nearest[:, None], nearest[None, :]]


class CCPFashion(tfds_local.LocalFilesBuilder):
  """CCP photos with 7-class maps, a sentence and attributes each, at S x S.

  Examples: each `annotations/pixel-level/NNNN.mat` with its `photos/NNNN.jpg`; photos
  `TEST_IDS` (0801-0900) are `test`, the others `train` (with `all_test`, all `test`).
  Records: `image` uint8 [S, S, 3], `label` uint8 [S, S] (`CLASS_NAMES` ids),
  `sentence` text, `attributes` int64 [4] (`ATTRIBUTES`), `file_name`.
  """

  name = "ccp_fashion"
  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES: ClassVar[dict[str, str]] = {"1.0.0": "First version."}

  def __init__(self, *, source_dir, image_size: int = 128, all_test: bool = False,
               data_dir=None, **kwargs: Any) -> None:
    if image_size < 8:
      raise UserError(f"data.image_size={image_size}: use at least 8 pixels (the spatial "
                      "constraint is 8x8)")
    self.image_size = image_size
    self.all_test = all_test
    super().__init__(source_dir=source_dir, data_dir=data_dir, **kwargs)

  def _cache_tag(self) -> str:
    return f"{self.image_size}px{'-alltest' if self.all_test else ''}"

  def _info(self) -> tfds.core.DatasetInfo:
    size = self.image_size
    tensor = lambda shape, dtype: tfds.features.Tensor(
        shape=shape, dtype=dtype, encoding=tfds.features.Encoding.BYTES)
    return tfds_local.LocalDatasetInfo(
        builder=self,
        description=(self.__doc__ or "").strip().splitlines()[0],
        features=tfds.features.FeaturesDict({
            "image": tensor((size, size, 3), np.uint8),
            "label": tensor((size, size), np.uint8),
            "sentence": tfds.features.Text(),
            "attributes": tfds.features.Tensor(shape=(len(ATTRIBUTES),), dtype=np.int64),
            "file_name": tfds.features.Text(),
        }),
        disable_shuffling=True,
    )

  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    del dl_manager
    labels = segmentation.require_dir(self.source_dir / "annotations" / "pixel-level",
                                      "CCP's pixel-level labels (annotations/pixel-level/NNNN.mat)")
    photos = segmentation.require_dir(self.source_dir / "photos", "CCP's photos (photos/NNNN.jpg)")
    splits = {"train": [], "test": []}
    for label in sorted(labels.glob("*.mat")):
      if not label.stem.isdigit():
        raise UserError(f"{label}: expected a numbered label file NNNN.mat")
      split = "test" if self.all_test or int(label.stem) in TEST_IDS else "train"
      splits[split].append(segmentation.Pair(photos / f"{label.stem}.jpg", label))
    splits = {split: pairs for split, pairs in splits.items() if pairs}
    if not splits:
      raise UserError(f"no examples found in {self.source_dir}: expected CCP's "
                      "annotations/pixel-level/NNNN.mat and photos/NNNN.jpg")
    return {split: self._generate_examples(pairs) for split, pairs in splits.items()}

  def _generate_examples(self, pairs: Sequence[segmentation.Pair]
                         ) -> Iterator[tuple[int, dict[str, Any]]]:
    yield from enumerate(segmentation.ordered_map(
        lambda pair: record(pair, self.image_size), pairs))


def record(pair: segmentation.Pair, image_size: int) -> dict[str, Any]:
  """The `CCPFashion` record of one photo and its CCP label file.

  Raises:
    UserError: a missing or unreadable file, label ids outside 0..58, or a label map of
      another size than the photo.
  """
  if not pair.image.is_file():
    raise UserError(f"{pair.label}: its photo {pair.image} is missing: add the photo or "
                    "remove the label file")
  photo = parts.read_rgb(pair.image)
  raw = segmentation.map_labels(ccp.read_label(pair.label), ccp.CCP.LABEL_LUT, pair.label)
  if raw.shape != photo.shape[:2]:
    raise UserError(f"{pair.label}: label is {raw.shape[0]}x{raw.shape[1]} but photo "
                    f"{pair.image} is {photo.shape[0]}x{photo.shape[1]}: fix the pair")
  sentence, attributes = describe(raw, photo)
  image, label = square_resize(photo, fashion_labels(raw), image_size)
  return {"image": image, "label": label, "sentence": sentence, "attributes": attributes,
          "file_name": f"photos/{pair.image.name}"}
