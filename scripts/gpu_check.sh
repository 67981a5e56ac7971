#!/usr/bin/env bash
# The prepared GPU check (benchmarks/gpu_check.py): every CUDA path of the project in under
# 8 minutes, one JSON and one Markdown table in runs/gpu_check/ (or --out DIR).
#
#   bash scripts/gpu_check.sh              # on a machine with one CUDA GPU
#   bash scripts/gpu_check.sh --dry-run    # what a CPU-only machine does anyway
#
# It uses the python on PATH (or $PYTHON), which must already have torch >= 2.4: the project is
# installed with --no-deps so that torch, CUDA and whatever else is there stay as they are
# (set GPU_CHECK_NO_INSTALL=1 to skip even that and run from the tree). Packages the project
# would like but the machine lacks (PyAV, DALI, ...) are named in the report, never installed.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PY="${PYTHON:-python3}"
cd "$ROOT"
if ! "$PY" -c "import torch, numpy" 2>/dev/null; then
  echo "[gpu_check] $PY has no torch (or numpy): install torch >= 2.4 for your CUDA first" >&2
  exit 2
fi
if [ "${GPU_CHECK_NO_INSTALL:-0}" != "1" ]; then
  if ! "$PY" -m pip install --quiet --no-deps -e . >/dev/null 2>&1; then
    echo "[gpu_check] pip install --no-deps -e . failed; running from the tree (PYTHONPATH)" >&2
  fi
fi
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
exec "$PY" -m benchmarks.gpu_check "$@"
