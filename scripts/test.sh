#!/usr/bin/env bash
# Sets up the pinned environment if needed, then runs the whole test suite and reports
# its 15 slowest steps.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh
exec "${VENV:-.venv}/bin/python" -m pytest -q --durations=15 "$@"
