#!/usr/bin/env bash
# Prompt optimizers on Iris with Qwen2.5-0.5B (embedded llama.cpp), 50/50/50 split, seed 0:
# zero-shot, BootstrapRandomSearch and MIPRO light. Each writes a run folder under
# $OUT (default benchmarks/out/iris-prompt); summarize with benchmarks/summarize_runs.py.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-benchmarks/out/iris-prompt}
COMMON=(--task iris --model qwen2.5-0.5b --seed 0 --threads 2)
.venv/bin/cotune optimize "${COMMON[@]}" --optimizer labeled --set k=0 --run-dir "$OUT/zero-shot"
.venv/bin/cotune optimize "${COMMON[@]}" --optimizer random-search --run-dir "$OUT/random-search"
.venv/bin/cotune optimize "${COMMON[@]}" --optimizer mipro --preset light --run-dir "$OUT/mipro-light"
