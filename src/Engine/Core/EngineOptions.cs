namespace TokenMill.Core;

/// <summary>Where the model runs (<c>--device</c>).</summary>
public enum EngineDevice
{
    /// <summary>The SIMD CPU backend, the reference every other backend is tested against.</summary>
    Cpu,

    /// <summary>One CUDA GPU through the driver API (libcuda), kernels compiled at start-up by NVRTC.</summary>
    Cuda,

    /// <summary>The CUDA backend on the emulated driver of tools/cuda-emu (built with g++): the kernels run on the CPU, slowly; for testing without a GPU.</summary>
    CudaEmulated,
}

/// <summary>Engine settings, named as vLLM's engine arguments.</summary>
public sealed record EngineOptions
{
    /// <summary>Tokens per KV block (<c>--block-size</c>).</summary>
    public int BlockSize { get; init; } = 16;

    /// <summary>Exact number of KV blocks (<c>--num-kv-blocks</c>); overrides <see cref="KvCacheMemoryBytes"/>.</summary>
    public int? NumKvBlocks { get; init; }

    /// <summary>
    /// Memory for the KV cache (<c>--kv-cache-memory</c>); default 2 GiB capped at what <see cref="MaxNumSeqs"/> full-length
    /// sequences could use, and at least one full sequence. The pool is committed (zeroed) at start-up.
    /// </summary>
    public long? KvCacheMemoryBytes { get; init; }

    /// <summary>Longest sequence, prompt plus output (<c>--max-model-len</c>); default min(model's context, 4096) as llama.cpp's default context.</summary>
    public int? MaxModelLen { get; init; }

    /// <summary>Token budget of one step, prefill chunks and decodes together (<c>--max-num-batched-tokens</c>).</summary>
    public int MaxNumBatchedTokens { get; init; } = 2048;

    /// <summary>Sequences running at once (<c>--max-num-seqs</c>).</summary>
    public int MaxNumSeqs { get; init; } = 256;

    /// <summary>Requests waiting to start before new ones are refused as overloaded (<c>--max-queued-requests</c>).</summary>
    public int MaxQueuedRequests { get; init; } = 4096;

    /// <summary>
    /// Automatic prefix caching (vLLM's <c>--enable-prefix-caching</c>, on by default; <c>--no-prefix-caching</c>):
    /// full KV blocks are kept under a hash of their prefix and reused by later requests that start the same way.
    /// </summary>
    public bool EnablePrefixCaching { get; init; } = true;

    /// <summary>Which cached free block is given up first when blocks run out (<c>--eviction-policy</c>): lru, lfu, fifo, priority-lru.</summary>
    public string EvictionPolicy { get; init; } = "lru";

    /// <summary>Which computed full blocks enter the prefix cache at all; null admits every one.</summary>
    public KvCache.ICacheAdmissionPolicy? CacheAdmission { get; init; }

    /// <summary>Times one request may be preempted (and recomputed) before it fails with an error (<c>--max-preemptions</c>).</summary>
    public int MaxPreemptionsPerRequest { get; init; } = 32;

    /// <summary>CPU threads of the forward pass; 0 = one per processor.</summary>
    public int Threads { get; init; }

    /// <summary>
    /// How long an idle thread of the CPU worker pool spins for the next parallel call before it blocks
    /// (<c>--cpu-spin-us</c>; llama.cpp's <c>--poll</c>): waking a blocked thread costs tens of microseconds a call
    /// in a decode step. 0 blocks at once (for a machine shared with other busy work).
    /// </summary>
    public int CpuSpinMicroseconds { get; init; } = Backends.Cpu.CpuWorkerPool.DefaultSpinMicroseconds;

    /// <summary>
    /// Ranks the model is split across (<c>--tensor-parallel-size</c>, <c>-tp</c>): on the CPU, threads of one process
    /// joined by a shared-memory communicator; on CUDA, rank r on device r, joined by NCCL. Each rank holds 1/N of the
    /// weights and its KV heads.
    /// </summary>
    public int TensorParallelSize { get; init; } = 1;

    /// <summary>How long a tensor-parallel rank waits in one collective for the others before the engine stops with an error.</summary>
    public TimeSpan TensorParallelTimeout { get; init; } = TimeSpan.FromSeconds(60);

    /// <summary>Where the model runs (<c>--device cpu|cuda|cuda-emulated</c>; default cpu).</summary>
    public EngineDevice Device { get; init; } = EngineDevice.Cpu;

    /// <summary>
    /// Share of the GPU's memory the engine may use (<c>--gpu-memory-utilization</c>, vLLM's name, default 0.9): the KV
    /// cache gets what of it the weights and activations leave. CUDA devices only; <see cref="NumKvBlocks"/> and
    /// <see cref="KvCacheMemoryBytes"/> override it.
    /// </summary>
    public double GpuMemoryUtilization { get; init; } = 0.9;

    /// <summary>
    /// Sample on the host from logits copied back (<c>--host-sampling</c>), as the CPU backend does, instead of on the
    /// device where they are (the default on CUDA with one rank, as vLLM does). Greedy picks and logprobs are the same
    /// either way; seeded draws are not (the device's random stream is Philox, the host's System.Random).
    /// </summary>
    public bool HostSampling { get; init; }

    /// <summary>
    /// Launch every kernel of every step (<c>--enforce-eager</c>, vLLM's name) instead of capturing decode steps as CUDA
    /// graphs and replaying them (the default on CUDA with one rank).
    /// </summary>
    public bool EnforceEager { get; init; }

    /// <summary>
    /// How the KV cache stores keys and values (<c>--kv-cache-dtype f32|f16|q8_0</c>, default f32): f16 halves the memory
    /// a block takes (llama.cpp's default cache type; CPU and CUDA), q8_0 takes 34/128 of it (ggml's 8-bit blocks; CPU and CUDA,
    /// a head dimension that is a multiple of 32), at the cost of rounding each key and value once as it is written.
    /// Attention still computes in f32.
    /// </summary>
    public KvCache.KvCacheDtype KvCacheDtype { get; init; } = KvCache.KvCacheDtype.F32;

    public const long DefaultKvCacheMemoryBytes = 2L << 30;
    public const int DefaultMaxModelLenCap = 4096;

    public void Validate()
    {
        static void Check(bool ok, string message)
        {
            if (!ok) throw new ArgumentException(message);
        }
        Check(BlockSize is >= 1 and <= 1024, $"--block-size must be in [1, 1024], got {BlockSize}");
        Check(NumKvBlocks is null or >= 1, $"--num-kv-blocks must be ≥ 1, got {NumKvBlocks}");
        Check(KvCacheMemoryBytes is null or > 0, $"--kv-cache-memory must be positive, got {KvCacheMemoryBytes}");
        Check(MaxModelLen is null or >= 1, $"--max-model-len must be ≥ 1, got {MaxModelLen}");
        Check(MaxNumBatchedTokens >= 1, $"--max-num-batched-tokens must be ≥ 1, got {MaxNumBatchedTokens}");
        Check(MaxNumSeqs >= 1, $"--max-num-seqs must be ≥ 1, got {MaxNumSeqs}");
        Check(MaxQueuedRequests >= 0, $"--max-queued-requests must be ≥ 0, got {MaxQueuedRequests}");
        Check(KvCache.EvictionPolicies.Names.Contains(EvictionPolicy.ToLowerInvariant()),
            $"--eviction-policy must be one of {string.Join(", ", KvCache.EvictionPolicies.Names)}, got '{EvictionPolicy}'");
        Check(Threads >= 0, $"--threads must be ≥ 0, got {Threads}");
        Check(CpuSpinMicroseconds is >= 0 and <= Backends.Cpu.CpuWorkerPool.MaxSpinMicroseconds,
            $"--cpu-spin-us must be in [0, {Backends.Cpu.CpuWorkerPool.MaxSpinMicroseconds}], got {CpuSpinMicroseconds}");
        Check(TensorParallelSize is >= 1 and <= 64, $"--tensor-parallel-size must be in [1, 64], got {TensorParallelSize}");
        Check(TensorParallelTimeout > TimeSpan.Zero, $"the tensor-parallel timeout must be positive, got {TensorParallelTimeout}");
        Check(Enum.IsDefined(Device), $"unknown device {Device}");
        Check(Enum.IsDefined(KvCacheDtype), $"unknown KV cache dtype {KvCacheDtype}");
        Check(GpuMemoryUtilization is > 0 and <= 1, $"--gpu-memory-utilization must be in (0, 1], got {GpuMemoryUtilization}");
        Check(MaxPreemptionsPerRequest >= 0, $"--max-preemptions must be ≥ 0, got {MaxPreemptionsPerRequest}");
    }
}
