#!/usr/bin/env bash
# Set up a fresh machine for development and run the test suite.
# Installs: Debian's Fashion-MNIST (for the default bundle's recipe), the CPU build of torch,
# and this project with its export, test and bench extras (editable).
set -euo pipefail
cd "$(dirname "$0")/.."

if ! dpkg -s dataset-fashion-mnist >/dev/null 2>&1; then
    SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
    $SUDO apt-get update -qq && $SUDO apt-get install -y -qq dataset-fashion-mnist
fi
python3 -m pip install -q torch==2.13.0          # CPU build; an unpinned torch pulls a multi-GB CUDA build
python3 -m pip install -q -e '.[export,test,bench]'
python3 -m pytest -q "$@"
