#!/usr/bin/env bash
# gpu-check.sh — take TokenMill's CUDA kernels to a GPU machine and run them there.
#
#   scripts/gpu-check.sh publish   (here)   self-contained, trimmed linux-x64 build + tarball; no .NET needed on the GPU box
#   scripts/gpu-check.sh run       (there)  in the unpacked folder: driver/NVRTC info, compile check, GPU self-test,
#                                            kernel timings, NCCL on one rank, the forward pass and greedy generate
#                                            compared with the CPU
#
# The GPU box needs the NVIDIA driver (libcuda.so.1) and NVRTC 11.2+ (libnvrtc.so.11.2/12/13: the CUDA
# toolkit's, or 'pip install nvidia-cuda-nvrtc-cu12' and TOKENMILL_CUDA_LIB_DIR=<site-packages>/nvidia/cuda_nvrtc/lib).
# First run on an H100 (driver 580, CUDA 13) on 2026-11-26: every check passed; the README's CUDA section has the figures.
set -euo pipefail

case "${1:-}" in
publish)
  cd "$(dirname "$0")/.."
  out=artifacts/gpu-check
  rm -rf "$out"
  mkdir -p artifacts
  dotnet publish src/Server/Server.csproj -c Release -r linux-x64 --self-contained -p:PublishTrimmed=true -o "$out" > artifacts/gpu-check-publish.log 2>&1 \
    || { cat artifacts/gpu-check-publish.log; echo "gpu-check: dotnet publish failed (log above, and in artifacts/gpu-check-publish.log)"; exit 1; }
  cp scripts/gpu-check.sh "$out/"
  tar -czf artifacts/tokenmill-gpu-check.tar.gz -C artifacts gpu-check
  echo "wrote artifacts/tokenmill-gpu-check.tar.gz ($(du -h artifacts/tokenmill-gpu-check.tar.gz | cut -f1)). On the GPU box:"
  echo "  scp artifacts/tokenmill-gpu-check.tar.gz GPUBOX:"
  echo "  ssh GPUBOX 'tar -xzf tokenmill-gpu-check.tar.gz && cd gpu-check && ./gpu-check.sh run'"
  ;;
run)
  cd "$(dirname "$0")"
  command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,driver_version,compute_cap,memory.total --format=csv || echo "nvidia-smi not found"
  status=0
  # NVRTC and cuBLAS from the PyTorch venv's wheels (nvidia/*/lib) when no system copy loads and no override is set.
  for pair in NVRTC:libnvrtc.so CUBLAS:libcublas.so NCCL:libnccl.so; do
    var="TOKENMILL_${pair%%:*}_LIBRARY" soname="${pair#*:}"
    if [ -z "${!var:-}" ] && ! ldconfig -p 2>/dev/null | grep -q "$soname"; then
      lib=$(find / -path "*/nvidia/*/lib/$soname.*" -not -path "/proc/*" 2>/dev/null | sort | tail -1 || true)
      # Its folder goes on the search path too: NVRTC dlopens libnvrtc-builtins by soname, cuBLAS its cuBLASLt.
      if [ -n "$lib" ]; then export "$var=$lib" LD_LIBRARY_PATH="$(dirname "$lib")${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"; echo "$var=$lib"; fi
    fi
  done
  ./tokenmill kernels check --arch 80,90 || status=1      # NVRTC only
  # With the toolkit's ptxas: registers, spills and occupancy against KernelLaunches' budgets (set with CUDA 11.8's ptxas,
  # so a newer one may differ by a few registers: reported, not failed).
  ptxas=$(command -v ptxas || ls /usr/local/cuda/bin/ptxas 2>/dev/null || true)
  [ -n "$ptxas" ] && { ./tokenmill kernels check --arch 90 --ptxas "$ptxas" || echo "(ptxas budgets: see above)"; }
  ./tokenmill kernels selftest --device "${DEVICE:-0}" || status=1   # every kernel on the GPU vs scalar references
  ./tokenmill kernels bench --device "${DEVICE:-0}" --output-json kernels-bench.json || status=1
  ./tokenmill kernels nccl --ranks 1 || status=1          # needs libnccl (TOKENMILL_NCCL_LIBRARY or the CUDA lib dir)
  ./tokenmill kernels forward --model dummy:tinyllama-1.1b --dummy-layers 2 || status=1
  ./tokenmill kernels forward --model dummy:tinyllama-1.1b --dummy-layers 2 --kv-cache-dtype f16 || status=1
  ./tokenmill kernels forward --model dummy:tinyllama-1.1b --dummy-layers 2 --kv-cache-dtype q8_0 || status=1
  # Greedy generate on both devices: the token ids must be identical. The short prompt's steps all run on the GEMV
  # kernels; the three prompts of stories260K (F32) prefill 8+ rows at once, on cuBLAS's Sgemm; 100 tokens take the
  # contexts past 64 positions, where one sequence's decode splits into 64-position partitions. The dummy model is F16:
  # with Q8_0 weights the CPU quantizes its activations to 8 bits (llama.cpp's vec_dot_q8_0) and the GPU does not, so
  # the random model's near-tied logits part after a dozen tokens; F16 (and F32) weights give the same products.
  printf '%s\n' "Once upon a time there was a little girl named Lily" "The little dog ran to the park to play with the ball" "Tom and Sue" > prompts.txt
  # The last run keeps keys and values in f16 on both devices (--kv-cache-dtype f16).
  for run in "${STORIES:-stories260K.gguf}|--prompt|Once upon a time|f32|40" "dummy:tinyllama-1.1b|--prompt|Once upon a time|f32|100|F16" \
             "${STORIES:-stories260K.gguf}|--prompts-file|prompts.txt|f32|100" "${STORIES:-stories260K.gguf}|--prompts-file|prompts.txt|f16|40"; do
    IFS='|' read -r model flag value kv tokens dtype <<< "$run"
    [ -e "$model" ] || [[ "$model" == dummy:* ]] || { echo "skip $model (not found; set STORIES=path)"; continue; }
    for device in cpu cuda; do
      ./tokenmill generate --model "$model" ${dtype:+--dtype "$dtype"} "$flag" "$value" --max-tokens "$tokens" --temperature 0 --kv-cache-dtype "$kv" --device $device > "generate-$device.txt" || status=1
    done
    if cmp -s generate-cpu.txt generate-cuda.txt; then echo "generate $model $flag (KV $kv): cuda == cpu"; else echo "generate $model $flag (KV $kv): cuda != cpu"; diff generate-cpu.txt generate-cuda.txt || true; status=1; fi
  done
  ./tokenmill bench latency --device cuda --dtype Q8_0 --input-len 512 --output-len 128 --repeat 2 || status=1
  ./tokenmill bench throughput --device cuda --dtype Q8_0 --num-prompts 4 --input-len 128 --output-len 128 || status=1
  if command -v compute-sanitizer >/dev/null; then   # out-of-bounds and misaligned accesses of every kernel
    compute-sanitizer --tool memcheck --error-exitcode 1 --print-limit 20 ./tokenmill kernels selftest --device "${DEVICE:-0}" > memcheck.txt 2>&1 || status=1
    grep "ERROR SUMMARY" memcheck.txt || tail -5 memcheck.txt
  fi
  exit $status
  ;;
*)
  sed -n '2,10p' "$0"; exit 2 ;;
esac
