"""Runs the config's evaluators (`config.evals`) on the latest checkpoint in `workdir`.

The last stdout line is one JSON object of metrics, also written to
`workdir/eval.json`.

  python -m experiments.evaluate --config experiments/configs/progan/fashion_mnist_32.py:runlocal --workdir /tmp/progan
"""
import json
import pathlib

from experiments import cli
from readingnotes_jax.training import loop, runner

cli.define_config_flags(with_workdir=True)


def main(FLAGS):
  metrics = runner.evaluate(FLAGS.config, FLAGS.workdir, cli.paper_module(FLAGS.config).make_task)
  line = json.dumps(loop.jsonable(metrics))
  if runner.is_writer():
    (pathlib.Path(FLAGS.workdir) / "eval.json").write_text(line + "\n")
  print(line)


if __name__ == "__main__":
  cli.run(main)
