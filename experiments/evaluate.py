"""Runs the config's evaluators on the latest checkpoint in `workdir`.

The last stdout line is one JSON object of metrics, also written to
`workdir/eval.json`.

  python -m experiments.evaluate --config experiments/configs/progan/fashion_mnist_32.py:runlocal --workdir /tmp/progan
"""
import json
import pathlib

from experiments import cli

cli.define_config_flags(with_workdir=True)


def main(FLAGS):
  metrics = cli.trainer_module(FLAGS.config).evaluate(FLAGS.config, FLAGS.workdir)
  line = json.dumps(metrics)
  (pathlib.Path(FLAGS.workdir) / "eval.json").write_text(line + "\n")
  print(line)


if __name__ == "__main__":
  cli.run(main)
