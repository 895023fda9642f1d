"""Location instability and part hits on constructed cases with known answers.

The reference `_instability_reference` is a plain loop over filters and parts written from
the paper's definition (Sec. 4.2) and the release's getDistSqrtVar.m: per filter and part,
the top_k images by score among those where the part is annotated, the standard deviation
(N - 1) of the part-to-peak distances, mean over parts, divided by the image diagonal.
"""
import math

import numpy as np
import pytest

from readingnotes_jax.interpretable_cnn import evaluation

_RNG = np.random.default_rng(0)


def test_peak_positions_match_a_loop_with_row_major_ties():
  features = _RNG.integers(0, 4, (3, 5, 6, 4)).astype(np.float32)  # Many ties.
  expected = np.zeros((3, 4, 2), np.int64)
  for n in range(3):
    for c in range(4):
      best = -np.inf
      for y in range(5):
        for x in range(6):
          if features[n, y, x, c] > best:
            best, expected[n, c] = features[n, y, x, c], (x, y)
  np.testing.assert_array_equal(evaluation.peak_positions(features), expected)


def test_feature_to_image():
  cells = np.array([[[0, 0], [3, 2]]])
  np.testing.assert_array_equal(evaluation.feature_to_image(cells, 16, 8.0),
                                [[[8.0, 8.0], [56.0, 40.0]]])
  np.testing.assert_allclose(evaluation.feature_to_image(cells, 2.5, 1.25),
                             [[[1.25, 1.25], [8.75, 6.25]]])


def _instability_reference(peaks, scores, parts, part_valid, image_size, top_k):
  num_images, num_filters = scores.shape
  used = [k for k in range(parts.shape[1]) if part_valid[:, k].sum() >= 2]
  per_filter = []
  for c in range(num_filters):
    order = sorted(range(num_images), key=lambda n: (-scores[n, c], n))
    total = 0.0
    for k in used:
      images = [n for n in order if part_valid[n, k]][:top_k]
      distances = [math.dist(parts[n, k], peaks[n, c]) for n in images]
      mean = sum(distances) / len(distances)
      total += math.sqrt(sum((d - mean) ** 2 for d in distances) / (len(distances) - 1))
    per_filter.append(total / len(used) / math.hypot(image_size, image_size))
  return float(np.mean(per_filter)), np.array(per_filter)


def test_constant_offset_from_the_parts_is_perfectly_stable():
  """Parts and peaks move together image by image: every distance is constant -> 0."""
  num_images, num_filters, num_parts = 12, 3, 4
  shift = _RNG.uniform(-20, 20, (num_images, 1, 2))
  parts = _RNG.uniform(40, 60, (1, num_parts, 2)) + shift
  peaks = _RNG.uniform(30, 70, (1, num_filters, 2)) + shift
  scores = _RNG.uniform(size=(num_images, num_filters))
  valid = np.ones((num_images, num_parts), bool)
  mean, per_filter = evaluation.location_instability(peaks, scores, parts, valid, 100)
  assert abs(mean) < 1e-12 and np.abs(per_filter).max() < 1e-12


def test_hand_computed_value():
  """One filter, one part at the origin, peaks at distances 1, 2, 3: std (N - 1) = 1."""
  parts = np.zeros((3, 1, 2))
  peaks = np.array([[[1.0, 0.0]], [[0.0, 2.0]], [[1.8, 2.4]]])  # 1, 2, 3 from the part.
  scores = np.array([[3.0], [2.0], [1.0]])
  mean, per_filter = evaluation.location_instability(peaks, scores, parts,
                                                     np.ones((3, 1), bool), 10)
  assert mean == pytest.approx(1 / math.hypot(10, 10), rel=1e-12)
  np.testing.assert_allclose(per_filter, [1 / math.hypot(10, 10)], rtol=1e-12)


def test_top_k_takes_the_highest_scoring_annotated_images():
  """The filter is stable on its top 3 images, wild on lower ones and on unannotated ones."""
  parts = np.zeros((7, 1, 2))
  distances = np.array([5.0, 5.0, 5.0, 90.0, 1.0, 40.0, 70.0])
  peaks = np.stack([distances, np.zeros(7)], axis=-1)[:, None, :]
  scores = np.array([[9.0], [8.0], [7.0], [10.0], [6.0], [5.0], [4.0]])
  valid = np.ones((7, 1), bool)
  valid[3] = False  # The best-scoring image has no annotated part (e.g. a negative).
  mean, _ = evaluation.location_instability(peaks, scores, parts, valid, 50, top_k=3)
  assert mean == 0.0
  mean4, _ = evaluation.location_instability(peaks, scores, parts, valid, 50, top_k=4)
  assert mean4 == pytest.approx(np.std([5, 5, 5, 1], ddof=1) / math.hypot(50, 50), rel=1e-12)


def test_random_case_against_the_reference_loop():
  num_images, num_filters, num_parts, size = 30, 5, 4, 64
  peaks = _RNG.uniform(0, size, (num_images, num_filters, 2))
  parts = _RNG.uniform(0, size, (num_images, num_parts, 2))
  scores = np.round(_RNG.uniform(size=(num_images, num_filters)), 1)  # Ties broken by index.
  valid = _RNG.uniform(size=(num_images, num_parts)) < 0.6
  valid[:, 3] = False
  valid[7, 3] = True  # One image only: part 3 is left out.
  for top_k in (5, 100):
    mean, per_filter = evaluation.location_instability(peaks, scores, parts, valid, size,
                                                       top_k=top_k)
    ref_mean, ref_per_filter = _instability_reference(peaks, scores, parts, valid, size, top_k)
    # float64 sums of <= 30 terms of size <= 100: errors ~1e-13 relative.
    assert mean == pytest.approx(ref_mean, rel=1e-10)
    np.testing.assert_allclose(per_filter, ref_per_filter, rtol=1e-10)


def test_no_part_in_two_images_gives_nan():
  valid = np.zeros((4, 2), bool)
  valid[0, 0] = valid[1, 1] = True
  mean, per_filter = evaluation.location_instability(
      np.zeros((4, 3, 2)), np.ones((4, 3)), np.zeros((4, 2, 2)), valid, 8)
  assert math.isnan(mean) and np.isnan(per_filter).all() and per_filter.shape == (3,)


def test_part_hit_fraction():
  """Four filters over 6 annotated images (+ 1 unannotated one, best scored, ignored).

  Radius: 0.1 x diagonal of 100 = 14.14. Filter 0 hits everywhere; 1 never; 2 in exactly
  half of its top 4; 3 in 1 of its top 4 and in both of its lower images.
  """
  size, num_images = 100, 7
  parts = np.zeros((num_images, 2, 2))
  parts[:, 1] = (50.0, 50.0)
  valid = np.ones((num_images, 2), bool)
  valid[6] = False
  near_second_part, far = (55.0, 45.0), (90.0, 10.0)  # 7.1 from part 1; >= 56 from both.
  peaks = np.empty((num_images, 4, 2))
  peaks[:, 0] = near_second_part
  peaks[:, 1] = far
  peaks[:, 2] = [near_second_part, far, (3.0, 4.0), far, far, far, near_second_part]
  peaks[:, 3] = [far, far, far, (9.0, 9.0), near_second_part, near_second_part, far]
  peaks[6] = near_second_part  # Every filter hits in the unannotated image.
  scores = np.tile(np.array([6.0, 5.0, 4.0, 3.0, 2.0, 1.0, 9.0])[:, None], (1, 4))
  assert evaluation.part_hit_fraction(peaks, scores, parts, valid, size, 0.1, top_k=4) == 0.5
  # With all 6 images filter 3 hits 3 of 6 (counts) and filter 2 hits 2 of 6 (does not).
  assert evaluation.part_hit_fraction(peaks, scores, parts, valid, size, 0.1) == 0.5
  assert evaluation.part_hit_fraction(peaks, scores, parts, valid, size, 0.1, top_k=1) == 0.5
  assert evaluation.part_hit_fraction(peaks, scores, parts, valid, size, 0.01) == 0.0
  assert math.isnan(evaluation.part_hit_fraction(peaks, scores, parts, np.zeros_like(valid),
                                                 size, 0.1))
