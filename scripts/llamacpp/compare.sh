#!/usr/bin/env bash
# TokenMill against llama.cpp on the same weights and the same machine (issue 6's table).
#
#   scripts/llamacpp/compare.sh [DTYPE ...]        (default: Q4_0 Q8_0 F16 F32)
#
# For each weight type: `tokenmill export` writes dummy:tinyllama-1.1b as a GGUF file, then llama.cpp and
# `tokenmill bench` run it in turn:
#   - pp512 and decode of one sequence (64 tokens) from an empty context (llama-bench's tg64; ours after a one-token
#     prompt), llama.cpp twice (llama-bench -r 2: their mean);
#   - decode of one sequence (64 tokens) after 512 prompt tokens (llama-bench -d 512; ours after pp512), where attention
#     reads a 512-position cache each step;
#   - 32 sequences of 128 prompt tokens, then 64 decode steps of the 32 in one batch;
# then a table of both figures and their ratio for each type.
# Which llama.cpp (LLAMA_CPP):
#   - native (the default where cmake and a C++ compiler are found): llama-bench (-p 512 -n 64 -r 2) and
#     llama-batched-bench (-npp 128 -ntg 64 -npl 32; S_TG), the tools of the issue's table, built for this CPU by
#     build.sh (from LLAMA_CPP_SRC, or the sources node-llama-cpp ships);
#   - node: the CPU build node-llama-cpp publishes on npm, driven by bench.mjs (one llama_decode per step, as the two
#     tools do); no compiler needed.
# Needs node and npm; NODE_LLAMA_CPP_DIR (default ~/.cache/tokenmill/node-llama-cpp) holds the npm install (install.sh),
# GGUF_DIR (default /tmp/tokenmill-gguf) the exported files (F32: 4.4 GB). THREADS defaults to 2.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
gguf="${GGUF_DIR:-/tmp/tokenmill-gguf}"
tokenmill="$root/src/Server/bin/Release/net10.0/tokenmill"
[ -x "$tokenmill" ] || dotnet build "$root/src/Server" -c Release -v q -nologo
nlc="$("$here/install.sh")"
cp "$here/bench.mjs" "$nlc/bench.mjs"
threads="${THREADS:-2}"
mode="${LLAMA_CPP:-}"
if [ -z "$mode" ]; then
  if command -v cmake >/dev/null && command -v c++ >/dev/null; then mode=native; else mode=node; fi
fi
case "$mode" in
  native) bin="$("$here/build.sh")" ;;
  node) ;;
  *) echo "compare.sh: LLAMA_CPP must be native or node, not '$mode'" >&2; exit 2 ;;
esac
# Every number that follows a label in the text, one a line: a field of llama-bench's and llama-batched-bench's JSON
# lines ('"avg_ts":'), or a figure of the lines below ("pp512:", "tg64:", "decode 64:", "prefill_tokens_per_s", ...).
values() { grep -o "$1 *[0-9.]*" | awk '{ print $NF + 0 }'; }
# The best of them (node's latency runs print two), for the summary.
best() { values "$1" | awk '{ if ($1 > m) m = $1 } END { printf "%.1f", m }'; }
llama_latency() {
  if [ "$mode" = node ]; then (cd "$nlc" && THREADS="$threads" node bench.mjs "$1" latency 512 64); return; fi
  "$bin/llama-bench" -m "$1" -p 512 -n 64 -t "$threads" -r 2 -o jsonl 2>/dev/null | values '"avg_ts":' \
    | paste -sd' ' | awk '{ printf "pp512: %.1f tok/s   tg64: %.1f tok/s (llama-bench, mean of 2)\n", $1, $2 }' \
    || { echo "compare.sh: llama-bench failed on $1 (run it by hand to see why)" >&2; return 1; }
}
llama_depth() {
  if [ "$mode" = node ]; then (cd "$nlc" && THREADS="$threads" node bench.mjs "$1" depth 512 64); return; fi
  "$bin/llama-bench" -m "$1" -p 0 -n 64 -d 512 -t "$threads" -r 2 -o jsonl 2>/dev/null | values '"avg_ts":' \
    | awk '{ printf "tg64 @ d512: %.1f tok/s (llama-bench -d 512, mean of 2)\n", $1 }' \
    || { echo "compare.sh: llama-bench -d 512 failed on $1 (run it by hand to see why)" >&2; return 1; }
}
llama_batch() {
  if [ "$mode" = node ]; then (cd "$nlc" && THREADS="$threads" node bench.mjs "$1" batch 32 64); return; fi
  "$bin/llama-batched-bench" -m "$1" -c 6144 -b 2048 -ub 512 -npp 128 -ntg 64 -npl 32 -t "$threads" \
    --output-format jsonl 2>/dev/null | values '"speed_tg":' | awk '{ printf "32 seqs decode 64: %.1f tok/s total (llama-batched-bench S_TG)\n", $1 }' \
    || { echo "compare.sh: llama-batched-bench failed on $1 (run it by hand to see why)" >&2; return 1; }
}
# One cell of the summary: TokenMill's figure, llama.cpp's in brackets, their ratio.
cell() { awk -v t="$1" -v l="$2" 'BEGIN { printf "%s (%s) ×%.2f", t, l, (l > 0 ? t / l : 0) }'; }
mkdir -p "$gguf"
dtypes=("$@")
[ ${#dtypes[@]} -gt 0 ] || dtypes=(Q4_0 Q8_0 F16 F32)
summary=""
for dtype in "${dtypes[@]}"; do
  m="$gguf/tinyllama-$dtype.gguf"
  [ -f "$m" ] || "$tokenmill" export --model dummy:tinyllama-1.1b --dtype "$dtype" --output "$m"
  echo "== $dtype $(date +%T)"
  echo "-- llama.cpp ($mode): pp512, decode 1 sequence"
  ll="$(llama_latency "$m")"; echo "$ll"
  echo "-- llama.cpp ($mode): decode 1 sequence after 512 tokens"
  ld="$(llama_depth "$m")"; echo "$ld"
  echo "-- tokenmill: pp512, then decode 1 sequence after the 512 tokens"
  tl="$("$tokenmill" bench latency --model "$m" --input-len 512 --output-len 64 --repeat 2 | grep -E "^  (prefill|decode)_tokens_per_s")"
  echo "$tl"
  echo "-- tokenmill: decode 1 sequence after a one-token prompt"
  t0="$("$tokenmill" bench latency --model "$m" --input-len 1 --output-len 64 --repeat 2 | grep -E "^  decode_tokens_per_s")"
  echo "$t0"
  echo "-- llama.cpp ($mode): 32 sequences"
  lb="$(llama_batch "$m")"; echo "$lb"
  echo "-- tokenmill: 32 sequences"
  tb="$("$tokenmill" bench throughput --model "$m" --num-prompts 32 --input-len 128 --output-len 64 | grep -E "batch_decode_tokens_per_s")"
  echo "$tb"
  summary+="| $dtype | $(cell "$(best prefill_tokens_per_s <<<"$tl")" "$(best "pp512:" <<<"$ll")")"
  summary+=" | $(cell "$(best decode_tokens_per_s <<<"$t0")" "$(best "tg64:" <<<"$ll")")"
  summary+=" | $(cell "$(best decode_tokens_per_s <<<"$tl")" "$(best "d512:" <<<"$ld")")"
  summary+=" | $(cell "$(best batch_decode_tokens_per_s <<<"$tb")" "$(best "decode 64:" <<<"$lb")") |"$'\n'
done
echo
echo "TokenMill (llama.cpp, $mode) and the ratio; the issue's bar: ×1.2, ×1.2, ×1.5 (decode after 512 tokens: not in the issue)"
echo "| weights | pp512 tok/s | decode, 1 sequence | decode, 1 sequence after 512 tokens | decode, 32 sequences |"
echo "|---|---:|---:|---:|---:|"
printf "%s" "$summary"
