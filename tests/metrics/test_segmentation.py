"""Segmentation scores against hand-computed answers and semseg's histogram method in NumPy."""
import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from readingnotes_jax.errors import UserError
from readingnotes_jax.metrics.segmentation import confusion_matrix, segmentation_scores

_LABEL = np.array([[0, 0, 1], [1, 2, 255]], np.uint8)
_PRED = np.array([[0, 1, 1], [2, 2, 0]], np.int32)


def _semseg_reference(preds, labels, num_classes, ignore=255):
  """semseg `intersectionAndUnion` per image (np.histogram areas), summed, then `cal_acc`."""
  inter_sum = union_sum = target_sum = 0
  for pred, label in zip(preds, labels):
    pred = pred.reshape(-1).copy()
    label = label.reshape(-1)
    pred[label == ignore] = ignore
    bins = np.arange(num_classes + 1)
    inter = np.histogram(pred[pred == label], bins=bins)[0]
    area_pred = np.histogram(pred, bins=bins)[0]
    area_label = np.histogram(label, bins=bins)[0]
    inter_sum = inter_sum + inter
    union_sum = union_sum + area_pred + area_label - inter
    target_sum = target_sum + area_label
  iou = inter_sum / (union_sum + 1e-10)
  acc = inter_sum / (target_sum + 1e-10)
  return iou.mean(), acc.mean(), inter_sum.sum() / (target_sum.sum() + 1e-10), iou, acc


def test_hand_computed_case():
  confusion = confusion_matrix(_PRED, _LABEL, 3)
  # (gt, pred) pairs (0,0) (0,1) (1,1) (1,2) (2,2); the 255 pixel is left out.
  np.testing.assert_array_equal(confusion, [[1, 1, 0], [0, 1, 1], [0, 0, 1]])
  scores = segmentation_scores(confusion)
  # intersection 1 1 1, target 2 2 1, predicted 1 2 2, union 2 3 2. Default rtol/approx:
  # semseg's + 1e-10 in each denominator moves a ratio by <= 1e-10 relative.
  np.testing.assert_allclose(scores["iou_per_class"], [1 / 2, 1 / 3, 1 / 2])
  np.testing.assert_allclose(scores["acc_per_class"], [1 / 2, 1 / 2, 1])
  assert scores["miou"] == pytest.approx((1 / 2 + 1 / 3 + 1 / 2) / 3)
  assert scores["macc"] == pytest.approx(2 / 3)
  assert scores["aacc"] == pytest.approx(3 / 5)


def test_absent_class_counts_as_zero_like_semseg():
  scores = segmentation_scores(confusion_matrix(_PRED, _LABEL, 4))  # Class 3 never appears.
  assert scores["iou_per_class"][3] == 0.0 and scores["acc_per_class"][3] == 0.0
  assert scores["miou"] == pytest.approx((1 / 2 + 1 / 3 + 1 / 2 + 0) / 4)
  assert scores["macc"] == pytest.approx((1 / 2 + 1 / 2 + 1 + 0) / 4)


def test_labels_outside_the_classes_are_left_out():
  label = np.array([0, 1, 7, 255, 1])
  pred = np.array([0, 1, 1, 1, 0])
  np.testing.assert_array_equal(confusion_matrix(pred, label, 2), [[1, 0], [1, 1]])


@pytest.fixture(scope="module")
def random_batches():
  rng = np.random.default_rng(0)
  labels = rng.integers(0, 6, (4, 3, 9, 11))  # 4 batches of 3 images, classes 0..5.
  labels[rng.random(labels.shape) < 0.2] = 255
  preds = np.where(rng.random(labels.shape) < 0.6, labels, rng.integers(0, 6, labels.shape))
  preds = np.where(preds == 255, 0, preds)
  return preds, labels


def test_matches_semseg_on_random_data(random_batches):
  preds, labels = random_batches
  total = sum(confusion_matrix(p, l, 6) for p, l in zip(preds, labels))
  scores = segmentation_scores(total)
  miou, macc, aacc, iou, acc = _semseg_reference(preds.reshape(-1, 9, 11), labels.reshape(-1, 9, 11), 6)
  # Float64 ratios of the same integer counts on both sides: a few eps64.
  assert scores["miou"] == pytest.approx(miou, rel=1e-12)
  assert scores["macc"] == pytest.approx(macc, rel=1e-12)
  assert scores["aacc"] == pytest.approx(aacc, rel=1e-12)
  np.testing.assert_allclose(scores["iou_per_class"], iou, rtol=1e-12)
  np.testing.assert_allclose(scores["acc_per_class"], acc, rtol=1e-12)


def test_jax_under_jit_accumulates_like_numpy(random_batches):
  preds, labels = random_batches

  @jax.jit
  def accumulate(total, pred, label):
    return total + confusion_matrix(pred, label, 6)

  total = jnp.zeros((6, 6), jnp.int32)
  for p, l in zip(preds, labels):
    total = accumulate(total, jnp.asarray(p), jnp.asarray(l, jnp.int32))
  expected = confusion_matrix(preds, labels, 6)
  assert expected.dtype == np.int64
  chex.assert_trees_all_equal(np.asarray(total), expected)


def test_bad_input_raises():
  with pytest.raises(UserError, match="shapes differ"):
    confusion_matrix(_PRED, _LABEL[:1], 3)
  with pytest.raises(UserError, match="square"):
    segmentation_scores(np.zeros((3, 4)))
