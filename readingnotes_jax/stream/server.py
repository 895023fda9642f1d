"""Live frames to the browser over WebSocket: one pipeline, many viewers.

The better way the reading notes' winsock demo asked for (base64 JPEG text
over a hand-written handshake): RFC 6455 from the `websockets` library, binary
JPEG messages, and one capture -> model -> encode loop shared by every viewer.

- `/` serves the page (static/), `/ws` the frames. Each frame is one binary
  message holding one JPEG whose first segment is a JPEG comment (COM, 0xFFFE)
  with `{"seq": N, "t": capture time in ms since the epoch}`: still a valid
  JPEG for any decoder, and the page reads the stamp to show latency.
  `/ws?format=base64` sends the same JPEG as base64 text instead (the seed's
  format); control messages are JSON text objects in both modes (`{` is not in
  the base64 alphabet, so a client tells them apart by the first character).
- The pipeline reads, processes and encodes on one worker thread; the event
  loop only hands frames out. It paces to the source's rate (or `fps`),
  pauses while nobody watches, and stops with a message when a source ends or
  fails.
- Each viewer has a latest-frame slot: a new frame overwrites an unsent one
  (counted as dropped for that viewer), so a slow viewer skips frames and
  never builds a backlog or slows the others. While its socket buffers are
  full its sender waits in `drain()`; the kernel send buffer is capped at
  SEND_BUFFER_BYTES so a slow link queues at most a few frames.
- Viewers send small JSON control messages: `{"type": "select", "source": S,
  "model": M}` (names the server offered in its `hello`; never paths) and
  `{"type": "ping", "t": T}` (answered with `pong` for clock-offset
  estimates). Bad ones get `{"type": "error"}`; messages over
  MAX_MESSAGE_BYTES close that connection with code 1009.
"""
import asyncio
import base64
import concurrent.futures
import dataclasses
import email.utils
import errno
import hmac
import json
import logging
import pathlib
import signal
import socket
import struct
import time
from collections.abc import Sequence
from typing import Any
from urllib.parse import parse_qs, urlsplit

import cv2
import numpy as np
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from readingnotes_jax.errors import UserError
from readingnotes_jax.stream import processors as processors_lib
from readingnotes_jax.stream.sources import Source

logger = logging.getLogger("readingnotes_jax.stream")

MAX_MESSAGE_BYTES = 4096
SEND_BUFFER_BYTES = 256 * 1024
STATS_INTERVAL_S = 1.0
CLOSE_TIMEOUT_S = 2.0
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")
WILDCARD_HOSTS = ("", "0.0.0.0", "::")

_STATIC_DIR = pathlib.Path(__file__).parent / "static"
_STATIC_FILES = {
    "/": ("index.html", "text/html; charset=utf-8"),
    "/app.js": ("app.js", "text/javascript; charset=utf-8"),
    "/style.css": ("style.css", "text/css; charset=utf-8"),
}
_SECURITY_HEADERS = (
    ("Content-Security-Policy",
     "default-src 'self'; img-src 'self' blob: data:; connect-src 'self'; frame-ancestors 'none'"),
    ("X-Content-Type-Options", "nosniff"),
    ("Referrer-Policy", "no-referrer"),
    ("Cache-Control", "no-cache"),
)


def stamp_jpeg(jpeg: bytes | memoryview, seq: int, stamp_ms: float) -> bytes:
  """Inserts a COM segment with `{"seq", "t"}` right after the JPEG's SOI marker."""
  if bytes(jpeg[:2]) != b"\xff\xd8":
    raise ValueError("not a JPEG: missing SOI marker")
  payload = json.dumps({"seq": seq, "t": round(stamp_ms, 3)}, separators=(",", ":")).encode()
  return b"".join((b"\xff\xd8\xff\xfe", struct.pack(">H", len(payload) + 2), payload, jpeg[2:]))


def read_stamp(data: bytes) -> dict[str, Any] | None:
  """The `{"seq", "t"}` stamp of a frame made by `stamp_jpeg`, or None."""
  if data[:4] != b"\xff\xd8\xff\xfe":
    return None
  (length,) = struct.unpack(">H", data[4:6])
  try:
    return json.loads(data[6:4 + length])
  except ValueError:
    return None


@dataclasses.dataclass(frozen=True)
class Frame:
  """One encoded frame, shared by all viewers: stamped JPEG bytes and, when a viewer
  asked for text, their base64."""
  jpeg: bytes
  base64: bytes | None


class _ModelError(Exception):
  """The processor failed on a frame (the source is fine)."""


class _Viewer:
  """One connected client: a latest-frame slot, a small control queue and counters."""

  def __init__(self, connection: ServerConnection, text_frames: bool):
    self.connection = connection
    self.text_frames = text_frames
    self.slot: Frame | None = None
    self.control: list[str] = []
    self.wake = asyncio.Event()
    self.sent = 0
    self.dropped = 0

  def offer(self, frame: Frame) -> None:
    if self.slot is not None:
      self.dropped += 1
    self.slot = frame
    self.wake.set()

  def tell(self, message: dict[str, Any]) -> None:
    if len(self.control) < 32:  # a client that never reads gets no unbounded backlog
      self.control.append(json.dumps(message))
    self.wake.set()


class StreamServer:
  """Serves the page and a live frame stream from named sources through a named processor.

  Args:
    sources: the sources viewers may pick from; the first one starts.
    processors: the models viewers may pick from (`none` is always offered);
      the first one given starts.
    host, port: where to listen; port 0 picks a free port (see `.port`).
    fps: frame rate for every source; None uses each source's own rate.
    loop: restart a source that ends.
    quality: JPEG quality, 1-100.
    token: if set, `/ws` requires `?token=TOKEN` (else 403).
    allowed_origins: extra Origin values accepted on `/ws` besides the page's
      own loopback origins (requests without Origin, from non-browser
      clients, are accepted).
  """

  def __init__(self, sources: Sequence[Source], processors: Sequence[processors_lib.Processor] = (),
               *, host: str = "127.0.0.1", port: int = 8765, fps: float | None = None,
               loop: bool = False, quality: int = 80, token: str | None = None,
               allowed_origins: Sequence[str] = ()):
    if not sources:
      raise UserError("no source to stream: give --source (a video, folder or camera index) "
                      "or a generator model such as --model progan --checkpoint DIR")
    if fps is not None and not 0 < fps <= 1000:
      raise UserError(f"--fps {fps} is out of range: use a rate in (0, 1000]")
    if not 1 <= quality <= 100:
      raise UserError(f"--quality {quality} is out of range: use 1-100")
    if token is not None and not token:
      raise UserError("--token is empty: give a non-empty token or leave the flag out")
    self._sources = {s.name: s for s in sources}
    if len(self._sources) != len(sources):
      raise UserError("two sources have the same name: name them with --source NAME=PATH")
    self._processors = {p.name: p for p in processors}
    self._processors.setdefault("none", processors_lib.load("none"))
    self._host, self._port, self._fps, self._loop = host, port, fps, loop
    self._quality, self._token = quality, token
    self._extra_origins = tuple(o.rstrip("/") for o in allowed_origins)
    self._origins: frozenset[str] = frozenset()
    self._static = {path: ((_STATIC_DIR / file).read_bytes(), kind)
                    for path, (file, kind) in _STATIC_FILES.items()}

    self._source = sources[0]
    self._processor = processors[0] if processors else self._processors["none"]
    self._frames = None  # the open iterator of self._source, or None when stopped
    self._status = "starting"
    self._pending_source: str | None = self._source.name
    self._seq = 0
    self._opened_seq = 0
    self._viewers: set[_Viewer] = set()
    self._text_viewers = 0
    self._executor = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="stream-pipeline")
    self._server: Server | None = None
    self._pipeline: asyncio.Task | None = None
    self._wake: asyncio.Event | None = None
    self.port = port

  @property
  def frames_produced(self) -> int:
    """Frames encoded since start (one per pipeline step, whatever the number of viewers)."""
    return self._seq

  @property
  def viewers(self) -> list[dict[str, Any]]:
    """Per-viewer counters: format, frames sent, frames dropped."""
    return [{"format": "base64" if v.text_frames else "binary", "sent": v.sent,
             "dropped": v.dropped} for v in tuple(self._viewers)]

  async def start(self) -> None:
    """Binds the socket and starts the pipeline task."""
    self._wake = asyncio.Event()
    try:
      self._server = await serve(
          self._handle, self._host, self._port, process_request=self._process_request,
          compression=None, max_size=MAX_MESSAGE_BYTES, close_timeout=CLOSE_TIMEOUT_S,
          server_header=None)
    except OSError as exc:
      if exc.errno == errno.EADDRINUSE:
        raise UserError(f"port {self._port} on {self._host} is in use: pick another with --port")
      raise UserError(f"cannot listen on {self._host}:{self._port}: {exc.strerror or exc}")
    self.port = self._server.sockets[0].getsockname()[1]
    self._origins = frozenset(self._default_origins() + self._extra_origins)
    self._pipeline = asyncio.create_task(self._run_pipeline())
    if self._host not in LOOPBACK_HOSTS:
      logger.warning(
          "listening on %r, beyond this machine: anyone who can reach port %d can watch and "
          "switch sources. Use --token, and --allow-origin http://NAME:%d for the address "
          "your browser uses", self._host, self.port, self.port)
    shown = "127.0.0.1" if self._host in WILDCARD_HOSTS else self._host
    shown = f"[{shown}]" if ":" in shown else shown
    query = "?token=..." if self._token else ""
    logger.info("serving %s (%s) at http://%s:%d/%s", self._source.name, self._processor.name,
                shown, self.port, query)

  async def stop(self) -> None:
    """Closes every connection, stops the pipeline and releases the source."""
    if self._server is not None:
      self._server.close()
      await self._server.wait_closed()
    if self._pipeline is not None:
      self._pipeline.cancel()
      try:
        await self._pipeline
      except asyncio.CancelledError:
        pass
    await asyncio.get_running_loop().run_in_executor(self._executor, self._close_frames)
    self._executor.shutdown(wait=True)

  async def serve_forever(self) -> None:
    """Starts, then serves until cancelled (SIGTERM cancels it too)."""
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, asyncio.current_task().cancel)
    await self.start()
    try:
      await self._server.serve_forever()
    finally:
      await self.stop()

  def _default_origins(self) -> tuple[str, ...]:
    hosts = ["127.0.0.1", "localhost", "[::1]"]
    if self._host not in LOOPBACK_HOSTS + WILDCARD_HOSTS:
      hosts.append(f"[{self._host}]" if ":" in self._host else self._host)
    return tuple(f"http://{h}:{self.port}" for h in hosts)

  # HTTP: the page, and the checks before a WebSocket handshake.

  def _process_request(self, connection: ServerConnection, request: Request) -> Response | None:
    url = urlsplit(request.path)
    if url.path in self._static:
      body, kind = self._static[url.path]
      headers = Headers([("Date", email.utils.formatdate(usegmt=True)), ("Connection", "close"),
                         ("Content-Type", kind), ("Content-Length", str(len(body))),
                         *_SECURITY_HEADERS])
      return Response(200, "OK", headers, body)
    if url.path != "/ws":
      return connection.respond(404, "not found: the page is at / and the frames at /ws\n")
    query = parse_qs(url.query)
    if self._token is not None:
      given = query.get("token", [""])[0]
      if not hmac.compare_digest(given.encode(), self._token.encode()):
        return connection.respond(403, "missing or wrong token: open the page as /?token=TOKEN\n")
    origin = request.headers.get("Origin")
    if origin is not None and origin not in self._origins:
      logger.warning("refused a viewer from origin %r (not in the allow-list)", origin[:100])
      return connection.respond(
          403, f"origin {origin} is not allowed: start the server with --allow-origin {origin}\n")
    if query.get("format", ["binary"]) not in (["binary"], ["base64"]):
      return connection.respond(400, "format must be binary (default) or base64\n")
    return None

  # WebSocket: one handler per viewer, one sender task per viewer.

  async def _handle(self, connection: ServerConnection) -> None:
    text_frames = parse_qs(urlsplit(connection.request.path).query).get("format") == ["base64"]
    sock = connection.transport.get_extra_info("socket")
    if sock is not None:
      sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SEND_BUFFER_BYTES)
    viewer = _Viewer(connection, text_frames)
    self._viewers.add(viewer)
    self._text_viewers += text_frames
    self._wake.set()
    viewer.tell(self._state("hello"))
    logger.info("viewer %s connected (%s; %d watching)", _address(connection),
                "base64" if text_frames else "binary", len(self._viewers))
    sender = asyncio.create_task(self._send_to(viewer))
    try:
      async for message in connection:
        self._on_message(viewer, message)
    except ConnectionClosed:
      pass
    finally:
      self._viewers.discard(viewer)
      self._text_viewers -= text_frames
      sender.cancel()
      try:
        await sender
      except asyncio.CancelledError:
        pass
      logger.info("viewer %s left (code %s): sent %d, dropped %d (%d watching)",
                  _address(connection), connection.close_code, viewer.sent,
                  viewer.dropped, len(self._viewers))

  async def _send_to(self, viewer: _Viewer) -> None:
    connection = viewer.connection
    next_stats = time.monotonic() + STATS_INTERVAL_S
    try:
      while True:
        await viewer.wake.wait()
        viewer.wake.clear()
        while viewer.control:
          await connection.send(viewer.control.pop(0))
        frame, viewer.slot = viewer.slot, None
        if frame is None:
          continue
        if viewer.text_frames:
          if frame.base64 is None:  # encoded before this viewer joined
            continue
          await connection.send(frame.base64, text=True)
        else:
          await connection.send(frame.jpeg)
        viewer.sent += 1
        if time.monotonic() >= next_stats:
          next_stats = time.monotonic() + STATS_INTERVAL_S
          await connection.send(json.dumps({"type": "stats", "sent": viewer.sent,
                                            "dropped": viewer.dropped,
                                            "viewers": len(self._viewers)}))
    except ConnectionClosed:
      pass

  def _on_message(self, viewer: _Viewer, message: str | bytes) -> None:
    """Handles one control message; anything wrong gets an error message back."""
    if isinstance(message, bytes):
      viewer.tell(_error("binary messages are not accepted: send JSON text control messages"))
      return
    try:
      request = json.loads(message)
    except ValueError:
      viewer.tell(_error("control messages must be JSON objects, e.g. "
                         '{"type": "select", "source": "NAME"}'))
      return
    if not isinstance(request, dict):
      viewer.tell(_error("control messages must be JSON objects"))
      return
    kind = request.get("type")
    if kind == "ping":
      t = request.get("t")
      if isinstance(t, bool) or not isinstance(t, (int, float)):
        viewer.tell(_error('ping needs a number "t" (the client clock in ms)'))
        return
      viewer.tell({"type": "pong", "t": t, "server": time.time() * 1000.0})
    elif kind == "select":
      keys = set(request) - {"type"}
      if not keys or keys - {"source", "model"}:
        viewer.tell(_error('select takes a "source" and/or a "model" name'))
        return
      source, model = request.get("source"), request.get("model")
      for value, offered, what in ((source, self._sources, "source"),
                                   (model, self._processors, "model")):
        if what in request and (not isinstance(value, str) or value not in offered):
          viewer.tell(_error(f"unknown {what} {str(value)[:64]!r}: pick one of {sorted(offered)}"))
          return
      if model is not None and model != self._processor.name:
        self._processor = self._processors[model]
        logger.info("model switched to %s", model)
      if source is not None:
        self._pending_source = source  # the pipeline switches between two frames
        self._wake.set()
      self._broadcast(self._state("state"))
    else:
      viewer.tell(_error(f"unknown message type {str(kind)[:32]!r}: use select or ping"))

  def _state(self, kind: str) -> dict[str, Any]:
    return {"type": kind, "sources": list(self._sources), "models": list(self._processors),
            "source": self._pending_source or self._source.name, "model": self._processor.name,
            "status": self._status, "viewers": len(self._viewers)}

  def _broadcast(self, message: dict[str, Any]) -> None:
    for viewer in self._viewers:
      viewer.tell(message)

  # The pipeline: one loop for all viewers.

  async def _run_pipeline(self) -> None:
    loop = asyncio.get_running_loop()
    deadline = None
    while True:
      if not self._viewers or (self._frames is None and self._pending_source is None):
        self._wake.clear()
        deadline = None
        await self._wake.wait()
        continue
      if self._pending_source is not None:
        await self._open(self._sources[self._pending_source])
        continue
      try:
        frame = await loop.run_in_executor(self._executor, self._produce)
      except _ModelError as exc:
        self._report(f"model {self._processor.name!r} failed: {exc.__cause__!r}; "
                     "switched back to none")
        self._processor = self._processors["none"]
        self._broadcast(self._state("state"))
        continue
      except Exception as exc:  # pylint: disable=broad-except
        self._report(f"source {self._source.name!r} failed after {self._seq - self._opened_seq} "
                     f"frames: {exc!r}; pick a source to restart")
        await self._stop_source("failed")
        continue
      if frame is None:
        if self._loop and self._seq > self._opened_seq:
          await self._open(self._source)
        else:
          message = (f"source {self._source.name!r} ended after "
                     f"{self._seq - self._opened_seq} frames; pick a source to restart")
          logger.info(message)
          await self._stop_source("ended")
          self._broadcast({"type": "end", "source": self._source.name, "message": message})
        continue
      for viewer in self._viewers:
        viewer.offer(frame)
      rate = self._fps or self._source.fps  # None: reading waits for each frame (camera)
      period = 1.0 / rate if rate else 0.0
      now = loop.time()
      deadline = now + period if deadline is None or deadline + period < now else deadline + period
      await asyncio.sleep(deadline - now)

  async def _open(self, source: Source) -> None:
    self._pending_source = None
    loop = asyncio.get_running_loop()
    await loop.run_in_executor(self._executor, self._close_frames)
    self._source = source
    try:
      self._frames = await loop.run_in_executor(self._executor, source.open)
    except Exception as exc:  # pylint: disable=broad-except
      self._report(f"cannot open source {source.name!r}: {exc!r}")
      self._status = "failed"
    else:
      self._opened_seq = self._seq
      self._status = "streaming"
    self._broadcast(self._state("state"))

  async def _stop_source(self, status: str) -> None:
    await asyncio.get_running_loop().run_in_executor(self._executor, self._close_frames)
    self._status = status
    self._broadcast(self._state("state"))

  def _close_frames(self) -> None:
    frames, self._frames = self._frames, None
    if frames is not None and hasattr(frames, "close"):
      frames.close()

  def _report(self, message: str) -> None:
    logger.error(message)
    self._broadcast(_error(message))

  def _produce(self) -> Frame | None:
    """Reads, processes and encodes one frame (on the pipeline thread)."""
    image = next(self._frames, None)
    if image is None:
      return None
    stamp_ms = time.time() * 1000.0
    processor = self._processor
    try:
      image = processor.fn(image)
      if not (isinstance(image, np.ndarray) and image.dtype == np.uint8 and image.ndim == 3
              and image.shape[2] == 3):
        raise TypeError(f"expected an RGB uint8 (H, W, 3) frame, got {getattr(image, 'shape', '?')}")
    except Exception as exc:
      raise _ModelError from exc
    ok, encoded = cv2.imencode(".jpg", cv2.cvtColor(image, cv2.COLOR_RGB2BGR),
                               [cv2.IMWRITE_JPEG_QUALITY, self._quality])
    if not ok:
      raise RuntimeError(f"JPEG encoding failed for a frame of shape {image.shape}")
    self._seq += 1
    jpeg = stamp_jpeg(memoryview(encoded), self._seq, stamp_ms)
    return Frame(jpeg, base64.b64encode(jpeg) if self._text_viewers else None)


def _error(message: str) -> dict[str, str]:
  return {"type": "error", "message": message}


def _address(connection: ServerConnection) -> str:
  address = connection.remote_address
  return f"{address[0]}:{address[1]}" if address else "?"
