#!/usr/bin/env bash
# TokenMill against llama.cpp on the same weights and the same machine (issue 6's table).
#
#   scripts/llamacpp/compare.sh [DTYPE ...]        (default: Q4_0 Q8_0 F16 F32)
#
# For each weight type: `tokenmill export` writes dummy:tinyllama-1.1b as a GGUF file, then llama.cpp (the CPU build
# node-llama-cpp publishes on npm, driven by bench.mjs: one llama_decode per step, as llama-bench and
# llama-batched-bench do) and `tokenmill bench` run it in turn:
#   - pp512 and decode of one sequence (64 tokens), llama.cpp twice;
#   - 32 sequences of 128 prompt tokens, then 64 decode steps of the 32 in one batch.
# Needs node and npm; NODE_LLAMA_CPP_DIR (default ~/.cache/tokenmill/node-llama-cpp) holds the npm install,
# GGUF_DIR (default /tmp/tokenmill-gguf) the exported files (F32: 4.4 GB). THREADS defaults to 2.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
nlc="${NODE_LLAMA_CPP_DIR:-$HOME/.cache/tokenmill/node-llama-cpp}"
gguf="${GGUF_DIR:-/tmp/tokenmill-gguf}"
version="${NODE_LLAMA_CPP_VERSION:-3.22.1}"
tokenmill="$root/src/Server/bin/Release/net10.0/tokenmill"
[ -x "$tokenmill" ] || dotnet build "$root/src/Server" -c Release -v q -nologo
if [ ! -d "$nlc/node_modules/node-llama-cpp" ]; then
  mkdir -p "$nlc"
  (cd "$nlc" && npm init -y >/dev/null && npm install --no-audit --no-fund --ignore-scripts "node-llama-cpp@$version")
fi
cp "$here/bench.mjs" "$nlc/bench.mjs"
mkdir -p "$gguf"
dtypes=("$@")
[ ${#dtypes[@]} -gt 0 ] || dtypes=(Q4_0 Q8_0 F16 F32)
for dtype in "${dtypes[@]}"; do
  m="$gguf/tinyllama-$dtype.gguf"
  [ -f "$m" ] || "$tokenmill" export --model dummy:tinyllama-1.1b --dtype "$dtype" --output "$m"
  echo "== $dtype $(date +%T)"
  echo "-- llama.cpp: pp512, decode 1 sequence"
  (cd "$nlc" && THREADS="${THREADS:-2}" node bench.mjs "$m" latency 512 64)
  echo "-- tokenmill: pp512, decode 1 sequence"
  "$tokenmill" bench latency --model "$m" --input-len 512 --output-len 64 --repeat 2 | grep -E "^  (prefill|decode)_tokens_per_s"
  echo "-- llama.cpp: 32 sequences"
  (cd "$nlc" && THREADS="${THREADS:-2}" node bench.mjs "$m" batch 32 64)
  echo "-- tokenmill: 32 sequences"
  "$tokenmill" bench throughput --model "$m" --num-prompts 32 --input-len 128 --output-len 64 | grep -E "batch_decode_tokens_per_s"
done
