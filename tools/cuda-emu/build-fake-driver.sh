#!/usr/bin/env bash
# Builds the emulated CUDA driver (fake_cuda.cpp) and prints its path. Needs g++ 12+.
# Usage: TOKENMILL_CUDA_LIBRARY=$(tools/cuda-emu/build-fake-driver.sh) tokenmill kernels selftest
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
out="${TMPDIR:-/tmp}/libcuda-emu.so"
g++ -std=c++20 -O1 -pthread -shared -fPIC -Wall -Wno-unknown-pragmas -Wno-unused-function -o "$out" "$here/fake_cuda.cpp" >&2
echo "$out"
