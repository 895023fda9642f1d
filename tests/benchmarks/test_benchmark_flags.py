"""benchmarks/: bad flags are one line on stderr and exit code 2, as for every command."""
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("module, flags, reason", [
    ("correlation", ["--repeats", "0"], "argument --repeats: 0 is not a positive integer"),
    ("correlation", ["--methods", "blocked,fast"],
     "--methods: unknown ['fast']: use some of ['conv', 'matmul', 'blocked', 'blocked_scan']"),
    ("progan_step", ["--resolution", "48"], "--resolution 48: use a power of two from 4 to 64"),
])
def test_bad_flags_are_one_line_and_exit_2(module, flags, reason):
  done = subprocess.run([sys.executable, "-m", f"benchmarks.{module}", *flags], cwd=ROOT,
                        capture_output=True, text=True, timeout=120)
  assert done.returncode == 2, done.stderr[-2000:]
  [line] = done.stderr.strip().splitlines()
  assert line.startswith(f"{module}.py: error: {reason}"), line
