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
  estimates) and `{"type": "text", "text": SENTENCE}` (at most MAX_TEXT_CHARS, for a
  model in `text_models` such as fashiongan; the state carries the model's `text`).
  Bad ones get `{"type": "error"}`; messages over
  MAX_MESSAGE_BYTES close that connection with code 1009. Each viewer may send
  CONTROL_BURST messages at once and CONTROL_RATE_PER_S after that; the rest
  are ignored (one error says so). A select of what is already playing
  changes nothing; a change is broadcast with the number of the viewer who
  made it (`picked_by`; each viewer learns its own as `you` in `hello`).
- Limits: a send that does not finish within `send_timeout` drops that
  viewer (it stopped reading; its TCP connection is aborted), at most
  `max_viewers` watch at once (more get HTTP 503), and `stop()` aborts what
  has not closed after SHUTDOWN_TIMEOUT_S.
"""
import asyncio
import base64
import concurrent.futures
import dataclasses
import email.utils
import errno
import functools
import hmac
import json
import logging
import math
import pathlib
import resource
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
MAX_TEXT_CHARS = 200
SEND_BUFFER_BYTES = 256 * 1024
STATS_INTERVAL_S = 1.0
CLOSE_TIMEOUT_S = 2.0
SEND_TIMEOUT_S = 10.0
SHUTDOWN_TIMEOUT_S = 0.25
MAX_VIEWERS = 100
FILES_PER_PROCESS = 128  # open files besides the viewers' sockets: libraries, pages, handshakes
CONTROL_RATE_PER_S = 2.0
CONTROL_BURST = 8
MIN_TOKEN_CHARS = 16
REFUSAL_LOG_INTERVAL_S = 10.0
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
  """One connected client: a latest-frame slot, a small control queue, counters and the
  token bucket that rate-limits its control messages."""

  def __init__(self, connection: ServerConnection, text_frames: bool, number: int):
    self.connection = connection
    self.text_frames = text_frames
    self.number = number
    self.slot: Frame | None = None
    self.control: list[dict[str, Any]] = []
    self.wake = asyncio.Event()
    self.sent = 0
    self.dropped = 0
    self.tokens = float(CONTROL_BURST)
    self.refilled = time.monotonic()
    self.told_limited = False

  def offer(self, frame: Frame) -> None:
    if self.slot is not None:
      self.dropped += 1
    self.slot = frame
    self.wake.set()

  def tell(self, message: dict[str, Any]) -> None:
    if message["type"] == "state":  # only the newest state matters
      self.control = [m for m in self.control if m["type"] != "state"]
    if len(self.control) < 32:  # a client that never reads gets no unbounded backlog
      self.control.append(message)
    self.wake.set()

  def take_token(self) -> bool:
    """Whether a control message may be handled now (token bucket: CONTROL_BURST tokens,
    refilled at CONTROL_RATE_PER_S)."""
    now = time.monotonic()
    self.tokens = min(CONTROL_BURST, self.tokens + (now - self.refilled) * CONTROL_RATE_PER_S)
    self.refilled = now
    if self.tokens < 1:
      return False
    self.tokens -= 1
    return True


class _RateLimitedLog:
  """Logs a warning at most once per `interval` seconds and counts the ones held back
  (refusals are triggered by whoever can reach the port)."""

  def __init__(self, interval: float):
    self._interval = interval
    self._next = 0.0
    self._held_back = 0

  def warning(self, message: str, *args: Any) -> None:
    now = time.monotonic()
    if now < self._next:
      self._held_back += 1
      return
    if self._held_back:
      message += " (and %d more since the last such line)"
      args += (self._held_back,)
    self._next, self._held_back = now + self._interval, 0
    logger.warning(message, *args)


class _TrackedConnection(ServerConnection):
  """A connection that is in `registry` from TCP accept to close, handshake included, so
  that `StreamServer.stop()` can abort the ones that do not close in time."""

  def __init__(self, *args: Any, registry: set[ServerConnection], **kwargs: Any):
    super().__init__(*args, **kwargs)
    self._registry = registry

  def connection_made(self, transport: asyncio.BaseTransport) -> None:
    super().connection_made(transport)
    self._registry.add(self)

  def connection_lost(self, exc: Exception | None) -> None:
    self._registry.discard(self)
    super().connection_lost(exc)


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
    token: if set, `/ws` requires `?token=TOKEN` (else 403); at least
      MIN_TOKEN_CHARS characters.
    allowed_origins: extra Origin values accepted on `/ws` besides the page's
      own loopback origins (requests without Origin, from non-browser
      clients, are accepted).
    max_viewers: viewers at once; one more gets HTTP 503.
    send_timeout: seconds one message to a viewer may take before that viewer
      is dropped.
  """

  def __init__(self, sources: Sequence[Source], processors: Sequence[processors_lib.Processor] = (),
               *, host: str = "127.0.0.1", port: int = 8765, fps: float | None = None,
               loop: bool = False, quality: int = 80, token: str | None = None,
               allowed_origins: Sequence[str] = (), max_viewers: int = MAX_VIEWERS,
               send_timeout: float = SEND_TIMEOUT_S):
    if not sources:
      raise UserError("no source to stream: give --source (a video, folder or camera index) "
                      "or a generator model such as --model progan --checkpoint DIR")
    if fps is not None and not 0 < fps <= 1000:
      raise UserError(f"--fps {fps} is out of range: use a rate in (0, 1000]")
    if not 1 <= quality <= 100:
      raise UserError(f"--quality {quality} is out of range: use 1-100")
    if token is not None and len(token) < MIN_TOKEN_CHARS:
      raise UserError(f"--token has {len(token)} characters: use at least {MIN_TOKEN_CHARS}, "
                      "e.g. from `python -c 'import secrets; print(secrets.token_urlsafe())'`")
    if max_viewers < 1:
      raise UserError(f"--max-viewers {max_viewers} is out of range: use 1 or more")
    files, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if files != resource.RLIM_INFINITY and max_viewers + FILES_PER_PROCESS > files:
      raise UserError(f"--max-viewers {max_viewers} needs about {max_viewers + FILES_PER_PROCESS} "
                      f"open files, but this process may open {files}: lower --max-viewers or "
                      "raise the limit (ulimit -n)")
    if not 0 < send_timeout <= 3600:
      raise UserError(f"--send-timeout {send_timeout} is out of range: use seconds in (0, 3600]")
    self._sources = {s.name: s for s in sources}
    if len(self._sources) != len(sources):
      raise UserError("two sources have the same name: name them with --source NAME=PATH")
    self._processors = {p.name: p for p in processors}
    self._processors.setdefault("none", processors_lib.load("none"))
    self._host, self._port, self._fps, self._loop = host, port, fps, loop
    self._quality, self._token = quality, token
    self._max_viewers, self._send_timeout = max_viewers, send_timeout
    self._extra_origins = tuple(o.rstrip("/") for o in allowed_origins)
    self._origins: frozenset[str] = frozenset()
    self._static = {path: ((_STATIC_DIR / file).read_bytes(), kind)
                    for path, (file, kind) in _STATIC_FILES.items()}
    self._refusals = {kind: _RateLimitedLog(REFUSAL_LOG_INTERVAL_S)
                      for kind in ("token", "origin", "full")}

    self._source = sources[0]
    self._processor = processors[0] if processors else self._processors["none"]
    self._frames = None  # the open iterator of self._source, or None when stopped
    self._status = "starting"
    self._pending_source: str | None = self._source.name
    self._picked_by: int | None = None  # the viewer who made the last switch
    self._seq = 0
    self._opened_seq = 0
    self._viewers: set[_Viewer] = set()
    self._viewers_joined = 0
    self._text_viewers = 0
    self._connections: set[ServerConnection] = set()
    self._executor = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="stream-pipeline")
    self._server: Server | None = None
    self._pipeline: asyncio.Task | None = None
    self._wake: asyncio.Event | None = None
    self.port = port
    self.url = ""

  @property
  def frames_produced(self) -> int:
    """Frames encoded since start (one per pipeline step, whatever the number of viewers)."""
    return self._seq

  @property
  def viewers(self) -> list[dict[str, Any]]:
    """Per-viewer counters: number, format, frames sent, frames dropped."""
    return [{"viewer": v.number, "format": "base64" if v.text_frames else "binary",
             "sent": v.sent, "dropped": v.dropped} for v in tuple(self._viewers)]

  async def start(self) -> None:
    """Binds the socket and starts the pipeline task."""
    self._wake = asyncio.Event()
    try:
      self._server = await serve(
          self._handle, self._host, self._port, process_request=self._process_request,
          compression=None, max_size=MAX_MESSAGE_BYTES, close_timeout=CLOSE_TIMEOUT_S,
          server_header=None,
          create_connection=functools.partial(_TrackedConnection, registry=self._connections))
    except OSError as exc:
      if exc.errno == errno.EADDRINUSE:
        raise UserError(f"port {self._port} on {self._host} is in use: pick another with --port")
      raise UserError(f"cannot listen on {self._host}:{self._port}: {exc.strerror or exc}")
    # `--host ::` binds IPv6 only (asyncio sets IPV6_V6ONLY) and `--host ""` both families,
    # each on its own port when --port is 0: show an address of a socket that was bound.
    sockets = self._server.sockets
    ipv4 = [s for s in sockets if s.family == socket.AF_INET]
    if self._host in WILDCARD_HOSTS:
      shown = "127.0.0.1" if ipv4 else "::1"
      self.port = (ipv4 or sockets)[0].getsockname()[1]
    else:
      shown = self._host
      self.port = sockets[0].getsockname()[1]
    self._origins = frozenset(self._default_origins() + self._extra_origins)
    self._pipeline = asyncio.create_task(self._run_pipeline())
    if self._host not in LOOPBACK_HOSTS:
      logger.warning(
          "listening on %r, beyond this machine: anyone who can reach port %d can watch and "
          "switch sources. Use --token, and --allow-origin http://NAME:%d for the address "
          "your browser uses", self._host, self.port, self.port)
    self.url = f"http://{f'[{shown}]' if ':' in shown else shown}:{self.port}/"
    logger.info("serving %s (%s) at %s%s", self._source.name, self._processor.name, self.url,
                "?token=..." if self._token else "")

  async def stop(self) -> None:
    """Closes every connection (aborting those still open after SHUTDOWN_TIMEOUT_S), stops
    the pipeline and releases the source."""
    if self._server is not None:
      self._server.close()  # stop listening; close 1001 to viewers, 503 to handshakes
      try:
        async with asyncio.timeout(SHUTDOWN_TIMEOUT_S):
          await self._server.wait_closed()
      except TimeoutError:  # a viewer that does not read cannot take the close frame
        logger.info("aborting %d connections that did not close within %.3g s",
                    len(self._connections), SHUTDOWN_TIMEOUT_S)
        for connection in tuple(self._connections):
          connection.transport.abort()
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
      # Not Server.serve_forever(): cancelled, it waits for every connection without a limit.
      await self._server.wait_closed()
    finally:
      await self.stop()

  def _default_origins(self) -> tuple[str, ...]:
    hosts = ["127.0.0.1", "localhost", "[::1]"]
    if self._host not in LOOPBACK_HOSTS + WILDCARD_HOSTS:
      hosts.append(f"[{self._host}]" if ":" in self._host else self._host)
    return tuple(f"http://{h}:{self.port}" for h in hosts)

  # HTTP: the page, and the checks before a WebSocket handshake.

  def _process_request(self, connection: ServerConnection, request: Request) -> Response | None:
    response = self._respond(connection, request)
    if response is not None and request.method == "HEAD":  # the headers of a GET, no body
      response = dataclasses.replace(response, body=b"")
    return response

  def _respond(self, connection: ServerConnection, request: Request) -> Response | None:
    url = urlsplit(request.path)
    methods = ("GET",) if url.path == "/ws" else ("GET", "HEAD")
    if request.method not in methods:
      response = connection.respond(405, f"method not allowed: use {' or '.join(methods)}\n")
      response.headers["Allow"] = ", ".join(methods)
      return response
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
        self._refusals["token"].warning("refused a viewer from %s: missing or wrong token",
                                        _address(connection))
        return connection.respond(403, "missing or wrong token: open the page as /?token=TOKEN\n")
    origins = request.headers.get_all("Origin")
    if len(origins) > 1 or (origins and origins[0] not in self._origins):
      # The value is the caller's to choose: neither echoed nor suggested for the allow-list.
      self._refusals["origin"].warning(
          "refused a viewer from %s: %s", _address(connection),
          f"{len(origins)} Origin headers" if len(origins) > 1
          else "its Origin is not in the allow-list (see --allow-origin)")
      return connection.respond(
          403, "this page's origin is not allowed: send exactly one Origin header, from a page "
          "of this server or of an address its operator allowed with --allow-origin\n")
    if query.get("format", ["binary"]) not in (["binary"], ["base64"]):
      return connection.respond(400, "format must be binary (default) or base64\n")
    if len(self._viewers) >= self._max_viewers:
      self._refusals["full"].warning("refused a viewer from %s: %d watching (--max-viewers)",
                                     _address(connection), len(self._viewers))
      return connection.respond(
          503, f"{len(self._viewers)} viewers are watching, the most this server takes: "
          "try again later\n")
    return None

  # WebSocket: one handler per viewer, one sender task per viewer.

  async def _handle(self, connection: ServerConnection) -> None:
    if len(self._viewers) >= self._max_viewers:  # several handshakes passed the check at once
      await connection.close(1013, "too many viewers: try again later")
      return
    text_frames = parse_qs(urlsplit(connection.request.path).query).get("format") == ["base64"]
    sock = connection.transport.get_extra_info("socket")
    if sock is not None:
      sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SEND_BUFFER_BYTES)
    self._viewers_joined += 1
    viewer = _Viewer(connection, text_frames, self._viewers_joined)
    self._viewers.add(viewer)
    self._text_viewers += text_frames
    self._wake.set()
    viewer.tell({**self._state("hello"), "you": viewer.number})
    logger.info("viewer %d at %s connected (%s; %d watching)", viewer.number,
                _address(connection), "base64" if text_frames else "binary", len(self._viewers))
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
      logger.info("viewer %d left (code %s): sent %d, dropped %d (%d watching)", viewer.number,
                  connection.close_code, viewer.sent, viewer.dropped, len(self._viewers))

  async def _send_to(self, viewer: _Viewer) -> None:
    connection = viewer.connection

    async def send(message: str | bytes, text: bool | None = None) -> None:
      # connection.send() waits in drain() for as long as the client does not read (the
      # keepalive ping waits behind it), so the deadline is ours.
      async with asyncio.timeout(self._send_timeout):
        await connection.send(message, text=text)

    next_stats = time.monotonic() + STATS_INTERVAL_S
    try:
      while True:
        await viewer.wake.wait()
        viewer.wake.clear()
        while viewer.control:
          await send(json.dumps(viewer.control.pop(0), allow_nan=False))
        frame, viewer.slot = viewer.slot, None
        if frame is None:
          continue
        if viewer.text_frames:
          if frame.base64 is None:  # encoded before this viewer joined
            continue
          await send(frame.base64, text=True)
        else:
          await send(frame.jpeg)
        viewer.sent += 1
        if time.monotonic() >= next_stats:
          next_stats = time.monotonic() + STATS_INTERVAL_S
          await send(json.dumps({"type": "stats", "sent": viewer.sent, "dropped": viewer.dropped,
                                 "viewers": len(self._viewers)}))
    except ConnectionClosed:
      pass
    except TimeoutError:
      logger.warning("viewer %d at %s dropped: a send took over %.3g s (--send-timeout); it "
                     "stopped reading", viewer.number, _address(connection), self._send_timeout)
      connection.transport.abort()  # a close frame would wait behind the unread data

  def _on_message(self, viewer: _Viewer, message: str | bytes) -> None:
    """Handles one control message; anything wrong gets an error message back."""
    if not viewer.take_token():
      if not viewer.told_limited:
        viewer.told_limited = True
        viewer.tell(_error(f"too many control messages: at most {CONTROL_BURST} at once and "
                           f"{CONTROL_RATE_PER_S:g} per second; the others are ignored"))
      return
    viewer.told_limited = False
    if isinstance(message, bytes):
      viewer.tell(_error("binary messages are not accepted: send JSON text control messages"))
      return
    try:
      request = json.loads(message, parse_constant=_refuse_constant)
    except (ValueError, RecursionError):  # RecursionError: nested over ~1,000 deep
      viewer.tell(_error("control messages must be JSON objects (nested at most a few levels, "
                         'no NaN or Infinity), e.g. {"type": "select", "source": "NAME"}'))
      return
    if not isinstance(request, dict):
      viewer.tell(_error("control messages must be JSON objects"))
      return
    kind = request.get("type")
    if kind == "ping":
      t = request.get("t")
      if isinstance(t, bool) or not isinstance(t, (int, float)) or not math.isfinite(t):
        viewer.tell(_error('ping needs a finite number "t" (the client clock in ms)'))
        return
      viewer.tell({"type": "pong", "t": t, "server": time.time() * 1000.0})
    elif kind == "select":
      self._select(viewer, request)
    elif kind == "text":
      self._set_text(viewer, request)
    else:
      viewer.tell(_error(f"unknown message type {str(kind)[:32]!r}: use select, text or ping"))

  def _select(self, viewer: _Viewer, request: dict[str, Any]) -> None:
    """Switches source and/or model; a select of what is already playing changes nothing."""
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
    changed = []
    if model is not None and model != self._processor.name:
      self._processor = self._processors[model]
      changed.append(f"the model to {model}")
    if source is not None and source != self._playing():
      self._pending_source = source  # the pipeline switches between two frames
      self._wake.set()
      changed.append(f"the source to {source}")
    if not changed:
      viewer.tell(self._state("state"))
      return
    self._picked_by = viewer.number
    logger.info("viewer %d at %s switched %s", viewer.number, _address(viewer.connection),
                " and ".join(changed))
    self._broadcast(self._state("state"))

  def _set_text(self, viewer: _Viewer, request: dict[str, Any]) -> None:
    """Gives the playing model the page's sentence, for the frames after this one."""
    text, processor = request.get("text"), self._processor
    if set(request) != {"type", "text"} or not isinstance(text, str):
      viewer.tell(_error('text takes a "text" string, e.g. {"type": "text", "text": "a woman '
                         'in a red dress"}'))
      return
    if len(text) > MAX_TEXT_CHARS:
      viewer.tell(_error(f"text has {len(text)} characters: at most {MAX_TEXT_CHARS}"))
      return
    if processor.sentence is None:
      takers = [p.name for p in self._processors.values() if p.sentence is not None]
      viewer.tell(_error(f"model {processor.name!r} takes no text"
                         + (f": pick {' or '.join(takers)}" if takers else "")))
      return
    try:
      processor.sentence.set(text)
    except UserError as exc:
      viewer.tell(_error(str(exc)))
      return
    self._picked_by = viewer.number
    logger.info("viewer %d at %s set the text of %s to %r", viewer.number,
                _address(viewer.connection), processor.name, text)
    self._broadcast(self._state("state"))

  def _playing(self) -> str | None:
    """The source streaming or about to, or None after it ended or failed."""
    if self._pending_source is not None:
      return self._pending_source
    return self._source.name if self._status in ("opening", "streaming") else None

  def _state(self, kind: str) -> dict[str, Any]:
    sentence = self._processor.sentence
    return {"type": kind, "sources": list(self._sources), "models": list(self._processors),
            "text_models": [p.name for p in self._processors.values() if p.sentence is not None],
            "text": None if sentence is None else sentence.text,
            "source": self._pending_source or self._source.name, "model": self._processor.name,
            "status": self._status, "viewers": len(self._viewers), "picked_by": self._picked_by}

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
    self._source, self._status = source, "opening"
    loop = asyncio.get_running_loop()
    await loop.run_in_executor(self._executor, self._close_frames)
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


def _refuse_constant(name: str) -> None:
  """json.loads hook for NaN and +-Infinity, which Python accepts and JSON has not."""
  raise ValueError(f"{name} is not JSON")


def _address(connection: ServerConnection) -> str:
  address = connection.remote_address
  if not address:
    return "?"
  return f"[{address[0]}]:{address[1]}" if ":" in address[0] else f"{address[0]}:{address[1]}"
