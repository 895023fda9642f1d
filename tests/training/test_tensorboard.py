"""TensorBoardWriter: event files read back with a TFRecord parser written here, and
tensorboardX's CRC-32C and protobuf classes (compiled from TensorFlow's event.proto)."""
import io
import math
import os
import pathlib
import struct

import numpy as np
from PIL import Image
import pytest

from readingnotes_jax.training.tensorboard import TensorBoardWriter


def _crc32c(data: bytes) -> int:
  """CRC-32C by tensorboardX's own code (a table written out, not generated as ours is)."""
  from tensorboardX.crc32c import crc32c
  return crc32c(data)


def _masked(crc: int) -> int:
  return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def _read_events(path: pathlib.Path) -> list:
  """Parses TFRecord framing, checking both CRCs, and decodes each Event."""
  from tensorboardX.proto import event_pb2
  data = path.read_bytes()
  events, i = [], 0
  while i < len(data):
    header = data[i:i + 8]
    (length,) = struct.unpack("<Q", header)
    (header_crc,) = struct.unpack("<I", data[i + 8:i + 12])
    assert header_crc == _masked(_crc32c(header))
    payload = data[i + 12:i + 12 + length]
    assert len(payload) == length
    (payload_crc,) = struct.unpack("<I", data[i + 12 + length:i + 16 + length])
    assert payload_crc == _masked(_crc32c(payload))
    events.append(event_pb2.Event.FromString(payload))
    i += 16 + length
  assert i == len(data)
  return events


def _event_file(logdir: pathlib.Path) -> pathlib.Path:
  (path,) = logdir.iterdir()
  assert "tfevents" in path.name
  return path


def test_crc32c_matches_the_standard_check_value():
  assert _crc32c(b"123456789") == 0xE3069283


def test_scalars_and_images_read_back(tmp_path):
  rgb = np.random.default_rng(0).integers(0, 256, (5, 7, 3), dtype=np.uint8)
  gray = np.linspace(0.0, 1.0, 24, dtype=np.float32).reshape(4, 6, 1)
  logdir = tmp_path / "tensorboard"
  with TensorBoardWriter(logdir) as writer:
    writer.scalars(1, {
        "loss": 0.5, "lr": np.float32(1e-3), "images_seen": 7, "zero_d": np.array(3.5),
        "nested": {"g": {"adv": 2.0}, "d": -1.0}, "nan": float("nan"), "inf": -math.inf,
        "name": "x", "hist": [1, 2], "arr": np.zeros(3), "flag": True, "none": None})
    writer.scalars(np.int64(2), {"loss": 0.25, "huge": 1e300})  # float32 field: inf.
    writer.image(2, "samples", rgb)
    writer.image(3, "gray", gray)
    assert writer.path.parent == logdir
  events = _read_events(_event_file(logdir))

  assert events[0].file_version == "brain.Event:2"
  assert [e.step for e in events[1:]] == [1, 2, 2, 3]
  assert all(e.wall_time > 0 for e in events)
  first = {v.tag: v.simple_value for v in events[1].summary.value}
  assert list(first) == ["loss", "lr", "images_seen", "zero_d", "nested/g/adv", "nested/d",
                         "nan", "inf"]
  assert first["loss"] == 0.5 and first["images_seen"] == 7.0 and first["zero_d"] == 3.5
  assert first["lr"] == np.float32(1e-3)
  assert first["nested/g/adv"] == 2.0 and first["nested/d"] == -1.0
  assert math.isnan(first["nan"]) and first["inf"] == -math.inf
  assert [(v.tag, v.simple_value) for v in events[2].summary.value] == [("loss", 0.25),
                                                                      ("huge", math.inf)]

  for event, name, want in [(events[3], "samples", rgb),
                            (events[4], "gray", np.round(gray[..., 0] * 255).astype(np.uint8))]:
    (value,) = event.summary.value
    assert value.tag == name
    img = value.image
    assert (img.height, img.width, img.colorspace) == (want.shape[0], want.shape[1],
                                                       1 if want.ndim == 2 else 3)
    assert img.encoded_image_string.startswith(b"\x89PNG\r\n\x1a\n")
    decoded = np.asarray(Image.open(io.BytesIO(img.encoded_image_string)))
    np.testing.assert_array_equal(decoded, want)


def test_image_from_png_writes_the_file_unchanged(tmp_path):
  png = tmp_path / "figures" / "samples.png"
  png.parent.mkdir()
  rgba = np.random.default_rng(1).integers(0, 256, (3, 4, 4), dtype=np.uint8)
  Image.fromarray(rgba).save(png)
  with TensorBoardWriter(tmp_path / "tensorboard") as writer:
    writer.image_from_png(10, "figures/samples", png)
  (value,) = _read_events(_event_file(tmp_path / "tensorboard"))[1].summary.value
  assert value.tag == "figures/samples"
  assert (value.image.height, value.image.width, value.image.colorspace) == (3, 4, 4)
  assert value.image.encoded_image_string == png.read_bytes()


def test_writes_nothing_outside_its_folder(tmp_path, monkeypatch):
  for name in ("cwd", "home"):
    (tmp_path / name).mkdir()
  monkeypatch.chdir(tmp_path / "cwd")
  monkeypatch.setenv("HOME", str(tmp_path / "home"))
  logdir = tmp_path / "work" / "tensorboard"
  with TensorBoardWriter(logdir) as writer:
    writer.scalars(1, {"loss": 1.0})
    writer.image(1, "x", np.zeros((2, 2, 3), np.uint8))
  with TensorBoardWriter(logdir) as writer:  # A resume, likely within the same second.
    writer.scalars(2, {"loss": 0.5})

  written = [pathlib.Path(root) / f for root, _, files in os.walk(tmp_path) for f in files]
  assert len(written) == 2
  assert all(path.parent == logdir for path in written)
  assert [len(_read_events(path)) for path in sorted(written)] == [3, 2]


def test_resume_step_tells_tensorboard_to_drop_later_points(tmp_path):
  from tensorboardX.proto import event_pb2
  with TensorBoardWriter(tmp_path, resume_step=100) as writer:
    writer.scalars(101, {"loss": 1.0})
  events = _read_events(_event_file(tmp_path))
  assert events[1].step == 101
  assert events[1].session_log.status == event_pb2.SessionLog.START
  assert events[2].step == 101 and events[2].summary.value[0].tag == "loss"


def test_flush_makes_points_visible_before_close(tmp_path):
  writer = TensorBoardWriter(tmp_path, flush_secs=1e9)
  writer.scalars(1, {"loss": 1.0})
  path = _event_file(tmp_path)
  assert len(_read_events(path)) == 1  # Only the header: the point is still buffered.
  writer.flush()
  assert len(_read_events(path)) == 2
  writer.close()

  eager = TensorBoardWriter(tmp_path / "eager", flush_secs=0.0)
  eager.scalars(1, {"loss": 1.0})
  assert len(_read_events(_event_file(tmp_path / "eager"))) == 2
  eager.close()


def test_bad_input_and_closed_writer_raise(tmp_path):
  writer = TensorBoardWriter(tmp_path)
  with pytest.raises(ValueError, match="shape"):
    writer.image(0, "x", np.zeros((2, 2, 2), np.uint8))
  with pytest.raises(ValueError, match="int32"):
    writer.image(0, "x", np.zeros((2, 2, 3), np.int32))
  writer.close()
  writer.close()
  with pytest.raises(ValueError, match="closed"):
    writer.scalars(1, {"loss": 1.0})
