"""Helpers for the stream tests: a real server on a loopback port, synthetic sources, raw sockets."""
import asyncio
import base64
import contextlib
import hashlib
import os
import socket
import struct
import threading
import time

import numpy as np
import pytest

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
