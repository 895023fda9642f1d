"""Per-frame processors: registry, label blending, legend, segmentation overlay."""
import collections

import numpy as np
import pytest

from readingnotes_jax.errors import UserError
from readingnotes_jax.stream import processors as P

PALETTE = np.array([[128, 64, 128], [70, 70, 70], [0, 0, 142], [220, 20, 60]], np.uint8)
NAMES = ["Road", "Building", "Car", "Pedestrian"]


def test_registry():
  assert {"none", "pspnet"} <= set(P.names())
  frame = np.arange(2 * 3 * 3, dtype=np.uint8).reshape(2, 3, 3)
  none = P.load("none")
  assert none.name == "none" and none.fn(frame) is frame
  with pytest.raises(UserError, match="unknown model 'nope'"):
    P.load("nope")
  with pytest.raises(UserError, match="needs --checkpoint"):
    P.load("pspnet")
  with pytest.raises(UserError, match="fashiongan needs --checkpoint"):
    P.load("fashiongan")
  with pytest.raises(UserError, match="fashiongan needs --segmenter"):
    P.load("fashiongan", "runs/x")


def test_sentence_keeps_its_text_when_the_check_refuses():
  def check(text):
    if "dress" not in text:
      raise UserError(f"{text!r}: no dress")
  sentence = P.Sentence("a red dress", check)
  sentence.set("a blue dress")
  with pytest.raises(UserError, match="'a blue shirt': no dress"):
    sentence.set("a blue shirt")
  assert sentence.text == "a blue dress"
  with pytest.raises(UserError, match="no dress"):
    P.Sentence("pants", check)


def test_blend_labels_matches_per_pixel_formula():
  rng = np.random.default_rng(0)
  frame = rng.integers(0, 256, (5, 7, 3), dtype=np.uint8)
  labels = rng.integers(-1, 5, (5, 7))
  labels[0, 0] = 255
  got = P.blend_labels(frame, labels, PALETTE, alpha=0.3)
  for y in range(5):
    for x in range(7):
      label = labels[y, x]
      if 0 <= label < len(PALETTE):
        want = [round(0.7 * float(frame[y, x, c]) + 0.3 * float(PALETTE[label, c]))
                for c in range(3)]
      else:
        want = frame[y, x].astype(int)
      assert np.abs(got[y, x].astype(int) - want).max() <= 1, (y, x)


def test_classes_by_area():
  labels = np.array([[3, 3, 3, 1], [1, 0, 255, 3], [1, 1, 2, 2]])
  counts = collections.Counter(int(v) for v in labels.ravel() if 0 <= v < 4)
  want = sorted(counts, key=lambda c: (-counts[c], c))
  assert P.classes_by_area(labels, 4) == want == [1, 3, 2, 0]


def test_legend_swatches_text_and_darkened_box():
  frame = np.full((120, 200, 3), 200, np.uint8)
  got = P.draw_legend(frame, [2, 0], NAMES, PALETTE)
  m, pad, row, sw = P.LEGEND_MARGIN, P.LEGEND_PAD, P.LEGEND_ROW, P.LEGEND_SWATCH
  for i, c in enumerate([2, 0]):
    top, left = m + pad + i * row, m + pad
    assert (got[top:top + sw, left:left + sw] == PALETTE[c]).all()
  # The box darkens the frame to half; its padding strip shows that.
  assert (got[m:m + pad, m:m + pad + sw] == 100).all()
  # White-ish text to the right of each swatch.
  text = got[m + pad:m + pad + 2 * row, m + 2 * pad + sw:]
  assert (text.min(axis=-1) > 150).sum() > 20
  # Below the box the frame is untouched.
  assert (got[m + pad + 2 * row + pad:] == 200).all()
  np.testing.assert_array_equal(P.draw_legend(frame, [], NAMES, PALETTE), frame)
  many = P.draw_legend(np.zeros((400, 200, 3), np.uint8), list(range(4)) * 5,
                       NAMES, PALETTE)
  # At most LEGEND_MAX_ROWS rows.
  below = m + pad + P.LEGEND_MAX_ROWS * row + pad
  assert (many[below:] == 0).all()


def test_segmentation_overlay_with_stand_in_predictor():
  frame = np.zeros((60, 240, 3), np.uint8)
  frame[..., 0] = np.arange(240)[None, :]
  calls = []

  def predict(image):
    calls.append(image.shape)
    labels = image[..., 0].astype(np.int64) // 60  # 4 vertical bands
    labels[:, 230:] = 255  # void
    return labels

  overlay = P.segmentation_overlay(predict, NAMES, PALETTE.tolist(), alpha=0.5)
  got = overlay(frame)
  assert calls == [(60, 240, 3)]
  labels = predict(frame)
  want = P.blend_labels(frame, labels, PALETTE, 0.5)
  # Outside the legend box (right part of the frame) it is the blend.
  np.testing.assert_array_equal(got[:, 120:], want[:, 120:])
  np.testing.assert_array_equal(got[:, 230:], frame[:, 230:])
  # The legend lists the classes by area: bands 0, 1, 2 have 60 columns, band 3 has 50.
  m, pad, row, sw = P.LEGEND_MARGIN, P.LEGEND_PAD, P.LEGEND_ROW, P.LEGEND_SWATCH
  assert [tuple(got[m + pad + i * row + 2, m + pad + 2]) for i in range(2)] == [
      tuple(PALETTE[0]), tuple(PALETTE[1])]
  with pytest.raises(UserError, match="palette"):
    P.segmentation_overlay(predict, NAMES, PALETTE[:2])
