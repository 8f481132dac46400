#!/usr/bin/env bash
# Installs node-llama-cpp from npm once, into NODE_LLAMA_CPP_DIR (default ~/.cache/tokenmill/node-llama-cpp), and prints
# that folder. NODE_LLAMA_CPP_VERSION (default 3.22.1) picks the version. Its package holds llama.cpp twice: prebuilt CPU
# libraries (compare.sh's `node` mode, through bench.mjs) and the sources they were built from (llama/gitRelease.bundle,
# which build.sh builds).
set -euo pipefail
nlc="${NODE_LLAMA_CPP_DIR:-$HOME/.cache/tokenmill/node-llama-cpp}"
version="${NODE_LLAMA_CPP_VERSION:-3.22.1}"
if [ ! -d "$nlc/node_modules/node-llama-cpp" ]; then
  mkdir -p "$nlc"
  (cd "$nlc" && npm init -y >/dev/null && npm install --no-audit --no-fund --ignore-scripts "node-llama-cpp@$version") >&2
fi
echo "$nlc"
