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

import cv2
import numpy as np
import pytest
from websockets.sync.client import connect

from readingnotes_jax.stream import __main__ as cli

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


@pytest.mark.parametrize("stop", [signal.SIGINT, signal.SIGTERM])
def test_command_streams_and_stops_cleanly(clip, stop):
  # A shell starting the suite in the background (`cmd &`) makes it ignore SIGINT, and children
  # inherit that: the child restores Python's default handler itself (as from a terminal), then
  # runs the command. Not preexec_fn: that makes subprocess fork() this process, which has JAX's
  # threads by now (JAX warns it may deadlock); without it, vfork/posix_spawn and exec at once.
  process = subprocess.Popen(
      [sys.executable, "-c", _RUN_WITH_SIGINT, "--source", f"demo={clip}", "--port", "0",
       "--loop", "--fps", "50"], cwd=REPO, stderr=subprocess.PIPE, text=True)
  lines = queue.Queue()
  reader = threading.Thread(target=lambda: [lines.put(l) for l in process.stderr], daemon=True)
  reader.start()
  try:
    while True:
      line = lines.get(timeout=30)
      match = re.search(r"serving demo \(none\) at http://127\.0\.0\.1:(\d+)/", line)
      if match:
        break
    with connect(f"ws://127.0.0.1:{match.group(1)}/ws", max_size=None) as ws:
      assert json.loads(ws.recv(timeout=5))["sources"] == ["demo"]
      frames = 0
      while frames < 15:  # more than the clip's 10 frames: --loop restarts it
        frames += isinstance(ws.recv(timeout=5), bytes)
    process.send_signal(stop)
    assert process.wait(timeout=10) == 0
    reader.join(5)
    assert "Traceback" not in "".join(lines.queue)
  finally:
    process.kill()
    process.wait()


def run_main(capsys, *argv) -> str:
  assert cli.main(list(argv)) == 2
  err = capsys.readouterr().err.strip().splitlines()
  assert err[-1].startswith("error: ")
  return err[-1]


def test_bad_input_is_one_line_and_exit_2(capsys, tmp_path, clip):
  assert "no such file" in run_main(capsys, "--source", str(tmp_path / "missing.avi"))
  assert "no source to stream" in run_main(capsys)
  assert "unknown model 'nope'" in run_main(capsys, "--source", str(clip), "--model", "nope",
                                            "--checkpoint", str(tmp_path))
  assert "--checkpoint" in run_main(capsys, "--source", str(clip), "--model", "pspnet")
  assert "--quality" in run_main(capsys, "--source", str(clip), "--quality", "0")
  assert "same name" in run_main(capsys, "--source", f"a={clip}", "--source", f"a={clip}")
  with socket.socket() as busy:
    busy.bind(("127.0.0.1", 0))
    busy.listen()
    port = busy.getsockname()[1]
    assert "is in use" in run_main(capsys, "--source", str(clip), "--port", str(port))
