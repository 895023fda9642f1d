"""Trains the experiment a config describes, resuming from `workdir/checkpoints`.

  python -m experiments.train --config experiments/configs/progan/fashion_mnist_32.py:runlocal \
      --workdir /tmp/progan [--config.KEY=VALUE ...] [--stop_after_steps N]
"""
from absl import flags

from experiments import cli

cli.define_config_flags(with_workdir=True)
flags.DEFINE_integer("stop_after_steps", None,
                     "save and exit after this many optimizer steps of this process")


def main(FLAGS):
  cli.trainer_module(FLAGS.config).train_and_evaluate(
      FLAGS.config, FLAGS.workdir, stop_after_steps=FLAGS.stop_after_steps)


if __name__ == "__main__":
  cli.run(main)
