#!/usr/bin/env bash
# The test command: sets up .venv if needed, then runs the default (fast, CPU) test suite.
# Extra arguments go to pytest, e.g. `bash scripts/test.sh -m slow`.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$ROOT/scripts/setup_env.sh" dev,dali
cd "$ROOT"
# The linter first (pyproject.toml [tool.ruff]): seconds, and an unused or undefined name fails CI.
"$ROOT/.venv/bin/ruff" check --no-cache .
set +e
"$ROOT/.venv/bin/python" -m pytest "$@"
rc=$?
set -e
if [ "$rc" -eq 5 ]; then
  echo "[test] pytest collected no tests: that is a failure here" >&2
fi
exit "$rc"
