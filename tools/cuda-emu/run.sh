#!/usr/bin/env bash
# Runs the CUDA kernels on the CPU (cuda_emu.h) against scalar references. Needs g++ 12+ (C++20, _Float16).
# Usage: run.sh [KERNELS_DIR] [extra g++ flags...]   (KERNELS_DIR defaults to src/Kernels/cuda)
# Under ThreadSanitizer, with all of a block's threads running at once:
#   run.sh src/Kernels/cuda -fsanitize=thread -DTM_EMU_FREE_RUNNING -g
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
kernels="${1:-$here/../../src/Kernels/cuda}"
shift || true
out="$(mktemp "${TMPDIR:-/tmp}/tokenmill-kernels-emu.XXXXXX")"
trap 'rm -f "$out"' EXIT
g++ -std=c++20 -O1 -pthread -Wall -Wno-unknown-pragmas -Wno-unused-function -I "$kernels" "$@" -o "$out" "$here/kernels_test.cpp"
"$out"
