#!/usr/bin/env bash
# Sets everything up, then runs the test suite without the slow tests, in two pytest-xdist
# workers (`-n 0`: one process; 8 simulated CPU devices each;
# see tests/conftest.py). Extra args go to pytest: `-m "slow or not slow"` runs everything, as
# CI's .ci/run does; `-m slow` only the slow ones. `--dist worksteal`: a worker that runs out of
# tests takes queued ones from the other (with xdist's `load`, one worker once sat idle for the
# suite's last ~4 minutes while the other worked through its queue of multi-process tests).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/python -m pytest -n 2 --dist worksteal -m "not slow" "$@"
