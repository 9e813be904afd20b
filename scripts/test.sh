#!/usr/bin/env bash
# Sets up the pinned environment if needed, then runs the whole test suite and reports
# its 15 slowest steps. Tests run in $PYTEST_WORKERS processes (default 2: the suite is
# bound by single-threaded XLA compilation), each test file within one process so that
# its module and session fixtures are built once.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh
exec "${VENV:-.venv}/bin/python" -m pytest -q --durations=15 -n "${PYTEST_WORKERS:-2}" \
  --dist loadfile "$@"
