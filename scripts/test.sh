#!/usr/bin/env bash
# Sets everything up, then runs the whole test suite (8 simulated CPU devices; see tests/conftest.py).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/python -m pytest "$@"
