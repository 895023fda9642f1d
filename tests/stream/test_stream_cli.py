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
  process = subprocess.Popen(
      [sys.executable, "-m", "readingnotes_jax.stream", "--source", f"demo={clip}", "--port", "0",
       "--loop", "--fps", "50"], cwd=REPO, stderr=subprocess.PIPE, text=True,
      # A shell starting the suite in the background (`cmd &`) makes it ignore SIGINT, and
      # children inherit that: give the command the default, as from a terminal.
      preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
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
