using TokenMill.Interop;
using TokenMill.Interop.Driver;
using TokenMill.Models.Gguf;
using TokenMill.Quantization;

namespace TokenMill.Backends.Cuda;

/// <summary>
/// One kernel timed at one shape: the median and fastest device time per launch over the samples, and the
/// bytes the launch must move and the floating-point operations it must do at the least (from the shape,
/// not measured), which give its achieved bandwidth and FLOP/s. <see cref="Error"/> is set, and the times are
/// NaN, when the kernel could not be loaded or launched.
/// </summary>
public sealed record KernelTiming(string Kernel, string Shape, int Samples, int LaunchesPerSample, double MedianMicroseconds,
                                  double MinMicroseconds, double Bytes, double Flops, string? Error = null)
{
    public double GigabytesPerSecond => Bytes / (MedianMicroseconds * 1e3);
    public double GigaflopsPerSecond => Flops / (MedianMicroseconds * 1e3);
}

/// <summary>
/// <c>tokenmill kernels bench</c>: every kernel over a sweep of shapes, timed with CUDA events around
/// <see cref="KernelBenchOptions.LaunchesPerSample"/> back-to-back launches (so that the launch overhead of a
/// short kernel is amortized as it is in a forward pass), the median of
/// <see cref="KernelBenchOptions.Samples"/> samples after warm-up launches. The shapes are those of real models
/// (TinyLlama 1.1B and Llama 3 8B: hidden 2048/4096, FFN 5632/14336, vocabulary 32000/128256, head dim 64/128)
/// for <see cref="KernelBenchSweep.Full"/>; <see cref="KernelBenchSweep.Small"/> is a scaled-down sweep for the
/// emulated driver, whose times are the CPU's and say nothing of a GPU's.
/// Inputs are random (quantized weights are real blocks, tiled from a few encoded rows), and a kernel of the
/// sources with no shape here is reported as a row with an error rather than left out.
/// </summary>
public sealed class KernelBench : IDisposable
{
    readonly CudaContext _ctx;
    readonly KernelBenchOptions _options;
    readonly Dictionary<string, CudaModule> _modules = [];
    readonly Dictionary<string, string> _moduleErrors = [];
    readonly List<DeviceBuffer> _buffers = [];
    readonly List<KernelTiming> _results = [];
    readonly List<CudaGemm> _gemms = [];
    ulong _rng = 0x2545F4914F6CDD1D;

    KernelBench(CudaContext ctx, KernelBenchOptions options) => (_ctx, _options) = (ctx, options);

    /// <summary>Compiles and loads the kernels for the context's device and times those <paramref name="include"/> accepts.</summary>
    public static IReadOnlyList<KernelTiming> Run(CudaContext ctx, KernelCompiler compiler, IReadOnlyList<KernelSource> sources,
                                                  KernelBenchOptions options, Func<string, bool>? include = null)
    {
        include ??= _ => true;
        using var b = new KernelBench(ctx, options);
        foreach (var kernel in sources.Where(s => !s.IsHeader))
        {
            try { b._modules[kernel.FileName] = ctx.LoadModule(compiler.Compile(kernel, sources, ctx.Architecture).Ptx); }
            catch (CudaInteropException e) { b._moduleErrors[kernel.FileName] = e.Message; }
        }
        var known = sources.Where(s => !s.IsHeader).SelectMany(s => s.Kernels().Select(k => (k.Name, s.FileName))).ToList();
        foreach (var (name, file) in known.Where(k => include(k.Name)))
        {
            var shapes = Shapes(name, options.Sweep);
            if (shapes.Count == 0)
            {
                b._results.Add(new KernelTiming(name, "-", 0, 0, double.NaN, double.NaN, 0, 0, "no benchmark shape for this kernel (KernelBench)"));
                continue;
            }
            foreach (var shape in shapes) b.Time(name, file, shape);
            b.FreeBuffers();
        }
        if (include(CudaGemm.Name)) b.Gemms(options.Sweep);
        return b._results;
    }

    /// <summary>
    /// <see cref="CudaGemm.Multiply"/> as a prefill chunk runs it — the conversion of the activations (and Q8_0/Q4_0's
    /// dequantization) included — for every weight type, at TinyLlama's and Llama 3 8B's FFN shapes with 512 rows.
    /// </summary>
    void Gemms(KernelBenchSweep sweep)
    {
        (int Rows, int Cols, int N)[] shapes = sweep == KernelBenchSweep.Full ? [(5632, 2048, 512), (14336, 4096, 512)] : [(64, 96, 9)];
        foreach (var type in new[] { GgmlType.F32, GgmlType.F16, GgmlType.BF16, GgmlType.Q8_0, GgmlType.Q4_0 })
            foreach (var (rows, cols, n) in shapes)
                Measure(CudaGemm.Name, $"{type} {rows} × {cols}, {n} rows", () =>
                {
                    if (!_modules.TryGetValue("convert.cu", out var module))
                        throw new InvalidOperationException($"convert.cu was not loaded: {_moduleErrors.GetValueOrDefault("convert.cu", "no such kernel file")}");
                    bool quantized = type is GgmlType.Q8_0 or GgmlType.Q4_0;
                    var gemm = CudaGemm.TryCreate(_ctx, GemmKernels.From(module.GetKernel), n, cols, quantized ? (long)rows * cols : 0, out string? unavailable)
                        ?? throw new InvalidOperationException($"cuBLAS cannot be loaded: {unavailable}");
                    _gemms.Add(gemm);
                    var w = Matrix(type, rows, cols);
                    var x = Floats((long)n * cols);
                    var y = Zeros((long)n * rows * 4);
                    long rowBytes = GgmlTypeInfo.RowBytes(type, cols);
                    return new Launch(() => gemm.Multiply(w.Pointer, type, rowBytes, rows, cols, x.Pointer, y.Pointer, n),
                        WeightBytes(type, rows, cols) + 4.0 * n * (cols + rows), 2.0 * rows * cols * n);
                });
        FreeBuffers();
    }

    public void Dispose()
    {
        FreeBuffers();
        foreach (var m in _modules.Values) m.Dispose();
    }

    void FreeBuffers()
    {
        foreach (var gemm in _gemms) gemm.Dispose();
        _gemms.Clear();
        foreach (var buffer in _buffers) buffer.Dispose();
        _buffers.Clear();
    }

    // ---- timing --------------------------------------------------------------------------------

    /// <summary>What one shape launches: the launch itself (queued, not waited for), and its minimum traffic and work.</summary>
    sealed record Launch(Action Run, double Bytes, double Flops);

    /// <summary>A kernel at one shape: its label and how to set it up (buffers allocated by the bench).</summary>
    sealed record Shape(string Label, Func<KernelBench, CudaKernel, Launch> Setup);

    void Time(string name, string file, Shape shape) => Measure(name, shape.Label, () =>
    {
        if (!_modules.TryGetValue(file, out var module))
            throw new InvalidOperationException($"{file} was not loaded: {_moduleErrors.GetValueOrDefault(file, "no such kernel file")}");
        return shape.Setup(this, module.GetKernel(name));
    });

    /// <summary>Sets up one shape and times its launches; a failure becomes a row with the error.</summary>
    void Measure(string name, string label, Func<Launch> setup)
    {
        int samples = _options.Samples, perSample = _options.LaunchesPerSample;
        try
        {
            var launch = setup();
            for (int i = 0; i < _options.WarmupLaunches; i++) launch.Run();
            _ctx.Synchronize();
            using var start = new CudaEvent();
            using var end = new CudaEvent();
            var times = new double[samples];
            for (int s = 0; s < samples; s++)
            {
                start.Record();
                for (int i = 0; i < perSample; i++) launch.Run();
                end.Record();
                end.Synchronize();
                times[s] = CudaEvent.ElapsedMilliseconds(start, end) * 1e3 / perSample;
            }
            Array.Sort(times);
            _results.Add(new KernelTiming(name, label, samples, perSample, times[samples / 2], times[0], launch.Bytes, launch.Flops));
        }
        catch (Exception e) when (e is CudaInteropException or InvalidOperationException)
        {
            _results.Add(new KernelTiming(name, label, 0, 0, double.NaN, double.NaN, 0, 0, e.Message.ReplaceLineEndings(" ")));
        }
    }

    // ---- inputs --------------------------------------------------------------------------------

    float Next()
    {
        _rng ^= _rng << 13;
        _rng ^= _rng >> 7;
        _rng ^= _rng << 17;
        return (float)((_rng >> 11) * (1.0 / (1UL << 53)) * 2 - 1);
    }

    DeviceBuffer Upload<T>(T[] data) where T : unmanaged
    {
        var b = _ctx.Allocate(Math.Max(1, (long)data.Length * System.Runtime.CompilerServices.Unsafe.SizeOf<T>()));
        _buffers.Add(b);
        if (data.Length > 0) b.CopyFrom<T>(data);
        return b;
    }

    DeviceBuffer Floats(long count, float scale = 1f)
    {
        var a = new float[count];
        for (long i = 0; i < count; i++) a[i] = Next() * scale;
        return Upload(a);
    }

    DeviceBuffer Ints(int count, int bound)
    {
        var a = new int[count];
        for (int i = 0; i < count; i++) a[i] = (int)((Next() + 1) / 2 * bound) % bound;
        return Upload(a);
    }

    DeviceBuffer Zeros(long bytes)
    {
        var b = _ctx.Allocate(Math.Max(1, bytes));
        _buffers.Add(b);
        b.Clear();
        return b;
    }

    /// <summary>A rows × cols matrix of <paramref name="type"/>: 64 rows of random values encoded, tiled to fill it.</summary>
    DeviceBuffer Matrix(GgmlType type, int rows, int cols)
    {
        long rowBytes = GgmlTypeInfo.RowBytes(type, cols);
        int distinct = Math.Min(rows, 64);
        var values = new float[cols];
        var encoded = new byte[distinct * rowBytes];
        for (int r = 0; r < distinct; r++)
        {
            for (int c = 0; c < cols; c++) values[c] = Next();
            Quantize.Row(type, values, encoded.AsSpan((int)(r * rowBytes), (int)rowBytes));
        }
        var b = _ctx.Allocate(rows * rowBytes);
        _buffers.Add(b);
        for (long r = 0; r < rows; r += distinct)
        {
            int n = (int)Math.Min(distinct, rows - r);
            b.CopyFrom<byte>(encoded.AsSpan(0, (int)(n * rowBytes)), r * rowBytes);
        }
        return b;
    }

    /// <summary>Block ids 0 … count − 1 in a shuffled order: the gathers a real block table makes.</summary>
    int[] ShuffledBlocks(int count)
    {
        var tables = new int[count];
        for (int i = 0; i < count; i++) tables[i] = i;
        for (int i = count - 1; i > 0; i--)
        {
            int j = (int)((Next() + 1) / 2 * (i + 1)) % (i + 1);
            (tables[i], tables[j]) = (tables[j], tables[i]);
        }
        return tables;
    }

    static Dim3 Block(string kernel) => new((uint)KernelLaunches.For(kernel).BlockSize);

    static double WeightBytes(GgmlType type, long rows, long cols) => rows * GgmlTypeInfo.RowBytes(type, cols);

    // ---- shapes --------------------------------------------------------------------------------

    static readonly Dictionary<string, GgmlType> Types = new(StringComparer.Ordinal)
    {
        ["f32"] = GgmlType.F32, ["f16"] = GgmlType.F16, ["bf16"] = GgmlType.BF16, ["q8_0"] = GgmlType.Q8_0, ["q4_0"] = GgmlType.Q4_0,
    };

    /// <summary>The shapes <paramref name="kernel"/> is timed at (none: the kernel has no benchmark here).</summary>
    static List<Shape> Shapes(string kernel, KernelBenchSweep sweep)
    {
        bool full = sweep == KernelBenchSweep.Full;
        var shapes = new List<Shape>();
        if (kernel.StartsWith("gemv_", StringComparison.Ordinal) && Types.TryGetValue(kernel["gemv_".Length..].Replace("_x8", "", StringComparison.Ordinal), out var wt))
        {
            int perBlock = KernelLaunches.GemvVectors(kernel);
            (int Rows, int Cols)[] matrices = full
                ? [(2048, 2048), (5632, 2048), (2048, 5632), (32000, 2048), (4096, 4096), (14336, 4096), (4096, 14336), (128256, 4096)]
                : [(128, 256)];
            // One vector on gemv_T (what decoding one sequence launches), 2 and 8 on gemv_T_x8 (2 to 7 sequences share 8's launch).
            int[] vectors = perBlock == 1 ? [1] : full ? [2, 8] : [2];
            foreach (var (rows, cols) in matrices)
                foreach (int n in vectors)
                    shapes.Add(new($"{rows} × {cols}, {n} vector{(n > 1 ? "s" : "")}", (b, k) =>
                    {
                        var w = b.Matrix(wt, rows, cols);
                        var x = b.Floats((long)n * cols);
                        var y = b.Zeros((long)n * rows * 4);
                        var block = Block(kernel);
                        var grid = KernelLaunches.GemvGrid(rows, n, perBlock);
                        var args = new KernelArgs().Add(w).Add(x).Add(y).Add(rows).Add(cols).Add(n);
                        return new Launch(() => k.Launch(grid, block, args), WeightBytes(wt, rows, cols) + 4.0 * n * (cols + rows), 2.0 * rows * cols * n);
                    }));
        }
        else if (kernel.StartsWith("embedding_", StringComparison.Ordinal) && Types.TryGetValue(kernel["embedding_".Length..], out var et))
        {
            foreach (var (tokens, vocab, dim) in full ? [(1, 32000, 2048), (512, 32000, 4096)] : new[] { (4, 64, 256) })
                shapes.Add(new($"{tokens} tokens of {vocab} × {dim}", (b, k) =>
                {
                    var table = b.Matrix(et, vocab, dim);
                    var ids = b.Ints(tokens, vocab);
                    var output = b.Zeros((long)tokens * dim * 4);
                    var args = new KernelArgs().Add(table).Add(ids).Add(output).Add(dim).Add(1f);
                    return new Launch(() => k.Launch(new Dim3((uint)tokens), Block(kernel), args),
                        WeightBytes(et, tokens, dim) + 4.0 * tokens * (dim + 1), 0);
                }));
        }
        else if (kernel is "rms_norm" or "fused_add_rms_norm")
        {
            bool fused = kernel == "fused_add_rms_norm";
            foreach (var (rows, dim) in full ? [(1, 4096), (512, 4096), (512, 2048)] : new[] { (2, 512) })
                shapes.Add(new($"{rows} × {dim}", (b, k) =>
                {
                    var x = b.Floats((long)rows * dim, 3f);
                    var w = b.Floats(dim);
                    var y = b.Zeros((long)rows * dim * 4);
                    var args = new KernelArgs().Add(x);
                    if (fused) args.Add(b.Floats((long)rows * dim));
                    args.Add(w).Add(y).Add(dim).Add(1e-5f);
                    // Reads x (and delta), writes y (and x back): 2 or 4 passes over rows × dim floats, plus the weights.
                    return new Launch(() => k.Launch(new Dim3((uint)rows), Block(kernel), args),
                        4.0 * rows * dim * (fused ? 4 : 2) + 4.0 * dim, (fused ? 5.0 : 4.0) * rows * dim);
                }));
        }
        else if (kernel == "rope")
        {
            foreach (var (tokens, heads, kvHeads, headDim) in full ? [(1, 32, 8, 128), (512, 32, 8, 128)] : new[] { (3, 4, 2, 64) })
                shapes.Add(new($"{tokens} tokens, H{heads}/KV{kvHeads} d{headDim}", (b, k) =>
                {
                    var q = b.Floats((long)tokens * heads * headDim);
                    var key = b.Floats((long)tokens * kvHeads * headDim);
                    var positions = b.Ints(tokens, 8192);
                    var args = new KernelArgs().Add(q).Add(key).Add(positions).Add(new CUdeviceptr(0))
                        .Add(heads).Add(kvHeads).Add(headDim).Add(headDim).Add(500000f).Add(1f).Add(0);
                    double values = (double)tokens * (heads + kvHeads) * headDim;
                    return new Launch(() => k.Launch(new Dim3((uint)tokens), Block(kernel), args), 8.0 * values + 4.0 * tokens, 3.0 * values);
                }));
        }
        else if (kernel.StartsWith("reshape_and_cache_", StringComparison.Ordinal))
        {
            int element = kernel.EndsWith("f16", StringComparison.Ordinal) ? 2 : 4;
            foreach (var (tokens, kvDim) in full ? [(1, 1024), (512, 1024)] : new[] { (8, 128) })
                shapes.Add(new($"{tokens} tokens, kv_dim {kvDim}", (b, k) =>
                {
                    int slots = Math.Max(tokens, 16) * 4;
                    var slotMapping = new int[tokens];
                    for (int t = 0; t < tokens; t++) slotMapping[t] = (t * 7) % slots;   // scattered, as blocks are
                    var args = new KernelArgs().Add(b.Floats((long)tokens * kvDim)).Add(b.Floats((long)tokens * kvDim))
                        .Add(b.Zeros((long)slots * kvDim * element)).Add(b.Zeros((long)slots * kvDim * element)).Add(b.Upload(slotMapping)).Add(kvDim);
                    return new Launch(() => k.Launch(new Dim3((uint)tokens), Block(kernel), args), (8.0 + 2 * element) * tokens * kvDim + 4.0 * tokens, 0);
                }));
        }
        else if (kernel.StartsWith("paged_attention_decode_", StringComparison.Ordinal) && !kernel.Contains("split", StringComparison.Ordinal))
        {
            int element = kernel.EndsWith("f16", StringComparison.Ordinal) ? 2 : 4;
            (int Seqs, int Context, int Heads, int KvHeads, int HeadDim)[] cases = full
                ? [(1, 512, 32, 8, 128), (1, 4096, 32, 8, 128), (32, 512, 32, 8, 128), (32, 4096, 32, 8, 128), (32, 1024, 32, 4, 64)]
                : [(1, 40, 4, 2, 64)];
            foreach (var (seqs, context, heads, kvHeads, headDim) in cases)
                shapes.Add(new($"{seqs} seq × {context} ctx, H{heads}/KV{kvHeads} d{headDim}", (b, k) =>
                {
                    const int blockSize = 16;
                    int maxBlocks = (context + blockSize - 1) / blockSize, kvDim = kvHeads * headDim;
                    // Each sequence its own blocks, in a shuffled order: the gathers a real block table makes.
                    var tables = new int[seqs * maxBlocks];
                    for (int i = 0; i < tables.Length; i++) tables[i] = i;
                    for (int i = tables.Length - 1; i > 0; i--)
                    {
                        int j = (int)((b.Next() + 1) / 2 * (i + 1)) % (i + 1);
                        (tables[i], tables[j]) = (tables[j], tables[i]);
                    }
                    long cacheBytes = (long)tables.Length * blockSize * kvDim * element;
                    var output = b.Zeros((long)seqs * heads * headDim * 4);
                    var args = new KernelArgs().Add(output).Add(b.Floats((long)seqs * heads * headDim)).Add(b.Zeros(cacheBytes)).Add(b.Zeros(cacheBytes))
                        .Add(b.Upload(tables)).Add(b.Upload(Enumerable.Repeat(context, seqs).ToArray()))
                        .Add(maxBlocks).Add(heads).Add(kvHeads).Add(headDim).Add(blockSize).Add(1f / MathF.Sqrt(headDim)).Add(0);
                    double kv = 2.0 * seqs * context * kvDim * element;
                    return new Launch(() => k.Launch(new Dim3((uint)heads, (uint)seqs), Block(kernel), args),
                        kv + 8.0 * seqs * heads * headDim, 4.0 * seqs * heads * context * headDim);
                }));
        }
        else if (kernel.StartsWith("paged_attention_decode_split_", StringComparison.Ordinal))
        {
            // The long contexts split-K is for (PagedAttentionDecodePlan), next to the one-pass kernel's shapes above, and
            // the short ones of a few sequences, which it splits into smaller partitions; each at the partition size the
            // backend's plan takes for it (512 where the plan would not split: 32 sequences × 4096).
            int element = kernel.EndsWith("f16", StringComparison.Ordinal) ? 2 : 4;
            (int Seqs, int Context, int Heads, int KvHeads, int HeadDim)[] cases = full
                ? [(1, 512, 32, 8, 128), (4, 512, 32, 8, 128), (1, 4096, 32, 8, 128), (1, 32768, 32, 8, 128), (32, 4096, 32, 8, 128), (8, 16384, 32, 8, 128)]
                : [(1, 600, 1, 1, 64)];   // ten partitions of 64 (one sequence of one head)
            foreach (var (seqs, context, heads, kvHeads, headDim) in cases)
            {
                int partition = PagedAttentionDecodePlan.Choose(context, seqs, heads) is { SplitK: true } chosen
                    ? chosen.Partition : PagedAttentionDecodePlan.PartitionSize;
                shapes.Add(new($"{seqs} seq × {context} ctx, H{heads}/KV{kvHeads} d{headDim}, {partition}-position partitions", (b, k) =>
                {
                    const int blockSize = 16;
                    int maxBlocks = (context + blockSize - 1) / blockSize, kvDim = kvHeads * headDim;
                    var plan = new PagedAttentionDecodePlan(true, PagedAttentionDecodePlan.Partitions(context, partition), partition);
                    var tables = b.ShuffledBlocks(seqs * maxBlocks);
                    long cacheBytes = (long)tables.Length * blockSize * kvDim * element, stats = plan.StatisticsLength(seqs, heads);
                    var args = new KernelArgs().Add(b.Zeros(stats * 4)).Add(b.Zeros(stats * 4)).Add(b.Zeros(stats * headDim * 4))
                        .Add(b.Floats((long)seqs * heads * headDim)).Add(b.Zeros(cacheBytes)).Add(b.Zeros(cacheBytes))
                        .Add(b.Upload(tables)).Add(b.Upload(Enumerable.Repeat(context, seqs).ToArray()))
                        .Add(maxBlocks).Add(heads).Add(kvHeads).Add(headDim).Add(blockSize).Add(1f / MathF.Sqrt(headDim)).Add(0)
                        .Add(partition);
                    double kv = 2.0 * seqs * context * kvDim * element;
                    return new Launch(() => k.Launch(plan.SplitGrid(seqs, heads), Block(kernel), args),
                        kv + 4.0 * seqs * heads * headDim + 4.0 * stats * (headDim + 2), 4.0 * seqs * heads * context * headDim);
                }));
            }
        }
        else if (kernel == "paged_attention_reduce")
        {
            (int Seqs, int Partitions, int Heads, int HeadDim)[] cases = full ? [(1, 64, 32, 128), (32, 8, 32, 128)] : [(1, 2, 4, 64)];
            foreach (var (seqs, partitions, heads, headDim) in cases)
                shapes.Add(new($"{seqs} seq × {partitions} partitions, H{heads} d{headDim}", (b, k) =>
                {
                    long stats = (long)seqs * heads * partitions;
                    var sums = new float[stats];
                    Array.Fill(sums, 1f);   // a partition's exp sum is ≥ 1 (its maximum contributes e^0)
                    int context = partitions * PagedAttentionDecodePlan.PartitionSize;
                    var args = new KernelArgs().Add(b.Zeros((long)seqs * heads * headDim * 4)).Add(b.Floats(stats)).Add(b.Upload(sums))
                        .Add(b.Floats(stats * headDim)).Add(b.Upload(Enumerable.Repeat(context, seqs).ToArray()))
                        .Add(partitions).Add(heads).Add(headDim).Add(0).Add(PagedAttentionDecodePlan.PartitionSize);
                    return new Launch(() => k.Launch(new Dim3((uint)heads, (uint)seqs), Block(kernel), args),
                        4.0 * stats * (headDim + 2) + 4.0 * seqs * heads * headDim + 4.0 * seqs, 2.0 * stats * headDim);
                }));
        }
        else if (kernel.StartsWith("paged_attention_prefill_", StringComparison.Ordinal))
        {
            int element = kernel.EndsWith("f16", StringComparison.Ordinal) ? 2 : 4;
            // Sequences of `rows` query rows each, the first at position `start` (> 0: a chunk after cached ones).
            (int Seqs, int Rows, int Start, int Heads, int KvHeads, int HeadDim)[] cases = full
                ? [(1, 512, 0, 32, 8, 128), (8, 256, 0, 32, 8, 128), (1, 512, 3584, 32, 8, 128), (1, 1024, 0, 32, 4, 64)]
                : [(1, 16, 0, 2, 1, 64)];
            foreach (var (seqs, rows, start, heads, kvHeads, headDim) in cases)
                shapes.Add(new($"{seqs} seq × {rows} rows{(start > 0 ? $" from {start}" : "")}, H{heads}/KV{kvHeads} d{headDim}", (b, k) =>
                {
                    const int blockSize = 16;
                    int context = start + rows, maxBlocks = (context + blockSize - 1) / blockSize, kvDim = kvHeads * headDim, tokens = seqs * rows;
                    var tables = b.ShuffledBlocks(seqs * maxBlocks);
                    long cacheBytes = (long)tables.Length * blockSize * kvDim * element;
                    var positions = new int[tokens];
                    for (int t = 0; t < tokens; t++) positions[t] = start + t % rows;
                    var args = new KernelArgs().Add(b.Zeros((long)tokens * heads * headDim * 4)).Add(b.Floats((long)tokens * heads * headDim))
                        .Add(b.Zeros(cacheBytes)).Add(b.Zeros(cacheBytes)).Add(b.Upload(tables))
                        .Add(b.Upload(Enumerable.Range(0, seqs + 1).Select(s => s * rows).ToArray())).Add(b.Upload(positions))
                        .Add(maxBlocks).Add(heads).Add(kvHeads).Add(headDim).Add(blockSize).Add(1f / MathF.Sqrt(headDim)).Add(0);
                    // Keys and values read once per sequence at least; q·k and p·v over every (row, seen position) pair.
                    double seen = (double)seqs * (rows * (double)start + rows * (rows + 1.0) / 2);
                    return new Launch(() => k.Launch(PagedAttentionPrefill.Grid(rows, heads, seqs), Block(kernel), args),
                        2.0 * seqs * context * kvDim * element + 8.0 * tokens * heads * headDim + 4.0 * (tokens + seqs + 1),
                        4.0 * seen * heads * headDim);
                }));
        }
        else if (kernel is "silu_and_mul" or "gelu_tanh_and_mul")
        {
            foreach (long n in full ? new[] { 14336L, 512L * 14336 } : [1000L])
                shapes.Add(new($"n {n}", (b, k) =>
                {
                    var gate = b.Floats(n, 6f);
                    var args = new KernelArgs().Add(gate).Add(b.Floats(n)).Add(b.Zeros(n * 4)).Add(n);
                    return new Launch(() => k.Launch(KernelLaunches.ElementGrid(n), Block(kernel), args), 12.0 * n, 8.0 * n);
                }));
        }
        else if (kernel is "convert_f32_to_f16" or "convert_f32_to_bf16")
        {
            // A prefill chunk's activations before each GEMM: 512 tokens of TinyLlama's 5632-wide and Llama 3 8B's 14336-wide FFN.
            foreach (long n in full ? new[] { 512L * 5632, 512L * 14336 } : [1000L])
                shapes.Add(new($"n {n}", (b, k) =>
                {
                    var args = new KernelArgs().Add(b.Floats(n)).Add(b.Zeros(n * 2)).Add(n);
                    return new Launch(() => k.Launch(KernelLaunches.ElementGrid(n), Block(kernel), args), 6.0 * n, 0);
                }));
        }
        else if (kernel is "dequantize_q8_0_f16" or "dequantize_q4_0_f16")
        {
            var qt = kernel == "dequantize_q8_0_f16" ? GgmlType.Q8_0 : GgmlType.Q4_0;
            foreach (var (rows, cols) in full ? [(5632, 2048), (14336, 4096)] : new[] { (16, 256) })
                shapes.Add(new($"{rows} × {cols}", (b, k) =>
                {
                    long n = (long)rows * cols;
                    var args = new KernelArgs().Add(b.Matrix(qt, rows, cols)).Add(b.Zeros(n * 2)).Add(n);
                    return new Launch(() => k.Launch(KernelLaunches.ElementGrid(n), Block(kernel), args), WeightBytes(qt, rows, cols) + 2.0 * n, 0);
                }));
        }
        else if (kernel == "sample")
        {
            // Greedy, and temperature 0.8 with top-k 50 and top-p 0.9 (the cuts are most of the kernel's passes).
            (int Rows, int Vocab, bool Greedy)[] cases = full
                ? [(1, 128256, true), (32, 32000, false), (32, 128256, false)]
                : [(2, 1000, false)];
            foreach (var (rows, vocab, greedy) in cases)
                shapes.Add(new($"{rows} × {vocab}, {(greedy ? "greedy" : "T 0.8, top-k 50, top-p 0.9")}", (b, k) =>
                {
                    // tm_sampling_row as 14 ints: temperature, top_k, top_p, min_p, repetition, presence, frequency,
                    // top_logprobs, adjust_begin, adjust_count, seed lo/hi, step lo/hi.
                    var row = new int[14];
                    row[0] = BitConverter.SingleToInt32Bits(greedy ? 0f : 0.8f);
                    row[1] = greedy ? 0 : 50;
                    row[2] = BitConverter.SingleToInt32Bits(greedy ? 1f : 0.9f);
                    row[4] = BitConverter.SingleToInt32Bits(1f);
                    row[7] = -1;
                    row[10] = 42;
                    var table = new int[rows * 14];
                    for (int r = 0; r < rows; r++) row.CopyTo(table, r * 14);
                    var args = new KernelArgs().Add(b.Floats((long)rows * vocab, 4f)).Add(new CUdeviceptr(0)).Add(vocab).Add(b.Upload(table)).Add(b.Zeros(16))
                        .Add(b.Zeros((long)rows * vocab * 4)).Add(b.Zeros((long)rows * vocab * 4)).Add(b.Zeros(rows * 4L))
                        .Add(b.Zeros(rows * 4L)).Add(b.Zeros(rows * 4L)).Add(b.Zeros(rows * 4L)).Add(1);
                    // Reads the logits, writes the adjusted logits and the kept probabilities: the least a row takes.
                    return new Launch(() => k.Launch(new Dim3((uint)rows), Block(kernel), args), 12.0 * rows * vocab, 0);
                }));
        }
        else if (kernel == "argmax")
        {
            foreach (var (rows, vocab) in full ? [(1, 128256), (32, 128256), (32, 32000)] : new[] { (1, 1000) })
                shapes.Add(new($"{rows} × {vocab}", (b, k) =>
                {
                    var args = new KernelArgs().Add(b.Floats((long)rows * vocab)).Add(vocab).Add(b.Zeros(rows * 4L));
                    return new Launch(() => k.Launch(new Dim3((uint)rows), Block(kernel), args), 4.0 * rows * vocab + 4.0 * rows, 0);
                }));
        }
        return shapes;
    }
}

/// <summary>Which shapes <see cref="KernelBench"/> times: real model sizes, or a small sweep for the emulated driver.</summary>
public enum KernelBenchSweep { Full, Small }

/// <summary>How <see cref="KernelBench"/> samples each shape.</summary>
/// <param name="Sweep">The shapes.</param>
/// <param name="Samples">Timed samples per shape; the median is reported.</param>
/// <param name="LaunchesPerSample">Back-to-back launches between the two events of one sample.</param>
/// <param name="WarmupLaunches">Untimed launches first (module load, caches, clocks).</param>
public sealed record KernelBenchOptions(KernelBenchSweep Sweep = KernelBenchSweep.Full, int Samples = 10, int LaunchesPerSample = 10, int WarmupLaunches = 3);
