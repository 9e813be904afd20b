#!/usr/bin/env bash
# Creates ./.venv (or $VENV) with the pinned requirements and this package, once;
# re-installs only when requirements.txt or pyproject.toml change. Source it or run it.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
VENV="${VENV:-.venv}"
PYTHON="${PYTHON:-python3}"
if [ ! -x "$VENV/bin/python" ]; then
  "$PYTHON" -m venv "$VENV"
fi
stamp="$VENV/.vqgan_jax_requirements"
want="$(cat requirements.txt pyproject.toml | sha256sum | cut -d' ' -f1)"
if [ "$(cat "$stamp" 2>/dev/null || true)" != "$want" ]; then
  echo "setting up $VENV (pinned requirements; about a minute)..." >&2
  log="$VENV/setup.log"
  pip=("$VENV/bin/python" -m pip install -q --disable-pip-version-check)
  if ! { "${pip[@]}" -U pip && "${pip[@]}" -r requirements.txt &&
         "${pip[@]}" --no-deps --no-build-isolation -e . ; } >"$log" 2>&1; then
    grep -v "is ignored" "$log" | tail -40 >&2
    echo "error: installing the pinned requirements into $VENV failed (log: $log)" >&2
    exit 1
  fi
  echo "$want" > "$stamp"
fi
