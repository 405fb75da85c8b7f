#!/usr/bin/env bash
# Sets everything up, then runs the test suite without the slow tests, in two pytest-xdist
# workers (`-n 0`: one process; 8 simulated CPU devices each;
# see tests/conftest.py). Extra args go to pytest: `-m "slow or not slow"` runs everything, as
# CI's .ci/run does; `-m slow` only the slow ones.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/python -m pytest -n 2 -m "not slow" "$@"
