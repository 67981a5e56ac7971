#!/usr/bin/env bash
# The main job on the embedded default, from a fresh checkout: set up .venv, generate the
# synthetic world (data/synthetic, where configs/paths.yaml points), then run every paper
# method through the four stages and print the tables (python -m scripts.reproduce).
# Extra arguments go to the reproduce script, e.g. `sweeps.run=[omega]` or `--config ...`.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$ROOT/scripts/setup_env.sh" dev,dali
cd "$ROOT"
# A generated world is kept: regenerating it costs time and changes nothing the pipeline needs.
if [ ! -f data/synthetic/summary.json ]; then
  "$ROOT/.venv/bin/python" -m aux_code.synthetic --force   # --force: replaces a half-written world
fi
"$ROOT/.venv/bin/python" -m scripts.reproduce "$@"
