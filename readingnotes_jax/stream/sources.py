"""Frame sources for the live stream: video files, cameras, image folders, generators.

A source is a name, a native frame rate and an `open()` that returns a fresh
iterator of RGB uint8 frames (H, W, 3). The server calls `open()` and `next()`
on its one pipeline thread, never on the event loop. Problems found when a
source is set up raise `UserError`; problems while streaming raise
`SourceError` (or whatever the decoder raises), which the server reports to
its log and to the viewers.
"""
import dataclasses
import math
import pathlib
import re
from collections.abc import Callable, Iterator

import cv2
import numpy as np

from readingnotes_jax import predictors
from readingnotes_jax.errors import UserError

IMAGE_SUFFIXES = (".bmp", ".jpeg", ".jpg", ".png", ".tif", ".tiff", ".webp")
FOLDER_FPS = 10.0
DEFAULT_FPS = 30.0
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")

FrameIterator = Iterator[np.ndarray]


class SourceError(RuntimeError):
  """A source failed while streaming (a file vanished, a camera stopped, a corrupt image)."""


@dataclasses.dataclass(frozen=True)
class Source:
  """A named stream of RGB uint8 frames.

  Attributes:
    name: what viewers pick it by (letters, digits, `_.-`; never a path).
    fps: the native frame rate, or None when reading already waits for each
      frame (a camera).
    open: returns a new iterator over the frames, from the start.
  """
  name: str
  fps: float | None
  open: Callable[[], FrameIterator]


def check_name(name: str) -> str:
  """Returns `name` if viewers can pick it safely, else raises UserError."""
  if not _NAME.fullmatch(name):
    raise UserError(f"source or model name {name!r} is not allowed: use up to 64 letters, "
                    "digits, '_', '.' or '-', starting with a letter or digit")
  return name


def _rate(capture: cv2.VideoCapture) -> float | None:
  fps = capture.get(cv2.CAP_PROP_FPS)
  return float(fps) if math.isfinite(fps) and 0 < fps <= 1000 else None


def video_source(path: str | pathlib.Path, name: str | None = None) -> Source:
  """A video file in any container and codec OpenCV's FFmpeg reads (AVI/MS-MPEG4, MP4/H.264, ...)."""
  path = pathlib.Path(path)
  capture = cv2.VideoCapture(str(path))
  try:
    if not capture.isOpened() or not capture.read()[0]:
      raise UserError(f"cannot read video {str(path)!r}: OpenCV/FFmpeg does not decode it; "
                      "check the path or convert it, e.g. `ffmpeg -i IN -c:v libx264 OUT.mp4`")
    fps = _rate(capture)
  finally:
    capture.release()

  def frames() -> FrameIterator:
    capture = cv2.VideoCapture(str(path))
    if not capture.isOpened():
      raise SourceError(f"cannot open video {path.name}")
    try:
      while True:
        ok, bgr = capture.read()
        if not ok:
          return
        yield cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
    finally:
      capture.release()

  return Source(check_name(name or path.stem), fps or DEFAULT_FPS, frames)


def _open_camera(index: int) -> cv2.VideoCapture:
  """cv2.VideoCapture(index) with OpenCV's own warnings off (a missing camera wrote two lines
  to stderr: V4L2's and FFmpeg's); whether it opened is the caller's to check."""
  level = cv2.utils.logging.getLogLevel()
  cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_ERROR)
  try:
    return cv2.VideoCapture(index)
  finally:
    cv2.utils.logging.setLogLevel(level)


def camera_source(index: int, name: str | None = None) -> Source:
  """A camera by OpenCV device index (V4L2 on Linux); opened once here to check it exists."""
  capture = _open_camera(index)
  try:
    if not capture.isOpened():
      raise UserError(f"cannot open camera {index}: no such device or it is busy; "
                      "list devices with `v4l2-ctl --list-devices`")
  finally:
    capture.release()

  def frames() -> FrameIterator:
    capture = _open_camera(index)
    if not capture.isOpened():
      raise SourceError(f"cannot open camera {index}")
    try:
      while True:
        ok, bgr = capture.read()
        if not ok:
          raise SourceError(f"camera {index} stopped delivering frames")
        yield cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
    finally:
      capture.release()

  return Source(check_name(name or f"camera{index}"), None, frames)


def folder_source(path: str | pathlib.Path, name: str | None = None,
                  fps: float = FOLDER_FPS) -> Source:
  """The images of a folder in name order, as frames at `fps` (listed anew at each open)."""
  path = pathlib.Path(path)

  def images() -> list[pathlib.Path]:
    return sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)

  if not images():
    raise UserError(f"folder {str(path)!r} has no images ({', '.join(IMAGE_SUFFIXES)}): "
                    "point --source at a folder of images")

  def frames() -> FrameIterator:
    for file in images():
      bgr = cv2.imread(str(file), cv2.IMREAD_COLOR)
      if bgr is None:
        raise SourceError(f"cannot read image {file.name}")
      yield cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)

  return Source(check_name(name or path.name), fps, frames)


def parse_source(spec: str) -> Source:
  """Builds a source from a command-line spec `[NAME=]PATH_OR_CAMERA_INDEX`.

  A bare integer is a camera index, a folder is a folder of images, anything
  else must be a video file. The name defaults to the file or folder name.
  """
  name, sep, target = spec.partition("=")
  if not sep or not _NAME.fullmatch(name):
    name, target = None, spec
  if not target:
    raise UserError(f"--source {spec!r}: no path or camera index; give [NAME=]PATH or "
                    "[NAME=]CAMERA_INDEX")
  if target.isdigit():
    return camera_source(int(target), name)
  path = pathlib.Path(target).expanduser()
  if path.is_dir():
    return folder_source(path, name)
  if not path.is_file():
    raise UserError(f"--source {spec!r}: no such file or folder; give a video file, "
                    "a folder of images or a camera index")
  return video_source(path, name)


def gaussian_taps(sigma: float, truncate: float = 4.0) -> np.ndarray:
  """Normalised Gaussian filter taps, radius `int(truncate * sigma + 0.5)` (scipy.ndimage's)."""
  radius = int(truncate * sigma + 0.5)
  x = np.arange(-radius, radius + 1, dtype=np.float64)
  taps = np.exp(-0.5 * (x / sigma) ** 2)
  return taps / taps.sum()


def latent_walk(latent_size: int, sigma_frames: float, seed: int = 0) -> FrameIterator:
  """An endless smooth walk through the latent space, one latent per frame.

  Matches util_scripts.py `generate_interpolation_video` in
  tkarras/progressive_growing_of_gans: white Gaussian noise, one vector per
  frame, Gaussian-filtered along time with sigma = smoothing_sec * fps frames,
  then scaled to unit RMS. Streaming version: frame t is the filtered value
  at noise index t + radius (no wrap-around), and the scale is the exact
  expected RMS 1 / sqrt(sum(taps**2)) instead of the measured one of a
  finished clip.
  """
  taps = gaussian_taps(sigma_frames)
  scale = 1.0 / math.sqrt(float(np.sum(taps**2)))
  rng = np.random.default_rng(seed)
  window = rng.standard_normal((taps.size, latent_size))
  while True:
    yield (taps @ window * scale).astype(np.float32)
    window[:-1] = window[1:]
    window[-1] = rng.standard_normal(latent_size)


def images_to_uint8(images: np.ndarray, zoom: int = 1) -> np.ndarray:
  """Generator output in [-1, 1], NHWC with 1 or 3 channels, to RGB uint8 frames.

  Matches `Gs.run(out_mul=127.5, out_add=127.5, out_dtype=np.uint8)` (round,
  then saturate) and the grayscale-to-RGB and nearest-neighbour `image_zoom`
  of util_scripts.py in tkarras/progressive_growing_of_gans.
  """
  images = np.asarray(images, np.float32)
  if images.ndim != 4 or images.shape[-1] not in (1, 3):
    raise SourceError(f"generator returned shape {images.shape}; expected (N, H, W, 1 or 3)")
  frames = np.clip(np.rint(images * 127.5 + 127.5), 0, 255).astype(np.uint8)
  if zoom > 1:
    frames = frames.repeat(zoom, axis=1).repeat(zoom, axis=2)
  if frames.shape[-1] == 1:
    frames = frames.repeat(3, axis=-1)
  return frames


def generator_source(name: str, generate: Callable[[np.ndarray], np.ndarray], latent_size: int,
                     *, fps: float = DEFAULT_FPS, smoothing_sec: float = 1.0,
                     batch_size: int = 8, display_size: int = 256, seed: int = 0) -> Source:
  """Frames that a generator draws along `latent_walk`, `batch_size` latents per call.

  Args:
    generate: latents (N, latent_size) float32 -> images (N, H, W, C) in [-1, 1].
    display_size: small images are enlarged by the integer nearest-neighbour
      zoom that brings them closest to this size without exceeding it.
  """

  def frames() -> FrameIterator:
    walk = latent_walk(latent_size, smoothing_sec * fps, seed)
    while True:
      latents = np.stack([next(walk) for _ in range(batch_size)])
      images = np.asarray(generate(latents))
      zoom = max(1, display_size // max(images.shape[1:3]))
      yield from images_to_uint8(images, zoom)

  return Source(check_name(name), fps, frames)


def progan_walk_source(checkpoint: str, name: str = "progan") -> Source:
  """The ProGAN EMA generator (`Gs`) of a training workdir walking its latent space."""
  generate, latent_size = predictors.load("generator", "progan", checkpoint)
  return generator_source(name, generate, latent_size)


GENERATORS: dict[str, Callable[[str], Source]] = {"progan": progan_walk_source}
