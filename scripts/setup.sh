#!/usr/bin/env bash
# Set up a fresh machine for development (idempotent; scripts/test.sh and .ci/run start with it).
# Installs: Debian's Fashion-MNIST (for the default bundle's recipe), the CPU build of torch,
# Debian's chromium and chromium-driver (the serve page's browser tests),
# and this project with its cpu (ONNX Runtime), export, test (pytest, ruff, ...), bench, serve and ray extras (editable).
set -euo pipefail
cd "$(dirname "$0")/.."

if ! dpkg -s dataset-fashion-mnist chromium chromium-driver >/dev/null 2>&1; then
    SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
    # chromium + chromium-driver: the headless browser the tests of `latent-onnx serve`'s page drive
    $SUDO apt-get update -qq && $SUDO apt-get install -y -qq dataset-fashion-mnist chromium chromium-driver
fi
python3 -m pip install -q torch==2.13.0          # CPU build; an unpinned torch pulls a multi-GB CUDA build
python3 -m pip install -q -e '.[cpu,export,test,bench,serve,ray]'  # cpu: ONNX Runtime's CPU build (gpu: CUDA)
