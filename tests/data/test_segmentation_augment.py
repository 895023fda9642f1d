"""PSPNet augmentation ops against NumPy references, and the resumable stream."""
import numpy as np
import pytest

from readingnotes_jax.data import pipeline, segmentation_augment as sa
from readingnotes_jax.errors import UserError

MEAN = np.float32([0.485, 0.456, 0.406]) * np.float32(255)
STD = np.float32([0.229, 0.224, 0.225]) * np.float32(255)


def _pair(h, w, seed=0, num_classes=5):
  rng = np.random.default_rng(seed)
  return (rng.integers(0, 256, (h, w, 3), dtype=np.uint8),
          rng.integers(0, num_classes, (h, w), dtype=np.uint8))


def _normalize(x):
  return (x.astype(np.float32) - MEAN) / STD


def test_normalize():
  image, _ = _pair(3, 4)
  # Float32 (x - 255 mean) / (255 std) against float64, |out| < 2.7: ~ 4 eps32 x 2.7 = 1.3e-6
  # (measured 1.3e-7); the other channel's statistics would be off by > 1e-2.
  np.testing.assert_allclose(sa.normalize(image), (image / 255.0 - [0.485, 0.456, 0.406])
                             / [0.229, 0.224, 0.225], rtol=1e-5, atol=1e-5)


def test_hflip_exact():
  image, label = _pair(5, 7)
  flipped_image, flipped_label = sa.hflip(image.astype(np.float32), label)
  np.testing.assert_array_equal(flipped_image, image[:, ::-1])
  np.testing.assert_array_equal(flipped_label, label[:, ::-1])


@pytest.mark.parametrize("h,w,factor", [(6, 9, 1.3), (10, 7, 0.6), (5, 8, 2.0)])
def test_scale_size(h, w, factor):
  image, label = _pair(h, w)
  scaled_image, scaled_label = sa.scale(image.astype(np.float32), label, factor)
  expected = (round(h * factor), round(w * factor))
  assert scaled_image.shape == expected + (3,) and scaled_label.shape == expected
  assert set(np.unique(scaled_label)) <= set(np.unique(label))


def test_scale_by_two_repeats_labels():
  _, label = _pair(4, 5)
  _, scaled = sa.scale(np.zeros((4, 5, 3), np.float32), label, 2.0)
  np.testing.assert_array_equal(scaled, label.repeat(2, 0).repeat(2, 1))


def _rotation_reference(array, angle, border):
  """Nearest-pixel inverse mapping of OpenCV's rotation about (w/2, h/2)."""
  h, w = array.shape[:2]
  cx, cy = w / 2, h / 2
  a, b = np.cos(np.radians(angle)), np.sin(np.radians(angle))
  forward = np.array([[a, b, (1 - a) * cx - b * cy], [-b, a, b * cx + (1 - a) * cy], [0, 0, 1]])
  inverse = np.linalg.inv(forward)
  out = np.empty_like(array)
  for y in range(h):
    for x in range(w):
      sx, sy, _ = inverse @ [x, y, 1]
      sx, sy = int(round(sx)), int(round(sy))
      out[y, x] = array[sy, sx] if 0 <= sx < w and 0 <= sy < h else border
  return out


@pytest.mark.parametrize("size", [5, 6])
def test_rotate_90_against_reference(size):
  image, label = _pair(size, size)
  rotated_image, rotated_label = sa.rotate(image.astype(np.float32), label, 90.0)
  np.testing.assert_array_equal(rotated_label, _rotation_reference(label, 90.0, 255))
  # 90 degrees maps pixels onto pixels: exact up to cv2's interpolation table (measured 0); a
  # wrong centre or direction moves values by O(100).
  np.testing.assert_allclose(rotated_image, _rotation_reference(image.astype(np.float32),
                                                                90.0, MEAN), atol=1e-4)
  assert (rotated_label == 255).any()  # A strip falls outside the source.


def test_rotate_small_angle_keeps_label_values():
  image, label = _pair(20, 30)
  rotated_image, rotated_label = sa.rotate(image.astype(np.float32), label, -7.3)
  assert rotated_image.shape == (20, 30, 3) and rotated_label.shape == (20, 30)
  assert set(np.unique(rotated_label)) <= set(np.unique(label)) | {255}
  _, same = sa.rotate(image.astype(np.float32), label, 0.0)
  np.testing.assert_array_equal(same, label)


def test_gaussian_blur_against_numpy():
  image = _pair(7, 9)[0].astype(np.float32)
  # OpenCV's getGaussianKernel(5, sigma<=0) is its fixed binomial table.
  kernel = np.array([1, 4, 6, 4, 1]) / 16
  padded = np.pad(image, ((2, 2), (2, 2), (0, 0)), mode="reflect")  # BORDER_REFLECT_101
  rows = sum(kernel[i] * padded[i:i + 7] for i in range(5))
  expected = sum(kernel[i] * rows[:, i:i + 9] for i in range(5))
  # Integer pixels, dyadic taps (/ 16): exact in float32 (measured 0).
  np.testing.assert_allclose(sa.gaussian_blur(image), expected, atol=1e-4)


def test_pad_to_values_and_placement():
  image, label = _pair(3, 4)
  padded_image, padded_label = sa.pad_to(image.astype(np.float32), label, (8, 5))
  assert padded_label.shape == (8, 5)
  # 5 rows: 2 on top, 3 below; 1 column: 0 left, 1 right (semseg's halves).
  np.testing.assert_array_equal(padded_label[2:5, 0:4], label)
  np.testing.assert_array_equal(padded_image[2:5, 0:4], image)
  mask = np.ones((8, 5), bool)
  mask[2:5, 0:4] = False
  assert (padded_label[mask] == 255).all()
  # Here and below: the same float32 numbers or formula on both sides (measured 0).
  np.testing.assert_allclose(padded_image[mask], np.broadcast_to(MEAN, (mask.sum(), 3)), rtol=1e-6)


def test_preprocess_eval_center_crop():
  image, label = _pair(9, 12)
  out_image, out_label = sa.preprocess_eval(image, label, crop_size=(5, 6))
  np.testing.assert_array_equal(out_label, label[2:7, 3:9])
  np.testing.assert_allclose(out_image, _normalize(image[2:7, 3:9]), rtol=1e-6)
  assert out_image.dtype == np.float32 and out_label.dtype == np.int32


def test_augment_pads_small_images_with_mean_and_ignore():
  image, label = _pair(4, 4)
  out_image, out_label = sa.augment(image, label, crop_size=8, rng=np.random.default_rng(0),
                                    scale_range=(1.0, 1.0), rotate_p=0, blur_p=0, flip_p=0)
  np.testing.assert_array_equal(out_label[2:6, 2:6], label)
  np.testing.assert_allclose(out_image[2:6, 2:6], _normalize(image), rtol=1e-6)
  mask = np.ones((8, 8), bool)
  mask[2:6, 2:6] = False
  assert (out_label[mask] == 255).all()
  np.testing.assert_allclose(out_image[mask], 0.0, atol=1e-6)  # The mean normalizes to 0.


def test_augment_draw_order_flip_then_random_crop():
  image, label = _pair(10, 12)
  out_image, out_label = sa.augment(image, label, crop_size=(4, 5),
                                    rng=np.random.default_rng(3), scale_range=(1.0, 1.0),
                                    rotate_p=0, blur_p=0, flip_p=1)
  # semseg's draws: scale, rotate?, blur?, flip?, then the crop's top and left.
  rng = np.random.default_rng(3)
  for _ in range(4):
    rng.random()
  top = rng.integers(0, 10 - 4, endpoint=True)
  left = rng.integers(0, 12 - 5, endpoint=True)
  np.testing.assert_array_equal(out_label, label[:, ::-1][top:top + 4, left:left + 5])
  np.testing.assert_allclose(out_image, _normalize(image[:, ::-1][top:top + 4, left:left + 5]),
                             rtol=1e-6)


def test_augment_deterministic_and_label_values():
  image, label = _pair(30, 40)
  outs = [sa.augment(image, label, crop_size=17, rng=np.random.default_rng(s)) for s in (7, 7, 8)]
  np.testing.assert_array_equal(outs[0][0], outs[1][0])
  np.testing.assert_array_equal(outs[0][1], outs[1][1])
  assert not np.array_equal(outs[0][0], outs[2][0])
  for out_image, out_label in outs:
    assert out_image.shape == (17, 17, 3) and out_label.shape == (17, 17)
    assert set(np.unique(out_label)) <= set(np.unique(label)) | {255}


class _Source:
  """In-memory records shaped as a segmentation split (label HxWx1)."""

  def __init__(self, n, h=12, w=14):
    self.records = []
    for i in range(n):
      image, _ = _pair(h, w, seed=i)
      self.records.append({"image": image, "label": np.full((h, w, 1), i, np.uint8)})

  def __len__(self):
    return len(self.records)

  def __getitem__(self, index):
    return self.records[index]


def test_stream_order_resume_and_processes():
  source = _Source(5)
  with sa.SegmentationStream(source, crop_size=8, seed=11, num_threads=2) as stream:
    full = stream.batch(0, 12)
    assert full["image"].shape == (12, 8, 8, 3) and full["label"].dtype == np.int32
    for i in range(12):
      epoch, position = divmod(i, 5)
      assert stream.record_index(i) == pipeline.epoch_permutation(11, epoch, 5)[position]
      # Each record's label is its index (or 255 where rotation left the image).
      assert set(np.unique(full["label"][i])) <= {stream.record_index(i), 255}
    assert sorted(stream.record_index(i) for i in range(5, 10)) == list(range(5))
  with sa.SegmentationStream(source, crop_size=8, seed=11, num_threads=1) as resumed:
    part = resumed.batch(5, 4)
    np.testing.assert_array_equal(part["image"], full["image"][5:9])
    np.testing.assert_array_equal(part["label"], full["label"][5:9])
    for p in range(2):
      shard = resumed.batch(4, 8, process_index=p, process_count=2)
      np.testing.assert_array_equal(shard["image"], full["image"][4 + 4 * p:8 + 4 * p])
    with pytest.raises(UserError, match="multiple"):
      resumed.batch(0, 6, process_index=0, process_count=4)


def test_stream_eval_pads_past_the_end():
  source = _Source(3)
  with sa.SegmentationStream(source, crop_size=(6, 10), train=False) as stream:
    out = stream.batch(0, 4)
  for i in range(3):
    np.testing.assert_array_equal(out["label"][i], i)
    np.testing.assert_allclose(out["image"][i], _normalize(source[i]["image"][3:9, 2:12]),
                               rtol=1e-6)
  assert (out["label"][3] == 255).all() and (out["image"][3] == 0).all()
