"""Frames per second and latency that the stream server delivers to 1, 4 and 16 viewers.

The PETS09-S2L1 video (768x576) with no model, paced at --fps (30), JPEG q80:
- the WebSocket server (`python -m readingnotes_jax.stream`) in binary and in
  base64 mode: per-viewer fps, latency (viewer receive time - server capture
  stamp, same clock), bytes per frame, server CPU per frame (from /proc);
- a minimal MJPEG-over-HTTP server written here (`multipart/x-mixed-replace`,
  one thread per viewer, newest frame wins: the flask-video-streaming design),
  with the same decode, encode and pacing, as the peer;
- slow-viewer isolation: 4 viewers with and without a 5th that never reads,
  and the server's resident memory before and after;
- the unpaced rate to one viewer (capacity).
Servers run in their own process; viewers run in this one (asyncio) and do not
decode the JPEGs (a browser would). Prints one JSON line.

  python -m benchmarks.stream_fps [--video PATH] [--seconds 4] [--fps 30]
"""
import argparse
import asyncio
import base64
import http.server
import json
import os
import pathlib
import re
import socket
import socketserver
import statistics
import subprocess
import sys
import threading
import time

import cv2
from websockets.asyncio.client import connect

from readingnotes_jax.stream.server import read_stamp

REPO = pathlib.Path(__file__).resolve().parents[1]
CLIENT_COUNTS = (1, 4, 16)
QUALITY = 80


# The MJPEG peer server (runs in a subprocess of the benchmark).

class _LatestFrame:
  """The newest encoded frame and a condition to wait for the next one."""

  def __init__(self):
    self.condition = threading.Condition()
    self.frame = (0, 0.0, b"")  # seq, stamp ms, jpeg
    self.viewers = 0


def _capture(video: str, fps: float, latest: _LatestFrame) -> None:
  capture, seq = cv2.VideoCapture(video), 0
  deadline = time.monotonic()
  while True:
    with latest.condition:
      latest.condition.wait_for(lambda: latest.viewers > 0)
    ok, bgr = capture.read()
    if not ok:  # loop the file
      capture.release()
      capture = cv2.VideoCapture(video)
      continue
    stamp = time.time() * 1000.0
    jpeg = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, QUALITY])[1].tobytes()
    seq += 1
    with latest.condition:
      latest.frame = (seq, stamp, jpeg)
      latest.condition.notify_all()
    deadline = max(deadline + 1.0 / fps, time.monotonic() - 1.0 / fps)
    time.sleep(max(0.0, deadline - time.monotonic()))


def serve_mjpeg(video: str, fps: float) -> None:
  """Serves `video` as MJPEG at /stream on a free port; prints the port."""
  latest = _LatestFrame()

  class Handler(http.server.BaseHTTPRequestHandler):

    def do_GET(self):  # pylint: disable=invalid-name
      self.send_response(200)
      self.send_header("Content-Type", "multipart/x-mixed-replace; boundary=frame")
      self.end_headers()
      with latest.condition:
        latest.viewers += 1
        latest.condition.notify_all()
      sent = latest.frame[0]
      try:
        while True:
          with latest.condition:
            latest.condition.wait_for(lambda: latest.frame[0] > sent)
            sent, stamp, jpeg = latest.frame
          self.wfile.write(b"--frame\r\nContent-Type: image/jpeg\r\nContent-Length: %d\r\n"
                           b"X-Seq: %d\r\nX-Timestamp: %.3f\r\n\r\n" % (len(jpeg), sent, stamp)
                           + jpeg + b"\r\n")
      except (BrokenPipeError, ConnectionResetError):
        pass
      finally:
        with latest.condition:
          latest.viewers -= 1

    def log_message(self, *args):
      del args

  class Server(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True

  server = Server(("127.0.0.1", 0), Handler)
  threading.Thread(target=_capture, args=(video, fps, latest), daemon=True).start()
  print(f"port {server.server_address[1]}", flush=True)
  server.serve_forever()


# Viewers.

class _Tally:
  """What one viewer saw during the measuring window."""

  def __init__(self):
    self.frames = 0
    self.bytes = 0  # as sent (base64 text in base64 mode)
    self.jpeg_bytes = 0
    self.latencies = []
    self.seqs = []


async def _ws_viewer(port: int, mode: str, measuring: asyncio.Event, stop: asyncio.Event,
                     tally: _Tally) -> None:
  query = "?format=base64" if mode == "base64" else ""
  async with connect(f"ws://127.0.0.1:{port}/ws{query}", compression=None, max_size=None) as ws:
    while not stop.is_set():
      try:
        message = await asyncio.wait_for(ws.recv(), 1.0)
      except asyncio.TimeoutError:
        continue
      now = time.time() * 1000.0
      if isinstance(message, str):
        if message.startswith("{"):
          continue
        size, message = len(message), base64.b64decode(message)
      else:
        size = len(message)
      if measuring.is_set():
        stamp = read_stamp(message)
        tally.frames += 1
        tally.bytes += size
        tally.jpeg_bytes += len(message)
        tally.latencies.append(now - stamp["t"])
        tally.seqs.append(stamp["seq"])


async def _mjpeg_viewer(port: int, measuring: asyncio.Event, stop: asyncio.Event,
                        tally: _Tally) -> None:
  reader, writer = await asyncio.open_connection("127.0.0.1", port)
  writer.write(b"GET /stream HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
  await reader.readuntil(b"\r\n\r\n")
  try:
    while not stop.is_set():
      head = await reader.readuntil(b"\r\n\r\n")
      fields = dict(re.findall(rb"([\w-]+): ([^\r]+)", head))
      body = await reader.readexactly(int(fields[b"Content-Length"]) + 2)
      now = time.time() * 1000.0
      if measuring.is_set():
        tally.frames += 1
        tally.bytes += len(head) + len(body)
        tally.jpeg_bytes += len(body) - 2
        tally.latencies.append(now - float(fields[b"X-Timestamp"]))
        tally.seqs.append(int(fields[b"X-Seq"]))
  finally:
    writer.close()


def _slow_ws_viewer(port: int) -> socket.socket:
  """Completes the WebSocket handshake, then never reads."""
  sock = socket.create_connection(("127.0.0.1", port))
  sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
  key = base64.b64encode(os.urandom(16)).decode()
  sock.sendall((f"GET /ws HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
                f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                "Sec-WebSocket-Version: 13\r\n\r\n").encode())
  return sock


def _cpu_seconds(pid: int) -> float:
  fields = pathlib.Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
  return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _rss_mb(pid: int) -> float:
  status = pathlib.Path(f"/proc/{pid}/status").read_text()
  return int(re.search(r"VmRSS:\s+(\d+) kB", status).group(1)) / 1024


def _measure(pid: int, make_viewers, seconds: float, warmup: float = 1.0) -> dict:
  """Runs the viewers, measures `seconds` after `warmup`; returns the summary."""

  async def run():
    measuring, stop = asyncio.Event(), asyncio.Event()
    tallies, tasks = make_viewers(measuring, stop)
    await asyncio.sleep(warmup)
    cpu0, own0, t0 = _cpu_seconds(pid), time.process_time(), time.monotonic()
    measuring.set()
    await asyncio.sleep(seconds)
    measuring.clear()
    cpu1, own1, t1 = _cpu_seconds(pid), time.process_time(), time.monotonic()
    stop.set()
    await asyncio.gather(*tasks, return_exceptions=True)
    return tallies, cpu1 - cpu0, own1 - own0, t1 - t0

  tallies, cpu, own_cpu, elapsed = asyncio.run(run())
  seqs = [s for t in tallies for s in t.seqs]
  produced = max(seqs) - min(seqs) + 1 if seqs else 0
  latencies = sorted(l for t in tallies for l in t.latencies)
  fps = [t.frames / elapsed for t in tallies]
  frames = max(1, sum(t.frames for t in tallies))
  return {
      "fps_per_viewer_median": round(statistics.median(fps), 1),
      "fps_per_viewer_min": round(min(fps), 1),
      "latency_ms_median": round(statistics.median(latencies), 2) if latencies else None,
      "latency_ms_p95": round(latencies[int(0.95 * (len(latencies) - 1))], 2) if latencies else None,
      "bytes_per_frame": round(sum(t.bytes for t in tallies) / frames),
      "sent_over_jpeg_bytes": round(sum(t.bytes for t in tallies)
                                    / max(1, sum(t.jpeg_bytes for t in tallies)), 4),
      "server_cpu_ms_per_frame": round(1000 * cpu / max(1, produced), 2),
      "server_cpu_percent": round(100 * cpu / elapsed, 1),
      "viewers_cpu_percent": round(100 * own_cpu / elapsed, 1),
  }


def _start(command: list[str], pattern: str) -> tuple[subprocess.Popen, int]:
  process = subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                             text=True)
  for line in process.stdout:
    match = re.search(pattern, line)
    if match:
      threading.Thread(target=lambda: [None for _ in process.stdout], daemon=True).start()
      return process, int(match.group(1))
  raise SystemExit(f"server did not start: {command}")


def _websocket_server(video: str, fps: float) -> tuple[subprocess.Popen, int]:
  return _start([sys.executable, "-m", "readingnotes_jax.stream", "--source", video, "--port", "0",
                 "--fps", str(fps), "--loop", "--quality", str(QUALITY)],
                r"at http://127\.0\.0\.1:(\d+)/")


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  data = pathlib.Path(os.environ.get("READINGNOTES_DATA", REPO.parent / "shared/data"))
  parser.add_argument("--video", default=str(data / "mot15/PETS09-S2L1/vtest.avi"))
  parser.add_argument("--seconds", type=float, default=4.0)
  parser.add_argument("--fps", type=float, default=30.0)
  parser.add_argument("--mjpeg-server", action="store_true", help=argparse.SUPPRESS)
  args = parser.parse_args()
  if not pathlib.Path(args.video).is_file():
    raise SystemExit(f"error: video {args.video} not found: set READINGNOTES_DATA=../shared/data "
                     "or pass --video")
  if args.mjpeg_server:
    serve_mjpeg(args.video, args.fps)
    return

  result = {"benchmark": "stream_fps", "video": pathlib.Path(args.video).name,
            "frame": [768, 576], "target_fps": args.fps, "jpeg_quality": QUALITY,
            "seconds": args.seconds, "cpus": os.cpu_count()}

  def ws_viewers(port, mode, count):
    def make(measuring, stop):
      tallies = [_Tally() for _ in range(count)]
      return tallies, [asyncio.ensure_future(_ws_viewer(port, mode, measuring, stop, t))
                       for t in tallies]
    return make

  server, port = _websocket_server(args.video, args.fps)
  try:
    for mode in ("binary", "base64"):
      result[f"websocket_{mode}"] = {
          str(n): _measure(server.pid, ws_viewers(port, mode, n), args.seconds)
          for n in CLIENT_COUNTS}
    # Slow-viewer isolation: 4 viewers alone, then with a 5th that never reads.
    alone = _measure(server.pid, ws_viewers(port, "binary", 4), args.seconds)
    rss_before = _rss_mb(server.pid)
    slow = _slow_ws_viewer(port)
    with_slow = _measure(server.pid, ws_viewers(port, "binary", 4), args.seconds, warmup=2.0)
    rss_after = _rss_mb(server.pid)
    slow.close()
    result["slow_viewer"] = {
        "fps_per_viewer_without": alone["fps_per_viewer_median"],
        "fps_per_viewer_with": with_slow["fps_per_viewer_median"],
        "fps_per_viewer_min_with": with_slow["fps_per_viewer_min"],
        "latency_ms_median_with": with_slow["latency_ms_median"],
        "server_rss_mb_before": round(rss_before, 1), "server_rss_mb_after": round(rss_after, 1)}
  finally:
    server.terminate()
    server.wait()

  server, port = _websocket_server(args.video, 1000.0)
  try:
    unpaced = _measure(server.pid, ws_viewers(port, "binary", 1), args.seconds)
    result["unpaced_1_viewer_fps"] = unpaced["fps_per_viewer_median"]
    result["unpaced_server_cpu_ms_per_frame"] = unpaced["server_cpu_ms_per_frame"]
  finally:
    server.terminate()
    server.wait()

  def mjpeg_viewers(port, count):
    def make(measuring, stop):
      tallies = [_Tally() for _ in range(count)]
      return tallies, [asyncio.ensure_future(_mjpeg_viewer(port, measuring, stop, t))
                       for t in tallies]
    return make

  server, port = _start([sys.executable, "-m", "benchmarks.stream_fps", "--mjpeg-server",
                         "--video", args.video, "--fps", str(args.fps)], r"^port (\d+)")
  try:
    result["mjpeg_http"] = {str(n): _measure(server.pid, mjpeg_viewers(port, n), args.seconds)
                            for n in CLIENT_COUNTS}
  finally:
    server.terminate()
    server.wait()

  binary, text, mjpeg = (result["websocket_binary"], result["websocket_base64"],
                         result["mjpeg_http"])
  result["ratios"] = {
      "base64_over_binary_bytes": text["4"]["sent_over_jpeg_bytes"],
      **{f"base64_over_binary_cpu_{n}": round(text[n]["server_cpu_ms_per_frame"]
                                              / binary[n]["server_cpu_ms_per_frame"], 2)
         for n in binary},
      **{f"mjpeg_over_websocket_cpu_{n}": round(mjpeg[n]["server_cpu_ms_per_frame"]
                                                / binary[n]["server_cpu_ms_per_frame"], 2)
         for n in binary},
  }
  four = binary["4"]
  result["goal_4_viewers_30fps_median_latency_under_50ms"] = bool(
      four["fps_per_viewer_min"] >= 0.95 * args.fps and four["latency_ms_median"] < 50)
  result["goal_slow_viewer_changes_no_other_rate"] = bool(
      result["slow_viewer"]["fps_per_viewer_min_with"] >= 0.95
      * result["slow_viewer"]["fps_per_viewer_without"])
  print(json.dumps(result))


if __name__ == "__main__":
  main()
