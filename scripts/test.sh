#!/usr/bin/env bash
# Set up a fresh machine for development (scripts/setup.sh) and run the test suite; arguments go to pytest
# (tiers: CONTRIBUTING.md).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
python3 -m pytest -q "$@"
