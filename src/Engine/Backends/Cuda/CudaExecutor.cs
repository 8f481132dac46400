using TokenMill.Core;
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
/// </summary>
/// <remarks>
/// The context is made current on whichever thread calls (the engine loop, which is not the thread that built it).
/// A CUDA error inside a step leaves the context in an unknown state (a kernel fault is sticky), so it fails the
/// executor for good (<see cref="Failure"/>) and the engine stops; a batch refused by validation fails only its requests.
/// UNVERIFIED ON HARDWARE: tested on the emulated driver only.
/// </remarks>
public sealed class CudaExecutor : IModelExecutor
{
    static readonly Lock EmulationGate = new();
    static string? s_emulatedDriver;

    readonly CudaContext _ctx;
    readonly CudaForward _forward;
    readonly CudaKvCache _kv;
    int _currentThread;
    Exception? _failure;

    CudaExecutor(CudaContext ctx, CudaForward forward, CudaKvCache kv)
    {
        _ctx = ctx;
        _forward = forward;
        _kv = kv;
        _currentThread = Environment.CurrentManagedThreadId;
    }

    /// <summary>
    /// Opens the device, uploads <paramref name="model"/> and allocates the KV cache: <see cref="EngineOptions.NumKvBlocks"/>
    /// or <see cref="EngineOptions.KvCacheMemoryBytes"/> when given, else what <see cref="EngineOptions.GpuMemoryUtilization"/>
    /// of the device's memory leaves after the weights and activations (no more than <see cref="EngineOptions.MaxNumSeqs"/>
    /// full-length sequences could use).
    /// </summary>
    /// <param name="model">The model (Llama family: <see cref="CudaForward.CheckSupported"/>).</param>
    /// <param name="options">The engine's options: device, block size, KV sizing.</param>
    /// <param name="maxModelLen">Longest sequence: the KV cache must hold one.</param>
    /// <param name="maxBatchTokens">Rows of the activation buffers.</param>
    /// <param name="partitionSize">Positions per split-K decode partition (<see cref="PagedAttentionDecodePlan.PartitionSize"/>
    /// unless a test wants short contexts to split).</param>
    /// <exception cref="InvalidOperationException">No driver, no NVRTC, or a CUDA error while setting up; the message says which.</exception>
    /// <exception cref="NotSupportedException">The model's architecture is not one the CUDA forward pass computes.</exception>
    /// <exception cref="ArgumentException">The KV cache cannot hold one sequence of <paramref name="maxModelLen"/>.</exception>
    public static CudaExecutor Create(Model model, EngineOptions options, int maxModelLen, int maxBatchTokens,
                                      int partitionSize = PagedAttentionDecodePlan.PartitionSize)
    {
        CudaForward.CheckSupported(model);   // before minutes of emulated-driver build or upload
        if (options.TensorParallelSize != 1)
            throw new ArgumentException($"--tensor-parallel-size {options.TensorParallelSize}: the CUDA backend runs on one device (tensor parallelism is --device cpu only)");
        string device = options.Device == EngineDevice.CudaEmulated ? "--device cuda-emulated" : "--device cuda";
        var sources = KernelSources.Embedded();
        CudaContext? ctx = null;
        CudaForward? forward = null;
        try
        {
            if (options.Device == EngineDevice.CudaEmulated) UseEmulatedDriver(sources);
            // The driver first: on a machine without a GPU, that is the thing to say.
            int count = CudaContext.DeviceCount();
            if (count == 0) throw new InvalidOperationException($"{device}: the CUDA driver reports no device");
            if (!NativeLibraryResolver.TryLoad(CudaLibrary.Nvrtc, out string nvrtc)) throw new InvalidOperationException($"{device}: {nvrtc}");
            ctx = CudaContext.Create(0);
            if (options.Device == EngineDevice.CudaEmulated && ctx.DeviceName != KernelEmulation.DeviceName)
                throw new InvalidOperationException($"{device} loaded a driver whose device is '{ctx.DeviceName}', not the CPU emulation");
            forward = new CudaForward(ctx, model, new KernelCompiler(KernelCompiler.DefaultCacheDirectory()), sources,
                maxBatchTokens, maxModelLen, options.BlockSize, partitionSize);
            int blocks = KvBlocks(ctx, model, options, maxModelLen, device);
            var kv = new CudaKvCache(ctx, model.Config, blocks, options.BlockSize);
            return new CudaExecutor(ctx, forward, kv);
        }
        catch (Exception e) when (e is DllNotFoundException or CudaInteropException)
        {
            forward?.Dispose();
            ctx?.Dispose();
            string hint = e is DllNotFoundException && options.Device == EngineDevice.Cuda
                ? " (without a GPU, --device cuda-emulated runs the CUDA path on the CPU, slowly)" : "";
            throw new InvalidOperationException($"{device}: {e.Message}{hint}", e);
        }
        catch
        {
            forward?.Dispose();
            ctx?.Dispose();
            throw;
        }
    }

    /// <summary>How many KV blocks the device's cache gets (see <see cref="Create"/>); throws when one sequence does not fit.</summary>
    static int KvBlocks(CudaContext ctx, Model model, EngineOptions options, int maxModelLen, string device)
    {
        long bytesPerBlock = CudaKvCache.BytesPerBlock(model.Config, options.BlockSize);
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
    /// libcuda. Once per process: the resolver never switches a loaded driver.
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
            NativeLibraryResolver.UseLibrary(CudaLibrary.Driver, driver.LibraryPath);
            s_emulatedDriver = driver.LibraryPath;
        }
    }

    public int WorldSize => 1;

    /// <summary>KV blocks of the device's cache: the scheduler's pool has exactly these.</summary>
    public int KvBlockCount => _kv.BlockCount;

    /// <summary>The device's name, as the driver reports it.</summary>
    public string DeviceName => _ctx.DeviceName;

    /// <summary>Device memory of the weights, activations and KV cache.</summary>
    public long DeviceBytes => _forward.DeviceBytes + CudaKvCache.BytesPerBlock(_forward.Config, _kv.BlockSize) * _kv.BlockCount;

    public Exception? Failure => Volatile.Read(ref _failure);

    /// <summary>The attention kernels the last <see cref="Forward"/> launched.</summary>
    public AttentionKernels LastAttention => _forward.LastAttention;

    public void Forward(ForwardBatch batch, Span<float> logits)
    {
        if (Failure is { } failed) throw new InvalidOperationException($"the CUDA backend has failed: {failed.Message}", failed);
        MakeCurrent();
        try { _forward.Forward(batch, _kv, logits); }   // a batch refused by its validation throws ArgumentException: not a failure of the device
        catch (CudaInteropException e)
        {
            Interlocked.CompareExchange(ref _failure, e, null);
            throw;
        }
    }

    public void CopyBlock(int source, int destination)
    {
        MakeCurrent();
        try { _kv.CopyBlock(source, destination); }
        catch (CudaInteropException e)
        {
            Interlocked.CompareExchange(ref _failure, e, null);
            throw;
        }
    }

    void MakeCurrent()
    {
        int thread = Environment.CurrentManagedThreadId;
        if (thread == _currentThread) return;
        _ctx.MakeCurrent();
        _currentThread = thread;
    }

    public void Dispose()
    {
        _currentThread = 0;
        MakeCurrent();   // freeing device memory needs the context on this thread
        _kv.Dispose();
        _forward.Dispose();
        _ctx.Dispose();
    }
}
