"""TensorBoard event files written without TensorFlow, for watching a run live.

`workdir/metrics.jsonl` (loop.MetricsWriter) stays the record of a run. This
writer mirrors scalars and images into an event file so a run can be watched
while it trains:

  tensorboard --logdir WORKDIR/tensorboard

(`pip install tensorboard` where you view; this package does not need it.)
The few protobuf fields an event needs (tensorflow/core/util/event.proto,
summary.proto) are encoded here and framed as TFRecords (length, masked CRC-32C
of it, payload, masked CRC-32C of that): tensorboardX, which did this before,
imports torch when torch is installed (3 s at every start).
"""
import io
import pathlib
import socket
import struct
import time
from typing import Any, Mapping

import numpy as np
from PIL import Image


class TensorBoardWriter:
  """Writes scalars and images to one new event file in `logdir`.

  Each call appends one event at once (no thread, no queue). The file is
  flushed when the last flush is `flush_secs` old, on `flush()` and on
  `close()`; call `flush()` before a long pause (an evaluation) to show the
  latest points. Not thread-safe. Usable as a context manager.

  `resume_step`: when a run resumes from its checkpoint at this step, the file
  starts with a SessionLog START at `resume_step + 1`, which tells TensorBoard
  to drop the points the interrupted run logged after the checkpoint, as
  MetricsWriter drops its rows (its default fast loader does so per series,
  once the resumed run logs that series again).
  """

  def __init__(self, logdir: str | pathlib.Path, flush_secs: float = 2.0,
               resume_step: int | None = None):
    self.logdir = pathlib.Path(logdir)
    self.logdir.mkdir(parents=True, exist_ok=True)
    # TensorBoard reads a run's event files in name order: time, then host.
    name = f"events.out.tfevents.{int(time.time()):010d}.{socket.gethostname()}"
    self.path = self.logdir / name
    n = 0
    while self.path.exists():
      n += 1
      self.path = self.logdir / f"{name}.{n}"
    self._flush_secs = flush_secs
    self._last_flush = time.monotonic()
    self._record = open(self.path, "wb")  # pylint: disable=consider-using-with
    self._write_event(_string(3, b"brain.Event:2"))  # Event.file_version
    if resume_step is not None:  # Event.session_log {status: START}
      self._write_event(_varint_field(2, int(resume_step) + 1) +
                        _message(7, _varint_field(1, _SESSION_START)))
    self.flush()

  def scalars(self, step: int, values: Mapping[str, Any]) -> None:
    """Writes the numbers in `values` at `step`, as one event.

    Nested dicts become tags joined with '/' ({"loss": {"g": 1}} -> "loss/g").
    Ints, floats (NaN and inf kept) and 0-d numeric arrays are written;
    bools, strings, None, lists and arrays with elements are skipped.
    """
    flat: dict[str, float] = {}
    _flatten("", values, flat)
    if flat:  # Summary.value: {tag, simple_value (float32; beyond its range: inf)} each.
      with np.errstate(over="ignore"):
        values = np.array(list(flat.values()), "<f4")
      self._write_summary(step, b"".join(
          _message(1, _string(1, tag.encode()) + _tag(2, 5) + v.tobytes())
          for tag, v in zip(flat, values)))

  def image(self, step: int, name: str, array: Any) -> None:
    """Writes one image, HW or HWC with 1 or 3 channels, as a PNG.

    uint8 is written as is; floats are read as [0, 1] (clipped, NaN as 0) and
    rounded to uint8.
    """
    a = np.asarray(array)
    if a.ndim == 2:
      a = a[..., None]
    if a.ndim != 3 or a.shape[-1] not in (1, 3):
      raise ValueError(f"image {name!r}: want shape HW, HW1 or HW3, got {a.shape}")
    if a.dtype.kind == "f" or "float" in a.dtype.name:
      a = np.clip(np.nan_to_num(a.astype(np.float32)), 0.0, 1.0)
      a = np.round(a * 255.0).astype(np.uint8)
    elif a.dtype != np.uint8:
      raise ValueError(f"image {name!r}: want uint8 or float, got {a.dtype}")
    buf = io.BytesIO()
    Image.fromarray(a[..., 0] if a.shape[-1] == 1 else a).save(buf, format="PNG")
    self._write_image(step, name, buf.getvalue(), *a.shape)

  def image_from_png(self, step: int, name: str, path: str | pathlib.Path) -> None:
    """Writes the PNG file at `path` (e.g. one in workdir/figures) unchanged."""
    data = pathlib.Path(path).read_bytes()
    with Image.open(io.BytesIO(data)) as img:
      if img.format != "PNG":
        raise ValueError(f"{path} is not a PNG (it is {img.format})")
      width, height = img.size
      channels = 3 if img.mode == "P" else len(img.getbands())
    self._write_image(step, name, data, height, width, channels)

  def flush(self) -> None:
    """Makes every event written so far visible to TensorBoard."""
    if self._record is not None:
      self._record.flush()
      self._last_flush = time.monotonic()

  def close(self) -> None:
    """Flushes and closes the file; later calls to close() do nothing."""
    if self._record is not None:
      self.flush()
      self._record.close()
      self._record = None

  def __enter__(self) -> "TensorBoardWriter":
    return self

  def __exit__(self, *exc_info: Any) -> None:
    self.close()

  def _write_image(self, step: int, name: str, png: bytes, height: int,
                   width: int, channels: int) -> None:
    image = (_varint_field(1, height) + _varint_field(2, width) + _varint_field(3, channels) +
             _string(4, png))  # Summary.Image
    self._write_summary(step, _message(1, _string(1, name.encode()) + _message(4, image)))

  def _write_summary(self, step: int, values: bytes) -> None:
    """An Event {step, summary: Summary{values}}; flushed when the last flush is old."""
    self._write_event(_varint_field(2, int(step)) + _message(5, values))
    if time.monotonic() - self._last_flush >= self._flush_secs:
      self.flush()

  def _write_event(self, fields: bytes) -> None:
    """One TFRecord holding an Event: wall_time (field 1, double) then `fields`."""
    if self._record is None:
      raise ValueError(f"TensorBoardWriter for {self.logdir} is closed")
    event = _tag(1, 1) + struct.pack("<d", time.time()) + fields
    header = struct.pack("<Q", len(event))
    self._record.write(header + struct.pack("<I", _masked_crc(header)) + event +
                       struct.pack("<I", _masked_crc(event)))


_SESSION_START = 1  # SessionLog.SessionStatus.START


def _varint(value: int) -> bytes:
  value &= (1 << 64) - 1  # negative int64s as ten bytes, as protobuf writes them.
  out = bytearray()
  while True:
    byte, value = value & 0x7F, value >> 7
    out.append(byte | (0x80 if value else 0))
    if not value:
      return bytes(out)


def _tag(field: int, wire_type: int) -> bytes:
  return _varint(field << 3 | wire_type)


def _varint_field(field: int, value: int) -> bytes:
  return _tag(field, 0) + _varint(value)


def _string(field: int, data: bytes) -> bytes:
  return _tag(field, 2) + _varint(len(data)) + data


_message = _string  # an embedded message is length-delimited like bytes.


def _crc32c_table() -> tuple[int, ...]:
  table = []
  for byte in range(256):
    crc = byte
    for _ in range(8):
      crc = (crc >> 1) ^ 0x82F63B78 if crc & 1 else crc >> 1
    table.append(crc)
  return tuple(table)


_CRC32C = _crc32c_table()


def _masked_crc(data: bytes) -> int:
  """TFRecord's masked CRC-32C (Castagnoli polynomial, reflected) of `data`."""
  crc, table = 0xFFFFFFFF, _CRC32C
  for byte in data:
    crc = table[(crc ^ byte) & 0xFF] ^ (crc >> 8)
  crc ^= 0xFFFFFFFF
  return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def _flatten(prefix: str, values: Mapping[str, Any], out: dict[str, float]) -> None:
  for key, value in values.items():
    tag = f"{prefix}/{key}" if prefix else str(key)
    if isinstance(value, Mapping):
      _flatten(tag, value, out)
    else:
      number = _number(value)
      if number is not None:
        out[tag] = number


def _number(value: Any) -> float | None:
  """`value` as a float if it is a real, non-bool number (0-d arrays too)."""
  if isinstance(value, (bool, np.bool_)):
    return None
  if isinstance(value, (int, float, np.integer, np.floating)):
    return float(value)
  dtype = getattr(value, "dtype", None)
  if dtype is not None and getattr(value, "shape", None) == ():
    dtype = np.dtype(dtype)
    if dtype.kind in "iuf" or "float" in dtype.name:  # ml_dtypes: bfloat16, float8
      return float(value)
  return None
