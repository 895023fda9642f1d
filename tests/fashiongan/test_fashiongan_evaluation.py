"""FashionGAN's evaluation measures on constructed cases whose answers follow from geometry and
from the colour and category definitions (readingnotes_jax/fashiongan/evaluation.py)."""
import numpy as np
import pytest

from readingnotes_jax.data import ccp_fashion
from readingnotes_jax.fashiongan import evaluation, train

HAIR, FACE, UPPER, LOWER, LEGS = (ccp_fashion.HAIR, ccp_fashion.FACE, ccp_fashion.UPPER,
                                  ccp_fashion.LOWER, ccp_fashion.LEGS)


def _rows(size: int, bands: list[tuple[int, int, int]]) -> np.ndarray:
  """A [size, size] map with label l on rows [start, end) for each (start, end, l)."""
  labels = np.zeros((size, size), np.int32)
  for start, end, label in bands:
    labels[start:end] = label
  return labels


def test_shape_iou_on_maps_aligned_with_the_8x8_cells():
  """64 px maps, bands on multiples of 8 rows: each cell of down m is one merged class, so the
  IoU is a count of cell rows. Hair over rows 0-31 / body below vs hair over 0-15 / body
  below: hair 2/4 rows, body 4/6 rows; background and face absent: mean (1/2 + 2/3) / 2."""
  a = _rows(64, [(0, 32, HAIR), (32, 64, UPPER)])
  b = _rows(64, [(0, 16, HAIR), (16, 48, LOWER), (48, 64, LEGS)])  # all three merge to body.
  got = evaluation.shape_iou(np.stack([a, a]), np.stack([b, a]))
  np.testing.assert_allclose(got, [(1 / 2 + 2 / 3) / 2, 1.0], rtol=1e-12)
  # A face band where the other map has background: face and background each IoU 0.
  c = _rows(64, [(0, 8, FACE), (8, 64, UPPER)])
  d = _rows(64, [(8, 64, UPPER)])
  np.testing.assert_allclose(evaluation.shape_iou(c[None], d[None]), [(0 + 0 + 1) / 3])


def _colour_attributes(upper: str | None, lower: str | None) -> np.ndarray:
  index = lambda colour: 0 if colour is None else ccp_fashion.COLOURS.index(colour) + 1
  return np.array([1 if upper else 0, index(upper), 1 if lower else 0, index(lower)])


def test_colour_hits_count_named_garments_and_miss_empty_regions():
  labels = np.stack([_rows(16, [(0, 8, UPPER), (8, 16, LOWER)])] * 3)
  labels[2, 8:] = 0  # third image: no lower garment generated.
  images = np.zeros((3, 16, 16, 3), np.uint8)
  images[:, :8] = (230, 20, 20)  # red upper clothes
  images[:, 8:] = (20, 20, 230)  # blue lower clothes
  attributes = np.stack([_colour_attributes("red", "blue"),    # 2 hits
                         _colour_attributes("green", None),    # 1 miss, lower not named
                         _colour_attributes(None, "blue")])    # region empty: 1 miss
  measured = evaluation.garment_colours(images, labels)
  assert [ccp_fashion.COLOURS[c] for c in measured["upper"]] == ["red"] * 3
  assert measured["lower"][2] == -1
  assert evaluation.colour_hits(evaluation.requested_colours(attributes), measured) == (2, 4)


def test_lower_group_of_attributes():
  names = ("dress", "jeans", "skirt", "shorts", "leggings", "romper", "pants")
  attributes = np.zeros((len(names) + 1, 4), np.int64)
  for i, name in enumerate(names):
    attributes[i + 1, 2] = ccp_fashion.LOWER_GARMENTS.index(name) + 1
  groups = [evaluation.LOWER_GROUPS[g] for g in evaluation.lower_group(attributes)]
  assert groups == ["none", "dress", "long", "short", "short", "long", "short", "long"]


def test_category_classifier_is_nearest_centroid_of_label_fractions():
  """Two kinds of maps: long garments (rows 24-64 lower clothes) and short ones (rows 24-40,
  legs below). Noisy copies are classified by the nearer class mean."""
  rng = np.random.default_rng(0)
  long_map = _rows(32, [(0, 8, HAIR), (8, 12, UPPER), (12, 32, LOWER)])
  short_map = _rows(32, [(0, 8, HAIR), (8, 12, UPPER), (12, 20, LOWER), (20, 32, LEGS)])

  def noisy(base, count):
    maps = np.repeat(base[None], count, 0)
    flip = rng.random(maps.shape) < 0.1
    maps[flip] = rng.integers(0, 7, flip.sum())
    return maps

  train_maps = np.concatenate([noisy(long_map, 10), noisy(short_map, 10)])
  groups = np.array([3] * 10 + [2] * 10)
  classifier = evaluation.CategoryClassifier(train_maps, groups)
  np.testing.assert_array_equal(classifier.predict(np.stack([short_map, long_map])), [2, 3])
  fractions = evaluation.label_fractions(long_map[None])[0].reshape(8, 8, 7)
  np.testing.assert_allclose(fractions[3, 0], np.eye(7)[LOWER])  # cell rows 12-15: lower.
  np.testing.assert_allclose(fractions.sum(-1), 1.0)


@pytest.mark.parametrize("count, per_photo", [(5, 3), (3, 5), (100, 3)])
def test_test_pairs_give_each_photo_distinct_other_sentences(count, per_photo):
  pairs = train.test_pairs(count, per_photo, seed=0)
  k = min(per_photo, count - 1)
  assert pairs.shape == (count * k, 2)
  for photo in range(count):
    partners = pairs[pairs[:, 0] == photo, 1]
    assert len(set(partners.tolist())) == k and photo not in partners
