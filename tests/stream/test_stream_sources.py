"""Frame sources: video files, folders, cameras, and the generator latent walk."""
import cv2
import numpy as np
import pytest
import scipy.ndimage

from readingnotes_jax.errors import UserError
from readingnotes_jax.stream import sources


def write_video(path, frames_rgb, fps):
  height, width = frames_rgb[0].shape[:2]
  writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), fps, (width, height))
  assert writer.isOpened()
  for frame in frames_rgb:
    writer.write(frame[..., ::-1].copy())
  writer.release()


def test_video_file_frames_rate_and_rgb_order(tmp_path):
  frames = []
  for i in range(12):
    frame = np.zeros((48, 64, 3), np.uint8)
    frame[..., 0] = 200  # red in RGB
    frame[:, i * 4:i * 4 + 8, 1] = 255
    frames.append(frame)
  write_video(tmp_path / "clip.avi", frames, 15)
  source = sources.video_source(tmp_path / "clip.avi")
  assert source.name == "clip" and source.fps == pytest.approx(15)
  got = list(source.open())
  assert len(got) == 12
  for want, have in zip(frames, got):
    assert have.shape == (48, 64, 3) and have.dtype == np.uint8
    assert np.abs(have.astype(int) - want).mean() < 6
  assert len(list(source.open())) == 12  # open() starts over


def test_pets09_video_decodes(data_dir):
  source = sources.parse_source(f"pets={data_dir / 'mot15/PETS09-S2L1/vtest.avi'}")
  assert source.name == "pets"
  assert source.fps == pytest.approx(10)  # the AVI's own rate (MOT15's seqinfo says 7)
  count = 0
  for frame in source.open():
    assert frame.shape == (576, 768, 3)
    count += 1
  assert count == 795


def test_folder_of_images_in_name_order_and_corrupt_image(tmp_path):
  for name, value in (("b.png", 20), ("a.png", 10), ("c.jpg", 30)):
    cv2.imwrite(str(tmp_path / name), np.full((8, 8, 3), value, np.uint8))
  (tmp_path / "notes.txt").write_text("not an image")
  source = sources.parse_source(str(tmp_path))
  assert source.name == tmp_path.name and source.fps == sources.FOLDER_FPS
  assert [int(f.mean().round()) for f in source.open()] == [10, 20, 30]
  (tmp_path / "d.png").write_bytes(b"\x89PNG broken")
  frames = source.open()
  with pytest.raises(sources.SourceError, match="d.png"):
    list(frames)
  empty = tmp_path / "empty"
  empty.mkdir()
  with pytest.raises(UserError, match="no images"):
    sources.parse_source(str(empty))


def test_bad_specs_are_user_errors(tmp_path):
  with pytest.raises(UserError, match="no such file"):
    sources.parse_source(str(tmp_path / "missing.avi"))
  (tmp_path / "junk.avi").write_bytes(b"this is not a video")
  with pytest.raises(UserError, match="cannot read video"):
    sources.parse_source(f"x={tmp_path / 'junk.avi'}")
  with pytest.raises(UserError, match="cannot open camera 99"):
    sources.parse_source("cam=99")
  with pytest.raises(UserError, match="not allowed"):
    sources.check_name("../etc")


def test_latent_walk_is_the_official_gaussian_filtered_noise():
  latent_size, sigma, count = 6, 3.0, 40
  walk = sources.latent_walk(latent_size, sigma, seed=7)
  got = np.stack([next(walk) for _ in range(count)])
  radius = int(4.0 * sigma + 0.5)
  noise = np.random.default_rng(7).standard_normal((count + 2 * radius, latent_size))
  x = np.arange(-radius, radius + 1)
  taps = np.exp(-x**2 / (2 * sigma**2))
  taps /= taps.sum()
  want = scipy.ndimage.gaussian_filter1d(noise, sigma, axis=0, truncate=4.0)[radius:-radius]
  want /= np.sqrt(np.sum(taps**2))
  # Float32 against float64: 25-tap sums of N(0, 1) values, |got| < 2.4: ~ sqrt(25) eps32 x
  # 2.4 = 1.4e-6 (measured 9.7e-8); another seed or sigma changes values by O(1).
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
  # Smooth: neighbouring latents are much closer than independent draws.
  steps = np.linalg.norm(np.diff(got, axis=0), axis=1)
  assert steps.mean() < 0.25 * np.sqrt(2 * latent_size)


def test_images_to_uint8_rounds_saturates_zooms_and_greys_to_rgb():
  images = np.array([-1.2, -1.0, -0.5, 0.0, 0.3, 1.0, 1.5], np.float32).reshape(1, 1, 7, 1)
  got = sources.images_to_uint8(images, zoom=2)
  assert got.shape == (1, 2, 14, 3)
  # out_mul=127.5, out_add=127.5, round, saturate: by hand.
  want = [0, 0, 64, 128, 166, 255, 255]
  for c in range(3):
    np.testing.assert_array_equal(got[0, 0, ::2, c], want)
    np.testing.assert_array_equal(got[0, 1, 1::2, c], want)


def test_generator_source_draws_frames_along_the_walk():
  latent_size, res = 16, 4
  calls = []

  def generate(latents):
    calls.append(latents.shape)
    return np.tanh(latents.reshape(-1, res, res, 1))

  source = sources.generator_source("toy", generate, latent_size, fps=10, smoothing_sec=0.5,
                                    batch_size=4, display_size=20, seed=3)
  frames = source.open()
  got = [next(frames) for _ in range(6)]
  assert calls == [(4, latent_size), (4, latent_size)]
  walk = sources.latent_walk(latent_size, 5.0, seed=3)
  for frame in got:
    z = next(walk).reshape(res, res)
    grey = np.clip(np.rint(np.tanh(z) * 127.5 + 127.5), 0, 255)
    want = np.kron(grey, np.ones((5, 5)))  # zoom 20 // 4 = 5
    assert frame.shape == (20, 20, 3)
    for c in range(3):
      np.testing.assert_array_equal(frame[..., c], want)
