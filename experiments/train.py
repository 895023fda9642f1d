"""Trains the experiment a config describes, resuming from `workdir/checkpoints`.

  python -m experiments.train --config experiments/configs/progan/fashion_mnist_32.py:runlocal \
      --workdir /tmp/progan [--config.KEY=VALUE ...] [--stop_after_steps N]

Several processes (one per host) run the same command with the same workdir:
on Cloud TPU, SLURM (srun) and Open MPI (mpirun) JAX finds its peers by itself;
elsewhere add `--coordinator_address HOST:PORT --num_processes N --process_id I`.
"""
from absl import flags

from experiments import cli
from readingnotes_jax.training import distributed, runner

cli.define_config_flags(with_workdir=True)
flags.DEFINE_integer("stop_after_steps", None,
                     "save and exit after this many optimizer steps of this process")
flags.DEFINE_string("coordinator_address", None, "multi-process: HOST:PORT of process 0")
flags.DEFINE_integer("num_processes", None, "multi-process: number of processes")
flags.DEFINE_integer("process_id", None, "multi-process: this process's index")


def main(FLAGS):
  distributed.initialize(FLAGS.coordinator_address, FLAGS.num_processes, FLAGS.process_id)
  runner.train(FLAGS.config, FLAGS.workdir, cli.paper_module(FLAGS.config).make_task,
               stop_after_steps=FLAGS.stop_after_steps)


if __name__ == "__main__":
  cli.run(main)
