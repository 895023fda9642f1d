"""Helpers for the stream tests: a real server on a loopback port, synthetic sources, raw sockets."""
import asyncio
import base64
import contextlib
import hashlib
import json
import os
import socket
import struct
import threading
import time

import cv2
import numpy as np
import pytest
from websockets.sync.client import connect

from readingnotes_jax.stream.server import StreamServer
from readingnotes_jax.stream.sources import Source


@contextlib.contextmanager
def running(*args, port: int = 0, **kwargs):
  """Runs StreamServer(*args, port=port, **kwargs) on its own event loop thread; yields it."""
  server = StreamServer(*args, port=port, **kwargs)
  loop = asyncio.new_event_loop()
  thread = threading.Thread(target=loop.run_forever, daemon=True)
  thread.start()
  try:
    asyncio.run_coroutine_threadsafe(server.start(), loop).result(10)
    yield server
  finally:
    asyncio.run_coroutine_threadsafe(server.stop(), loop).result(10)
    loop.call_soon_threadsafe(loop.stop)
    thread.join(10)
    loop.close()


def pattern(index: int, height: int = 96, width: int = 128, colour=(40, 160, 220)) -> np.ndarray:
  """A smooth test frame (compresses well) with a bright square that moves with `index`."""
  y, x = np.mgrid[:height, :width]
  frame = np.empty((height, width, 3), np.uint8)
  for c in range(3):
    frame[..., c] = (colour[c] * (0.5 + 0.5 * x / width)).astype(np.uint8)
  left = (index * 4) % (width - 16)
  frame[8:24, left:left + 16] = 255
  return frame


def synthetic(name: str = "synthetic", fps: float = 50.0, count: int | None = None,
              colour=(40, 160, 220), height: int = 96, width: int = 128,
              fail_after: int | None = None) -> Source:
  """A source of `pattern` frames: endless, or `count` long, or failing after `fail_after`."""

  def frames():
    i = 0
    while count is None or i < count:
      if fail_after is not None and i == fail_after:
        raise OSError("disk unplugged")
      yield pattern(i, height, width, colour)
      i += 1

  return Source(name, fps, frames)


def noise_source(name: str = "noise", fps: float = 50.0, height: int = 480,
                 width: int = 640) -> Source:
  """Large incompressible frames (~200 KB as JPEG), so that any backlog would show in memory."""
  rng = np.random.default_rng(0)
  images = [rng.integers(0, 256, (height, width, 3), dtype=np.uint8) for _ in range(4)]

  def frames():
    i = 0
    while True:
      yield images[i % len(images)]
      i += 1

  return Source(name, fps, frames)


def raw_websocket(port: int, path: str = "/ws", rcvbuf: int | None = None) -> socket.socket:
  """A WebSocket client written from RFC 6455 on a plain socket: the handshake, nothing more.

  It lets a test stop reading (a slow client) or vanish without a close frame.
  """
  sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
  if rcvbuf is not None:
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
  sock.connect(("127.0.0.1", port))
  key = base64.b64encode(os.urandom(16)).decode()
  sock.sendall((f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
                f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                "Sec-WebSocket-Version: 13\r\n\r\n").encode())
  response = b""
  while b"\r\n\r\n" not in response:
    response += sock.recv(1)
  assert response.startswith(b"HTTP/1.1 101"), response
  accept = base64.b64encode(hashlib.sha1(
      (key + "258EAFA5-E914-47DA-95CA-C5AB0DC85B11").encode()).digest()).decode()
  assert f"Sec-WebSocket-Accept: {accept}".encode() in response
  return sock


def abort(sock: socket.socket) -> None:
  """Closes with a TCP reset and no WebSocket close frame (a crashed client)."""
  sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
  sock.close()


def wait_for(condition, timeout: float = 5.0, what: str = "condition") -> None:
  deadline = time.monotonic() + timeout
  while not condition():
    if time.monotonic() > deadline:
      pytest.fail(f"timed out waiting for {what}")
    time.sleep(0.02)


def counted(source: Source) -> tuple[Source, list[float]]:
  """`source`, and the list of the times it was opened (appended at each open)."""
  opened = []

  def open_frames():
    opened.append(time.monotonic())
    return source.open()

  return Source(source.name, source.fps, open_frames), opened


def ws_connect(server, query: str = "", **kwargs):
  """A client that keeps reading into its queue while the test does not read (websockets'
  default stops at 16 messages, and then its close waits close_timeout, 10 s, for the reply)."""
  return connect(f"ws://127.0.0.1:{server.port}/ws{query}", compression=None, max_size=None,
                 max_queue=None, open_timeout=5, **kwargs)


def strict_json(text: str):
  """json.loads without Python's NaN and Infinity extensions (what a browser's JSON.parse takes)."""

  def refuse(name):
    raise ValueError(f"{name} is not JSON")

  return json.loads(text, parse_constant=refuse)


def parse_stamp(message: bytes) -> dict:
  """Reads the stamp the page reads: SOI, then a COM segment (FF FE, big-endian length)."""
  assert message[:2] == b"\xff\xd8", "not a JPEG"
  assert message[2:4] == b"\xff\xfe", "first segment is not a comment"
  (length,) = struct.unpack(">H", message[4:6])
  return json.loads(message[6:4 + length].decode("ascii"))


def decode(message: bytes) -> np.ndarray:
  bgr = cv2.imdecode(np.frombuffer(message, np.uint8), cv2.IMREAD_COLOR)
  assert bgr is not None, "JPEG did not decode"
  return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def receive(ws, frames: int, timeout: float = 5.0):
  """Reads until `frames` frames arrived; returns (frames, control messages)."""
  got, control = [], []
  deadline = time.monotonic() + timeout
  while len(got) < frames:
    message = ws.recv(timeout=max(0.01, deadline - time.monotonic()))
    if isinstance(message, str) and message.startswith("{"):
      control.append(strict_json(message))
    else:
      got.append(message)
  return got, control


def control_until(ws, kind: str, timeout: float = 5.0) -> dict:
  deadline = time.monotonic() + timeout
  while True:
    message = ws.recv(timeout=max(0.01, deadline - time.monotonic()))
    if isinstance(message, str):
      parsed = strict_json(message)
      if parsed["type"] == kind:
        return parsed


def http_exchange(port: int, request: bytes, timeout: float = 5.0) -> tuple[bytes, bytes]:
  """Sends raw HTTP bytes and reads until the server closes: (status line and headers, body).

  Raw, because http.client never reads the body of a response to HEAD.
  """
  with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
    sock.sendall(request)
    response = b""
    while chunk := sock.recv(65536):
      response += chunk
  head, _, body = response.partition(b"\r\n\r\n")
  return head, body


def upgrade_request(port: int, path: str = "/ws", headers: tuple[str, ...] = ()) -> bytes:
  """A WebSocket handshake request (RFC 6455 section 4.1) with extra header lines."""
  key = base64.b64encode(os.urandom(16)).decode()
  lines = [f"GET {path} HTTP/1.1", f"Host: 127.0.0.1:{port}", "Upgrade: websocket",
           "Connection: Upgrade", f"Sec-WebSocket-Key: {key}", "Sec-WebSocket-Version: 13",
           *headers]
  return ("\r\n".join(lines) + "\r\n\r\n").encode()


COLOURS = {"red": (250, 0, 0), "green": (0, 250, 0), "blue": (0, 0, 250)}


def painter(name: str = "painter") -> "Processor":
  """A processor that takes text: it paints each frame the colour its sentence names (one of
  COLOURS); a sentence without such a word is refused, naming the words it read."""
  from readingnotes_jax.errors import UserError  # pylint: disable=import-outside-toplevel
  from readingnotes_jax.stream.processors import Processor, Sentence  # pylint: disable=import-outside-toplevel

  def check(text):
    if not set(text.split()) & set(COLOURS):
      raise UserError(f"no colour in {text.split()}: use one of {sorted(COLOURS)}")

  sentence = Sentence("a red square", check)

  def paint(frame):
    colour = next(COLOURS[w] for w in sentence.text.split() if w in COLOURS)
    return np.broadcast_to(np.array(colour, np.uint8), frame.shape).copy()

  return Processor(name, paint, sentence)
