using BenchmarkDotNet.Attributes;
using TokenMill.Backends.Cpu;
using TokenMill.KvCache;

namespace TokenMill.Benchmarks;

/// <summary>
/// CPU attention of one token over <see cref="Positions"/> cached positions for one group of 8 query heads sharing a
/// key/value head (TinyLlama's GQA: head dimension 64, 4 key/value heads, so a slot holds 256 floats), the slots
/// scattered as a block table leaves them: <see cref="CpuAttention"/>'s group kernel with 512-bit vectors, its
/// portable path, and the previous one-head-at-a-time form (a <c>TensorPrimitives</c> call per position and head,
/// each head re-reading every key and value row) as the baseline; and the same group kernel over an f16 and a Q8_0
/// cache (<c>--kv-cache-dtype f16|q8_0</c>: the rows widened a tile at a time, then the f32 kernel); and eight rows of a
/// prefill attended one call each against all in one call.
/// </summary>
public unsafe class AttentionBenchmarks
{
    const int HeadDim = 64, Heads = 8, KvHeads = 4, SlotStride = KvHeads * HeadDim;

    [Params(128, 512, 2048)]
    public int Positions { get; set; }

    /// <summary>Query rows of one prefill that <see cref="PrefillRowsTogether"/> attends at once.</summary>
    const int PrefillRows = 8;

    float[] _keys = [], _values = [], _q = [], _scores = [], _output = [], _rowsQ = [], _rowsScores = [], _rowsOutput = [];
    int[] _rowCounts = [], _rowFirsts = [];
    byte[] _halfKeys = [], _halfValues = [], _q8Keys = [], _q8Values = [];
    int[] _slots = [];

    [GlobalSetup]
    public void Setup()
    {
        var random = new Random(3);
        int slots = Positions + 64;
        _keys = Enumerable.Range(0, slots * SlotStride).Select(_ => (float)(random.NextDouble() * 2 - 1)).ToArray();
        _values = Enumerable.Range(0, slots * SlotStride).Select(_ => (float)(random.NextDouble() * 2 - 1)).ToArray();
        _halfKeys = Stored(KvCacheDtype.F16, _keys);
        _halfValues = Stored(KvCacheDtype.F16, _values);
        _q8Keys = Stored(KvCacheDtype.Q8_0, _keys);
        _q8Values = Stored(KvCacheDtype.Q8_0, _values);
        _q = Enumerable.Range(0, Heads * HeadDim).Select(_ => (float)(random.NextDouble() * 2 - 1)).ToArray();
        // Blocks of 16 slots in shuffled order, as a long-lived cache hands them out.
        var blocks = Enumerable.Range(0, slots / 16).OrderBy(_ => random.Next()).ToArray();
        _slots = Enumerable.Range(0, Positions).Select(j => blocks[j / 16] * 16 + j % 16).ToArray();
        _scores = new float[Heads * Positions];
        _output = new float[Heads * HeadDim];
        _rowsQ = Enumerable.Range(0, PrefillRows * Heads * HeadDim).Select(_ => (float)(random.NextDouble() * 2 - 1)).ToArray();
        _rowCounts = Enumerable.Range(Positions - PrefillRows + 1, PrefillRows).ToArray();
        _rowFirsts = new int[PrefillRows];
        _rowsScores = new float[Heads * _rowCounts.Sum()];
        _rowsOutput = new float[PrefillRows * Heads * HeadDim];
    }

    [Benchmark(Baseline = true)]
    public void OneHeadAtATime() => Run(headsPerCall: 1, vector512: false);

    [Benchmark]
    public void GroupPortable() => Run(Heads, vector512: false);

    [Benchmark]
    public void GroupVector512() => Run(Heads, vector512: true);

    [Benchmark]
    public void GroupVector512HalfCache() => RunStored(KvCacheDtype.F16, _halfKeys, _halfValues);

    [Benchmark]
    public void GroupVector512Q8Cache() => RunStored(KvCacheDtype.Q8_0, _q8Keys, _q8Values);

    /// <summary>The last <see cref="PrefillRows"/> rows of a prefill of <see cref="Positions"/> tokens, one call per row (as
    /// decode rows are attended): every call copies the rows of the cache it reads into its tile again.</summary>
    [Benchmark]
    public void PrefillRowsOneAtATime()
    {
        const int kvHead = 1;
        fixed (float* k = _keys, v = _values, q = _rowsQ, s = _rowsScores, o = _rowsOutput)
        fixed (int* slots = _slots)
            for (int r = 0; r < PrefillRows; r++)
                CpuAttention.Attend(q + r * Heads * HeadDim, Heads, HeadDim, KvCacheDtype.F32, (byte*)(k + kvHead * HeadDim), (byte*)(v + kvHead * HeadDim),
                    SlotStride * sizeof(float), slots, _rowCounts[r], 0.125f, s, o + r * Heads * HeadDim);
    }

    /// <summary>The same rows in one call (<see cref="CpuAttention.AttendRows(float*, long, int, int, int, KvCacheDtype, byte*, byte*, long, int*, int*, int*, float, float*, float*, long)"/>,
    /// as a prefill's rows are attended): each tile of the cache is copied once for the eight.</summary>
    [Benchmark]
    public void PrefillRowsTogether()
    {
        const int kvHead = 1;
        fixed (float* k = _keys, v = _values, q = _rowsQ, s = _rowsScores, o = _rowsOutput)
        fixed (int* slots = _slots, firsts = _rowFirsts, counts = _rowCounts)
            CpuAttention.AttendRows(q, Heads * HeadDim, PrefillRows, Heads, HeadDim, KvCacheDtype.F32, (byte*)(k + kvHead * HeadDim), (byte*)(v + kvHead * HeadDim),
                SlotStride * sizeof(float), slots, firsts, counts, 0.125f, s, o, Heads * HeadDim);
    }

    /// <summary>Whether <see cref="PrefillRowsTogether"/> gives every row the bits <see cref="PrefillRowsOneAtATime"/> does
    /// (and computed something).</summary>
    public bool CheckPrefillRows()
    {
        Setup();
        PrefillRowsOneAtATime();
        var alone = (float[])_rowsOutput.Clone();
        Array.Clear(_rowsOutput);
        PrefillRowsTogether();
        return alone.Any(x => x != 0) && alone.AsSpan().SequenceEqual(_rowsOutput);
    }

    /// <summary>Each slot's row of <see cref="SlotStride"/> values as an f16 or Q8_0 cache stores it.</summary>
    static byte[] Stored(KvCacheDtype dtype, float[] rows)
    {
        int rowBytes = (int)dtype.RowBytes(SlotStride), slots = rows.Length / SlotStride;
        var stored = new byte[slots * rowBytes];
        for (int s = 0; s < slots; s++)
        {
            var row = rows.AsSpan(s * SlotStride, SlotStride);
            var dst = stored.AsSpan(s * rowBytes, rowBytes);
            if (dtype == KvCacheDtype.F16) System.Numerics.Tensors.TensorPrimitives.ConvertToHalf(row, System.Runtime.InteropServices.MemoryMarshal.Cast<byte, Half>(dst));
            else TokenMill.Quantization.Quantize.Row(TokenMill.Models.Gguf.GgmlType.Q8_0, row, dst);
        }
        return stored;
    }

    void RunStored(KvCacheDtype dtype, byte[] keys, byte[] values)
    {
        const int kvHead = 1;
        long head = dtype.RowBytes(kvHead * HeadDim), rowBytes = dtype.RowBytes(SlotStride);
        fixed (byte* k = keys, v = values)
        fixed (float* q = _q, s = _scores, o = _output)
        fixed (int* slots = _slots)
            CpuAttention.Attend(q, Heads, HeadDim, dtype, k + head, v + head, rowBytes, slots, Positions, 0.125f, s, o, vector512: true);
    }

    void Run(int headsPerCall, bool vector512)
    {
        const int kvHead = 1;
        fixed (float* k = _keys, v = _values, q = _q, s = _scores, o = _output)
        fixed (int* slots = _slots)
            for (int h = 0; h < Heads; h += headsPerCall)
                CpuAttention.Attend(q + h * HeadDim, headsPerCall, HeadDim, k + kvHead * HeadDim, v + kvHead * HeadDim, SlotStride, slots,
                    Positions, 0.125f, s, o + h * HeadDim, vector512);
    }

    /// <summary>The largest difference between the three f32 forms' outputs, or <see cref="float.MaxValue"/> when the
    /// baseline computed nothing (the smoke test's check).</summary>
    public float Check()
    {
        Setup();
        OneHeadAtATime();
        var baseline = (float[])_output.Clone();
        if (baseline.All(x => x == 0)) return float.MaxValue; // nothing computed
        float worst = 0;
        foreach (var run in new Action[] { GroupPortable, GroupVector512 })
        {
            Array.Clear(_output);
            run();
            for (int i = 0; i < baseline.Length; i++) worst = Math.Max(worst, Math.Abs(baseline[i] - _output[i]));
        }
        return worst;
    }

    /// <summary>The largest difference between an f16 or Q8_0 cache's output and the f32 cache's (the rows' rounding), or
    /// <see cref="float.MaxValue"/> when it computed nothing.</summary>
    public float CheckStoredCache(KvCacheDtype dtype)
    {
        Setup();
        GroupVector512();
        var exact = (float[])_output.Clone();
        Array.Clear(_output);
        if (dtype == KvCacheDtype.F16) GroupVector512HalfCache(); else GroupVector512Q8Cache();
        if (_output.All(x => x == 0)) return float.MaxValue;
        return exact.Zip(_output, (a, b) => Math.Abs(a - b)).Max();
    }
}
