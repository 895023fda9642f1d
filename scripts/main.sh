#!/usr/bin/env bash
# The main job: ProGAN grows 4x4 -> 32x32 on Fashion-MNIST on a CPU in minutes (runlocal),
# writing runs/fashion_mnist_32_local/{metrics.jsonl,figures/*.png}. Extra flags pass through.
# Data: $READINGNOTES_DATA (default ../shared/data where it exists), else Debian's
# dataset-fashion-mnist package, else a download of the official files.
. "$(dirname "$0")/venv.sh"
if [ -z "${READINGNOTES_DATA:-}" ] && [ -d ../shared/data ]; then
  export READINGNOTES_DATA="$(cd ../shared/data && pwd)"
fi
python -m experiments.train --config experiments/configs/progan/fashion_mnist_32.py:runlocal \
  --workdir "${WORKDIR:-runs/fashion_mnist_32_local}" "$@"
