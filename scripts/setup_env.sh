#!/usr/bin/env bash
# Create (or reuse) the project's virtual environment in .venv and install the project.
# Sourced by scripts/test.sh and scripts/quickstart.sh; safe to run again: it reinstalls
# only when pyproject.toml changed since the last install.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${TEDSPAD_VENV:-$ROOT/.venv}"
PY="${PYTHON:-python3}"
EXTRAS="${1:-dev}"

if [ ! -x "$VENV/bin/python" ]; then
  echo "[setup] creating virtual environment $VENV"
  "$PY" -m venv "$VENV"
fi
STAMP="$VENV/.tedspad-installed-$EXTRAS"
WANT="$(sha256sum "$ROOT/pyproject.toml" | cut -c1-16)"
if [ ! -f "$STAMP" ] || [ "$(cat "$STAMP")" != "$WANT" ]; then
  echo "[setup] installing torch 2.14.1 / torchvision 0.29.1 and the project (extras: $EXTRAS); first time takes a few minutes"
  # Pinned first: an unpinned torch would pull a multi-GB CUDA build from the registry.
  "$VENV/bin/python" -m pip install -q --disable-pip-version-check torch==2.14.1 torchvision==0.29.1
  "$VENV/bin/python" -m pip install -q --disable-pip-version-check -e "$ROOT[$EXTRAS]"
  echo "$WANT" > "$STAMP"
fi
