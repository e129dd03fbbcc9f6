#!/usr/bin/env bash
# Build llama.cpp's tools (default: llama-server) from the source vendored in the
# llama-cpp-python sdist that cotune pins, CPU only, into .venv/llama-server/bin.
# Idempotent: a target already built with the same source and flags is kept. The source and
# the build tree stay in .venv/llama-server, so another target (e.g. llama-batched-bench for
# benchmarks/engine_throughput.py) only compiles its own files.
#   scripts/build_llama_server.sh [TARGET ...]     (COTUNE_BUILD_JOBS: parallel jobs, default 2)
set -euo pipefail
cd "$(dirname "$0")/.."
VERSION=0.3.36
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(llama-server)
root=.venv/llama-server
flags=(
  -DCMAKE_BUILD_TYPE=Release -DBUILD_SHARED_LIBS=OFF
  -DGGML_CUDA=OFF -DGGML_METAL=OFF -DGGML_VULKAN=OFF -DGGML_OPENMP=ON
  -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF
  -DLLAMA_BUILD_UI=OFF -DLLAMA_USE_PREBUILT_UI=OFF  # no web UI: nothing to download at build
  -DLLAMA_OPENSSL=OFF
)
source scripts/llama_cflags.sh
if [ -n "$LLAMA_CFLAGS" ]; then
  flags+=("-DCMAKE_C_FLAGS=$LLAMA_CFLAGS" "-DCMAKE_CXX_FLAGS=$LLAMA_CFLAGS")
fi
want="llama-cpp-python==$VERSION ${flags[*]}"

missing=()
for target in "${targets[@]}"; do
  if [ ! -x "$root/bin/$target" ] || [ "$(cat "$root/.built-$target" 2>/dev/null)" != "$want" ]; then
    missing+=("$target")
  fi
done
[ ${#missing[@]} -gt 0 ] || exit 0

if ! command -v cmake >/dev/null; then
  .venv/bin/python -m pip install --quiet --progress-bar off cmake ninja
  export PATH="$PWD/.venv/bin:$PATH"
fi
generator=()
if command -v ninja >/dev/null; then generator=(-G Ninja); fi

src=$root/src/llama.cpp
if [ "$(cat "$root/.source" 2>/dev/null)" != "$VERSION" ] || [ ! -f "$src/CMakeLists.txt" ]; then
  echo "building ${missing[*]} from llama-cpp-python $VERSION (a few minutes the first time)"
  rm -rf "$root/src" "$root/build"
  download=$(mktemp -d)
  trap 'rm -rf "$download"' EXIT
  .venv/bin/python -m pip download --quiet --no-binary :all: --no-deps \
    "llama-cpp-python==$VERSION" -d "$download"
  mkdir -p "$root/src"
  tar -xzf "$download/llama_cpp_python-$VERSION.tar.gz" -C "$download"
  mv "$download/llama_cpp_python-$VERSION/vendor/llama.cpp" "$src"
  echo "$VERSION" > "$root/.source"
fi

start=$(date +%s)
nice cmake -S "$src" -B "$root/build" "${generator[@]}" "${flags[@]}" >"$root/configure.log" 2>&1 \
  || { tail -40 "$root/configure.log"; exit 1; }
nice cmake --build "$root/build" --target "${missing[@]}" -j "${COTUNE_BUILD_JOBS:-2}" \
  >"$root/build.log" 2>&1 || { tail -40 "$root/build.log"; exit 1; }
mkdir -p "$root/bin"
for target in "${missing[@]}"; do
  install -m 755 "$root/build/bin/$target" "$root/bin/$target"
  echo "$want" > "$root/.built-$target"
done
echo "built ${missing[*]} in $(( $(date +%s) - start )) s: $root/bin"
