using TokenMill.Interop;
using TokenMill.KvCache;
using TokenMill.Interop.Driver;
using TokenMill.Models.Gguf;
using TokenMill.Quantization;
using TokenMill.Sampling;

namespace TokenMill.Backends.Cuda;

/// <summary>One kernel run on the GPU against its scalar reference.</summary>
public sealed record KernelCheck(string Kernel, string Case, double MaxError, double Tolerance)
{
    public bool Passed => MaxError <= Tolerance;   // NaN fails: comparisons with NaN are false
}

/// <summary>
/// Runs every kernel on the device with small deterministic inputs and compares the results with plain
/// scalar C# written from the same formulas CpuForward uses (dequantization through the CPU's own
/// <see cref="Dequantize"/>). This is what <c>tokenmill kernels selftest</c> runs on a GPU machine.
/// Passed on an H100 (2026-11-26: 201 checks, also under compute-sanitizer's memcheck) and on the emulated driver.
/// </summary>
public sealed class KernelSelfTest : IDisposable
{
    readonly CudaContext _ctx;
    readonly Dictionary<string, CudaModule> _modules = [];
    readonly List<DeviceBuffer> _buffers = [];
    readonly List<KernelCheck> _results = [];
    readonly Dictionary<string, string> _moduleErrors = [];
    Func<string, bool> _include = _ => true;
    string? _current;
    static readonly bool[] FalseTrue = [false, true];
    static readonly int[] Windows = [0, 10];   // full context, and a sliding window shorter than it
    ulong _rng = 0x9E3779B97F4A7C15;

    KernelSelfTest(CudaContext ctx) => _ctx = ctx;

    /// <summary>
    /// Compiles the kernels for the context's device, loads them and runs every check (or those of the kernels
    /// <paramref name="include"/> accepts). A kernel that cannot be compiled, loaded or launched gets a failing
    /// check carrying the error; the others still run.
    /// </summary>
    public static IReadOnlyList<KernelCheck> Run(CudaContext ctx, KernelCompiler compiler, IReadOnlyList<KernelSource> sources,
                                                 Func<string, bool>? include = null)
    {
        using var t = new KernelSelfTest(ctx) { _include = include ?? (_ => true) };
        foreach (var kernel in sources.Where(s => !s.IsHeader))
        {
            try { t._modules[kernel.FileName] = ctx.LoadModule(compiler.Compile(kernel, sources, ctx.Architecture).Ptx); }
            catch (CudaInteropException e) { t._moduleErrors[kernel.FileName] = e.Message; }
        }
        t.Embedding();
        t.Norms();
        t.Rope();
        t.CacheAndAttention();
        t.SplitDecodeAttention();
        t.PrefillAttention();
        t.Activations();
        t.Gemv();
        t.Conversions();
        t.Gemm();
        t.ArgMax();
        t.Sampling();
        return t._results;
    }

    public void Dispose()
    {
        foreach (var b in _buffers) b.Dispose();
        foreach (var m in _modules.Values) m.Dispose();
    }

    // ---- helpers -------------------------------------------------------------------------------

    /// <summary>Uniform in [−1, 1) from a fixed-seed xorshift: the same inputs on every machine.</summary>
    float Next()
    {
        _rng ^= _rng << 13;
        _rng ^= _rng >> 7;
        _rng ^= _rng << 17;
        return (float)((_rng >> 11) * (1.0 / (1UL << 53)) * 2 - 1);
    }

    float[] Random(int n, float scale = 1f)
    {
        var a = new float[n];
        for (int i = 0; i < n; i++) a[i] = Next() * scale;
        return a;
    }

    unsafe DeviceBuffer Upload<T>(T[] data) where T : unmanaged
    {
        var b = _ctx.Allocate(Math.Max(1, (long)data.Length * sizeof(T)));
        _buffers.Add(b);
        if (data.Length > 0) b.CopyFrom<T>(data);
        return b;
    }

    unsafe DeviceBuffer Zeros<T>(int count) where T : unmanaged => Upload(new T[count]);

    T[] Download<T>(DeviceBuffer b, int count) where T : unmanaged
    {
        _ctx.Synchronize();
        var a = new T[count];
        b.CopyTo<T>(a);
        return a;
    }

    CudaKernel K(string file, string name)
    {
        _current = name;
        return _modules.TryGetValue(file, out var m) ? m.GetKernel(name)
            : throw new InvalidOperationException($"{file} was not loaded: {_moduleErrors.GetValueOrDefault(file, "no such kernel file")}");
    }

    void Guarded(string kernel, Action checks) => Guarded([kernel], checks);

    /// <summary>
    /// Runs checks that use <paramref name="kernels"/> when one of them is selected. An exception (a kernel
    /// missing from its module, a failed launch) becomes a failing check of the kernel last looked up, and the
    /// group's other kernels that got no result are reported as not run — the rest of the self test goes on.
    /// </summary>
    void Guarded(string[] kernels, Action checks)
    {
        if (!kernels.Any(_include)) return;
        _current = null;
        try { checks(); }
        catch (Exception e) when (e is CudaInteropException or InvalidOperationException)
        {
            string failed = _current ?? kernels[0];
            _results.Add(new KernelCheck(failed, "error: " + e.Message.ReplaceLineEndings(" "), double.NaN, 0));
            foreach (string k in kernels.Where(k => k != failed && _include(k) && !_results.Any(r => r.Kernel == k)))
                _results.Add(new KernelCheck(k, $"not run: {failed} failed", double.NaN, 0));
        }
    }

    /// <summary>The block the backend launches <paramref name="kernel"/> with (<see cref="KernelLaunches"/>).</summary>
    static Dim3 Block(string kernel) => new((uint)KernelLaunches.For(kernel).BlockSize);

    void Check(string kernel, string name, ReadOnlySpan<float> actual, ReadOnlySpan<double> expected, double tolerance)
    {
        double max = actual.Length == expected.Length ? 0 : double.PositiveInfinity;
        for (int i = 0; i < Math.Min(actual.Length, expected.Length); i++)
        {
            double e = Math.Abs(actual[i] - expected[i]);
            if (!(e <= max)) max = e;   // picks up NaN
        }
        _results.Add(new KernelCheck(kernel, name, max, tolerance));
    }

    static byte[] Encode(GgmlType type, float[] values, int rows, int cols)
    {
        long rowBytes = GgmlTypeInfo.RowBytes(type, cols);
        var bytes = new byte[rows * rowBytes];
        for (int r = 0; r < rows; r++)
            Quantize.Row(type, values.AsSpan(r * cols, cols), bytes.AsSpan((int)(r * rowBytes), (int)rowBytes));
        return bytes;
    }

    static float[] Decode(GgmlType type, byte[] bytes, int rows, int cols)
    {
        long rowBytes = GgmlTypeInfo.RowBytes(type, cols);
        var values = new float[rows * cols];
        for (int r = 0; r < rows; r++)
            Dequantize.Row(type, bytes.AsSpan((int)(r * rowBytes), (int)rowBytes), values.AsSpan(r * cols, cols));
        return values;
    }

    // ---- checks --------------------------------------------------------------------------------

    void Embedding()
    {
        const int vocab = 64, dim = 256;
        const float scale = 1.5f;
        int[] tokens = [3, 17, 63, 0, 3];
        var table = Random(vocab * dim);
        var dTokens = Upload(tokens);
        foreach (var (type, kernel) in new[] { (GgmlType.F32, "embedding_f32"), (GgmlType.F16, "embedding_f16"), (GgmlType.BF16, "embedding_bf16"), (GgmlType.Q8_0, "embedding_q8_0") })
            Guarded(kernel, () =>
        {
            var encoded = Encode(type, table, vocab, dim);
            var decoded = Decode(type, encoded, vocab, dim);
            var output = Zeros<float>(tokens.Length * dim);
            K("embedding.cu", kernel).Launch(new Dim3((uint)tokens.Length), Block(kernel),
                new KernelArgs().Add(Upload(encoded)).Add(dTokens).Add(output).Add(dim).Add(scale));
            var expected = new double[tokens.Length * dim];
            for (int t = 0; t < tokens.Length; t++)
                for (int i = 0; i < dim; i++) expected[t * dim + i] = decoded[tokens[t] * dim + i] * (double)scale;
            Check(kernel, $"{tokens.Length} tokens × {dim}", Download<float>(output, expected.Length), expected, 1e-6);
        });
    }

    void Norms()
    {
        const int rows = 3, dim = 1000;
        const float eps = 1e-5f;
        var x = Random(rows * dim, 3f);
        var delta = Random(rows * dim);
        var w = Random(dim);
        double[] Reference(float[] input)
        {
            var y = new double[rows * dim];
            for (int r = 0; r < rows; r++)
            {
                double sum = 0;
                for (int i = 0; i < dim; i++) sum += (double)input[r * dim + i] * input[r * dim + i];
                double s = 1.0 / Math.Sqrt(sum / dim + eps);
                for (int i = 0; i < dim; i++) y[r * dim + i] = input[r * dim + i] * s * w[i];
            }
            return y;
        }

        var dx = Upload(x);
        var dw = Upload(w);
        var dy = Zeros<float>(rows * dim);
        Guarded("rms_norm", () =>
        {
            K("rms_norm.cu", "rms_norm").Launch(new Dim3(rows), Block("rms_norm"), new KernelArgs().Add(dx).Add(dw).Add(dy).Add(dim).Add(eps));
            Check("rms_norm", $"{rows} × {dim}", Download<float>(dy, rows * dim), Reference(x), 1e-4);
        });

        var sum = new float[rows * dim];
        for (int i = 0; i < sum.Length; i++) sum[i] = x[i] + delta[i];
        Guarded("fused_add_rms_norm", () =>
        {
            K("rms_norm.cu", "fused_add_rms_norm").Launch(new Dim3(rows), Block("fused_add_rms_norm"),
                new KernelArgs().Add(dx).Add(Upload(delta)).Add(dw).Add(dy).Add(dim).Add(eps));
            Check("fused_add_rms_norm", "normalized", Download<float>(dy, rows * dim), Reference(sum), 1e-4);
            Check("fused_add_rms_norm", "residual x += delta", Download<float>(dx, rows * dim), [.. sum.Select(v => (double)v)], 0);
        });
    }

    void Rope()
    {
        const int heads = 4, kvHeads = 2, headDim = 64;
        int[] positions = [0, 7, 3000];
        Guarded("rope", () =>
        {
        foreach (bool neox in FalseTrue)
            foreach (bool factors in FalseTrue)
                foreach (int rotDim in new[] { headDim, 32 })
                {
                    int n = positions.Length;
                    var q = Random(n * heads * headDim);
                    var k = Random(n * kvHeads * headDim);
                    var ff = factors ? Random(rotDim / 2).Select(v => 1.5f + v).ToArray() : null;
                    const float ropeBase = 10000f, linear = 2f;
                    var dq = Upload(q);
                    var dk = Upload(k);
                    K("rope.cu", "rope").Launch(new Dim3((uint)n), Block("rope"), new KernelArgs()
                        .Add(dq).Add(dk).Add(Upload(positions))
                        .Add(ff is null ? new CUdeviceptr(0) : Upload(ff).Pointer)
                        .Add(heads).Add(kvHeads).Add(headDim).Add(rotDim).Add(ropeBase).Add(linear).Add(neox ? 1 : 0));

                    double[] Rotate(float[] src, int count)
                    {
                        var dst = src.Select(v => (double)v).ToArray();
                        int pairs = rotDim / 2;
                        for (int t = 0; t < n; t++)
                            for (int h = 0; h < count; h++)
                                for (int i = 0; i < pairs; i++)
                                {
                                    double inv = Math.Pow(ropeBase, -2.0 * i / rotDim) / linear;
                                    if (ff is not null) inv /= ff[i];
                                    double th = positions[t] * inv;
                                    int o = (t * count + h) * headDim;
                                    int a = neox ? i : 2 * i, b = neox ? i + pairs : 2 * i + 1;
                                    float c = (float)Math.Cos(th), s = (float)Math.Sin(th);
                                    float x0 = src[o + a], x1 = src[o + b];
                                    dst[o + a] = x0 * c - x1 * s;
                                    dst[o + b] = x0 * s + x1 * c;
                                }
                        return dst;
                    }
                    string name = $"{(neox ? "NEOX" : "NORM")}{(factors ? " + freq factors" : "")}, rot {rotDim}/{headDim}";
                    Check("rope (q)", name, Download<float>(dq, q.Length), Rotate(q, heads), 1e-5);
                    Check("rope (k)", name, Download<float>(dk, k.Length), Rotate(k, kvHeads), 1e-5);
                }
        });
    }

    void CacheAndAttention()
    {
        const int blockSize = 16, numBlocks = 8, maxBlocks = 3;
        int[] contextLens = [37, 5];
        int[][] tables = [[5, 2, 7], [1]];
        var flatTables = new int[contextLens.Length * maxBlocks];
        for (int s = 0; s < tables.Length; s++) tables[s].CopyTo(flatTables, s * maxBlocks);
        int Slot(int s, int j) => tables[s][j / blockSize] * blockSize + j % blockSize;

        foreach (var (heads, kvHeads, headDim) in new[] { (8, 2, 64), (4, 4, 80), (2, 1, 256) })
            foreach (var dtype in CacheDtypes(headDim))
                Guarded([$"reshape_and_cache_{dtype.Name()}", $"paged_attention_decode_{dtype.Name()}"], () =>
            {
                int kvDim = kvHeads * headDim, slots = numBlocks * blockSize;
                string type = dtype.Name();
                // Every position of both sequences is written through reshape_and_cache, plus one padding row (slot −1).
                var slotMapping = new List<int>();
                for (int s = 0; s < contextLens.Length; s++)
                    for (int j = 0; j < contextLens[s]; j++) slotMapping.Add(Slot(s, j));
                slotMapping.Add(-1);
                int tokens = slotMapping.Count;
                var k = Random(tokens * kvDim);
                var v = Random(tokens * kvDim);
                var kCache = Zeros<byte>((int)(slots * dtype.RowBytes(kvDim)));
                var vCache = Zeros<byte>((int)(slots * dtype.RowBytes(kvDim)));
                K("reshape_and_cache.cu", $"reshape_and_cache_{type}").Launch(new Dim3((uint)tokens), Block($"reshape_and_cache_{type}"), new KernelArgs()
                    .Add(Upload(k)).Add(Upload(v)).Add(kCache).Add(vCache).Add(Upload(slotMapping.ToArray())).Add(kvDim));
                // What the cache must hold: each token's row at its slot as the CPU's store keeps it (rounded to f16, or
                // quantized as ggml's quantize_row_q8_0), read back as the CPU's attention widens it.
                var expectedK = new double[slots * kvDim];
                var expectedV = new double[slots * kvDim];
                for (int t = 0; t < tokens; t++)
                    if (slotMapping[t] >= 0)
                    {
                        var storedK = Stored(dtype, k.AsSpan(t * kvDim, kvDim));
                        var storedV = Stored(dtype, v.AsSpan(t * kvDim, kvDim));
                        for (int i = 0; i < kvDim; i++)
                        {
                            expectedK[slotMapping[t] * kvDim + i] = storedK[i];
                            expectedV[slotMapping[t] * kvDim + i] = storedV[i];
                        }
                    }
                var keys = ReadCache(dtype, kCache, slots, kvDim);
                var values = ReadCache(dtype, vCache, slots, kvDim);
                Check($"reshape_and_cache_{type}", $"{tokens} tokens, kv_dim {kvDim}, keys", keys, expectedK, 0);
                Check($"reshape_and_cache_{type}", $"{tokens} tokens, kv_dim {kvDim}, values", values, expectedV, 0);

                var q = Random(contextLens.Length * heads * headDim);
                float scale = 1f / MathF.Sqrt(headDim);
                foreach (int window in Windows)
                {
                    var output = Zeros<float>(q.Length);
                    K("paged_attention.cu", $"paged_attention_decode_{type}").Launch(new Dim3((uint)heads, (uint)contextLens.Length), Block($"paged_attention_decode_{type}"),
                        new KernelArgs().Add(output).Add(Upload(q)).Add(kCache).Add(vCache).Add(Upload(flatTables)).Add(Upload(contextLens))
                            .Add(maxBlocks).Add(heads).Add(kvHeads).Add(headDim).Add(blockSize).Add(scale).Add(window));
                    var expected = new double[q.Length];
                    for (int s = 0; s < contextLens.Length; s++)
                        for (int h = 0; h < heads; h++)
                        {
                            int kvh = h / (heads / kvHeads), ctx = contextLens[s];
                            int first = window > 0 && ctx > window ? ctx - window : 0;
                            var scores = new double[ctx - first];
                            for (int j = first; j < ctx; j++)
                            {
                                double dot = 0;
                                for (int d = 0; d < headDim; d++)
                                    dot += (double)q[(s * heads + h) * headDim + d] * keys[Slot(s, j) * kvDim + kvh * headDim + d];
                                scores[j - first] = dot * scale;
                            }
                            double max = scores.Max(), total = scores.Sum(x => Math.Exp(x - max));
                            for (int j = first; j < ctx; j++)
                            {
                                double p = Math.Exp(scores[j - first] - max) / total;
                                for (int d = 0; d < headDim; d++)
                                    expected[(s * heads + h) * headDim + d] += p * values[Slot(s, j) * kvDim + kvh * headDim + d];
                            }
                        }
                    Check($"paged_attention_decode_{type}", $"H{heads}/KV{kvHeads} d{headDim}{(window > 0 ? $" window {window}" : "")}",
                        Download<float>(output, q.Length), expected, 1e-5);
                }
            });
    }

    /// <summary>
    /// Writes every (sequence, position) of <paramref name="slotOf"/>'s sequences into a fresh cache through
    /// reshape_and_cache (random keys and values) and returns the device cache and what it holds, read back
    /// (reshape_and_cache itself is checked in <see cref="CacheAndAttention"/>).
    /// </summary>
    (DeviceBuffer K, DeviceBuffer V, float[] Keys, float[] Values) FillCache(KvCacheDtype dtype, int kvDim, int slots, int[] contextLens, Func<int, int, int> slotOf)
    {
        string kernel = $"reshape_and_cache_{dtype.Name()}";
        var slotMapping = new List<int>();
        for (int s = 0; s < contextLens.Length; s++)
            for (int j = 0; j < contextLens[s]; j++) slotMapping.Add(slotOf(s, j));
        int tokens = slotMapping.Count;
        var kCache = Zeros<byte>((int)(slots * dtype.RowBytes(kvDim)));
        var vCache = Zeros<byte>((int)(slots * dtype.RowBytes(kvDim)));
        K("reshape_and_cache.cu", kernel).Launch(new Dim3((uint)tokens), Block(kernel), new KernelArgs()
            .Add(Upload(Random(tokens * kvDim))).Add(Upload(Random(tokens * kvDim))).Add(kCache).Add(vCache).Add(Upload(slotMapping.ToArray())).Add(kvDim));
        return (kCache, vCache, ReadCache(dtype, kCache, slots, kvDim), ReadCache(dtype, vCache, slots, kvDim));
    }

    /// <summary>The cache types to test at <paramref name="headDim"/>: f32 and f16, and q8_0 where its blocks fit the head.</summary>
    static IEnumerable<KvCacheDtype> CacheDtypes(int headDim) => Enum.GetValues<KvCacheDtype>().Where(d => d.Unsupported(headDim) is null);

    /// <summary>A row as a cache of <paramref name="dtype"/> stores it, widened back to floats (the CPU's PagedKvStore and CpuAttention).</summary>
    static float[] Stored(KvCacheDtype dtype, ReadOnlySpan<float> row)
    {
        var bytes = new byte[dtype.RowBytes(row.Length)];
        var type = dtype.StorageType();
        Quantize.Row(type, row, bytes);
        var widened = new float[row.Length];
        Dequantize.Row(type, bytes, widened);
        return widened;
    }

    /// <summary>A device cache of <paramref name="slots"/> rows of <paramref name="kvDim"/> values, read back and widened to floats.</summary>
    float[] ReadCache(KvCacheDtype dtype, DeviceBuffer cache, int slots, int kvDim)
    {
        int rowBytes = (int)dtype.RowBytes(kvDim);
        var bytes = Download<byte>(cache, slots * rowBytes);
        var type = dtype.StorageType();
        var values = new float[slots * kvDim];
        for (int s = 0; s < slots; s++) Dequantize.Row(type, bytes.AsSpan(s * rowBytes, rowBytes), values.AsSpan(s * kvDim, kvDim));
        return values;
    }

    /// <summary>
    /// The plain reference every attention kernel is checked against (CpuForward.AttentionItem's formula, in double):
    /// softmax(q·k · scale)·v over positions <paramref name="first"/> … <paramref name="last"/> of a sequence, added to <paramref name="output"/>.
    /// </summary>
    static void Attend(ReadOnlySpan<float> q, float[] keys, float[] values, Func<int, int> slotOf, int kvOffset, int kvDim,
                       int first, int last, float scale, Span<double> output)
    {
        var scores = new double[last + 1 - first];
        for (int j = first; j <= last; j++)
        {
            double dot = 0;
            for (int d = 0; d < q.Length; d++) dot += (double)q[d] * keys[slotOf(j) * kvDim + kvOffset + d];
            scores[j - first] = dot * scale;
        }
        double max = scores.Max(), total = scores.Sum(x => Math.Exp(x - max));
        for (int j = first; j <= last; j++)
        {
            double p = Math.Exp(scores[j - first] - max) / total;
            for (int d = 0; d < q.Length; d++) output[d] += p * values[slotOf(j) * kvDim + kvOffset + d];
        }
    }

    /// <summary>
    /// Split-K decode: a context of 1, one of exactly one partition, one of several partitions and a remainder, each
    /// with and without a sliding window that starts mid-context, at a small partition size (the emulated run stays
    /// short) and once as the backend's <see cref="PagedAttentionDecodePlan.Choose"/> splits a long context of one
    /// sequence (64-position partitions: a small batch's). The partial buffers start as NaN, so a reduce that reads a
    /// partition nobody wrote fails.
    /// </summary>
    void SplitDecodeAttention()
    {
        const int blockSize = 16, Planned = 0;   // Planned: the partition PagedAttentionDecodePlan.Choose picks
        var cases = new (int Heads, int KvHeads, int HeadDim, int PartitionSize, int[] ContextLens, int[] Windows)[]
        {
            (4, 2, 64, 32, [1, 32, 100], [0, 40]),    // 100 = 3 partitions + 4; window 40 of 100: positions 60…99, 32 + 8
            (2, 1, 256, 32, [1, 32, 100], [0, 40]),
            (1, 1, 128, Planned, [1100], [0]),   // 17 × 64 + 12; f32 only, as the indexing is the same
        };
        foreach (var (heads, kvHeads, headDim, casePartition, contextLens, windows) in cases)
            foreach (var dtype in casePartition == Planned ? [KvCacheDtype.F32] : CacheDtypes(headDim))
            {
                string type = dtype.Name(), split = $"paged_attention_decode_split_{type}";
                Guarded([$"reshape_and_cache_{type}", split, "paged_attention_reduce"], () =>
                {
                    int kvDim = kvHeads * headDim, maxBlocks = (contextLens.Max() + blockSize - 1) / blockSize;
                    // Sequence s's block i is physical block (i · 3 + s) mod blocks, reversed: not in order, never shared.
                    int numBlocks = maxBlocks * contextLens.Length;
                    int[][] tables = [.. contextLens.Select((_, s) => Enumerable.Range(0, maxBlocks).Select(i => numBlocks - 1 - (i * contextLens.Length + s)).ToArray())];
                    int Slot(int s, int j) => tables[s][j / blockSize] * blockSize + j % blockSize;
                    var (kCache, vCache, keys, values) = FillCache(dtype, kvDim, numBlocks * blockSize, contextLens, Slot);
                    var q = Random(contextLens.Length * heads * headDim);
                    float scale = 1f / MathF.Sqrt(headDim);
                    foreach (int window in windows)
                    {
                        int maxSeen = contextLens.Max(c => window > 0 ? Math.Min(c, window) : c);
                        int partitionSize = casePartition;
                        if (casePartition == Planned)
                        {
                            var plan = PagedAttentionDecodePlan.Choose(contextLens.Max(), contextLens.Length, heads, window);
                            if (!plan.SplitK || plan.MaxPartitions != (maxSeen + plan.Partition - 1) / plan.Partition)
                                throw new InvalidOperationException($"PagedAttentionDecodePlan chose {plan} for a {contextLens.Max()}-position context of {heads} head(s)");
                            partitionSize = plan.Partition;
                        }
                        int parts = (maxSeen + partitionSize - 1) / partitionSize;
                        int stats = contextLens.Length * heads * parts;
                        var maxLogits = Upload(Enumerable.Repeat(float.NaN, stats).ToArray());
                        var expSums = Upload(Enumerable.Repeat(float.NaN, stats).ToArray());
                        var partial = Upload(Enumerable.Repeat(float.NaN, stats * headDim).ToArray());
                        var dContext = Upload(contextLens);
                        K("paged_attention.cu", split).Launch(new Dim3((uint)heads, (uint)contextLens.Length, (uint)parts), Block(split),
                            new KernelArgs().Add(maxLogits).Add(expSums).Add(partial).Add(Upload(q)).Add(kCache).Add(vCache)
                                .Add(Upload(tables.SelectMany(t => t).ToArray())).Add(dContext).Add(maxBlocks).Add(heads).Add(kvHeads)
                                .Add(headDim).Add(blockSize).Add(scale).Add(window).Add(partitionSize));
                        var output = Upload(Enumerable.Repeat(float.NaN, q.Length).ToArray());
                        K("paged_attention.cu", "paged_attention_reduce").Launch(new Dim3((uint)heads, (uint)contextLens.Length), Block("paged_attention_reduce"),
                            new KernelArgs().Add(output).Add(maxLogits).Add(expSums).Add(partial).Add(dContext).Add(parts).Add(heads).Add(headDim)
                                .Add(window).Add(partitionSize));
                        var expected = new double[q.Length];
                        for (int s = 0; s < contextLens.Length; s++)
                            for (int h = 0; h < heads; h++)
                            {
                                int ctx = contextLens[s], first = window > 0 && ctx > window ? ctx - window : 0, seq = s;
                                Attend(q.AsSpan((s * heads + h) * headDim, headDim), keys, values, j => Slot(seq, j), h / (heads / kvHeads) * headDim, kvDim,
                                       first, ctx - 1, scale, expected.AsSpan((s * heads + h) * headDim, headDim));
                            }
                        string name = $"H{heads}/KV{kvHeads} d{headDim} ctx {string.Join('/', contextLens)}, {parts} × {partitionSize}{(window > 0 ? $" window {window}" : "")}";
                        var got = Download<float>(output, q.Length);
                        Check(split, name, got, expected, 1e-5);
                        Check("paged_attention_reduce", $"{name} ({type})", got, expected, 1e-5);
                    }
                });
            }
    }

    /// <summary>
    /// Prefill over the paged cache, four sequences in one launch: a prompt of 19 rows (a full query tile and 3 more), a
    /// chunked prefill whose positions 0…12 were cached by an earlier chunk (rows at positions 13…29, across a key tile
    /// boundary and into a second query tile), a prompt of 3 rows and a single decode row at position 20; GQA, every
    /// head dim the kernels take, and a sliding window shorter than a key tile. The emulated shim takes milliseconds per
    /// warp shuffle, so the window (which depends on no head dim) is swept on the GQA shape only.
    /// </summary>
    void PrefillAttention()
    {
        const int blockSize = 16;
        int[] contextLens = [19, 30, 3, 21];   // each sequence's cached positions after this step's rows are written
        int[] firstQuery = [0, 13, 0, 20];     // the position of each sequence's first query row
        int[][] tables = [[3, 8], [0, 6], [9], [2, 5]];
        int maxBlocks = tables.Max(t => t.Length), numBlocks = tables.Max(t => t.Max()) + 1;   // ids 0…9, 1, 4 and 7 unused
        var flatTables = new int[tables.Length * maxBlocks];
        for (int s = 0; s < tables.Length; s++) tables[s].CopyTo(flatTables, s * maxBlocks);
        int Slot(int s, int j) => tables[s][j / blockSize] * blockSize + j % blockSize;
        var queryStart = new int[tables.Length + 1];
        var positions = new List<int>();
        for (int s = 0; s < tables.Length; s++)
        {
            for (int p = firstQuery[s]; p < contextLens[s]; p++) positions.Add(p);
            queryStart[s + 1] = positions.Count;
        }
        int rows = positions.Count, maxQueryLength = Enumerable.Range(0, tables.Length).Max(s => queryStart[s + 1] - queryStart[s]);

        foreach (var (heads, kvHeads, headDim, windows) in new[] { (4, 2, 64, Windows), (1, 1, 80, [0]), (1, 1, 128, [0]), (2, 1, 256, new[] { 0 }) })
            foreach (var dtype in CacheDtypes(headDim))
            {
                string type = dtype.Name(), kernel = $"paged_attention_prefill_{type}";
                Guarded([$"reshape_and_cache_{type}", kernel], () =>
                {
                    int kvDim = kvHeads * headDim;
                    var (kCache, vCache, keys, values) = FillCache(dtype, kvDim, numBlocks * blockSize, contextLens, Slot);
                    var q = Random(rows * heads * headDim);
                    float scale = 1f / MathF.Sqrt(headDim);
                    foreach (int window in windows)
                    {
                        var output = Upload(Enumerable.Repeat(float.NaN, q.Length).ToArray());
                        K("paged_attention_prefill.cu", kernel).Launch(PagedAttentionPrefill.Grid(maxQueryLength, heads, tables.Length), Block(kernel),
                            new KernelArgs().Add(output).Add(Upload(q)).Add(kCache).Add(vCache).Add(Upload(flatTables)).Add(Upload(queryStart))
                                .Add(Upload(positions.ToArray())).Add(maxBlocks).Add(heads).Add(kvHeads).Add(headDim).Add(blockSize).Add(scale).Add(window));
                        var expected = new double[q.Length];
                        for (int s = 0; s < tables.Length; s++)
                            for (int row = queryStart[s]; row < queryStart[s + 1]; row++)
                                for (int h = 0; h < heads; h++)
                                {
                                    int pos = positions[row], first = window > 0 ? Math.Max(0, pos + 1 - window) : 0, seq = s;
                                    Attend(q.AsSpan((row * heads + h) * headDim, headDim), keys, values, j => Slot(seq, j), h / (heads / kvHeads) * headDim, kvDim,
                                           first, pos, scale, expected.AsSpan((row * heads + h) * headDim, headDim));
                                }
                        Check(kernel, $"H{heads}/KV{kvHeads} d{headDim}, rows 19 + 17 (from 13) + 3 + 1{(window > 0 ? $" window {window}" : "")}",
                            Download<float>(output, q.Length), expected, 1e-5);
                    }
                });
            }
    }

    void Activations()
    {
        const int n = 1000;
        var gate = Random(n, 6f);
        var up = Random(n);
        var dGate = Upload(gate);
        var dUp = Upload(up);
        var output = Zeros<float>(n);
        uint grid = (n + 255) / 256;
        Guarded("silu_and_mul", () =>
        {
            K("activation.cu", "silu_and_mul").Launch(new Dim3(grid), Block("silu_and_mul"), new KernelArgs().Add(dGate).Add(dUp).Add(output).Add((long)n));
            Check("silu_and_mul", $"n {n}", Download<float>(output, n), [.. gate.Select((g, i) => g / (1 + Math.Exp(-g)) * up[i])], 1e-5);
        });
        Guarded("gelu_tanh_and_mul", () =>
        {
            K("activation.cu", "gelu_tanh_and_mul").Launch(new Dim3(grid), Block("gelu_tanh_and_mul"), new KernelArgs().Add(dGate).Add(dUp).Add(output).Add((long)n));
            Check("gelu_tanh_and_mul", $"n {n}", Download<float>(output, n),
                [.. gate.Select((g, i) => 0.5 * g * (1 + Math.Tanh(0.7978845608028654 * (g + 0.044715 * g * g * g))) * up[i])], 1e-5);
        });
    }

    void Gemv()
    {
        // 70 rows: the grid's last block has idle warps. 11 vectors: a full block of 8 and a partial one down y.
        // 160 columns: 5 quantized blocks, so a warp's second step has lanes without a block; 520: F16/BF16's 16-byte
        // path takes a second step that not every lane has. 252 and 250 columns: F32 on its float4 path but F16/BF16
        // element by element, then both element by element.
        var cases = new (int Cols, int Vectors, bool QuantizedToo)[]
        {
            (256, 3, true), (256, 11, true), (160, 3, true), (520, 3, false), (252, 3, false), (250, 2, false),
        };
        const int rows = 70;
        foreach (var (cols, vectors, quantizedToo) in cases)
        {
            var w = Random(rows * cols);
            var x = Random(vectors * cols);
            var dx = Upload(x);
            foreach (var (type, name) in new[] { (GgmlType.F32, "gemv_f32"), (GgmlType.F16, "gemv_f16"), (GgmlType.BF16, "gemv_bf16"), (GgmlType.Q8_0, "gemv_q8_0"), (GgmlType.Q4_0, "gemv_q4_0") })
            foreach (string kernel in new[] { name, name + "_x8" })
            {
                if (!quantizedToo && type is GgmlType.Q8_0 or GgmlType.Q4_0) continue;   // their rows are whole 32-value blocks
                Guarded(kernel, () =>
                {
                    var encoded = Encode(type, w, rows, cols);
                    var decoded = Decode(type, encoded, rows, cols);
                    var y = Zeros<float>(vectors * rows);
                    K("gemv.cu", kernel).Launch(KernelLaunches.GemvGrid(rows, vectors, KernelLaunches.GemvVectors(kernel)), Block(kernel),
                        new KernelArgs().Add(Upload(encoded)).Add(dx).Add(y).Add(rows).Add(cols).Add(vectors));
                    var expected = new double[vectors * rows];
                    for (int t = 0; t < vectors; t++)
                        for (int r = 0; r < rows; r++)
                        {
                            double dot = 0;
                            for (int c = 0; c < cols; c++) dot += (double)decoded[r * cols + c] * x[t * cols + c];
                            expected[t * rows + r] = dot;
                        }
                    // 256-term float sums of values up to ~5: a few 1e-5 of rounding, whatever the summation order.
                    Check(kernel, $"{rows} × {cols}, {vectors} vectors", Download<float>(y, vectors * rows), expected, 1e-3);
                });
            }
        }
    }

    void Conversions()
    {
        // Magnitudes from 2^-24 (f16's smallest subnormal) to 2^15 (f16's largest binade): every rounding case of both types.
        const int n = 1000;
        var x = new float[n];
        for (int i = 0; i < n; i++) x[i] = Next() * MathF.ScaleB(1f, i % 40 - 24);
        x[0] = 0f;
        x[1] = -0f;
        var dx = Upload(x);
        foreach (var (kernel, round, widen) in new (string, Func<float, ushort>, Func<ushort, float>)[]
                 { ("convert_f32_to_f16", Fp16.FromSingle, Fp16.ToSingle), ("convert_f32_to_bf16", Bf16.FromSingle, Bf16.ToSingle) })
            Guarded(kernel, () =>
        {
            var y = Zeros<ushort>(n);
            K("convert.cu", kernel).Launch(new Dim3((n + 255) / 256), Block(kernel), new KernelArgs().Add(dx).Add(y).Add((long)n));
            // Round to nearest even, exactly the CPU's conversion: no tolerance.
            Check(kernel, $"n {n}, 2^-24 … 2^15", [.. Download<ushort>(y, n).Select(widen)], [.. x.Select(v => (double)widen(round(v)))], 0);
        });
        const int rows = 5, cols = 96;
        var w = Random(rows * cols);
        foreach (var (type, kernel) in new[] { (GgmlType.Q8_0, "dequantize_q8_0_f16"), (GgmlType.Q4_0, "dequantize_q4_0_f16") })
            Guarded(kernel, () =>
        {
            var encoded = Encode(type, w, rows, cols);
            var y = Zeros<ushort>(rows * cols);
            K("convert.cu", kernel).Launch(new Dim3((rows * cols + 255) / 256), Block(kernel), new KernelArgs().Add(Upload(encoded)).Add(y).Add((long)rows * cols));
            // d · q is exact in float (what Dequantize gives); its f16 rounding is the kernel's whole result.
            Check(kernel, $"{rows} × {cols}", [.. Download<ushort>(y, rows * cols).Select(Fp16.ToSingle)],
                [.. Decode(type, encoded, rows, cols).Select(v => (double)Fp16.ToSingle(Fp16.FromSingle(v)))], 0);
        });
    }

    /// <summary>
    /// <see cref="CudaGemm"/> — the backend's cuBLAS products for chunks of many rows — for every weight type it takes,
    /// against double sums of the same rounded inputs: F32 as they are; F16 and BF16 weights with the activations rounded
    /// to their type; Q8_0 and Q4_0 dequantized to f16 in slices of 32 rows (70 rows: three slices, the last short).
    /// cuBLAS's transposes and leading dimensions are the thing under test here.
    /// </summary>
    void Gemm()
    {
        const string name = CudaGemm.Name;
        const int rows = 70, cols = 96, n = 9;
        var w = Random(rows * cols);
        var x = Random(n * cols);
        var dx = Upload(x);
        foreach (var type in new[] { GgmlType.F32, GgmlType.F16, GgmlType.BF16, GgmlType.Q8_0, GgmlType.Q4_0 })
            Guarded([name, "convert_f32_to_f16", "convert_f32_to_bf16", "dequantize_q8_0_f16", "dequantize_q4_0_f16"], () =>
        {
            var gemm = CudaGemm.TryCreate(_ctx, GemmKernels.From(k => K("convert.cu", k)), n, cols, rows * cols, out string? unavailable, scratchElements: 32 * cols)
                ?? throw new InvalidOperationException($"cuBLAS cannot be loaded: {unavailable}");
            using (gemm)
            {
                _current = name;
                var encoded = Encode(type, w, rows, cols);
                var y = Zeros<float>(n * rows);
                gemm.Multiply(Upload(encoded).Pointer, type, GgmlTypeInfo.RowBytes(type, cols), rows, cols, dx.Pointer, y.Pointer, n);
                Func<float, float> input = type switch
                {
                    GgmlType.F32 => v => v,
                    GgmlType.BF16 => v => Bf16.ToSingle(Bf16.FromSingle(v)),
                    _ => v => Fp16.ToSingle(Fp16.FromSingle(v)),
                };
                var weights = Decode(type, encoded, rows, cols).Select(input).ToArray();   // F16/BF16 are exact already; Q8_0/Q4_0 round to f16
                var expected = new double[n * rows];
                for (int t = 0; t < n; t++)
                    for (int r = 0; r < rows; r++)
                    {
                        double dot = 0;
                        for (int c = 0; c < cols; c++) dot += (double)weights[r * cols + c] * input(x[t * cols + c]);
                        expected[t * rows + r] = dot;
                    }
                Check(name, $"{type} {rows} × {cols}, {n} rows", Download<float>(y, n * rows), expected, 1e-4);
            }
        });
    }

    void ArgMax()
    {
        const int vocab = 32000;
        var logits = Random(3 * vocab);
        logits[vocab + 20000] = 5f;                 // row 1: a tie, the lower index must win
        logits[vocab + 100] = 5f;
        Array.Fill(logits, 0.25f, 2 * vocab, vocab); // row 2: all equal → 0
        Guarded("argmax", () =>
        {
            var output = Zeros<int>(3);
            K("argmax.cu", "argmax").Launch(new Dim3(3), Block("argmax"), new KernelArgs().Add(Upload(logits)).Add(vocab).Add(output));
            var got = Download<int>(output, 3);
            int expected0 = 0;
            for (int i = 1; i < vocab; i++) if (logits[i] > logits[expected0]) expected0 = i;
            Check("argmax", "3 rows × 32000 (tie, all equal)", [.. got.Select(i => (float)i)], [expected0, 100, 0], 0);
        });
    }

    // ---- sampling: the kernel against the CPU sampler itself ----------------------------------------------------

    /// <summary>One row of a sampling batch: its parameters, the request's history and what it suppresses.</summary>
    sealed record SamplingCase(string Name, SamplingParams Params, int[] Prompt, int[] Output, int[]? Suppress = null);

    void Sampling()
    {
        Guarded(CudaSampler.KernelName, () =>
        {
            var kernel = K("sampling.cu", CudaSampler.KernelName);
            int[] prompt = [5, 9, 9, 31999, 7, 1000, 2000];
            int[] output = [9, 42, 42, 42, 100, 7];
            var penalties = new SamplingParams { RepetitionPenalty = 1.3f, PresencePenalty = 0.5f, FrequencyPenalty = 0.4f, LogitBias = new Dictionary<int, float> { [7] = 6.5f, [123] = -100f } };

            // vocab 32000 (Llama 2): every cut, penalties, bias, suppression and ties at a top-k cut.
            const int vocab = 32000;
            var logits = Random(8 * vocab, 4f);
            int rawTop = Sampler.ArgMax(logits.AsSpan(vocab, vocab));
            int[] above = [100, 101, 102, 103, 104], tied = [31000, 50, 20000, 7, 15000];
            foreach (int id in above) logits[7 * vocab + id] = 10f;   // 5 above the cut …
            foreach (int id in tied) logits[7 * vocab + id] = 9f;     // … then ties: k = 8 keeps 7, 50, 15000
            SamplingCase[] llama =
            [
                new("greedy, logprobs 5", SamplingParams.Greedy with { Logprobs = 5 }, [], []),
                new("greedy, penalties + bias + suppressed argmax, logprobs 20", penalties with { Temperature = 0, Logprobs = 20 }, prompt, output, [rawTop]),
                new("T 0.8, top-k 40", new SamplingParams { Temperature = 0.8f, TopK = 40, Logprobs = 0 }, [], []),
                new("T 1.2, top-p 0.9", new SamplingParams { Temperature = 1.2f, TopP = 0.9f }, [], []),
                new("T 1, min-p 0.1", new SamplingParams { MinP = 0.1f }, [], []),
                new("top-k 50, top-p 0.8, min-p 0.05, penalties + bias", penalties with { TopK = 50, TopP = 0.8f, MinP = 0.05f, Logprobs = 3 }, prompt, output),
                new("top-k 1 is greedy", new SamplingParams { TopK = 1 }, [], []),
                new("T 0.7, top-k 8, ties at the cut", new SamplingParams { Temperature = 0.7f, TopK = 8 }, [], []),
            ];
            SamplingBatch(kernel, vocab, logits, Seeded(llama));

            // An odd vocabulary (GPT-2's 50257): ties at the greedy pick and at a top-p cut, top-k just below the vocabulary.
            const int odd = 50257;
            var oddLogits = Random(4 * odd, 4f);
            oddLogits[40000] = oddLogits[12345] = 10f;                                               // greedy: 12345
            int[] tops = [50000, 3, 777, 20000, 9, 41000];
            foreach (int id in tops) oddLogits[odd + id] = 8f;   // six tied tops, p ≈ 1/6 each: top-p 0.6 keeps 3, 9, 777, 20000
            SamplingCase[] gpt2 =
            [
                new("greedy, tie at the max", SamplingParams.Greedy with { Logprobs = 2 }, [], []),
                new("T 0.3, top-p 0.6, ties at the cut", new SamplingParams { Temperature = 0.3f, TopP = 0.6f }, [], []),
                new("T 1.5, top-k vocab − 1", new SamplingParams { Temperature = 1.5f, TopK = odd - 1 }, [], []),
                new("T 0.7, top-k 100, min-p 0.2, repetition 1.2, logprobs 20", new SamplingParams { Temperature = 0.7f, TopK = 100, MinP = 0.2f, RepetitionPenalty = 1.2f, Logprobs = 20 }, [12, 13, 14, 50256], [12, 12]),
            ];
            gpt2 = Seeded(gpt2);
            var gpt2Tokens = SamplingBatch(kernel, odd, oddLogits, gpt2);

            // The same seeds and history again, the rows in reverse order: each request draws the same token wherever
            // it sits in the batch — its logits moved, and (logit_rows) read from where they are.
            var reversedLogits = new float[oddLogits.Length];
            for (int r = 0; r < gpt2.Length; r++) oddLogits.AsSpan(r * odd, odd).CopyTo(reversedLogits.AsSpan((gpt2.Length - 1 - r) * odd));
            var again = Enumerable.Reverse(SamplingBatch(kernel, odd, reversedLogits, [.. Enumerable.Reverse(gpt2)], compare: false));
            _results.Add(new KernelCheck(CudaSampler.KernelName, $"vocab {odd}, seeded rerun in reverse row order: tokens that differ",
                                         gpt2Tokens.Zip(again).Count(t => t.First != t.Second), 0));
            int[] reversedRows = [.. Enumerable.Range(0, gpt2.Length).Reverse()];
            var indirect = Enumerable.Reverse(SamplingBatch(kernel, odd, oddLogits, [.. Enumerable.Reverse(gpt2)], compare: false, logitRows: reversedRows));
            _results.Add(new KernelCheck(CudaSampler.KernelName, $"vocab {odd}, seeded rerun through logit_rows in reverse: tokens that differ",
                                         gpt2Tokens.Zip(indirect).Count(t => t.First != t.Second), 0));

            SamplingDistribution(kernel);
        });
    }

    /// <summary>The cases with seeds 1234, 1235, … in order.</summary>
    static SamplingCase[] Seeded(SamplingCase[] cases) => [.. cases.Select((c, i) => c with { Params = c.Params with { Seed = 1234 + (ulong)i } })];

    /// <summary>A sampler in the case's state: its prompt, and its output accepted as generated tokens.</summary>
    static Sampler NewSampler(SamplingCase c)
    {
        var s = new Sampler(c.Params, c.Prompt);
        foreach (int t in c.Output) s.Accept(t);
        return s;
    }

    /// <summary>
    /// Samples <paramref name="cases"/> (one row each) on the device and checks every row against the CPU sampler in the
    /// same state: the adjusted logits exactly; greedy picks equal; otherwise the distribution drawn from equal to the
    /// CPU's kept tokens and probabilities, and the pick among them; logprobs of the raw logits within 1e-4.
    /// </summary>
    int[] SamplingBatch(CudaKernel kernel, int vocab, float[] logits, SamplingCase[] cases, bool compare = true, int[]? logitRows = null)
    {
        int rows = cases.Length;
        using var sampler = new CudaSampler(_ctx, kernel, vocab, rows);
        var gpu = cases.Select(NewSampler).ToList();
        var results = new SampledToken[rows];
        sampler.Sample(Upload(logits), gpu, results, [.. cases.Select(c => (IReadOnlyCollection<int>?)c.Suppress)], logitRows);
        _ctx.Synchronize();
        var tokens = results.Select(r => r.TokenId).ToArray();
        if (!compare) return tokens;

        var device = new float[vocab];
        for (int r = 0; r < rows; r++)
        {
            var c = cases[r];
            string name = $"vocab {vocab}, {c.Name}";
            var raw = logits.AsSpan(r * vocab, vocab);
            var cpu = NewSampler(c);
            var adjusted = raw.ToArray();
            cpu.ApplyBiasAndPenalties(adjusted, c.Suppress);
            sampler.ReadAdjustedLogits(r, device);
            Check(CudaSampler.KernelName, $"{name}: adjusted logits", device, [.. adjusted.Select(v => (double)v)], 0);

            int token = results[r].TokenId;
            sampler.ReadProbabilities(r, device);
            if (c.Params.IsGreedy)
            {
                var expected = cpu.Sample(raw, c.Suppress);
                _results.Add(new KernelCheck(CudaSampler.KernelName, $"{name}: token {token} (CPU {expected.TokenId})", token == expected.TokenId ? 0 : 1, 0));
            }
            else
            {
                var kept = cpu.Kept(adjusted);
                double total = 0;
                foreach (var (p, _) in kept) total += p;
                var expected = new double[vocab];
                foreach (var (p, id) in kept) expected[id] = p / total;
                int differ = 0;
                for (int i = 0; i < vocab; i++) differ += (device[i] > 0) != (expected[i] > 0) ? 1 : 0;
                _results.Add(new KernelCheck(CudaSampler.KernelName, $"{name}: kept tokens that differ ({kept.Length} kept)", differ, 0));
                Check(CudaSampler.KernelName, $"{name}: probabilities", device, expected, 1e-6);
                _results.Add(new KernelCheck(CudaSampler.KernelName, $"{name}: token {token} can be drawn", expected[token] > 0 ? 0 : 1, 0));
            }

            if (c.Params.Logprobs is { } k)
            {
                var top = Sampler.TopLogprobs(raw, k);
                var got = results[r].TopLogprobs ?? [];
                Check(CudaSampler.KernelName, $"{name}: logprob of the token", [results[r].Logprob], [Sampler.LogSoftmaxAt(raw, token)], 1e-4);
                Check(CudaSampler.KernelName, $"{name}: top {k} ids", [.. got.Select(t => (float)t.TokenId)], [.. top.Select(t => (double)t.TokenId)], 0);
                Check(CudaSampler.KernelName, $"{name}: top {k} logprobs", [.. got.Select(t => t.Logprob)], [.. top.Select(t => (double)t.Logprob)], 1e-4);
            }
        }
        return tokens;
    }

    /// <summary>
    /// Many seeded draws from one distribution (one row per seed, the same logits): their counts against the CPU
    /// sampler's kept probabilities by a chi-square test, and no draw of a token min-p drops.
    /// </summary>
    void SamplingDistribution(CudaKernel kernel)
    {
        const int draws = 160;
        float[] row = [2f, 1.5f, 1f, 0.5f, 0f, -0.5f, -3f, -4f];   // min-p 0.05 keeps logits ≥ 2 + ln 0.05 ≈ −1: six tokens
        int vocab = row.Length;
        var logits = new float[draws * vocab];
        for (int d = 0; d < draws; d++) row.CopyTo(logits, d * vocab);
        var parameters = new SamplingParams { MinP = 0.05f };
        var cases = Enumerable.Range(0, draws).Select(d => new SamplingCase("min-p 0.05", parameters with { Seed = 1 + (ulong)d }, [], [])).ToArray();
        var tokens = SamplingBatch(kernel, vocab, logits, cases, compare: false);

        var kept = new Sampler(parameters).Kept(row).ToArray();
        double total = 0;
        foreach (var (p, _) in kept) total += p;
        var counts = new int[vocab];
        foreach (int t in tokens) counts[t]++;
        double chi2 = 0;
        foreach (var (p, id) in kept)
        {
            double expected = draws * p / total;
            chi2 += (counts[id] - expected) * (counts[id] - expected) / expected;
        }
        int dropped = tokens.Count(t => !kept.Any(k => k.Id == t));
        // df = kept − 1 = 5; 20.52 is the chi-square quantile at p = 0.001 for 5 degrees of freedom.
        _results.Add(new KernelCheck(CudaSampler.KernelName, $"{draws} seeded draws over {kept.Length} tokens: chi-square (df 5, p 0.001 bound)", chi2, 20.52));
        _results.Add(new KernelCheck(CudaSampler.KernelName, $"{draws} seeded draws: draws of tokens min-p drops", dropped, 0));
    }
}
