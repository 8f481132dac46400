#!/usr/bin/env bash
# Runs the CUDA kernels on the CPU (cuda_emu.h) against scalar references. Needs g++ 12+ (C++20, _Float16).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
out="${TMPDIR:-/tmp}/tokenmill-kernels-emu"
g++ -std=c++20 -O1 -pthread -Wall -Wno-unknown-pragmas -Wno-unused-function -o "$out" "$here/kernels_test.cpp"
"$out"
