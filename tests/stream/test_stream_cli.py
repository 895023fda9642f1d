"""`python -m readingnotes_jax.stream`: a real process, and one-line errors with exit code 2."""
import json
import pathlib
import queue
import re
import signal
import socket
import subprocess
import sys
import threading
import time

import cv2
import numpy as np
import pytest
from websockets.sync.client import connect

from readingnotes_jax.stream import __main__ as cli
from stream_testlib import raw_websocket

REPO = pathlib.Path(__file__).resolve().parents[2]
_RUN_WITH_SIGINT = ("import runpy, signal\n"
                    "signal.signal(signal.SIGINT, signal.default_int_handler)\n"
                    "runpy.run_module('readingnotes_jax.stream', run_name='__main__', "
                    "alter_sys=True)")


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> pathlib.Path:
  path = tmp_path_factory.mktemp("video") / "clip.avi"
  writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 25, (64, 48))
  for i in range(10):
    writer.write(np.full((48, 64, 3), 20 * i, np.uint8))
  writer.release()
  return path


@pytest.fixture(scope="module")
def noisy_clip(tmp_path_factory) -> pathlib.Path:
  """Frames of noise (~60 KB each as JPEG) that fill a non-reading viewer's buffers at once."""
  path = tmp_path_factory.mktemp("video") / "noise.avi"
  rng = np.random.default_rng(0)
  writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 25, (320, 240))
  for _ in range(10):
    writer.write(rng.integers(0, 256, (240, 320, 3), dtype=np.uint8))
  writer.release()
  return path


def rest_of_output(lines: queue.Queue) -> str:
  """What the process wrote after its `serving` line, up to its end."""
  rest = []
  while (line := lines.get(timeout=10)) is not None:
    rest.append(line)
  return "".join(rest)


def start_command(*args) -> tuple[subprocess.Popen, queue.Queue, str]:
  """Starts `python -m readingnotes_jax.stream ARGS --port 0` (spawned, not forked); returns
  the process, its stderr lines (read by a thread) and the port it printed."""
  # A shell starting the suite in the background (`cmd &`) makes it ignore SIGINT, and children
  # inherit that: the child restores Python's default handler itself (as from a terminal), then
  # runs the command. Not preexec_fn: that makes subprocess fork() this process, which has JAX's
  # threads by now (JAX warns it may deadlock); without it, vfork/posix_spawn and exec at once.
  process = subprocess.Popen([sys.executable, "-c", _RUN_WITH_SIGINT, *args, "--port", "0"],
                             cwd=REPO, stderr=subprocess.PIPE, text=True)
  lines = queue.Queue()

  def read():
    for line in process.stderr:
      lines.put(line)
    lines.put(None)  # end of output

  threading.Thread(target=read, daemon=True).start()
  while True:
    line = lines.get(timeout=30)
    match = re.search(r"serving \S+ \(none\) at http://127\.0\.0\.1:(\d+)/", line)
    if match:
      return process, lines, match.group(1)


@pytest.mark.parametrize("stop", [signal.SIGINT, signal.SIGTERM])
def test_command_streams_and_stops_cleanly(clip, stop):
  process, lines, port = start_command("--source", f"demo={clip}", "--loop", "--fps", "50")
  try:
    with connect(f"ws://127.0.0.1:{port}/ws", max_size=None) as ws:
      assert json.loads(ws.recv(timeout=5))["sources"] == ["demo"]
      frames = 0
      while frames < 15:  # more than the clip's 10 frames: --loop restarts it
        frames += isinstance(ws.recv(timeout=5), bytes)
    process.send_signal(stop)
    assert process.wait(timeout=10) == 0
    assert "Traceback" not in rest_of_output(lines)
  finally:
    process.kill()
    process.wait()


def test_sigterm_stops_within_a_second_with_a_stuck_viewer(noisy_clip):
  process, lines, port = start_command("--source", f"noise={noisy_clip}", "--loop", "--fps", "50")
  try:
    stuck = raw_websocket(int(port), rcvbuf=4096)  # handshake done, then never reads
    silent = socket.create_connection(("127.0.0.1", int(port)))  # never sends a request
    time.sleep(1.0)  # 50 frames of ~60 KB: far more than its ~0.5 MB of socket buffers
    start = time.monotonic()
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=20) == 0
    elapsed = time.monotonic() - start
    stuck.close()
    silent.close()
    assert "Traceback" not in rest_of_output(lines)
    assert elapsed < 1.0, f"took {elapsed:.2f} s"
  finally:
    process.kill()
    process.wait()


def run_main(capfd, *argv) -> str:
  """The one stderr line (native libraries' writes included) of a refused command."""
  capfd.readouterr()
  assert cli.main(list(argv)) == 2
  [line] = capfd.readouterr().err.strip().splitlines()
  assert line.startswith("error: ")
  return line


def test_bad_input_is_one_line_and_exit_2(capfd, tmp_path, clip):
  assert "no such file" in run_main(capfd, "--source", str(tmp_path / "missing.avi"))
  assert "no source to stream" in run_main(capfd)
  assert "cannot open camera 99" in run_main(capfd, "--source", "99")  # OpenCV warns on stderr
  assert "'cam=': no path or camera index" in run_main(capfd, "--source", "cam=")
  assert "'': no path or camera index" in run_main(capfd, "--source", "")
  assert "unknown model 'nope'" in run_main(capfd, "--source", str(clip), "--model", "nope",
                                            "--checkpoint", str(tmp_path))
  assert "--checkpoint" in run_main(capfd, "--source", str(clip), "--model", "pspnet")
  assert "--segmenter is for --model fashiongan" in run_main(
      capfd, "--source", str(clip), "--segmenter", str(tmp_path))
  assert "needs --segmenter" in run_main(capfd, "--source", str(clip), "--model", "fashiongan",
                                         "--checkpoint", str(tmp_path))
  assert "--quality" in run_main(capfd, "--source", str(clip), "--quality", "0")
  assert "argument --fps: invalid float value: 'abc'" in run_main(capfd, "--fps", "abc")
  workdirs = {}
  for trainer in ("progan", "pspnet"):
    workdirs[trainer] = tmp_path / trainer
    workdirs[trainer].mkdir()
    (workdirs[trainer] / "config.json").write_text(json.dumps({"trainer": trainer}))
  for model, other in (("pspnet", "progan"), ("progan", "pspnet"), ("detect_track", "pspnet")):
    assert f"was trained by '{other}', not {model}" in run_main(
        capfd, "--source", str(clip), "--model", model, "--checkpoint", str(workdirs[other]))
  assert "was trained by 'progan', not pspnet" in run_main(  # fashiongan's --segmenter
      capfd, "--source", str(clip), "--model", "fashiongan", "--checkpoint",
      str(workdirs["pspnet"]), "--segmenter", str(workdirs["progan"]))
  assert "same name" in run_main(capfd, "--source", f"a={clip}", "--source", f"a={clip}")
  with socket.socket() as busy:
    busy.bind(("127.0.0.1", 0))
    busy.listen()
    port = busy.getsockname()[1]
    assert "is in use" in run_main(capfd, "--source", str(clip), "--port", str(port))


def test_short_token_and_impossible_limits_are_refused(capfd, clip):
  with socket.socket() as busy:  # a server that took the flags would stop at the port, not serve
    busy.bind(("127.0.0.1", 0))
    busy.listen()
    common = ("--source", str(clip), "--port", str(busy.getsockname()[1]))
    assert "at least 16" in run_main(capfd, *common, "--token", "s3cret")
    assert "--max-viewers" in run_main(capfd, *common, "--max-viewers", "0")
    assert "ulimit -n" in run_main(capfd, *common, "--max-viewers", str(10**9))
    assert "--send-timeout" in run_main(capfd, *common, "--send-timeout", "-1")
