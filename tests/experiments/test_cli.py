"""experiments.cli: bad input is one line on stderr and exit code 2."""
import pathlib
import subprocess
import sys

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
