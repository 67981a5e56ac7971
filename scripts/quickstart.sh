#!/usr/bin/env bash
# The main job on the embedded default: set up .venv, generate the synthetic world
# (data/synthetic, where configs/paths.yaml points) and print its summary. Extra
# arguments go to the generator, e.g. `--size tiny` or `--force`.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$ROOT/scripts/setup_env.sh" dev,dali
cd "$ROOT"
# --force: the world is deterministic, so regenerating it gives the same files.
"$ROOT/.venv/bin/python" -m aux_code.synthetic --force "$@"
