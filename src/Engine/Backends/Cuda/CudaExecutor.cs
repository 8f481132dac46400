using TokenMill.Core;
using TokenMill.Distributed;
using TokenMill.Interop;
using TokenMill.Interop.Driver;
using TokenMill.KvCache;
using TokenMill.Models;

namespace TokenMill.Backends.Cuda;

/// <summary>
/// Runs the model on one CUDA device (<c>--device cuda</c>), or on the emulated driver of tools/cuda-emu
/// (<c>--device cuda-emulated</c>: the same host path, NVRTC and PTX included, with the kernels executed on the CPU).
/// Owns the context, the uploaded weights (<see cref="CudaForward"/>) and the KV cache in device memory
/// (<see cref="CudaKvCache"/>), sized by <see cref="EngineOptions.GpuMemoryUtilization"/>.
/// With <see cref="EngineOptions.TensorParallelSize"/> N &gt; 1 it runs N ranks as <see cref="Cpu.CpuExecutor"/> does,
/// rank r on device r: each rank has its context, its <see cref="TensorParallelShard"/> of the weights, its KV heads'
/// cache (the same block tables on every rank) and its rank of an NCCL group in this process; rank 0 runs on the
/// caller's thread, the others on threads of their own (<see cref="TensorParallelRanks"/>).
/// </summary>
/// <remarks>
/// A context is made current on whichever thread calls (the engine loop, which is not the thread that built it).
/// A CUDA error inside a step leaves the context in an unknown state (a kernel fault is sticky), so it fails the
/// executor for good (<see cref="Failure"/>) and the engine stops; a batch refused by validation fails only its requests.
/// Under tensor parallelism a rank that throws or stalls fails the step with one <see cref="CommunicatorException"/>
/// naming the rank and the operation, and the executor stays failed.
/// Run on one H100 (greedy tokens identical to the CPU's); tensor parallelism only on the emulated driver and the fake NCCL.
/// </remarks>
public sealed class CudaExecutor : IModelExecutor, IDeviceSampling
{
    static readonly Lock EmulationGate = new();
    static string? s_emulatedDriver;

    // One entry per rank.
    readonly CudaContext[] _contexts;
    readonly TensorParallelShard[] _shards;
    readonly CudaForward[] _forwards;
    readonly CudaKvCache[] _kvs;
    readonly NcclCommunicator[] _comms;   // empty with one rank
    readonly int[] _currentThread;       // the managed thread each rank's context was last made current on
    readonly TensorParallelRanks? _ranks;
    ForwardBatch? _batch;
    Exception? _failure;
    bool _disposed;

    CudaExecutor(CudaContext[] contexts, TensorParallelShard[] shards, CudaForward[] forwards, CudaKvCache[] kvs, NcclCommunicator[] comms)
    {
        _contexts = contexts;
        _shards = shards;
        _forwards = forwards;
        _kvs = kvs;
        _comms = comms;
        _currentThread = new int[contexts.Length];
        _currentThread[0] = Environment.CurrentManagedThreadId;   // Create leaves rank 0's context current
        // No group error to ask for: the NCCL ranks of one process share a record, and every rank throws its first error.
        if (comms.Length > 1)
            _ranks = new TensorParallelRanks(comms.Length, RunRank, (rank, error) => _comms[rank].Abort(error), groupError: null);
    }

    /// <summary>
    /// Opens the device(s), uploads <paramref name="model"/> (each rank its shard) and allocates the KV cache: <see cref="EngineOptions.NumKvBlocks"/>
    /// or <see cref="EngineOptions.KvCacheMemoryBytes"/> when given, else what <see cref="EngineOptions.GpuMemoryUtilization"/>
    /// of the device's memory leaves after the weights and activations (no more than <see cref="EngineOptions.MaxNumSeqs"/>
    /// full-length sequences could use); under tensor parallelism every rank's device must hold that many blocks of its KV heads.
    /// </summary>
    /// <param name="model">The model (Llama family: <see cref="CudaForward.CheckSupported"/>).</param>
    /// <param name="options">The engine's options: device, tensor-parallel size and timeout, block size, KV sizing.</param>
    /// <param name="maxModelLen">Longest sequence: the KV cache must hold one.</param>
    /// <param name="maxBatchTokens">Rows of the activation buffers.</param>
    /// <param name="partitionSize">Positions per split-K decode partition (<see cref="PagedAttentionDecodePlan.PartitionSize"/>
    /// unless a test wants short contexts to split).</param>
    /// <param name="gemmMinRows">Rows of a chunk from which its products run on cuBLAS (<see cref="CudaForward.GemmMinRows"/>).</param>
    /// <exception cref="InvalidOperationException">No driver, no NVRTC, no NCCL, too few devices, or a CUDA error while setting up; the message says which.</exception>
    /// <exception cref="NotSupportedException">The model's architecture is not one the CUDA forward pass computes.</exception>
    /// <exception cref="ArgumentException">The model does not split across the ranks, or the KV cache cannot hold one sequence of <paramref name="maxModelLen"/>.</exception>
    /// <exception cref="CommunicatorException">The ranks' NCCL group did not form within the timeout.</exception>
    public static CudaExecutor Create(Model model, EngineOptions options, int maxModelLen, int maxBatchTokens,
                                      int partitionSize = PagedAttentionDecodePlan.PartitionSize, int gemmMinRows = CudaForward.GemmMinRows)
    {
        CudaForward.CheckSupported(model);   // before minutes of emulated-driver build or upload
        int n = options.TensorParallelSize;
        TensorParallelShard.CheckSplit(model.Config, model.Weights, n, model.Name);
        string device = options.Device == EngineDevice.CudaEmulated ? "--device cuda-emulated" : "--device cuda";
        var sources = KernelSources.Embedded();
        var contexts = new List<CudaContext>();
        var shards = new List<TensorParallelShard>();
        var forwards = new List<CudaForward>();
        var kvs = new List<CudaKvCache>();
        NcclCommunicator[] comms = [];
        try
        {
            if (options.Device == EngineDevice.CudaEmulated) UseEmulatedDriver(sources);
            // The driver first: on a machine without a GPU, that is the thing to say.
            int count = CudaContext.DeviceCount();
            if (count == 0) throw new InvalidOperationException($"{device}: the CUDA driver reports no device");
            if (count < n) throw new InvalidOperationException($"{device} --tensor-parallel-size {n} needs {n} GPUs (rank r on GPU r), the driver reports {count}");
            if (!NativeLibraryResolver.TryLoad(CudaLibrary.Nvrtc, out string nvrtc)) throw new InvalidOperationException($"{device}: {nvrtc}");
            if (n > 1 && !NativeLibraryResolver.TryLoad(CudaLibrary.Nccl, out string nccl))
                throw new InvalidOperationException($"{device} --tensor-parallel-size {n}: the ranks' all-reduce needs NCCL: {nccl}");
            for (int r = 0; r < n; r++)
            {
                var ctx = CudaContext.Create(r);
                contexts.Add(ctx);
                if (options.Device == EngineDevice.CudaEmulated && ctx.DeviceName != KernelEmulation.DeviceName)
                    throw new InvalidOperationException($"{device} loaded a driver whose device is '{ctx.DeviceName}', not the CPU emulation");
            }
            if (n > 1) comms = NcclCommunicator.CreateInProcess(contexts, options.TensorParallelTimeout);
            var compiler = new KernelCompiler(KernelCompiler.DefaultCacheDirectory());
            for (int r = 0; r < n; r++)
            {
                contexts[r].MakeCurrent();
                shards.Add(TensorParallelShard.Create(model, r, n));
                forwards.Add(new CudaForward(contexts[r], shards[r], n > 1 ? comms[r] : null, compiler, sources, maxBatchTokens, maxModelLen, options.BlockSize, partitionSize, gemmMinRows,
                    maxSampleRows: n > 1 || options.HostSampling ? 0 : Math.Min(maxBatchTokens, options.MaxNumSeqs), cudaGraphs: n == 1 && !options.EnforceEager));
            }
            // Every rank has the same block tables: the pool is the fewest blocks any rank's device holds.
            int blocks = int.MaxValue;
            for (int r = 0; r < n; r++)
            {
                contexts[r].MakeCurrent();
                blocks = Math.Min(blocks, KvBlocks(contexts[r], shards[r].Config, options, maxModelLen, n == 1 ? device : $"{device} rank {r}"));
            }
            for (int r = 0; r < n; r++)
            {
                contexts[r].MakeCurrent();
                kvs.Add(new CudaKvCache(contexts[r], shards[r].Config, blocks, options.BlockSize, options.KvCacheDtype));
            }
            contexts[0].MakeCurrent();
            return new CudaExecutor([.. contexts], [.. shards], [.. forwards], [.. kvs], comms);
        }
        catch (Exception e) when (e is DllNotFoundException or CudaInteropException)
        {
            Release(contexts, shards, forwards, kvs, comms);
            string hint = e is DllNotFoundException && options.Device == EngineDevice.Cuda
                ? " (without a GPU, --device cuda-emulated runs the CUDA path on the CPU, slowly)" : "";
            throw new InvalidOperationException($"{device}: {e.Message}{hint}", e);
        }
        catch
        {
            Release(contexts, shards, forwards, kvs, comms);
            throw;
        }
    }

    /// <summary>Frees what a failed <see cref="Create"/> had made, rank by rank on its own context.</summary>
    static void Release(List<CudaContext> contexts, List<TensorParallelShard> shards, List<CudaForward> forwards, List<CudaKvCache> kvs, NcclCommunicator[] comms)
    {
        foreach (var c in comms) c.Dispose();
        for (int r = 0; r < contexts.Count; r++)
        {
            contexts[r].MakeCurrent();
            if (r < kvs.Count) kvs[r].Dispose();
            if (r < forwards.Count) forwards[r].Dispose();
            if (r < shards.Count) shards[r].Dispose();
            contexts[r].Dispose();
        }
    }

    /// <summary>How many KV blocks the device's cache gets (see <see cref="Create"/>); throws when one sequence does not fit.</summary>
    static int KvBlocks(CudaContext ctx, ModelConfig config, EngineOptions options, int maxModelLen, string device)
    {
        long bytesPerBlock = CudaKvCache.BytesPerBlock(config, options.BlockSize, options.KvCacheDtype);
        int perSequence = KvCacheManager.BlocksFor(maxModelLen, options.BlockSize);
        var (free, total) = ctx.MemoryInfo();
        long blocks;
        string budget;
        if (options.NumKvBlocks is { } n)
        {
            blocks = n;
            budget = $"--num-kv-blocks {n}";
        }
        else if (options.KvCacheMemoryBytes is { } bytes)
        {
            blocks = bytes / bytesPerBlock;
            budget = $"--kv-cache-memory {Gib(bytes)}";
        }
        else
        {
            // vLLM's rule: the whole process may use this share of the device; the weights and activations are
            // already allocated, so the KV cache gets what of that share is still free.
            long reserve = (long)(total * (1 - options.GpuMemoryUtilization));
            blocks = Math.Max(0, (free - reserve) / bytesPerBlock);
            blocks = Math.Min(blocks, (long)perSequence * options.MaxNumSeqs);   // more could never be used at once
            budget = $"--gpu-memory-utilization {options.GpuMemoryUtilization:0.###} of {device}'s {Gib(total)} ({Gib(free)} free after the weights and activations, " +
                     $"{Gib(reserve)} of it kept back)";
        }
        if (blocks < perSequence)
            throw new ArgumentException(
                $"the KV cache ({budget}: {blocks} blocks of {options.BlockSize} tokens, {Gib(blocks * bytesPerBlock)}) cannot hold one sequence of " +
                $"--max-model-len {maxModelLen} ({perSequence} blocks, {Gib(perSequence * bytesPerBlock)}); " +
                "raise --gpu-memory-utilization (or --kv-cache-memory / --num-kv-blocks) or lower --max-model-len");
        if (blocks * bytesPerBlock > free)
            throw new ArgumentException($"the KV cache ({budget}: {Gib(blocks * bytesPerBlock)}) does not fit in the {Gib(free)} the device has free after the weights");
        return (int)Math.Min(blocks, int.MaxValue);
    }

    static string Gib(long bytes) => bytes >= 1L << 30 ? $"{bytes / (double)(1L << 30):F2} GiB" : $"{bytes / (double)(1L << 20):F1} MiB";

    /// <summary>
    /// Builds the emulated driver from <paramref name="sources"/> (g++, cached by hash) and makes it the process's
    /// libcuda, libnccl and libcublas. Once per process: the resolver never switches a loaded driver.
    /// </summary>
    static void UseEmulatedDriver(IReadOnlyList<KernelSource> sources)
    {
        lock (EmulationGate)
        {
            if (s_emulatedDriver is not null) return;
            var driver = KernelEmulation.Build(sources, KernelCompiler.DefaultCacheDirectory());
            var missing = driver.Failures.Where(f => CudaForward.UsedKernels.Contains(f.Kernel)).ToList();
            if (missing.Count > 0)
                throw new InvalidOperationException($"the emulated driver cannot run {string.Join("; ", missing.Select(f => $"{f.Kernel}: {f.Message}"))}");
            KernelEmulation.Use(driver);
            s_emulatedDriver = driver.LibraryPath;
        }
    }

    public int WorldSize => _contexts.Length;

    /// <summary>KV blocks of each rank's cache: the scheduler's pool has exactly these.</summary>
    public int KvBlockCount => _kvs[0].BlockCount;

    /// <summary>The device's name, as the driver reports it (rank 0's).</summary>
    public string DeviceName => _contexts[0].DeviceName;

    /// <summary>How the ranks' KV caches store keys and values.</summary>
    public KvCacheDtype KvCacheDtype => _kvs.Select(kv => kv.Dtype).Distinct().Single();

    /// <summary>Device memory of the weights, activations and KV cache, summed over the ranks.</summary>
    public long DeviceBytes => Enumerable.Range(0, WorldSize).Sum(r => _forwards[r].DeviceBytes + _kvs[r].Bytes);

    public Exception? Failure => (Exception?)_ranks?.Failure ?? Volatile.Read(ref _failure);

    /// <summary>Rank 0's collective calls (all zero with one rank).</summary>
    public CommunicatorStats CommunicatorStats => _comms.Length > 0 ? _comms[0].Stats : SingleRankCommunicator.Instance.Stats;

    /// <summary>Test hook (fault injection): runs on rank <c>rank</c>'s thread at the start of every layer (rank, layer).</summary>
    internal Action<int, int>? LayerHook
    {
        set
        {
            for (int r = 0; r < WorldSize; r++) _forwards[r].LayerHook = TensorParallelRanks.LayerHookOf(value, r);
        }
    }

    /// <summary>The attention kernels the last <see cref="Forward"/> launched (rank 0's; every rank launches the same).</summary>
    public AttentionKernels LastAttention => _forwards[0].LastAttention;

    /// <summary>How the last step used CUDA graphs (rank 0's).</summary>
    public GraphUse LastGraph => _forwards[0].LastGraph;

    /// <summary>Whether decode chunks are captured as CUDA graphs (one rank, not <see cref="EngineOptions.EnforceEager"/>).</summary>
    public bool GraphsEnabled => _forwards[0].GraphsEnabled;

    /// <summary>Why graphs were turned off after a failed capture (the steps run eagerly), or null.</summary>
    public string? GraphsOffReason => _forwards[0].GraphsOffReason;

    /// <summary>Graphs captured so far (one per shape of decode chunk; a full cache starts over).</summary>
    public long GraphsCaptured => _forwards[0].GraphsCaptured;

    /// <summary>Chunks run as one graph launch so far, the capturing ones included.</summary>
    public long GraphLaunches => _forwards[0].GraphLaunches;

    /// <summary>Whether a product of the last <see cref="Forward"/> ran on cuBLAS (rank 0's).</summary>
    public bool LastGemm => _forwards[0].LastGemm;

    /// <summary>Why chunks of many rows run on the GEMV kernels instead of cuBLAS (it could not be loaded), or null.</summary>
    public string? GemmUnavailable => _forwards[0].GemmUnavailable;

    public void Forward(ForwardBatch batch, Span<float> logits)
    {
        ThrowIfFailed();
        if (_ranks is not null)
        {
            _ranks.ThrowIfFailed();
            _forwards[0].Validate(batch, _kvs[0], logits.Length);   // every rank would refuse the same batch: refuse it before any rank starts
            _batch = batch;
            try { _ranks.Step(logits); }
            finally { _batch = null; }
            return;
        }
        MakeCurrent(0);
        try { _forwards[0].Forward(batch, _kvs[0], logits); }   // a batch refused by its validation throws ArgumentException: not a failure of the device
        catch (CudaInteropException e) when (Poisons(e)) { }
    }

    /// <summary>Refuses any further work once a CUDA error has failed the executor.</summary>
    void ThrowIfFailed()
    {
        if (Volatile.Read(ref _failure) is { } failed) throw new InvalidOperationException($"the CUDA backend has failed: {failed.Message}", failed);
    }

    /// <summary>
    /// Exception filter of every call on rank 0's device: a CUDA error leaves the context unknown (a kernel fault is
    /// sticky), so it fails the executor for good. Always false: the error goes on to the caller as it is.
    /// </summary>
    bool Poisons(CudaInteropException e)
    {
        Interlocked.CompareExchange(ref _failure, e, null);
        return false;
    }

    /// <summary>Before a call on rank 0's device (one rank): refuses after a failure, makes rank 0's context current here.</summary>
    void EnterRankZero()
    {
        ThrowIfFailed();
        MakeCurrent(0);
    }

    /// <summary>
    /// Whether the step's logits can stay on the device and be sampled there: one rank, sampling not sent to the host
    /// (<see cref="EngineOptions.HostSampling"/>), and its logit rows within the logits buffer.
    /// </summary>
    public bool CanSampleOnDevice(ForwardBatch batch) => _ranks is null && _forwards[0].CanSampleOnDevice(batch);

    public void ForwardOnDevice(ForwardBatch batch)
    {
        EnterRankZero();
        try { _forwards[0].ForwardOnDevice(batch, _kvs[0]); }
        catch (CudaInteropException e) when (Poisons(e)) { }
    }

    public void CopyLogits(int logitRow, Span<float> destination)
    {
        EnterRankZero();
        try { _forwards[0].CopyLogits(logitRow, destination); }
        catch (CudaInteropException e) when (Poisons(e)) { }
    }

    public int MaxSampleRows => _ranks is null ? _forwards[0].MaxSampleRows : 0;

    public void Sample(ReadOnlySpan<int> logitRows, IReadOnlyList<Sampling.Sampler> samplers, IReadOnlyList<IReadOnlyCollection<int>?> suppress, Span<Sampling.SampledToken> results)
    {
        EnterRankZero();
        try { _forwards[0].Sample(logitRows, samplers, suppress, results); }   // a refused argument throws ArgumentException: not a device failure
        catch (CudaInteropException e) when (Poisons(e)) { }
    }

    /// <summary>One rank's step on its own thread: its forward pass, then a barrier, after which no rank reads the batch any more.</summary>
    void RunRank(int rank, Span<float> logits)
    {
        MakeCurrent(rank);
        _forwards[rank].Forward(_batch!, _kvs[rank], logits);
        _forwards[rank].Barrier();
    }

    /// <summary>Copy-on-write of a KV block, on every rank's cache (between steps, when no rank runs).</summary>
    public void CopyBlock(int source, int destination)
    {
        if (_ranks is not null) _ranks.ThrowIfFailed();
        for (int r = 0; r < WorldSize; r++)
        {
            MakeCurrent(r);
            try { _kvs[r].CopyBlock(source, destination); }
            catch (CudaInteropException e)
            {
                var error = new CommunicatorException(r, "copy-block", $"tensor-parallel rank {r} failed to copy a KV block: {e.Message}", e);
                Interlocked.CompareExchange(ref _failure, WorldSize == 1 ? e : error, null);
                throw;
            }
        }
    }

    /// <summary>Makes rank <paramref name="rank"/>'s context current on the calling thread, unless it is already.</summary>
    void MakeCurrent(int rank)
    {
        int thread = Environment.CurrentManagedThreadId;
        if (_currentThread[rank] == thread) return;
        _contexts[rank].MakeCurrent();
        // A thread has one current context: the ranks that were current here are not any more.
        for (int r = 0; r < _currentThread.Length; r++)
            if (_currentThread[r] == thread) _currentThread[r] = 0;
        _currentThread[rank] = thread;
    }

    public void Dispose()
    {
        if (_disposed) return;
        _disposed = true;
        // A failed group was aborted (its pending collectives released); a working one has no rank inside a collective.
        int stopped = _ranks?.Stop(wake: null) ?? 1;
        foreach (var c in _comms.Take(stopped)) c.Dispose();
        for (int r = 0; r < stopped; r++)
        {
            _currentThread[r] = 0;
            MakeCurrent(r);   // freeing device memory needs the context on this thread
            _kvs[r].Dispose();
            _forwards[r].Dispose();
            _shards[r].Dispose();
            _contexts[r].Dispose();
        }
    }
}
