#!/usr/bin/env bash
# Sets everything up, then runs the default experiment (extra args are Hydra overrides).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/python -m experiments.train "$@"
