#!/usr/bin/env bash
# Create .venv and install cotune with the embedded llama.cpp engine, the scale-out and
# tracking extras (Ray, MLflow: their tests run in CI) and the dev tools.
# Idempotent: reinstalls only when pyproject.toml changed. llama-cpp-python builds from
# source with gcc (about 5 minutes the first time).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
stamp=.venv/.cotune-installed
want=$(sha256sum pyproject.toml | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  .venv/bin/python -m pip install --quiet --upgrade pip
  .venv/bin/python -m pip install --quiet --progress-bar off -e ".[local,finetune,tasks,ray,mlflow,dev]"
  echo "$want" > "$stamp"
fi
