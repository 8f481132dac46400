using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;
using static TokenMill.Quantization.BlockFormats;

namespace TokenMill.Quantization;

/// <summary>
/// A Q8_0 matrix repacked once, eight rows interleaved, so that every product — decode's single activation row
/// included — runs the AVX-VNNI kernel without repacking its weights on each call: one <c>vpdpbusd</c> computes a
/// 4-element partial dot for all eight rows at once (lane r = row r).
/// <para>
/// Layout, per group of 8 rows and block of 32 columns (<see cref="GroupBlockBytes"/> = 272 bytes, 1.0625 bytes per
/// weight as in Q8_0 itself): 8 × 32 bytes, where 32-byte chunk k holds elements 4k..4k+3 of rows 0..7 as
/// unsigned bytes w + 128, then the 8 rows' f16 scales as stored, widened exactly in the kernel
/// (<see cref="FiniteHalves"/>). (<see cref="IntegerTile"/>'s layout, which kept signed weights
/// and an int32 −128·Σw per row and block for +128-offset activations, took 1.25 bytes: decode streams 15% less.)
/// </para>
/// <para>
/// vpdpbusd multiplies unsigned by signed bytes, so the weights go in as w + 128 and the activations as they are:
/// each block's dot is Σ (w + 128)·a − 128·Σa, and the activation row's block sums (<see cref="PackedQ4_0.BlockSums"/>,
/// −8·Σa, times 16) start each block's accumulator. Every block's dot is the exact integer Σ w·a, scaled by dw·da and
/// accumulated in f32 block by block, in the same order for every activation row whatever its batch mates.
/// </para>
/// <para>
/// Without AVX-VNNI (Zen 4, Ice Lake and the other AVX-512 cores before Sapphire Rapids, which have only the
/// 512-bit EVEX <c>vpdpbusd</c> that .NET 10 does not expose) the same bytes go through <see cref="Multiply16"/>
/// (<see cref="PackedKernel.Avx512BW"/>): two groups side by side in 512-bit registers and 512-bit <c>vpmaddubsw</c> on
/// |w| and the activation with w's sign — the same exact integer block dots, the same f32 steps, the same bits.
/// </para>
/// </summary>
public sealed unsafe class PackedQ8_0
{
    public const int Rows = 8;
    public const int GroupBlockBytes = Rows * QK + Rows * sizeof(ushort);

    /// <summary>Rows of the 512-bit kernel's pass: two groups, the sixteen lanes of a 512-bit register.</summary>
    public const int PairRows = 2 * Rows;

    readonly byte[] _data; // pinned: the kernels take its address once
    readonly bool _specialScales; // some scale is ±inf or NaN: widened by ExactHalves
    readonly PackedKernel _kernel;

    PackedQ8_0(byte[] data, int rows, int columns, bool specialScales, PackedKernel kernel) =>
        (_data, RowCount, Columns, _specialScales, _kernel) = (data, rows, columns, specialScales, kernel);

    /// <summary>Whether a packed kernel runs here: AVX2 and FMA, with AVX-VNNI or AVX-512BW.</summary>
    public static bool IsSupported => PackedKernels.AnySupported;

    /// <summary>Whether <see cref="Multiply"/> reads the activations' block sums (<c>xc</c>): the vpdpbusd kernel's w + 128 needs them, the 512-bit kernel's signed products do not.</summary>
    internal bool ReadsBlockSums => _kernel == PackedKernel.Vnni;

    public int RowCount { get; }
    public int Columns { get; }
    int Blocks => Columns / QK;
    long GroupBytes => (long)Blocks * GroupBlockBytes;

    /// <summary>Repacks a row-major <paramref name="rows"/> × <paramref name="columns"/> Q8_0 matrix (missing rows of the last group are zero).</summary>
    public static PackedQ8_0 Pack(ReadOnlySpan<byte> weights, int rows, int columns) => Pack(weights, rows, columns, PackedKernels.Preferred);

    /// <summary>Repacks for the kernel <paramref name="kernel"/> (tests run both where both run).</summary>
    internal static PackedQ8_0 Pack(ReadOnlySpan<byte> weights, int rows, int columns, PackedKernel kernel)
    {
        if (!PackedKernels.Supports(kernel))
            throw new NotSupportedException(kernel == PackedKernel.Vnni ? "PackedQ8_0's vpdpbusd kernel needs AVX-VNNI, AVX2 and FMA" : "PackedQ8_0's 512-bit kernel needs AVX-512BW, AVX2 and FMA");
        if (rows < 0 || columns <= 0 || columns % QK != 0)
            throw new ArgumentException($"PackedQ8_0.Pack: a {rows} × {columns} matrix is not a whole number of Q8_0 blocks per row");
        long rowBytes = (long)columns / QK * Q8_0Bytes;
        if (weights.Length != rowBytes * rows)
            throw new ArgumentException($"PackedQ8_0.Pack: a {rows} × {columns} Q8_0 matrix takes {rowBytes * rows} bytes, but weights has {weights.Length}");
        int groups = (rows + Rows - 1) / Rows, blocks = columns / QK;
        long bytes = (long)groups * blocks * GroupBlockBytes;
        bool special = false;
        var data = Memory.NativeBuffer.PinnedStreamingArray(bytes, "PackedQ8_0.Pack");
        fixed (byte* w = weights)
        fixed (byte* dst = data)
        {
            Vector256<byte>* rowsV = stackalloc Vector256<byte>[Rows];
            var k = stackalloc Vector256<int>[Rows];
            var offset = Vector256.Create((byte)0x80);
            for (int g = 0; g < groups; g++)
                for (int b = 0; b < blocks; b++)
                {
                    byte* t = dst + ((long)g * blocks + b) * GroupBlockBytes;
                    ushort* scales = (ushort*)(t + Rows * QK);
                    for (int r = 0; r < Rows; r++)
                    {
                        int row = g * Rows + r;
                        if (row < rows)
                        {
                            byte* block = w + row * rowBytes + (long)b * Q8_0Bytes;
                            rowsV[r] = Avx2.Xor(Avx.LoadVector256(block + 2), offset); // w + 128: flipping the sign bit does exactly that
                            scales[r] = Unsafe.ReadUnaligned<ushort>(block);
                            special |= (scales[r] & 0x7C00) == 0x7C00;
                        }
                        else
                        {
                            rowsV[r] = offset; // w = 0
                            scales[r] = 0;
                        }
                    }
                    IntegerTile.Transpose8x8((Vector256<int>*)rowsV, k);
                    for (int c = 0; c < Rows; c++) Avx.Store((int*)t + 8 * c, k[c]);
                }
        }
        return new PackedQ8_0(data, rows, columns, special, kernel);
    }

    /// <summary>
    /// y[i·<paramref name="yStride"/> + r] = row r · activation row i for rows [r0, r0 + count) (r0 a multiple of
    /// 8) and i &lt; n: activations quantized by <see cref="QuantizedDot.QuantizeActivations"/> (<paramref name="xq"/>
    /// n × columns, scales <paramref name="xd"/> n × blocks) with their <see cref="PackedQ4_0.BlockSums"/> (<paramref name="xc"/> n × blocks).
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public void Multiply(int r0, int count, sbyte* xq, float* xd, int* xc, int n, float* y, int yStride)
    {
        if (r0 < 0 || (count > 0 && r0 % Rows != 0) || count < 0 || r0 + count > RowCount)
            throw new ArgumentOutOfRangeException(nameof(count), $"PackedQ8_0.Multiply: rows {r0}..{r0 + count} of {RowCount} (the first must be a multiple of {Rows})");
        if (_specialScales) Multiply<ExactHalves>(r0, count, xq, xd, xc, n, y, yStride);
        else Multiply<FiniteHalves>(r0, count, xq, xd, xc, n, y, yStride);
    }

    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    void Multiply<TScales>(int r0, int count, sbyte* xq, float* xd, int* xc, int n, float* y, int yStride) where TScales : struct, IHalfWidening
    {
        int blocks = Blocks;
        var result = stackalloc float[PairRows];
        fixed (byte* data = _data)
            for (int i0 = 0; i0 < n; i0 += PackedQ4_0.ActivationRowsPerPass)
            {
                int m = Math.Min(PackedQ4_0.ActivationRowsPerPass, n - i0);
                if (_kernel == PackedKernel.Avx512BW)
                {
                    // Groups g and g + 1 side by side; a lone last group is read for both halves and stores its own 8 lanes.
                    for (int g = r0; g < r0 + count; g += PairRows)
                    {
                        byte* tile = data + g / Rows * GroupBytes;
                        int rowsHere = Math.Min(PairRows, r0 + count - g);
                        Multiply16<TScales>(tile, rowsHere > Rows ? GroupBytes : 0, g + PairRows < r0 + count ? tile + 2 * GroupBytes : null, blocks,
                            xq + (long)i0 * Columns, xd + (long)i0 * blocks, m, y + (long)i0 * yStride + g, yStride, rowsHere, result);
                    }
                    continue;
                }
                for (int g = r0; g < r0 + count; g += Rows)
                {
                    byte* tile = data + g / Rows * GroupBytes;
                    Multiply8<TScales>(tile, g + Rows < r0 + count ? tile + GroupBytes : null, blocks, xq + (long)i0 * Columns, xd + (long)i0 * blocks, xc + (long)i0 * blocks, m,
                        y + (long)i0 * yStride + g, yStride, Math.Min(Rows, r0 + count - g), result);
                }
            }
    }

    /// <summary>
    /// One group of 8 rows against the n activation rows: four at a time (each weight chunk loaded once for four
    /// vpdpbusd, 8 independent int32 chains), then one at a time with the same arithmetic. <paramref name="next"/>
    /// (the group this range computes next, or null) is brought into L2 meanwhile.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    static void Multiply8<TScales>(byte* tile, byte* next, int blocks, sbyte* xq, float* xd, int* xc, int n, float* y, int yStride, int rowsHere, float* result)
        where TScales : struct, IHalfWidening
    {
        int cols = blocks * QK;
        int i = 0, aheadAt = IntegerTile.AheadPass(n, 4, 4);
        for (; i + 4 <= n; i += 4)
        {
            sbyte* a0 = xq + (long)i * cols, a1 = a0 + cols, a2 = a1 + cols, a3 = a2 + cols;
            float* d0 = xd + (long)i * blocks, d1 = d0 + blocks, d2 = d1 + blocks, d3 = d2 + blocks;
            int* c0 = xc + (long)i * blocks, c1 = c0 + blocks, c2 = c1 + blocks, c3 = c2 + blocks;
            Vector256<float> f0 = Vector256<float>.Zero, f1 = f0, f2 = f0, f3 = f0;
            byte* t = tile;
            // As in PackedQ4_0.Multiply16: the second pass over this group's weights (found in L2) prefetches the next
            // group's, whose first pass would otherwise wait on memory.
            byte* ahead = i == aheadAt ? next : null;
            for (int b = 0; b < blocks; b++, t += GroupBlockBytes, a0 += QK, a1 += QK, a2 += QK, a3 += QK)
            {
                if (ahead != null) IntegerTile.PrefetchBlock(ahead + (t - tile), GroupBlockBytes);
                // Two chains per activation row (even and odd k); the start −128·Σa goes in the even one.
                Vector256<int> e0 = Start(c0[b]), e1 = Start(c1[b]), e2 = Start(c2[b]), e3 = Start(c3[b]);
                Vector256<int> o0 = Vector256<int>.Zero, o1 = o0, o2 = o0, o3 = o0;
                for (int k = 0; k < 8; k += 2)
                {
                    var w0 = Avx.LoadVector256(t + 32 * k);
                    var w1 = Avx.LoadVector256(t + 32 * k + 32);
                    e0 = Dot(e0, w0, a0 + 4 * k);
                    e1 = Dot(e1, w0, a1 + 4 * k);
                    e2 = Dot(e2, w0, a2 + 4 * k);
                    e3 = Dot(e3, w0, a3 + 4 * k);
                    o0 = Dot(o0, w1, a0 + 4 * k + 4);
                    o1 = Dot(o1, w1, a1 + 4 * k + 4);
                    o2 = Dot(o2, w1, a2 + 4 * k + 4);
                    o3 = Dot(o3, w1, a3 + 4 * k + 4);
                }
                var scales = TScales.Widen8(t + Rows * QK);
                f0 = Fma.MultiplyAdd(Avx.ConvertToVector256Single(Avx2.Add(e0, o0)), Avx.Multiply(scales, Vector256.Create(d0[b])), f0);
                f1 = Fma.MultiplyAdd(Avx.ConvertToVector256Single(Avx2.Add(e1, o1)), Avx.Multiply(scales, Vector256.Create(d1[b])), f1);
                f2 = Fma.MultiplyAdd(Avx.ConvertToVector256Single(Avx2.Add(e2, o2)), Avx.Multiply(scales, Vector256.Create(d2[b])), f2);
                f3 = Fma.MultiplyAdd(Avx.ConvertToVector256Single(Avx2.Add(e3, o3)), Avx.Multiply(scales, Vector256.Create(d3[b])), f3);
            }
            IntegerTile.Store(f0, result, y + (long)i * yStride, rowsHere);
            IntegerTile.Store(f1, result, y + (long)(i + 1) * yStride, rowsHere);
            IntegerTile.Store(f2, result, y + (long)(i + 2) * yStride, rowsHere);
            IntegerTile.Store(f3, result, y + (long)(i + 3) * yStride, rowsHere);
        }
        for (; i < n; i++) // the same arithmetic for one row
        {
            sbyte* a0 = xq + (long)i * cols;
            float* d0 = xd + (long)i * blocks;
            int* c0 = xc + (long)i * blocks;
            var f0 = Vector256<float>.Zero;
            byte* t = tile;
            byte* ahead = i == aheadAt ? next : null;
            for (int b = 0; b < blocks; b++, t += GroupBlockBytes, a0 += QK)
            {
                if (ahead != null) IntegerTile.PrefetchBlock(ahead + (t - tile), GroupBlockBytes);
                Vector256<int> e0 = Start(c0[b]), o0 = Vector256<int>.Zero;
                for (int k = 0; k < 8; k += 2)
                {
                    e0 = Dot(e0, Avx.LoadVector256(t + 32 * k), a0 + 4 * k);
                    o0 = Dot(o0, Avx.LoadVector256(t + 32 * k + 32), a0 + 4 * k + 4);
                }
                var scales = TScales.Widen8(t + Rows * QK);
                f0 = Fma.MultiplyAdd(Avx.ConvertToVector256Single(Avx2.Add(e0, o0)), Avx.Multiply(scales, Vector256.Create(d0[b])), f0);
            }
            IntegerTile.Store(f0, result, y + (long)i * yStride, rowsHere);
        }
    }

    /// <summary>
    /// Groups at <paramref name="tile"/> and <paramref name="tile"/> + <paramref name="second"/> (lanes 0…7 and 8…15)
    /// against the n activation rows — eight, then four, then one at a time — with AVX-512BW; <paramref name="next"/>
    /// (the pair this range computes next, or null) is brought into L2 meanwhile. Per 64-byte chunk (16 rows × 4
    /// weights): w = u − 128, |w| and w's sign once, then for each activation row its 4 quants broadcast, negated
    /// where w &lt; 0, one <c>vpmaddubsw</c> (|w| ≤ 128, |a| ≤ 127: a pair of products is at most 32,512, no
    /// saturation), one <c>vpmaddwd</c> by 1 and an add into the block's int32 dot Σ w·a — the exact integer that
    /// <see cref="Multiply8{TScales}"/> gets from Σ (w + 128)·a − 128·Σa, then the same f32 steps on 16 lanes.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    static void Multiply16<TScales>(byte* tile, long second, byte* next, int blocks, sbyte* xq, float* xd, int n, float* y, int yStride, int rowsHere, float* result)
        where TScales : struct, IHalfWidening
    {
        int cols = blocks * QK;
        int i = 0, aheadAt = IntegerTile.AheadPass(n, 8, 4);
        for (; i + 8 <= n; i += 8)
        {
            sbyte* a0 = xq + (long)i * cols;
            float* d0 = xd + (long)i * blocks;
            Vector512<float> f0 = Vector512<float>.Zero, f1 = f0, f2 = f0, f3 = f0, f4 = f0, f5 = f0, f6 = f0, f7 = f0;
            byte* t = tile;
            // As in PackedQ4_0.Multiply16: the second pass over this pair (found in L2) prefetches the next pair.
            byte* ahead = i == aheadAt ? next : null;
            for (int b = 0; b < blocks; b++, t += GroupBlockBytes, a0 += QK)
            {
                IntegerTile.PrefetchPairBlock(ahead, t - tile, second, GroupBlockBytes);
                Vector512<int> e0 = Vector512<int>.Zero, e1 = e0, e2 = e0, e3 = e0, e4 = e0, e5 = e0, e6 = e0, e7 = e0;
                for (int k = 0; k < 8; k++)
                {
                    var (abs, w) = Weights16(t + 32 * k, second);
                    sbyte* a = a0 + 4 * k;
                    e0 = Dot16(e0, abs, w, a);
                    e1 = Dot16(e1, abs, w, a + cols);
                    e2 = Dot16(e2, abs, w, a + 2 * cols);
                    e3 = Dot16(e3, abs, w, a + 3 * cols);
                    e4 = Dot16(e4, abs, w, a + 4 * cols);
                    e5 = Dot16(e5, abs, w, a + 5 * cols);
                    e6 = Dot16(e6, abs, w, a + 6 * cols);
                    e7 = Dot16(e7, abs, w, a + 7 * cols);
                }
                var scales = Scales16<TScales>(t, second);
                f0 = Step16(f0, e0, scales, d0[b]);
                f1 = Step16(f1, e1, scales, d0[b + blocks]);
                f2 = Step16(f2, e2, scales, d0[b + 2 * blocks]);
                f3 = Step16(f3, e3, scales, d0[b + 3 * blocks]);
                f4 = Step16(f4, e4, scales, d0[b + 4 * blocks]);
                f5 = Step16(f5, e5, scales, d0[b + 5 * blocks]);
                f6 = Step16(f6, e6, scales, d0[b + 6 * blocks]);
                f7 = Step16(f7, e7, scales, d0[b + 7 * blocks]);
            }
            PackedQ4_0.Store16(f0, result, y + (long)i * yStride, rowsHere);
            PackedQ4_0.Store16(f1, result, y + (long)(i + 1) * yStride, rowsHere);
            PackedQ4_0.Store16(f2, result, y + (long)(i + 2) * yStride, rowsHere);
            PackedQ4_0.Store16(f3, result, y + (long)(i + 3) * yStride, rowsHere);
            PackedQ4_0.Store16(f4, result, y + (long)(i + 4) * yStride, rowsHere);
            PackedQ4_0.Store16(f5, result, y + (long)(i + 5) * yStride, rowsHere);
            PackedQ4_0.Store16(f6, result, y + (long)(i + 6) * yStride, rowsHere);
            PackedQ4_0.Store16(f7, result, y + (long)(i + 7) * yStride, rowsHere);
        }
        for (; i + 4 <= n; i += 4)
        {
            sbyte* a0 = xq + (long)i * cols;
            float* d0 = xd + (long)i * blocks;
            Vector512<float> f0 = Vector512<float>.Zero, f1 = f0, f2 = f0, f3 = f0;
            byte* t = tile;
            byte* ahead = i == aheadAt ? next : null;
            for (int b = 0; b < blocks; b++, t += GroupBlockBytes, a0 += QK)
            {
                IntegerTile.PrefetchPairBlock(ahead, t - tile, second, GroupBlockBytes);
                Vector512<int> e0 = Vector512<int>.Zero, e1 = e0, e2 = e0, e3 = e0;
                for (int k = 0; k < 8; k++)
                {
                    var (abs, w) = Weights16(t + 32 * k, second);
                    sbyte* a = a0 + 4 * k;
                    e0 = Dot16(e0, abs, w, a);
                    e1 = Dot16(e1, abs, w, a + cols);
                    e2 = Dot16(e2, abs, w, a + 2 * cols);
                    e3 = Dot16(e3, abs, w, a + 3 * cols);
                }
                var scales = Scales16<TScales>(t, second);
                f0 = Step16(f0, e0, scales, d0[b]);
                f1 = Step16(f1, e1, scales, d0[b + blocks]);
                f2 = Step16(f2, e2, scales, d0[b + 2 * blocks]);
                f3 = Step16(f3, e3, scales, d0[b + 3 * blocks]);
            }
            PackedQ4_0.Store16(f0, result, y + (long)i * yStride, rowsHere);
            PackedQ4_0.Store16(f1, result, y + (long)(i + 1) * yStride, rowsHere);
            PackedQ4_0.Store16(f2, result, y + (long)(i + 2) * yStride, rowsHere);
            PackedQ4_0.Store16(f3, result, y + (long)(i + 3) * yStride, rowsHere);
        }
        for (; i < n; i++) // the same arithmetic for one row
        {
            sbyte* a0 = xq + (long)i * cols;
            float* d0 = xd + (long)i * blocks;
            var f0 = Vector512<float>.Zero;
            byte* t = tile;
            byte* ahead = i == aheadAt ? next : null;
            for (int b = 0; b < blocks; b++, t += GroupBlockBytes, a0 += QK)
            {
                IntegerTile.PrefetchPairBlock(ahead, t - tile, second, GroupBlockBytes);
                // Two chains: one row has no other rows' work to hide an add's latency behind.
                Vector512<int> e0 = Vector512<int>.Zero, o0 = e0;
                for (int k = 0; k < 8; k += 2)
                {
                    var (abs0, w0) = Weights16(t + 32 * k, second);
                    var (abs1, w1) = Weights16(t + 32 * k + 32, second);
                    e0 = Dot16(e0, abs0, w0, a0 + 4 * k);
                    o0 = Dot16(o0, abs1, w1, a0 + 4 * k + 4);
                }
                f0 = Step16(f0, e0 + o0, Scales16<TScales>(t, second), d0[b]);
            }
            PackedQ4_0.Store16(f0, result, y + (long)i * yStride, rowsHere);
        }
    }

    /// <summary>|w| and w for chunk <paramref name="chunk"/> of both groups (16 rows × 4 weights, stored as w + 128).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    static (Vector512<byte> Abs, Vector512<sbyte> W) Weights16(byte* chunk, long second)
    {
        var w = (IntegerTile.LoadPair(chunk, second) ^ Vector512.Create((byte)0x80)).AsSByte();
        return (Avx512BW.Abs(w), w); // |−128| is 128 as an unsigned byte
    }

    /// <summary>acc + Σ over each 4-byte group of |w|·(a with w's sign), the 4 quants at <paramref name="a"/> broadcast to every lane.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    static Vector512<int> Dot16(Vector512<int> acc, Vector512<byte> abs, Vector512<sbyte> w, sbyte* a) =>
        acc + Avx512BW.MultiplyAddAdjacent(SignedPairs(abs, w, a), Vector512<short>.One);

    /// <summary>
    /// <c>vpmaddubsw</c> of |w| by the 4 quants at <paramref name="a"/> (broadcast to every lane) negated where w &lt; 0: the
    /// int16 pair sums of w·a (|w| ≤ 128, |a| ≤ 127: at most 32,512). Shared by <see cref="PackedQ6_K"/>.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    internal static Vector512<short> SignedPairs(Vector512<byte> abs, Vector512<sbyte> w, sbyte* a)
    {
        // Written with the comparison inside, the JIT keeps w < 0 in a mask register across the rows that share it
        // and negates with one masked vpsubb (a comparison made once and passed in became a vector and a blend).
        var s = Vector512.Create(Unsafe.ReadUnaligned<int>(a)).AsSByte();
        s = Vector512.ConditionalSelect(Vector512.LessThan(w, Vector512<sbyte>.Zero), Vector512<sbyte>.Zero - s, s);
        return Avx512BW.MultiplyAddAdjacent(abs, s);
    }

    /// <summary>The 16 rows' block scales, widened: the first group's 8, then the second's.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    static Vector512<float> Scales16<TScales>(byte* t, long second) where TScales : struct, IHalfWidening =>
        Vector512.Create(TScales.Widen8(t + Rows * QK), TScales.Widen8(t + second + Rows * QK));

    /// <summary>f + f32(dot)·(scales·da): <see cref="Multiply8{TScales}"/>'s f32 step on 16 lanes (<see cref="PackedQ6_K"/>'s too).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    internal static Vector512<float> Step16(Vector512<float> f, Vector512<int> dot, Vector512<float> scales, float da) =>
        Avx512F.FusedMultiplyAdd(Avx512F.ConvertToVector512Single(dot), Avx512F.Multiply(scales, Vector512.Create(da)), f);

    /// <summary>−128·Σa in every lane, from the block's −8·Σa (<see cref="PackedQ4_0.BlockSums"/>).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    static Vector256<int> Start(int blockSum) => Vector256.Create(blockSum << 4);

    /// <summary>acc + Σ over each 4-byte group of (w + 128)·a, with the activation's 4 bytes at <paramref name="a"/> broadcast to every lane.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    static Vector256<int> Dot(Vector256<int> acc, Vector256<byte> u, sbyte* a) =>
        AvxVnni.MultiplyWideningAndAdd(acc, u, Vector256.Create(Unsafe.ReadUnaligned<int>(a)).AsSByte());
}
