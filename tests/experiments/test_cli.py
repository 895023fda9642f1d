"""experiments.cli: bad input is one line on stderr and exit code 2."""
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]

# A command whose set-up logs a warning (as the bfloat16 fallback does on an AVX2-only CPU)
# and then finds bad input.
_PROGRAM = """
import logging
from experiments import cli
from readingnotes_jax.errors import UserError
from readingnotes_jax.training import runner  # orbax logs through absl at import: a stderr handler.

def main(_):
  logging.warning("model.dtype=bfloat16: computing in float32")
  raise UserError("data.path=/nowhere is not a folder")

cli.define_config_flags(with_workdir=True)
cli.run(main, ["train.py", "--config=experiments/configs/progan/fashion_mnist_32.py:test",
               "--workdir=/tmp/unused"])
"""


def test_a_warning_logged_before_the_error_leaves_one_line_on_stderr():
  done = subprocess.run([sys.executable, "-c", _PROGRAM], cwd=ROOT, capture_output=True,
                        text=True, timeout=120)
  assert done.returncode == 2, done.stderr
  assert done.stderr.strip().splitlines() == [
      "train.py: error: data.path=/nowhere is not a folder"]
  assert "computing in float32" in done.stdout


@pytest.mark.parametrize("flags, reason", [
    (["--config=/nowhere/config.py"], "bad --config: [Errno 2] No such file or directory: "
                                      "'/nowhere/config.py'"),
    (["--config={syntax_error}"], "bad --config: invalid syntax (broken.py, line 1)"),
    (["--config=experiments/configs/progan/fashion_mnist_32.py:fast"],
     "Error whilst parsing config file: unknown config variant 'fast': use runlocal, test or "
     "key=value, comma-separated"),
    (["--config=experiments/configs/progan/fashion_mnist_32.py:test", "--config.no_such_key=1"],
     "bad --config: unknown config key 'no_such_key'"),
])
def test_a_bad_config_is_one_line_naming_the_reason(flags, reason, tmp_path):
  """ml_collections reports these as tracebacks, reports of several lines, or a wrapper line
  ending in a colon."""
  (tmp_path / "broken.py").write_text("def get_config(:\n")
  flags = [flag.format(syntax_error=tmp_path / "broken.py") for flag in flags]
  done = subprocess.run([sys.executable, "-m", "experiments.summary", *flags], cwd=ROOT,
                        capture_output=True, text=True, timeout=120)
  assert done.returncode == 2, done.stderr[-2000:]
  [line] = done.stderr.strip().splitlines()
  assert line.startswith("summary.py: error: ") and line.endswith(reason), line
