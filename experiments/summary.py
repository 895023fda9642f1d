"""Prints per-network parameter counts and FLOPs per train step of a config.

The last stdout line is one JSON object: {"params": {"<network>": N, ...}, "flops_per_step": F, ...}.

  python -m experiments.summary --config experiments/configs/progan/celeba_hq_1024.py
"""
import json

from experiments import cli

cli.define_config_flags(with_workdir=False)


def main(FLAGS):
  print(json.dumps(cli.paper_module(FLAGS.config).summary(FLAGS.config)))


if __name__ == "__main__":
  cli.run(main)
