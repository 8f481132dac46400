#!/usr/bin/env bash
# Builds llama.cpp's own benchmarks, llama-bench and llama-batched-bench, for this CPU (GGML_NATIVE: -march=native,
# OpenMP), with no GitHub access:
#
#   scripts/llamacpp/build.sh          (prints the folder of the two binaries)
#
# The sources: LLAMA_CPP_SRC when set (any llama.cpp checkout, e.g. the issue's build d32676d), else the git bundle that
# node-llama-cpp ships in its npm package (install.sh; llama/gitRelease.bundle: the llama.cpp it was built from, so this
# build and bench.mjs's prebuilt one run the same code). Needs cmake and a C++ compiler; about 5 minutes on 2 cores.
# LLAMA_CPP_DIR (default ~/.cache/tokenmill/llama.cpp) holds the clone and one build folder per llama.cpp commit
# (build-COMMIT); NODE_LLAMA_CPP_DIR and NODE_LLAMA_CPP_VERSION as install.sh.
set -euo pipefail
dir="${LLAMA_CPP_DIR:-$HOME/.cache/tokenmill/llama.cpp}"
command -v git >/dev/null || { echo "build.sh: git is needed" >&2; exit 1; }
src="${LLAMA_CPP_SRC:-}"
if [ -z "$src" ]; then
  src="$dir/src"
  if [ ! -d "$src/.git" ]; then
    nlc="$("$(dirname "$0")/install.sh")"
    git -c advice.detachedHead=false clone -q "$nlc/node_modules/node-llama-cpp/llama/gitRelease.bundle" "$src"
  fi
fi
commit="$(git -C "$src" rev-parse --short HEAD)"
build="$dir/build-$commit"
if [ -x "$build/bin/llama-bench" ] && [ -x "$build/bin/llama-batched-bench" ]; then echo "$build/bin"; exit 0; fi
for tool in cmake c++; do
  command -v "$tool" >/dev/null || { echo "build.sh: $tool is needed to build llama.cpp" >&2; exit 1; }
done
echo "build.sh: llama.cpp $commit from $src" >&2
cmake -S "$src" -B "$build" -DCMAKE_BUILD_TYPE=Release -DGGML_NATIVE=ON -DLLAMA_CURL=OFF \
  -DLLAMA_BUILD_SERVER=OFF -DLLAMA_BUILD_TESTS=OFF >&2
cmake --build "$build" -j "$(nproc)" --target llama-bench llama-batched-bench >&2
echo "$build/bin"
