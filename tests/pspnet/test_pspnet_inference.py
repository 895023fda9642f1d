"""PSPNet inference against NumPy re-statements of semseg `tool/test.py`, and the figures."""
import math

import chex
import cv2
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import PIL.Image
import pytest

from readingnotes_jax.errors import UserError
from readingnotes_jax.pspnet import figures, inference

MEAN = np.float32([0.485, 0.456, 0.406]) * 255
STD = np.float32([0.229, 0.224, 0.225]) * 255
NUM_CLASSES = 3


def softmax(x, axis=-1):
  e = np.exp(x - x.max(axis=axis, keepdims=True))
  return e / e.sum(axis=axis, keepdims=True)


def per_pixel_logits(image):
  """A 1x1 'network': logits are a fixed linear map of each pixel's values."""
  weights = np.float32([[1.0, -0.5, 0.2], [0.3, 0.8, -1.0], [-0.7, 0.1, 0.9]])
  return image @ weights


def positional_logits(crops):
  """A network whose logits depend on the pixel and on its place in the crop (not flip-invariant)."""
  _, h, w, _ = crops.shape
  rows = np.arange(h, dtype=np.float32)[:, None, None] / h
  cols = np.arange(w, dtype=np.float32)[None, :, None] / w
  return per_pixel_logits(crops) + rows * np.float32([1, -1, 0.5]) + cols * np.float32([-2, 1, 1])


def reference_net_process(logits_fn, crop, flip):
  """semseg `net_process` on one normalized crop [h, w, 3]."""
  batch = np.stack([crop, crop[:, ::-1]]) if flip else crop[None]
  probs = softmax(logits_fn(batch))
  return (probs[0] + probs[1][:, ::-1]) / 2 if flip else probs[0]


def reference_scale_process(logits_fn, image, crop_h, crop_w, h, w, flip):
  """semseg `scale_process` on a resized, unnormalized image, in float64 as semseg."""
  ori_h, ori_w, _ = image.shape
  pad_h, pad_w = max(crop_h - ori_h, 0), max(crop_w - ori_w, 0)
  pad_h_half, pad_w_half = int(pad_h / 2), int(pad_w / 2)
  if pad_h > 0 or pad_w > 0:
    image = cv2.copyMakeBorder(image, pad_h_half, pad_h - pad_h_half, pad_w_half,
                               pad_w - pad_w_half, cv2.BORDER_CONSTANT, value=MEAN.tolist())
  new_h, new_w, _ = image.shape
  stride_h, stride_w = int(np.ceil(crop_h * 2 / 3)), int(np.ceil(crop_w * 2 / 3))
  grid_h = int(np.ceil(float(new_h - crop_h) / stride_h) + 1)
  grid_w = int(np.ceil(float(new_w - crop_w) / stride_w) + 1)
  prediction = np.zeros((new_h, new_w, NUM_CLASSES), dtype=float)
  count = np.zeros((new_h, new_w), dtype=float)
  for index_h in range(grid_h):
    for index_w in range(grid_w):
      s_h = index_h * stride_h
      e_h = min(s_h + crop_h, new_h)
      s_h = e_h - crop_h
      s_w = index_w * stride_w
      e_w = min(s_w + crop_w, new_w)
      s_w = e_w - crop_w
      crop = (image[s_h:e_h, s_w:e_w] - MEAN) / STD
      count[s_h:e_h, s_w:e_w] += 1
      prediction[s_h:e_h, s_w:e_w] += reference_net_process(logits_fn, crop.astype(np.float32), flip)
  prediction /= count[..., None]
  prediction = prediction[pad_h_half:pad_h_half + ori_h, pad_w_half:pad_w_half + ori_w]
  return cv2.resize(prediction.astype(np.float32), (w, h), interpolation=cv2.INTER_LINEAR)


def reference_test(logits_fn, image, base_size, crop, scales, flip):
  """semseg `test`: long side to round(scale * base_size), probabilities averaged over scales."""
  h, w, _ = image.shape
  prediction = np.zeros((h, w, NUM_CLASSES), dtype=float)
  for scale in scales:
    long_size = round(scale * base_size)
    new_h = new_w = long_size
    if h > w:
      new_w = round(long_size / float(h) * w)
    else:
      new_h = round(long_size / float(w) * h)
    image_scale = cv2.resize(image, (new_w, new_h), interpolation=cv2.INTER_LINEAR)
    prediction += reference_scale_process(logits_fn, image_scale, crop, crop, h, w, flip)
  return prediction / len(scales)


def numpy_probability_fn(logits_fn, flip):
  def fn(crops):
    probs = softmax(logits_fn(crops))
    if flip:
      probs = (probs + softmax(logits_fn(crops[:, :, ::-1]))[:, :, ::-1]) / 2
    return probs.astype(np.float32)
  return fn


@pytest.fixture(scope="module")
def image():
  rng = np.random.default_rng(0)
  return rng.integers(0, 256, (37, 50, 3)).astype(np.uint8)


@pytest.mark.parametrize("size,crop,expected", [(10, 4, [0, 3, 6]), (11, 4, [0, 3, 6, 7]),
                                                (4, 4, [0]), (713, 473, [0, 240])])
def test_window_starts(size, crop, expected):
  assert inference.window_starts(size, crop, math.ceil(crop * 2 / 3)) == expected


def test_windows_of_a_per_pixel_model_equal_the_whole_image(image):
  """Overlapping windows averaged: a per-pixel network gives its full-image answer."""
  normalized = (image.astype(np.float32) - MEAN) / STD
  fn = numpy_probability_fn(per_pixel_logits, flip=False)
  for crop in ((17, 17), (17, 25), (41, 41), (64, 64)):  # 41 and 64 pad the image.
    got = inference.sliding_window(fn, normalized, crop_size=crop, num_classes=NUM_CLASSES,
                                   batch_size=3)
    # Averages of equal float32 probabilities (< 1): a few eps32 (measured 0).
    np.testing.assert_allclose(got, softmax(per_pixel_logits(normalized)), atol=1e-6)


@pytest.mark.parametrize("scales,flip,base_size,crop", [
    ((1.0,), False, 50, 17),
    ((1.0,), True, 40, 25),
    ((0.5, 0.75, 1.0, 1.25, 1.5, 1.75), True, 48, 17),
    ((0.75, 1.5), False, 64, 41),  # the 0.75 scale is smaller than the crop: padded.
])
def test_predictor_matches_semseg_test(image, scales, flip, base_size, crop):
  predictor = inference.Predictor(numpy_probability_fn(positional_logits, flip), NUM_CLASSES,
                                  (crop, crop), base_size, scales, batch_size=4)
  expected = reference_test(positional_logits, image.astype(np.float32), base_size, crop,
                            scales, flip)
  got = predictor.probabilities(image)
  # Float32 probabilities (< 1) through resizes, window averages and scale sums in other
  # orders: ~ 10 roundings x eps32 (measured 1.2e-7).
  np.testing.assert_allclose(got, expected, atol=2e-5)
  np.testing.assert_array_equal(predictor(image), np.argmax(expected, axis=-1))
  assert predictor(image).shape == image.shape[:2]


def bilinear_half_pixel(x: np.ndarray, height: int, width: int) -> np.ndarray:
  """cv2.INTER_LINEAR's rule in float64: source s = (i + 0.5) * in / out - 0.5, clamped."""
  def weights(n_in, n_out):
    s = np.clip((np.arange(n_out) + 0.5) * n_in / n_out - 0.5, 0, n_in - 1)
    lo = np.floor(s).astype(int)
    hi = np.minimum(lo + 1, n_in - 1)
    m = np.zeros((n_out, n_in))
    np.add.at(m, (np.arange(n_out), lo), 1 - (s - lo))
    np.add.at(m, (np.arange(n_out), hi), s - lo)
    return m
  return np.einsum("ai,bj,ijc->abc", weights(x.shape[0], height), weights(x.shape[1], width),
                   x.astype(np.float64))


@pytest.mark.parametrize("classes", [11, 150, 300])
def test_resize_probabilities_any_class_count(classes):
  """ADE20K's 150 classes exceed OpenCV 5's 128 channels per call (it failed before)."""
  probs = np.random.default_rng(classes).random((7, 9, classes)).astype(np.float32)
  got = inference.resize_probabilities(probs, 13, 20)
  # OpenCV blends in float32 with fixed-point-free weights: a few eps32 on values < 1.
  np.testing.assert_allclose(got, bilinear_half_pixel(probs, 13, 20), atol=1e-5)


def test_scaled_size_keeps_aspect_like_semseg():
  assert inference.scaled_size(360, 480, 160) == (120, 160)
  assert inference.scaled_size(1024, 2048, 1024) == (512, 1024)
  assert inference.scaled_size(500, 375, 512) == (512, 384)  # round(512 / 500 * 375) = 384.


class PositionalNet(nn.Module):
  """A flax stand-in: 1x1 conv plus a term in the column index (so flips matter); logits
  come out at half resolution + 1 (upsampled by make_probability_fn like semseg's)."""
  @nn.compact
  def __call__(self, x, *, train):
    assert not train
    x = nn.Conv(NUM_CLASSES, (1, 1))(x)
    cols = jnp.arange(x.shape[2], dtype=jnp.float32)[None, None, :, None] / x.shape[2]
    x = x + cols * jnp.float32([-2, 1, 1])
    return x[:, ::2, ::2]


def test_probability_fn_flip_average_against_numpy():
  model = PositionalNet()
  crops = np.random.default_rng(1).normal(size=(2, 9, 9, 3)).astype(np.float32)
  variables = model.init(jax.random.key(0), crops, train=False)
  kernel = np.asarray(variables["params"]["Conv_0"]["kernel"])[0, 0]
  bias = np.asarray(variables["params"]["Conv_0"]["bias"])

  def logits_at_crop_size(x):
    logits = x @ kernel + bias + (np.arange(9, dtype=np.float32)[None, None, :, None] / 9
                                  * np.float32([-2, 1, 1]))
    return _align_up(logits[:, ::2, ::2])  # 5x5 back to 9x9.

  for flip in (False, True):
    fn = inference.make_probability_fn(model, flip=flip)
    expected = softmax(logits_at_crop_size(crops))
    if flip:
      expected = (expected + softmax(logits_at_crop_size(crops[:, :, ::-1]))[:, :, ::-1]) / 2
    # The same float32 network in two programs, probabilities < 1: measured 6e-8.
    np.testing.assert_allclose(fn(variables, crops), expected, atol=1e-5)


def _align_up(small):
  """align_corners=True 5 -> 9 upsampling: even outputs copy, odd outputs average neighbours."""
  n, h, w, c = small.shape
  rows = np.zeros((n, 2 * h - 1, w, c), small.dtype)
  rows[:, ::2] = small
  rows[:, 1::2] = (small[:, :-1] + small[:, 1:]) / 2
  out = np.zeros((n, 2 * h - 1, 2 * w - 1, c), small.dtype)
  out[:, :, ::2] = rows
  out[:, :, 1::2] = (rows[:, :, :-1] + rows[:, :, 1:]) / 2
  return out


def test_probability_fn_on_a_mesh_equals_one_device():
  model = PositionalNet()
  crops = np.random.default_rng(2).normal(size=(4, 9, 9, 3)).astype(np.float32)
  variables = model.init(jax.random.key(0), crops, train=False)
  from readingnotes_jax.training import mesh as mesh_lib
  mesh = mesh_lib.make_data_mesh()
  on_mesh = inference.make_probability_fn(model, flip=True, mesh=mesh)
  plain = inference.make_probability_fn(model, flip=True)
  chex.assert_trees_all_close(on_mesh(mesh_lib.replicate(variables, mesh), crops),
                              plain(variables, crops), atol=1e-6)  # same program: measured 0


def test_evaluate_source_scores_a_known_case():
  """Two 2x3 images; the 'network' predicts class = first channel // 100."""
  images = [np.zeros((2, 3, 3), np.uint8), np.zeros((2, 3, 3), np.uint8)]
  images[0][..., 0] = [[0, 100, 200], [0, 0, 100]]
  images[1][..., 0] = [[200, 200, 200], [100, 0, 0]]
  labels = [np.array([[0, 1, 1], [0, 255, 1]], np.uint8),
            np.array([[2, 2, 1], [1, 0, 0]], np.uint8)]
  source = [{"image": i, "label": l[..., None]} for i, l in zip(images, labels)]

  class Known(inference.Predictor):
    def __call__(self, image):
      return image[..., 0].astype(np.int32) // 100

  predictor = Known(None, NUM_CLASSES, (9, 9), 0)
  result = inference.evaluate_source(predictor, source, keep_examples=1, progress=False)
  # Valid pixels (gt, pred): image 0: (0,0) (1,1) (1,2) (0,0) (1,1); image 1: (2,2) (2,2) (1,2)
  # (1,1) (0,0) (0,0).
  expected = np.array([[4, 0, 0], [0, 3, 2], [0, 0, 2]])
  np.testing.assert_array_equal(result.confusion, expected)
  iou = np.array([4 / 4, 3 / 5, 2 / 4])
  acc = np.array([4 / 4, 3 / 5, 2 / 2])
  # Ratios of integer counts (float64 against float32 or float64): approx's 1e-6.
  assert result.scores["miou"] == pytest.approx(iou.mean())
  assert result.scores["macc"] == pytest.approx(acc.mean())
  assert result.scores["aacc"] == pytest.approx(9 / 11)
  assert len(result.examples) == 1
  np.testing.assert_array_equal(result.examples[0][1], labels[0])
  both = inference.evaluate_source(predictor, source, keep_examples=5, progress=False).examples
  assert [e[1].tolist() for e in both] == [l.tolist() for l in labels]


def test_predictor_rejects_a_grey_image():
  predictor = inference.Predictor(numpy_probability_fn(per_pixel_logits, False), NUM_CLASSES,
                                  (9, 9), 16)
  with pytest.raises(UserError, match="RGB image"):
    predictor(np.zeros((10, 10), np.uint8))


def test_colorize_and_overlay():
  palette = np.array([[255, 0, 0], [0, 255, 0]], np.uint8)
  label = np.array([[0, 1], [255, 7]])
  np.testing.assert_array_equal(figures.colorize(label, palette),
                                [[[255, 0, 0], [0, 255, 0]], [[0, 0, 0], [0, 0, 0]]])
  image = np.full((2, 2, 3), 100, np.uint8)
  blended = figures.overlay(image, label, palette, alpha=0.5)
  np.testing.assert_array_equal(blended[0, 0], [178, 50, 50])   # rint(100 * .5 + 255 * .5)
  np.testing.assert_array_equal(blended[1, 0], [100, 100, 100])  # ignored: the image itself.


def test_normalized_confusion_rows_sum_to_one():
  confusion = np.array([[3, 1, 0], [0, 0, 0], [2, 2, 4]])
  np.testing.assert_allclose(figures.normalized_confusion(confusion),
                             [[0.75, 0.25, 0], [0, 0, 0], [0.25, 0.25, 0.5]])


def test_figures_are_written(tmp_path, image):
  names, palette = ("a", "b", "c"), np.array([[255, 0, 0], [0, 255, 0], [0, 0, 255]], np.uint8)
  label = np.random.default_rng(0).integers(0, 3, image.shape[:2])
  figures.save_prediction_overlays([(image, label, label), (image, label, (label + 1) % 3)],
                                   names, palette, tmp_path / "predictions.png", title="t")
  figures.save_confusion_matrix(np.array([[5, 1, 0], [0, 3, 1], [1, 0, 9]]), names,
                                tmp_path / "confusion_matrix.png")
  for name in ("predictions.png", "confusion_matrix.png"):
    with PIL.Image.open(tmp_path / name) as png:
      assert png.format == "PNG" and min(png.size) > 100
