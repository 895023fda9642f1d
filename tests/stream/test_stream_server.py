"""The stream server with real WebSocket clients on loopback."""
import base64
import http.client
import json
import logging
import threading
import time
import tracemalloc

import numpy as np
import pytest
from websockets.exceptions import ConnectionClosedError, InvalidStatus

from readingnotes_jax.stream.processors import Processor
from stream_testlib import (abort, control_until, decode, noise_source, painter, parse_stamp,
                            pattern, raw_websocket, receive, running, synthetic, wait_for,
                            ws_connect)


def test_page_is_served_with_security_headers():
  with running([synthetic()]) as server:
    for path, kind, needle in (("/", "text/html", b"<canvas"), ("/app.js", "text/javascript",
                                                               b"WebSocket"),
                               ("/style.css", "text/css", b"canvas")):
      conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=5)
      conn.request("GET", path)
      response = conn.getresponse()
      body = response.read()
      assert response.status == 200, path
      assert response.getheader("Content-Type").startswith(kind)
      assert response.getheader("X-Content-Type-Options") == "nosniff"
      assert "default-src 'self'" in response.getheader("Content-Security-Policy")
      assert needle in body
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=5)
    conn.request("GET", "/../etc/passwd")
    assert conn.getresponse().status == 404


def test_binary_frames_are_stamped_jpegs_of_the_source():
  with running([synthetic()]) as server, ws_connect(server) as ws:
    hello = json.loads(ws.recv(timeout=5))
    assert hello["type"] == "hello"
    assert hello["sources"] == ["synthetic"] and hello["models"] == ["none"]
    frames, _ = receive(ws, 10)
    now_ms = time.time() * 1000
    seqs = []
    for message in frames:
      assert isinstance(message, bytes)
      stamp = parse_stamp(message)
      seqs.append(stamp["seq"])
      assert 0 <= now_ms - stamp["t"] < 5000
      image = decode(message)
      assert image.shape == (96, 128, 3)
      # The server's first frame is the source's frame 0.
      assert np.abs(image.astype(int) - pattern(stamp["seq"] - 1)).mean() < 4
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)


def test_base64_mode_sends_the_same_jpeg_as_text():
  with running([synthetic()]) as server, ws_connect(server, "?format=base64") as ws:
    frames, control = receive(ws, 5)
    assert control[0]["type"] == "hello"
    for message in frames:
      assert isinstance(message, str)
      jpeg = base64.b64decode(message, validate=True)
      stamp = parse_stamp(jpeg)
      assert np.abs(decode(jpeg).astype(int) - pattern(stamp["seq"] - 1)).mean() < 4
    assert [v["format"] for v in server.viewers] == ["base64"]


def test_several_viewers_share_one_pipeline():
  with running([synthetic(fps=40)]) as server:
    clients = [ws_connect(server) for _ in range(4)]
    try:
      results = [None] * len(clients)

      def watch(i):
        results[i] = [parse_stamp(m)["seq"] for m in receive(clients[i], 30)[0]]

      threads = [threading.Thread(target=watch, args=(i,)) for i in range(len(clients))]
      start = server.frames_produced
      for t in threads:
        t.start()
      for t in threads:
        t.join(10)
      produced = server.frames_produced - start
    finally:
      for ws in clients:
        ws.close()
    for seqs in results:
      assert len(seqs) == 30 and seqs == sorted(seqs)
    # One encode per frame for all viewers: ~30 frames made, not 4 x 30.
    assert produced < 45


def test_pipeline_pauses_without_viewers_and_after_abrupt_disconnect():
  with running([synthetic()]) as server:
    time.sleep(0.3)
    assert server.frames_produced == 0  # nobody watching yet: the source is not even opened
    sock = raw_websocket(server.port)
    wait_for(lambda: server.frames_produced > 5, what="frames for the raw client")
    sock.recv(65536)
    abort(sock)  # TCP reset, no close frame
    wait_for(lambda: not server.viewers, what="the server to drop the vanished client")
    time.sleep(0.1)
    paused_at = server.frames_produced
    time.sleep(0.4)
    assert server.frames_produced - paused_at <= 1
    with ws_connect(server) as ws:  # the server still serves
      frames, _ = receive(ws, 3)
      assert parse_stamp(frames[0])["seq"] > paused_at


def test_slow_viewer_skips_frames_without_backlog_or_slowing_others():
  fps = 40.0
  tracemalloc.start()
  try:
    with running([noise_source(fps=fps)]) as server, ws_connect(server) as fast:
      slow = raw_websocket(server.port, rcvbuf=4096)  # handshake done, then never reads
      receive(fast, 10)
      wait_for(lambda: any(v["dropped"] > 0 for v in server.viewers), what="drops for the slow viewer")
      before, _ = tracemalloc.get_traced_memory()
      start, t0 = time.monotonic(), server.frames_produced
      received, frame_bytes = 0, 0
      while time.monotonic() - start < 2.0:  # count, keeping no frame (tracemalloc sees this process)
        message = fast.recv(timeout=2)
        if isinstance(message, bytes):
          received, frame_bytes = received + 1, len(message)
      elapsed = time.monotonic() - start
      after, _ = tracemalloc.get_traced_memory()
      produced = server.frames_produced - t0
      counters = sorted(server.viewers, key=lambda v: v["sent"])
      abort(slow)
  finally:
    tracemalloc.stop()
  assert frame_bytes > 100_000  # a backlog of these would show at once
  # The fast viewer saw almost every frame the pipeline made, and the pipeline was not held
  # back (a blocking slow client would stall it near 0 fps; the margin is for loaded CI).
  assert received >= 0.9 * produced
  assert received / elapsed > 0.5 * fps
  # The slow viewer got few frames and dropped the rest; the server kept no backlog.
  slow_counters = counters[0]
  assert slow_counters["dropped"] > produced / 2
  assert after - before < 4 * frame_bytes, f"memory grew {after - before} bytes"


def test_oversized_message_closes_1009_and_others_keep_streaming():
  with running([synthetic()]) as server, ws_connect(server) as other:
    with ws_connect(server) as big:
      receive(big, 1)
      big.send("x" * 10_000)
      with pytest.raises(ConnectionClosedError) as info:
        while True:
          big.recv(timeout=5)
      assert info.value.sent.code == 1009 or info.value.rcvd.code == 1009
    frames, _ = receive(other, 20)
    assert len(frames) == 20


@pytest.mark.parametrize("message, expect", [
    ("not json", "JSON"),
    ("[1, 2]", "objects"),
    ('{"type": "reboot"}', "unknown message type"),
    ('{"type": "select", "source": "/etc/passwd"}', "unknown source"),
    ('{"type": "select", "source": "../synthetic"}', "unknown source"),
    ('{"type": "select", "model": 3}', "unknown model"),
    ('{"type": "select", "path": "x"}', "select takes"),
    ('{"type": "ping", "t": "soon"}', "number"),
    (b"\x00\x01", "binary"),
])
def test_malformed_control_messages_get_an_error_and_streaming_goes_on(message, expect):
  with running([synthetic()]) as server, ws_connect(server) as ws:
    receive(ws, 1)
    ws.send(message)
    error = control_until(ws, "error")
    assert expect in error["message"]
    frames, _ = receive(ws, 5)
    assert len(frames) == 5


def test_ping_is_answered_with_server_time():
  with running([synthetic()]) as server, ws_connect(server) as ws:
    ws.send(json.dumps({"type": "ping", "t": 12345.5}))
    pong = control_until(ws, "pong")
    assert pong["t"] == 12345.5 and abs(pong["server"] - time.time() * 1000) < 5000


def test_viewers_select_source_and_model_by_name():
  red, blue = synthetic("red", colour=(250, 0, 0)), synthetic("blue", colour=(0, 0, 250))
  invert = Processor("invert", lambda frame: 255 - frame)
  with running([red, blue], [invert]) as server, ws_connect(server) as ws, \
      ws_connect(server) as other:
    hello = control_until(ws, "hello")
    assert hello["sources"] == ["red", "blue"] and hello["model"] == "invert"
    assert hello["models"] == ["invert", "none"]
    control_until(other, "hello")
    ws.send(json.dumps({"type": "select", "source": "blue", "model": "none"}))
    state = control_until(other, "state")  # every viewer hears of the switch
    while state["source"] != "blue" or state["status"] != "streaming":
      state = control_until(other, "state")
    assert state["model"] == "none"
    for _ in range(3):  # frames in flight before the switch may still arrive
      receive(ws, 1)
    image = decode(receive(ws, 1)[0][0]).astype(int)
    assert image[..., 2].mean() > 100 and image[..., 0].mean() < 30


def test_origin_allow_list_and_token():
  token = "s3cret-s3cret-s3cret"
  with running([synthetic()], token=token, allowed_origins=["http://lab:9000"]) as server:
    for query, origin in (("", None), ("?token=wrong", None), (f"?token={token[:-1]}", None),
                          (f"?token={token}", "http://evil.example")):
      with pytest.raises(InvalidStatus) as info:
        ws_connect(server, query, origin=origin)
      assert info.value.response.status_code == 403
    for origin in (None, f"http://127.0.0.1:{server.port}", f"http://localhost:{server.port}",
                   "http://lab:9000"):
      with ws_connect(server, f"?token={token}", origin=origin) as ws:
        assert receive(ws, 1)[0]
    with pytest.raises(InvalidStatus) as info:
      ws_connect(server, f"?token={token}&format=png")
    assert info.value.response.status_code == 400


def test_source_that_ends_tells_viewers_and_loop_restarts_it():
  with running([synthetic(count=5)]) as server, ws_connect(server) as ws:
    end = control_until(ws, "end")
    assert "ended after 5 frames" in end["message"]
    ws.send(json.dumps({"type": "select", "source": "synthetic"}))  # restart by picking it
    frames, _ = receive(ws, 5)
    assert parse_stamp(frames[-1])["seq"] == 10
  with running([synthetic(count=5)], loop=True) as server, ws_connect(server) as ws:
    frames, control = receive(ws, 12)
    assert not [c for c in control if c["type"] in ("end", "error")]
    assert parse_stamp(frames[-1])["seq"] >= 12


def test_source_failing_mid_stream_and_model_failure_are_reported(caplog):
  broken = Processor("broken", lambda frame: frame[:, :, 0])  # wrong shape: not RGB
  caplog.set_level(logging.INFO, logger="readingnotes_jax.stream")
  with running([synthetic(fail_after=3)], [broken]) as server, ws_connect(server) as ws:
    error = control_until(ws, "error")
    assert "model 'broken' failed" in error["message"] and "none" in error["message"]
    error = control_until(ws, "error")
    assert "source 'synthetic' failed" in error["message"] and "disk unplugged" in error["message"]
    state = control_until(ws, "state")
    while state["status"] != "failed":
      state = control_until(ws, "state")
    assert state["model"] == "none"
  assert any("disk unplugged" in r.getMessage() for r in caplog.records)


def test_warns_when_listening_beyond_loopback(caplog):
  caplog.set_level(logging.WARNING, logger="readingnotes_jax.stream")
  with running([synthetic()], host="0.0.0.0"):
    pass
  assert any("beyond this machine" in r.getMessage() for r in caplog.records)


def test_text_reaches_the_model_that_takes_it_and_bad_text_is_refused():
  invert = Processor("invert", lambda frame: 255 - frame)
  with running([synthetic()], [painter(), invert]) as server, ws_connect(server) as ws, \
      ws_connect(server) as other:
    hello = control_until(ws, "hello")
    assert hello["text_models"] == ["painter"] and hello["text"] == "a red square"
    control_until(other, "hello")
    image = decode(receive(ws, 1)[0][0]).astype(int)
    assert image[..., 0].mean() > 200 and image[..., 2].mean() < 30
    for message, expect in ((json.dumps({"type": "text", "text": "a purple square"}),
                             "no colour in ['a', 'purple', 'square']"),
                            (json.dumps({"type": "text", "text": 3}), "text takes"),
                            (json.dumps({"type": "text", "text": "blue", "x": 1}), "text takes"),
                            (json.dumps({"type": "text", "text": "blue " * 50}), "at most 200")):
      ws.send(message)
      assert expect in control_until(ws, "error")["message"]
    ws.send(json.dumps({"type": "text", "text": "a blue square"}))
    state = control_until(other, "state")  # every viewer hears of the new sentence
    while state["text"] != "a blue square":  # (after any state sent before it, e.g. "streaming")
      state = control_until(other, "state")
    assert state["picked_by"] == hello["you"]
    for _ in range(3):  # frames in flight before the change may still arrive
      receive(ws, 1)
    image = decode(receive(ws, 1)[0][0]).astype(int)
    assert image[..., 2].mean() > 200 and image[..., 0].mean() < 30
    ws.send(json.dumps({"type": "select", "model": "invert"}))
    assert control_until(ws, "state")["text"] is None
    ws.send(json.dumps({"type": "text", "text": "a green square"}))
    assert "model 'invert' takes no text: pick painter" in control_until(ws, "error")["message"]
