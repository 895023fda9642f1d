#!/usr/bin/env bash
# The main job: ProGAN grows 4x4 -> 32x32 on Fashion-MNIST on a CPU in minutes (runlocal),
# writing runs/fashion_mnist_32_local/{metrics.jsonl,figures/*.png}. Extra flags pass through.
# Data: $READINGNOTES_DATA (default ../shared/data where it exists), else Debian's
# dataset-fashion-mnist package (installed here if missing), else a download of the official files.
. "$(dirname "$0")/venv.sh"
if [ -z "${READINGNOTES_DATA:-}" ] && [ -d ../shared/data ]; then
  export READINGNOTES_DATA="$(cd ../shared/data && pwd)"
fi
# No data folder: install Debian's Fashion-MNIST package (/usr/share/datasets/fashion-mnist).
if [ -z "${READINGNOTES_DATA:-}" ] && [ ! -d /usr/share/datasets/fashion-mnist ] \
    && command -v apt-get >/dev/null; then
  sudo=$([ "$(id -u)" = 0 ] || echo sudo)
  { $sudo apt-get install -y -qq dataset-fashion-mnist \
      || { $sudo apt-get update -qq && $sudo apt-get install -y -qq dataset-fashion-mnist; }; } >/dev/null \
    || echo "main.sh: could not install dataset-fashion-mnist; trying the other sources" >&2
fi
python -m experiments.train --config experiments/configs/progan/fashion_mnist_32.py:runlocal \
  --workdir "${WORKDIR:-runs/fashion_mnist_32_local}" "$@"
