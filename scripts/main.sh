#!/usr/bin/env bash
# The main job: ProGAN grows 4x4 -> 32x32 on Fashion-MNIST on a CPU in minutes (runlocal),
# writing runs/fashion_mnist_32_local/{metrics.jsonl,figures/*.png}. Extra flags pass through.
. "$(dirname "$0")/venv.sh"
python -m experiments.train --config experiments/configs/progan/fashion_mnist_32.py:runlocal \
  --workdir "${WORKDIR:-runs/fashion_mnist_32_local}" "$@"
