"""ImageFolder builder on small images written into tmp_path."""
import numpy as np
import PIL.Image
import pytest

from readingnotes_jax.data import image_folder
from readingnotes_jax.data import tfds_local
from readingnotes_jax.errors import UserError


def save(path, array, **options):
  path.parent.mkdir(parents=True, exist_ok=True)
  PIL.Image.fromarray(array).save(path, **options)


def test_square_images_at_the_resolution_pass_unchanged(tmp_path):
  rng = np.random.default_rng(0)
  arrays = [rng.integers(0, 256, (16, 16, 3), dtype=np.uint8) for _ in range(3)]
  save(tmp_path / "src" / "b.png", arrays[1])
  save(tmp_path / "src" / "a.png", arrays[0])
  save(tmp_path / "src" / "deeper" / "c.webp", arrays[2], lossless=True)
  save(tmp_path / "src" / "deeper" / "d.JPG", np.full((16, 16, 3), (10, 200, 90), np.uint8),
       quality=100, subsampling=0)
  (tmp_path / "src" / "notes.txt").write_text("not an image")
  builder = image_folder.ImageFolder(source_dir=tmp_path / "src", resolution=16,
                                     data_dir=tmp_path / "cache")
  source = tfds_local.load(builder, "train")
  assert len(source) == 4
  assert "label" not in source[0]
  for i in range(3):  # Sorted: a, b, deeper/c, deeper/d.
    np.testing.assert_array_equal(source[i]["image"], arrays[i])
  # JPEG at quality 100, no subsampling: a flat colour survives up to YCbCr rounding (+-1 or 2
  # per channel; measured 0).
  np.testing.assert_allclose(source[3]["image"], np.full((16, 16, 3), (10, 200, 90)), atol=2)


def test_center_crop_then_resize(tmp_path):
  """A wide image whose centre square is red, sides blue: only red remains."""
  wide = np.zeros((20, 40, 3), np.uint8)
  wide[:, :, 2] = 255
  wide[:, 10:30] = (255, 0, 0)
  tall = np.swapaxes(wide, 0, 1).copy()
  save(tmp_path / "src" / "wide.png", wide)
  save(tmp_path / "src" / "tall.png", tall)
  builder = image_folder.ImageFolder(source_dir=tmp_path / "src", resolution=8,
                                     data_dir=tmp_path / "cache")
  source = tfds_local.load(builder, "train")
  for i in range(2):
    image = source[i]["image"].astype(int)
    assert image.shape == (8, 8, 3)
    # 12 (5%) for the resampler's ringing at the crop's edge (measured 0); a wrong crop keeps
    # blue sides, 255 off in two channels.
    np.testing.assert_allclose(image, np.broadcast_to([255, 0, 0], (8, 8, 3)), atol=12)


def test_lanczos_downscale_of_a_smooth_image(tmp_path):
  """A linear ramp stays a ramp: each output pixel is the mean of its input block."""
  ramp = np.tile(np.arange(64, dtype=np.float64)[None, :] * 4, (64, 1))
  save(tmp_path / "src" / "ramp.png", ramp.astype(np.uint8))
  builder = image_folder.ImageFolder(source_dir=tmp_path / "src", resolution=16,
                                     num_channels=1, data_dir=tmp_path / "cache")
  image = tfds_local.load(builder, "train")[0]["image"]
  assert image.shape == (16, 16, 1)
  block_means = ramp.reshape(16, 4, 16, 4).mean(axis=(1, 3))
  # Interior columns (Lanczos reaches 3 input pixels beyond each block).
  # Lanczos is exact on a linear ramp; the uint8 output rounds by <= 0.5 (measured 0).
  np.testing.assert_allclose(image[:, 1:-1, 0], block_means[:, 1:-1], atol=1)


def test_labels_from_sub_folders(tmp_path):
  rng = np.random.default_rng(1)
  for name, count in (("dogs", 2), ("cats", 3)):
    for i in range(count):
      save(tmp_path / "src" / name / f"{i}.png", rng.integers(0, 256, (8, 8, 3), dtype=np.uint8))
  save(tmp_path / "src" / "cats" / "inner" / "x.png", np.zeros((8, 8, 3), np.uint8))
  builder = image_folder.ImageFolder(source_dir=tmp_path / "src", resolution=8, labels=True,
                                     data_dir=tmp_path / "cache")
  source = tfds_local.load(builder, "train")
  assert builder.info.features["label"].names == ["cats", "dogs"]
  assert [source[i]["label"] for i in range(len(source))] == [0, 0, 0, 0, 1, 1]


def test_options_key_the_cache(tmp_path):
  save(tmp_path / "src" / "a.png", np.full((32, 32, 3), 200, np.uint8))
  small = image_folder.ImageFolder(source_dir=tmp_path / "src", resolution=4,
                                   data_dir=tmp_path / "cache")
  large = image_folder.ImageFolder(source_dir=tmp_path / "src", resolution=8, num_channels=1,
                                   data_dir=tmp_path / "cache")
  assert tfds_local.load(small, "train")[0]["image"].shape == (4, 4, 3)
  assert tfds_local.load(large, "train")[0]["image"].shape == (8, 8, 1)


def test_unreadable_image_names_the_file(tmp_path):
  save(tmp_path / "src" / "good.png", np.zeros((8, 8, 3), np.uint8))
  (tmp_path / "src" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
  builder = image_folder.ImageFolder(source_dir=tmp_path / "src", resolution=8,
                                     data_dir=tmp_path / "cache")
  with pytest.raises(UserError, match="broken.jpg"):
    tfds_local.prepare(builder)


def test_bad_folders(tmp_path):
  (tmp_path / "empty").mkdir()
  builder = image_folder.ImageFolder(source_dir=tmp_path / "empty", resolution=8,
                                     data_dir=tmp_path / "cache")
  with pytest.raises(UserError, match="no images"):
    tfds_local.prepare(builder)
  with pytest.raises(UserError, match="no sub-folders"):
    image_folder.ImageFolder(source_dir=tmp_path / "empty", resolution=8, labels=True,
                             data_dir=tmp_path / "cache")
  save(tmp_path / "loose" / "cls" / "a.png", np.zeros((8, 8, 3), np.uint8))
  save(tmp_path / "loose" / "b.png", np.zeros((8, 8, 3), np.uint8))
  builder = image_folder.ImageFolder(source_dir=tmp_path / "loose", resolution=8, labels=True,
                                     data_dir=tmp_path / "cache")
  with pytest.raises(UserError, match="b.png is not inside a class sub-folder"):
    tfds_local.prepare(builder)
  with pytest.raises(UserError, match="num_channels"):
    image_folder.ImageFolder(source_dir=tmp_path / "loose", resolution=8, num_channels=4)
