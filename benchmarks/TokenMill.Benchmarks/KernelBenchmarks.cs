using System.Buffers.Binary;
using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;
using BenchmarkDotNet.Attributes;
using TokenMill.Models.Gguf;
using TokenMill.Quantization;

namespace TokenMill.Benchmarks;

/// <summary>Random weights of one type in TinyLlama-1.1B's shape (2048 × 2048), and activations to multiply them with.</summary>
public abstract class WeightMatrixBenchmark
{
    public const int Rows = 2048, Cols = 2048;

    protected byte[] Weights { get; private set; } = [];
    protected float[] Reference { get; private set; } = []; // the same weights dequantized, for checks

    /// <summary>The weight type; each benchmark class lists the types it has kernels for.</summary>
    public abstract GgmlType Type { get; set; }

    protected void CreateWeights()
    {
        var random = new Random(42);
        int rowBytes = (int)GgmlTypeInfo.RowBytes(Type, Cols);
        Weights = new byte[Rows * rowBytes];
        var row = new float[Cols];
        Reference = new float[Rows * Cols];
        for (int r = 0; r < Rows; r++)
        {
            var bytes = Weights.AsSpan(r * rowBytes, rowBytes);
            if (Quantize.IsSupported(Type))
            {
                for (int c = 0; c < Cols; c++) row[c] = (float)(random.NextDouble() * 2 - 1) * 0.05f;
                Quantize.Row(Type, row, bytes);
            }
            else RandomKQuantBlocks(random, bytes);
            Dequantize.Row(Type, bytes, Reference.AsSpan(r * Cols, Cols));
        }
    }

    /// <summary>
    /// K-quant blocks of the types we have no encoder for (Q5_K): random quants and sub-block scales, with the f16 super-block
    /// scales set to small finite values so that no block decodes to infinities.
    /// </summary>
    void RandomKQuantBlocks(Random random, Span<byte> row)
    {
        random.NextBytes(row);
        int blockBytes = (int)GgmlTypeInfo.RowBytes(Type, GgmlTypeInfo.QK_K);
        ushort small = BitConverter.HalfToUInt16Bits((Half)0.002f);
        for (int b = 0; b < row.Length; b += blockBytes)
        {
            var block = row.Slice(b, blockBytes);
            switch (Type)
            {
                case GgmlType.Q4_K or GgmlType.Q5_K: // d, dmin first
                    BinaryPrimitives.WriteUInt16LittleEndian(block, small);
                    BinaryPrimitives.WriteUInt16LittleEndian(block[2..], small);
                    break;
                case GgmlType.Q6_K: // d last
                    BinaryPrimitives.WriteUInt16LittleEndian(block[^2..], small);
                    break;
                default:
                    throw new NotSupportedException($"no random-block generator for {Type}");
            }
        }
    }

    protected static float[] RandomActivations(int n, int seed)
    {
        var random = new Random(seed);
        var x = new float[n * Cols];
        for (int i = 0; i < x.Length; i++) x[i] = (float)(random.NextDouble() * 2 - 1);
        return x;
    }

    /// <summary>The largest |y − W·x| over <paramref name="n"/> activation rows, relative to the largest |W·x|.</summary>
    protected float RelativeError(float[] xs, int n, float[] ys)
    {
        double maxError = 0, maxValue = 1e-30;
        for (int i = 0; i < n; i++)
            for (int r = 0; r < Rows; r++)
            {
                double expected = 0;
                for (int c = 0; c < Cols; c++) expected += (double)Reference[r * Cols + c] * xs[i * Cols + c];
                maxError = Math.Max(maxError, Math.Abs(expected - ys[i * Rows + r]));
                maxValue = Math.Max(maxValue, Math.Abs(expected));
            }
        return (float)(maxError / maxValue);
    }

    /// <summary>Runs the benchmark once and returns its relative error against the f64 reference (the smoke test's check).</summary>
    public abstract float Check();
}

/// <summary>Decode's product: one activation vector, weights decoded in registers (<see cref="QuantizedDot.MatVec"/>), one thread.</summary>
[MemoryDiagnoser]
public class MatVecBenchmarks : WeightMatrixBenchmark
{
    float[] _x = [], _y = [];

    [Params(GgmlType.F32, GgmlType.F16, GgmlType.BF16, GgmlType.Q8_0, GgmlType.Q4_0, GgmlType.Q4_K, GgmlType.Q6_K)]
    public override GgmlType Type { get; set; }

    [GlobalSetup]
    public void Setup()
    {
        CreateWeights();
        _x = RandomActivations(1, 1);
        _y = new float[Rows];
    }

    [Benchmark]
    public void MatVec() => QuantizedDot.MatVec(Type, Weights, Rows, Cols, _x, _y);

    public override float Check()
    {
        Setup();
        MatVec();
        return RelativeError(_x, 1, _y);
    }
}

/// <summary>Which f32 tile kernel <see cref="MatMulBenchmarks"/> runs.</summary>
public enum TileKernel
{
    /// <summary>The AVX2 4 × 2 kernel (Vector256), the only one before the AVX-512 kernel and the fallback without AVX-512.</summary>
    Avx2,

    /// <summary>
    /// The AVX-512 6 × 4 register-blocked kernel (Vector512, 1024-column panels); F16 and BF16 weights converted in its
    /// microkernel (<see cref="TileGemm.MultiplyHalf"/>).
    /// </summary>
    Avx512,

    /// <summary>
    /// The AVX-512 kernel with F16 and BF16 weights dequantized into the f32 tile first, as before
    /// <see cref="TileGemm.MultiplyHalf"/> (the same as <see cref="Avx512"/> for every other type).
    /// </summary>
    Avx512Dequantized,
}

/// <summary>
/// Prefill's product: N activation rows against one dequantized tile of weights (<see cref="QuantizedDot.MatMul"/>),
/// one thread, with each tile kernel (<see cref="TileKernel"/>), so that one run compares them.
/// </summary>
[MemoryDiagnoser]
public class MatMulBenchmarks : WeightMatrixBenchmark
{
    float[] _xs = [], _ys = [];

    [Params(GgmlType.F32, GgmlType.F16, GgmlType.BF16, GgmlType.Q8_0, GgmlType.Q4_0, GgmlType.Q4_K, GgmlType.Q6_K)]
    public override GgmlType Type { get; set; }

    [Params(32, 128)]
    public int N { get; set; }

    [Params(TileKernel.Avx2, TileKernel.Avx512, TileKernel.Avx512Dequantized)]
    public TileKernel Kernel { get; set; } = TileKernel.Avx512;

    [GlobalSetup]
    public void Setup()
    {
        CreateWeights();
        _xs = RandomActivations(N, 2);
        _ys = new float[N * Rows];
    }

    /// <summary>Throws <see cref="NotSupportedException"/> for the AVX-512 kernels on a CPU without AVX-512F.</summary>
    [Benchmark]
    public void MatMul() =>
        QuantizedDot.MatMulWithTileKernel(Type, Weights, Rows, Cols, _xs, N, _ys, Kernel != TileKernel.Avx2, fusedHalf: Kernel == TileKernel.Avx512);

    /// <summary>The largest error of the kernels (the AVX2 one only where this CPU has no AVX-512).</summary>
    public override float Check()
    {
        Setup();
        float error = 0;
        foreach (var kernel in TileGemm.IsSupported ? Enum.GetValues<TileKernel>() : [TileKernel.Avx2])
        {
            Kernel = kernel;
            Array.Clear(_ys);
            MatMul();
            error = Math.Max(error, RelativeError(_xs, N, _ys));
        }
        return error;
    }
}

/// <summary>
/// The integer kernels: activations quantized to 8-bit blocks, then vpdpbusd/maddubs dot products — one row at a
/// time (<see cref="QuantizedDot.MatMulQ8RowRange"/>), 8 weight rows repacked on each call
/// (<see cref="QuantizedDot.MatMulQ8Packed"/>), or weights repacked once at load (<see cref="PackedQ4_0"/>,
/// <see cref="PackedQ8_0"/>: what CpuForward runs for decode, batched decode and prefill (N = 512)).
/// </summary>
[MemoryDiagnoser]
public unsafe class IntegerDotBenchmarks : WeightMatrixBenchmark
{
    float[] _xs = [], _xd = [], _ys = [];
    sbyte[] _xq = [];
    int[] _xc = [];
    byte[] _xu = [], _scratch = [];
    PackedQ4_0? _packedQ4;
    PackedQ4_0SeparateGroups? _separateQ4;
    PackedQ8_0? _packedQ8;

    [Params(GgmlType.Q8_0, GgmlType.Q4_0)]
    public override GgmlType Type { get; set; }

    [Params(1, 4, 32, 512)]
    public int N { get; set; }

    [GlobalSetup]
    public void Setup()
    {
        CreateWeights();
        _xs = RandomActivations(N, 3);
        _xq = new sbyte[N * Cols];
        _xu = new byte[N * Cols];
        _xd = new float[N * Cols / 32];
        _ys = new float[N * Rows];
        _scratch = new byte[QuantizedDot.PackedScratchBytes(Cols)];
        _xc = new int[N * Cols / 32];
        QuantizeActivations();
        for (int i = 0; i < N; i++) PackedQ4_0.BlockSums(_xq.AsSpan(i * Cols, Cols), _xc.AsSpan(i * Cols / 32, Cols / 32));
        _packedQ4 = Type == GgmlType.Q4_0 && PackedQ4_0.IsSupported ? PackedQ4_0.Pack(Weights, Rows, Cols) : null;
        _separateQ4 = Type == GgmlType.Q4_0 && PackedQ4_0SeparateGroups.IsSupported ? PackedQ4_0SeparateGroups.Pack(Weights, Rows, Cols) : null;
        _packedQ8 = Type == GgmlType.Q8_0 && PackedQ8_0.IsSupported ? PackedQ8_0.Pack(Weights, Rows, Cols) : null;
    }

    [Benchmark]
    public void QuantizeActivations()
    {
        for (int i = 0; i < N; i++)
            QuantizedDot.QuantizeActivations(_xs.AsSpan(i * Cols, Cols), _xq.AsSpan(i * Cols, Cols), _xd.AsSpan(i * Cols / 32, Cols / 32));
        QuantizedDot.OffsetActivations(_xq, _xu);
    }

    [Benchmark]
    public void RowRange() => QuantizedDot.MatMulQ8RowRange(Type, Weights, Rows, Cols, 0, Rows, _xq, _xd, N, _ys);

    [Benchmark]
    public void Packed()
    {
        if (N > 1 && QuantizedDot.HasPackedIntegerDot(Type))
            QuantizedDot.MatMulQ8Packed(Type, Weights, Rows, Cols, 0, Rows, _xu, _xd, N, _ys, _scratch);
    }

    /// <summary>The weights repacked once (<see cref="Setup"/>); whole matrix, one thread.</summary>
    [Benchmark]
    public void Repacked()
    {
        fixed (sbyte* q = _xq)
        fixed (float* d = _xd, y = _ys)
        fixed (int* c = _xc)
        {
            _packedQ4?.Multiply(0, Rows, q, d, c, N, y, Rows);
            _packedQ8?.Multiply(0, Rows, q, d, c, N, y, Rows);
        }
    }

    /// <summary>
    /// Q4_0 in the layout before its groups were paired (<see cref="PackedQ4_0SeparateGroups"/>, f32 scales): the ratio
    /// to <see cref="Repacked"/> is what the pair layout and the f16 scales kept since gain together; nothing for Q8_0.
    /// </summary>
    [Benchmark]
    public void RepackedSeparateGroups()
    {
        fixed (sbyte* q = _xq)
        fixed (float* d = _xd, y = _ys)
        fixed (int* c = _xc)
            _separateQ4?.Multiply(0, Rows, q, d, c, N, y, Rows);
    }

    public override float Check()
    {
        Setup();
        if (!QuantizedDot.HasIntegerDot(Type)) return 0; // no integer kernel on this CPU: nothing of ours to check
        RowRange();
        float error = RelativeError(_xs, N, _ys);
        if (N > 1 && QuantizedDot.HasPackedIntegerDot(Type))
        {
            Array.Clear(_ys);
            Packed();
            error = Math.Max(error, RelativeError(_xs, N, _ys));
        }
        if (_packedQ4 is not null || _packedQ8 is not null)
        {
            Array.Clear(_ys);
            Repacked();
            error = Math.Max(error, RelativeError(_xs, N, _ys));
        }
        if (_separateQ4 is not null)
        {
            var repacked = (float[])_ys.Clone();
            Array.Clear(_ys);
            RepackedSeparateGroups();
            // The two layouts compute the same exact integer dots and the same f32 steps: equal bit for bit.
            if (!repacked.AsSpan().SequenceEqual(_ys)) return float.PositiveInfinity;
        }
        return error;
    }
}

/// <summary>
/// Decoding one 16 × 2048 tile of F16 weights to f32, as the several-row product does once per 16 rows: ours
/// (<see cref="Dequantize.Row"/>, 16 lanes with AVX-512) against <see cref="System.Numerics.Tensors.TensorPrimitives.ConvertToSingle(ReadOnlySpan{Half}, Span{float})"/>;
/// and the whole work item at 32 activation rows (batched decode) both ways: decoded into the tile and multiplied, or
/// converted in the tile kernel. The tile stays in cache here, so the second pair shows the compute saved, not the
/// memory traffic (MatMulBenchmarks' <see cref="TileKernel"/> runs whole matrices).
/// </summary>
public class F16TileDecodeBenchmarks
{
    const int Elements = 16 * 2048;
    readonly byte[] _f16 = new byte[2 * Elements];
    readonly float[] _tile = new float[Elements];
    readonly float[] _xs = new float[32 * 2048];
    readonly float[] _ys = new float[32 * 16];

    [GlobalSetup]
    public void Setup()
    {
        var random = new Random(5);
        for (int i = 0; i < Elements; i++)
            System.Buffers.Binary.BinaryPrimitives.WriteHalfLittleEndian(_f16.AsSpan(2 * i), (Half)(random.NextDouble() * 2 - 1));
        for (int i = 0; i < _xs.Length; i++) _xs[i] = (float)(random.NextDouble() * 2 - 1);
    }

    [Benchmark(Baseline = true)]
    public void TensorPrimitives() =>
        System.Numerics.Tensors.TensorPrimitives.ConvertToSingle(System.Runtime.InteropServices.MemoryMarshal.Cast<byte, Half>(_f16), _tile);

    [Benchmark]
    public void Dequantize() => TokenMill.Quantization.Dequantize.Row(GgmlType.F16, _f16, _tile);

    /// <summary>One work item of batched decode as CpuForward ran it before: decode the 16 rows into the tile, multiply it with 32 activation rows.</summary>
    [Benchmark]
    public void DequantizeThenMultiply32() =>
        QuantizedDot.MatMulRowRangeWith(GgmlType.F16, _f16, 16, 2048, 0, 16, _xs, 32, _ys, _tile, fusedHalf: false);

    /// <summary>The same work item with the rows converted in the tile kernel's registers (<see cref="TileGemm.MultiplyHalf"/>).</summary>
    [Benchmark]
    public void ConvertInKernel32()
    {
        if (!TileGemm.IsSupported) throw new NotSupportedException("the fused path is the AVX-512 tile kernel's");
        QuantizedDot.MatMulRowRangeWith(GgmlType.F16, _f16, 16, 2048, 0, 16, _xs, 32, _ys, _tile, fusedHalf: true);
    }
}

/// <summary>
/// Decode's F16 product, one activation row against <see cref="Rows"/> × 2048 finite F16 weights (64-byte aligned,
/// as the engine's buffers are), one thread: <see cref="DotAvx2.F16Finite"/> (four sums, the lines two pages ahead
/// asked into L2) against its previous form (<see cref="PreviousF16Finite"/>: two sums, no prefetch). 64 rows (256 KiB)
/// stay in L2, 2048 (8 MiB) in L3, 16384 (64 MiB) come from memory as a decode step's weights do.
/// </summary>
public unsafe class F16DecodeRowBenchmarks
{
    const int Cols = 2048;
    TokenMill.Memory.NativeBuffer? _w;
    readonly float[] _x = new float[Cols];
    float[] _y = [];

    [Params(64, 2048, 16384)]
    public int Rows { get; set; } = 2048;

    [GlobalSetup]
    public void Setup()
    {
        var random = new Random(9);
        _w?.Dispose();
        _w = new TokenMill.Memory.NativeBuffer(2L * Rows * Cols, zero: false);
        var halves = _w.AsSpan<Half>();
        for (int i = 0; i < halves.Length; i++) halves[i] = (Half)(random.NextDouble() * 2 - 1);
        _y = new float[Rows];
        for (int i = 0; i < Cols; i++) _x[i] = (float)(random.NextDouble() * 2 - 1);
    }

    [GlobalCleanup]
    public void Cleanup() => _w?.Dispose();

    [Benchmark(Baseline = true)]
    public void Previous()
    {
        byte* w = _w!.Pointer;
        fixed (float* x = _x, y = _y)
            for (int r = 0; r < Rows; r++) y[r] = PreviousF16Finite(w + 2L * r * Cols, x, Cols);
    }

    [Benchmark]
    public void Current()
    {
        byte* w = _w!.Pointer;
        fixed (float* x = _x, y = _y)
            for (int r = 0; r < Rows; r++) y[r] = DotAvx2.F16Finite(w + 2L * r * Cols, x, Cols);
    }

    /// <summary>The AVX-512 loop of <see cref="DotAvx2.F16Finite"/> before the prefetch and the four sums (n a multiple of 32).</summary>
    static float PreviousF16Finite(byte* w, float* x, int n)
    {
        var a0 = Vector512<float>.Zero;
        var a1 = Vector512<float>.Zero;
        for (int i = 0; i + 32 <= n; i += 32)
        {
            a0 = Avx512F.FusedMultiplyAdd(FiniteHalves.Widen16(w + 2 * i), Avx512F.LoadVector512(x + i), a0);
            a1 = Avx512F.FusedMultiplyAdd(FiniteHalves.Widen16(w + 2 * (i + 16)), Avx512F.LoadVector512(x + i + 16), a1);
        }
        return Vector512.Sum(a0 + a1);
    }

    /// <summary>The largest difference between the two forms' results, relative to the largest result.</summary>
    public float Check()
    {
        Setup();
        Previous();
        var previous = (float[])_y.Clone();
        Current();
        float worst = 0, largest = previous.Max(MathF.Abs);
        for (int r = 0; r < Rows; r++) worst = MathF.Max(worst, MathF.Abs(previous[r] - _y[r]) / largest);
        Cleanup();
        return worst;
    }
}

/// <summary>
/// A batched tile product's buffers, 64-byte aligned: <c>n</c> activation rows <c>ldx</c> floats apart (random in
/// [−1, 1)), the n × rows results, <see cref="PackedFloat"/>'s packed activations and two workers' parked sums.
/// </summary>
sealed unsafe class TileProductBuffers : IDisposable
{
    public readonly float* Xs, Ys, PackedXs;
    public readonly Vector512<float>*[] Parked = new Vector512<float>*[2];

    public TileProductBuffers(int n, int ldx, int rows, int cols, Random random)
    {
        Xs = Floats((long)n * ldx);
        for (long i = 0; i < (long)n * ldx; i++) Xs[i] = (float)(random.NextDouble() * 2 - 1);
        Ys = Floats((long)n * rows);
        PackedXs = Floats(PackedFloat.ActivationFloats(n, cols));
        for (int t = 0; t < Parked.Length; t++) Parked[t] = (Vector512<float>*)Floats(PackedFloat.PartialVectors * 16L);
    }

    static float* Floats(long count) => (float*)System.Runtime.InteropServices.NativeMemory.AlignedAlloc((nuint)(count * sizeof(float)), 64);

    public void Dispose()
    {
        System.Runtime.InteropServices.NativeMemory.AlignedFree(Xs);
        System.Runtime.InteropServices.NativeMemory.AlignedFree(Ys);
        System.Runtime.InteropServices.NativeMemory.AlignedFree(PackedXs);
        foreach (var p in Parked) System.Runtime.InteropServices.NativeMemory.AlignedFree(p);
    }
}

/// <summary>Which kernel <see cref="SmallBatchStreamingBenchmarks"/> runs.</summary>
public enum SmallBatchKernel
{
    /// <summary><see cref="TileGemm"/> with its activation blocks outermost.</summary>
    Blocked,

    /// <summary><see cref="TileGemm"/> with its activation blocks innermost (<c>TileGemm.Interleaved</c>).</summary>
    Interleaved,

    /// <summary><see cref="PackedFloat"/>: 32-row tiles packed at load, the outer-product kernel (what CpuForward runs now).</summary>
    Tiles,
}

/// <summary>
/// Batched decode's F32 product as CpuForward runs it: two threads taking work items of a 5632 × 2048 matrix in turn,
/// each asking for its next item's lines, against <see cref="N"/> activation rows, with the weights out of memory (eight
/// such matrices, 369 MB, taken in turn): <see cref="TileGemm"/>'s 16-row items with its activation blocks outermost or
/// innermost (which spreads each tile's reads from memory over all of its work), or <see cref="PackedFloat"/>'s 32-row
/// tiles (the activations packed once per product, inside the timing). The same bits every way.
/// </summary>
public unsafe class SmallBatchStreamingBenchmarks
{
    const int Rows = 5632, Cols = 2048, Matrices = 8, ItemRows = 16;
    readonly float*[] _weights = new float*[Matrices];
    readonly PackedFloat?[] _tiles = new PackedFloat?[Matrices];
    TileProductBuffers? _buffers;
    int _next;

    [Params(8, 32, 48)]
    public int N { get; set; }

    [Params(SmallBatchKernel.Blocked, SmallBatchKernel.Interleaved, SmallBatchKernel.Tiles)]
    public SmallBatchKernel Kernel { get; set; } = SmallBatchKernel.Tiles;

    static int Ldx => QuantizedDot.PaddedStride(Cols);

    [GlobalSetup]
    public void Setup()
    {
        if (!TileGemm.IsSupported) throw new NotSupportedException("the tile kernels need AVX-512F");
        var random = new Random(11);
        for (int m = 0; m < Matrices; m++)
        {
            _weights[m] = (float*)System.Runtime.InteropServices.NativeMemory.AlignedAlloc((nuint)((long)Rows * Cols * sizeof(float)), 64);
            for (long i = 0; i < (long)Rows * Cols; i++) _weights[m][i] = (float)(random.NextDouble() * 2 - 1) * 0.05f;
            _tiles[m] = Kernel == SmallBatchKernel.Tiles ? PackedFloat.Pack(_weights[m], Cols, Rows, Cols) : null;
        }
        _buffers = new TileProductBuffers(N, Ldx, Rows, Cols, random);
    }

    [GlobalCleanup]
    public void Cleanup()
    {
        foreach (var w in _weights) System.Runtime.InteropServices.NativeMemory.AlignedFree(w);
        Array.Clear(_tiles);
        _buffers?.Dispose();
    }

    /// <summary>One whole matrix (the next of the eight) times the N activation rows.</summary>
    [Benchmark]
    public void MatMul()
    {
        TileGemm.InterleavesSmallBatches = Kernel == SmallBatchKernel.Interleaved;
        int m = _next++ % Matrices;
        if (Kernel == SmallBatchKernel.Tiles)
            for (int b = 0; b < PackedFloat.Blocks(N); b++) PackedFloat.PackActivations(_buffers!.Xs, Ldx, N, Cols, b, _buffers.PackedXs);
        var other = new Thread(() => Items(m, 1));
        other.Start();
        Items(m, 0);
        other.Join();
        TileGemm.InterleavesSmallBatches = true;
    }

    void Items(int m, int first)
    {
        float* w = _weights[m];
        var buffers = _buffers!;
        if (_tiles[m] is { } tiles)
        {
            for (int item = first; item * PackedFloat.TileRows < Rows; item += 2)
                tiles.Multiply(item * PackedFloat.TileRows, Math.Min(PackedFloat.TileRows, Rows - item * PackedFloat.TileRows), buffers.PackedXs, N, buffers.Ys, Rows,
                    buffers.Parked[first], aheadRow: (item + 2) * PackedFloat.TileRows);
            return;
        }
        for (int item = first; item * ItemRows < Rows; item += 2)
        {
            int r0 = item * ItemRows, ahead = r0 + 2 * ItemRows;
            byte* next = ahead < Rows ? (byte*)(w + (long)ahead * Cols) : null;
            TileGemm.Multiply(w + (long)r0 * Cols, ItemRows, Cols, buffers.Xs, Ldx, N, buffers.Ys + r0, Rows, next, next == null ? 0 : (long)ItemRows * Cols * sizeof(float));
        }
    }
}

/// <summary>
/// Batched decode's products on <see cref="PackedFloat"/> tiles as CpuForward runs them, F16 (read unrebiased), BF16 and
/// F32: two threads taking 32-row work items of a 5632 × 2048 matrix in turn, each asking for its next item's lines,
/// weights out of memory (six such matrices taken in turn), <see cref="N"/> activation rows packed inside the timing in
/// blocks of <see cref="BlockRows"/>: 12, the two-vector kernel, or 16, the half-tile kernel that
/// <see cref="PackedFloat.BlockRowsFor"/> picks for halves where it makes fewer blocks. The same bits either way.
/// </summary>
public unsafe class HalfTileBenchmarks
{
    const int Rows = 5632, Cols = 2048;
    PackedFloat?[] _tiles = [];
    float[] _first = []; // matrix 0's weights as f32 (the halves' values), for Check
    TileProductBuffers? _buffers;
    int _next;

    [Params(GgmlType.F16, GgmlType.BF16, GgmlType.F32)]
    public GgmlType Type { get; set; } = GgmlType.F16;

    /// <summary>Activation rows: 1 is decode of one sequence (the one-row kernel on a compactly packed row; BlockRows does not apply).</summary>
    [Params(1, 16, 32, 64)]
    public int N { get; set; } = 32;

    [Params(PackedFloat.BlockRows, PackedFloat.HalfBlockRows)]
    public int BlockRows { get; set; } = PackedFloat.HalfBlockRows;

    /// <summary>Matrices taken in turn (six: 138 to 277 MB, out of cache); the smoke test takes one.</summary>
    public int Matrices { get; set; } = 6;

    [GlobalSetup]
    public void Setup()
    {
        if (!TileGemm.IsSupported) throw new NotSupportedException("the tile kernels need AVX-512F");
        var random = new Random(13);
        _tiles = new PackedFloat?[Matrices];
        var values = new float[(long)Rows * Cols];
        var halves = Type == GgmlType.F32 ? null : new ushort[values.Length];
        for (int m = 0; m < Matrices; m++)
        {
            for (long i = 0; i < values.Length; i++) values[i] = (float)(random.NextDouble() * 2 - 1) * 0.05f;
            fixed (float* v = values)
            fixed (ushort* h = halves)
            {
                if (h == null) _tiles[m] = PackedFloat.Pack(v, Cols, Rows, Cols);
                else
                {
                    for (long i = 0; i < values.Length; i++)
                    {
                        h[i] = Type == GgmlType.F16 ? BitConverter.HalfToUInt16Bits((Half)values[i]) : (ushort)(BitConverter.SingleToUInt32Bits(values[i]) >> 16);
                        values[i] = Type == GgmlType.F16 ? (float)BitConverter.UInt16BitsToHalf(h[i]) : BitConverter.UInt32BitsToSingle((uint)h[i] << 16);
                    }
                    // F16 lifted where the engine lifts it (LiftedF16.SubnormalsAreSlow): read as they are, this matrix's
                    // subnormal halves (0.1%) cost the multiply-adds microcode assists on this Xeon (N = 32: 14.8 ms against BF16's 3.4).
                    _tiles[m] = PackedFloat.PackHalves(Type, (byte*)h, Cols * sizeof(ushort), Rows, Cols,
                        lifted: Type == GgmlType.F16 && LiftedF16.SubnormalsAreSlow);
                }
            }
            if (m == 0) _first = (float[])values.Clone();
        }
        _buffers = new TileProductBuffers(N, Cols, Rows, Cols, random);
    }

    [GlobalCleanup]
    public void Cleanup()
    {
        _tiles = [];
        _buffers?.Dispose();
    }

    /// <summary>One whole matrix (the next of the six) times the N activation rows.</summary>
    [Benchmark]
    public void MatMul()
    {
        var tiles = _tiles[_next++ % Matrices]!;
        var buffers = _buffers!;
        int scale = tiles.ActivationScale;
        for (int b = 0; b < PackedFloat.Blocks(N, BlockRows); b++) PackedFloat.PackActivations(buffers.Xs, Cols, N, Cols, b, buffers.PackedXs, scale, BlockRows);
        var other = new Thread(() => Items(tiles, 1, scale));
        other.Start();
        Items(tiles, 0, scale);
        other.Join();
    }

    void Items(PackedFloat tiles, int first, int scale)
    {
        var buffers = _buffers!;
        for (int item = first; item * PackedFloat.TileRows < Rows; item += 2)
            tiles.Multiply(item * PackedFloat.TileRows, Math.Min(PackedFloat.TileRows, Rows - item * PackedFloat.TileRows), buffers.PackedXs, N, buffers.Ys, Rows,
                buffers.Parked[first], aheadRow: (item + 2) * PackedFloat.TileRows, scaled: scale != 0, blockRows: BlockRows);
    }

    /// <summary>
    /// The smoke test's check: one <see cref="MatMul"/> of the first matrix against <see cref="TileGemm"/> on the same
    /// values as f32 (the halves widen exactly, so the bits must agree); returns the number of outputs that differ.
    /// </summary>
    public int Check()
    {
        Setup();
        try
        {
            _next = 0;
            MatMul();
            var expected = new float[N * Rows];
            QuantizedDot.MatMulRowRange(GgmlType.F32, System.Runtime.InteropServices.MemoryMarshal.AsBytes(_first.AsSpan()).ToArray(), Rows, Cols, 0, Rows,
                new ReadOnlySpan<float>(_buffers!.Xs, N * Cols).ToArray(), N, expected, new float[Rows * Cols]);
            int differ = 0;
            for (int i = 0; i < expected.Length; i++)
                if (BitConverter.SingleToInt32Bits(expected[i]) != BitConverter.SingleToInt32Bits(_buffers.Ys[i])) differ++;
            return differ;
        }
        finally
        {
            Cleanup();
        }
    }
}

/// <summary>
/// Decode's product with the repacked Q4_0 and Q8_0 kernels as CpuForward runs it: two threads, each taking two of a
/// matrix's four row ranges (<c>StreamChunksPerThread</c>), <see cref="N"/> activation rows (1: one sequence; 4: a small
/// batch), weights out of memory — <see cref="Matrices"/> 5632 × 2048 matrices (TinyLlama's FFN shape, 415 MB of Q4_0),
/// each thread going through all of them once per operation — with and without the kernels asking for the next tile's
/// weights into L2 (<see cref="IntegerTile.AheadPass"/>; the same bits either way).
/// </summary>
public unsafe class DecodeStreamingBenchmarks
{
    const int Rows = 5632, Cols = 2048, Blocks = Cols / 32, Chunks = 4;
    PackedQ4_0[] _q4 = [];
    PackedQ8_0[] _q8 = [];
    sbyte* _xq;
    float* _xd, _ys;
    int* _xc;

    [Params(GgmlType.Q4_0, GgmlType.Q8_0)]
    public GgmlType Type { get; set; }

    [Params(1, 4)]
    public int N { get; set; }

    [Params(false, true)]
    public bool AsksAhead { get; set; }

    /// <summary>Matrices streamed per operation: 64 (415 MB of Q4_0, 785 MB of Q8_0) is more than any L3 of the machines we measure on.</summary>
    public int Matrices { get; set; } = 64;

    [GlobalSetup]
    public void Setup()
    {
        if (!PackedQ4_0.IsSupported) throw new NotSupportedException("the repacked kernels need AVX2 and FMA");
        var random = new Random(17);
        int blockBytes = Type == GgmlType.Q4_0 ? 18 : 34;
        var raw = new byte[(long)Rows * Blocks * blockBytes];
        _q4 = Type == GgmlType.Q4_0 ? new PackedQ4_0[Matrices] : [];
        _q8 = Type == GgmlType.Q8_0 ? new PackedQ8_0[Matrices] : [];
        for (int m = 0; m < Matrices; m++)
        {
            random.NextBytes(raw); // random quants; each block's f16 scale set to a small finite value
            for (long b = 0; b < (long)Rows * Blocks; b++)
                BitConverter.TryWriteBytes(raw.AsSpan((int)(b * blockBytes), 2), BitConverter.HalfToUInt16Bits((Half)(0.001 + random.NextDouble() * 0.01)));
            if (Type == GgmlType.Q4_0) _q4[m] = PackedQ4_0.Pack(raw, Rows, Cols);
            else _q8[m] = PackedQ8_0.Pack(raw, Rows, Cols);
        }
        _xq = (sbyte*)System.Runtime.InteropServices.NativeMemory.AlignedAlloc((nuint)(N * Cols), 64);
        _xd = (float*)System.Runtime.InteropServices.NativeMemory.AlignedAlloc((nuint)(N * Blocks * sizeof(float)), 64);
        _xc = (int*)System.Runtime.InteropServices.NativeMemory.AlignedAlloc((nuint)(N * Blocks * sizeof(int)), 64);
        _ys = (float*)System.Runtime.InteropServices.NativeMemory.AlignedAlloc((nuint)(N * Rows * sizeof(float)), 64);
        var q = new sbyte[Cols];
        for (int i = 0; i < N; i++)
        {
            for (int c = 0; c < Cols; c++) _xq[i * Cols + c] = q[c] = (sbyte)random.Next(-127, 128);
            for (int b = 0; b < Blocks; b++) _xd[i * Blocks + b] = 0.01f;
            PackedQ4_0.BlockSums(q, new Span<int>(_xc + i * Blocks, Blocks));
        }
    }

    [GlobalCleanup]
    public void Cleanup()
    {
        System.Runtime.InteropServices.NativeMemory.AlignedFree(_xq);
        System.Runtime.InteropServices.NativeMemory.AlignedFree(_xd);
        System.Runtime.InteropServices.NativeMemory.AlignedFree(_xc);
        System.Runtime.InteropServices.NativeMemory.AlignedFree(_ys);
    }

    /// <summary>Every matrix once times the N activation rows, two threads.</summary>
    [Benchmark]
    public void Stream()
    {
        IntegerTile.AsksAhead = AsksAhead;
        try
        {
            var other = new Thread(() => Ranges(1));
            other.Start();
            Ranges(0);
            other.Join();
        }
        finally { IntegerTile.AsksAhead = true; }
    }

    void Ranges(int first)
    {
        const int range = Rows / Chunks;
        for (int m = 0; m < Matrices; m++)
            for (int c = first; c < Chunks; c += 2)
                Multiply(m, c * range, range);
    }

    /// <summary>Rows [r0, r0 + count) of matrix m into their places in the N × 5632 outputs.</summary>
    void Multiply(int m, int r0, int count)
    {
        if (Type == GgmlType.Q4_0) _q4[m].Multiply(r0, count, _xq, _xd, _xc, N, _ys, Rows);
        else _q8[m].Multiply(r0, count, _xq, _xd, _xc, N, _ys, Rows);
    }

    /// <summary>
    /// The smoke test's check: the last matrix's products through <see cref="Stream"/> with the kernels asking ahead and
    /// without give the same bits, and those of one call over all rows; returns the number of outputs that differ.
    /// </summary>
    public int Check()
    {
        Setup();
        try
        {
            var results = new float[3][];
            for (int run = 0; run < 3; run++)
            {
                if (run < 2)
                {
                    AsksAhead = run == 1;
                    Stream();
                }
                else Multiply(Matrices - 1, 0, Rows);
                results[run] = new ReadOnlySpan<float>(_ys, N * Rows).ToArray();
            }
            int differ = 0;
            for (int i = 0; i < N * Rows; i++)
                if (BitConverter.SingleToInt32Bits(results[0][i]) != BitConverter.SingleToInt32Bits(results[1][i]) ||
                    BitConverter.SingleToInt32Bits(results[1][i]) != BitConverter.SingleToInt32Bits(results[2][i]) || !float.IsFinite(results[1][i]))
                    differ++;
            return differ;
        }
        finally { Cleanup(); }
    }
}

/// <summary>
/// Prefill's product of 16- and 32-bit float weights, one thread, 2048 × 2048 weights in cache against N activation
/// rows: the dot-product tile kernel as CpuForward runs it below that size — 16-row work items of
/// <see cref="QuantizedDot.MatMulRowRange"/>, activation rows <see cref="QuantizedDot.PaddedStride"/> apart
/// (<see cref="PanelKernel.Tile"/>) — or
/// the packed outer-product one that CpuForward runs from <see cref="PanelGemm.MinRows"/> rows on
/// (<see cref="PanelKernel.Panel"/>: the activations packed, then work items of <see cref="PanelGemm.ItemRows"/> rows,
/// packing included). The same bits.
/// </summary>
public unsafe class PanelGemmBenchmarks : WeightMatrixBenchmark
{
    float[] _xs = [], _xsPadded = [], _ys = [], _tile = [], _packedX = [], _packedW = [], _sums = [];

    /// <summary>Which kernel multiplies.</summary>
    public enum PanelKernel { Tile, Panel }

    [Params(GgmlType.F32, GgmlType.F16, GgmlType.BF16)]
    public override GgmlType Type { get; set; }

    [Params(64, 256, 512)]
    public int N { get; set; }

    [Params(PanelKernel.Tile, PanelKernel.Panel)]
    public PanelKernel Kernel { get; set; }

    [GlobalSetup]
    public void Setup()
    {
        CreateWeights();
        _xs = RandomActivations(N, 3);
        int ldx = QuantizedDot.PaddedStride(Cols);
        _xsPadded = new float[(N - 1) * ldx + Cols];
        for (int i = 0; i < N; i++) _xs.AsSpan(i * Cols, Cols).CopyTo(_xsPadded.AsSpan(i * ldx));
        _ys = new float[N * Rows];
        _tile = new float[QuantizedDot.TileLength(16, Cols)];
        _packedX = new float[PanelGemm.ActivationFloats(N, Cols)];
        _packedW = new float[PanelGemm.WeightFloats(Cols)];
        _sums = new float[PanelGemm.PartialFloats];
    }

    [Benchmark]
    public void MatMul()
    {
        if (Kernel == PanelKernel.Tile)
        {
            for (int r0 = 0; r0 < Rows; r0 += 16)
                QuantizedDot.MatMulRowRange(Type, Weights, Rows, Cols, r0, 16, _xsPadded, N, _ys, _tile, finiteHalf: Type == GgmlType.F16,
                    aheadRow: r0 + 16, ldx: QuantizedDot.PaddedStride(Cols));
            return;
        }
        if (!PanelGemm.Supports(Cols)) throw new NotSupportedException("the panel kernel needs AVX-512F");
        int item = PanelGemm.ItemRows(Cols);
        long rowBytes = GgmlTypeInfo.RowBytes(Type, Cols);
        fixed (byte* w = Weights)
        fixed (float* x = _xs, px = _packedX, pw = _packedW, y = _ys, s = _sums)
        {
            for (int b = 0; b < PanelGemm.Blocks(N); b++) PanelGemm.PackActivations(x, Cols, N, Cols, b, px);
            for (int r0 = 0; r0 < Rows; r0 += item)
                PanelGemm.Multiply(Type, w, rowBytes, r0, Math.Min(item, Rows - r0), Cols, px, N, y, Rows, pw, s);
        }
    }

    /// <summary>The relative error of the panel kernel's product; throws where its bits are not the tile kernel's.</summary>
    public override float Check()
    {
        Setup();
        Kernel = PanelKernel.Tile;
        MatMul();
        var tiled = (float[])_ys.Clone();
        Kernel = PanelKernel.Panel;
        Array.Clear(_ys);
        MatMul();
        for (int i = 0; i < _ys.Length; i++)
            if (BitConverter.SingleToInt32Bits(_ys[i]) != BitConverter.SingleToInt32Bits(tiled[i]))
                throw new InvalidOperationException($"{Type}, N = {N}: result {i} is {_ys[i]} packed, {tiled[i]} tiled");
        return RelativeError(_xs, N, _ys);
    }
}
