#!/usr/bin/env bash
# One command for a fresh Debian/Ubuntu machine: Fashion-MNIST (apt) + the Python environment.
set -euo pipefail
cd "$(dirname "$0")/../.."
if [ ! -f /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ]; then
  SUDO=$([ "$(id -u)" = 0 ] && echo "" || echo sudo)
  $SUDO apt-get update -qq && $SUDO apt-get install -y -qq dataset-fashion-mnist
fi
python3 -m pip install -q torch==2.13.0   # CPU build; on a GPU machine install your CUDA torch first
python3 -m pip install -q -e ".[dev]"
