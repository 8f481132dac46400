using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;
using static TokenMill.Quantization.BlockFormats;

namespace TokenMill.Quantization;

/// <summary>
/// A Q6_K matrix repacked once, eight rows interleaved, for a 512-bit AVX-512BW kernel that takes two groups (16 rows,
/// lane = row) at a time: where the one-row kernel (<see cref="IntegerDotK.DotQ6_K"/>) decodes, sign-flips,
/// multiplies and converts each row's block of 32 on its own in 256-bit registers, this one decodes nothing (the
/// quants are stored as the signed bytes q − 32) and each 64-byte chunk of 16 rows × 4 weights serves every
/// activation row of the pass.
/// <para>
/// Layout, per group of 8 rows and block of 32 columns (<see cref="GroupBlockBytes"/> = 352 bytes, 1.375 bytes per
/// weight against Q6_K's 0.82): 8 × 32 bytes, chunk c holding elements 4c…4c + 3 of rows 0…7 (byte 4r + e) as q − 32;
/// then per row an int32 holding the first sub-block's int8 scale twice as int16, the same for the second sub-block
/// (chunks 0…3 are the block's first 16 elements, its first sub-block; chunks 4…7 the second); then per row the
/// super-block's d as f32.
/// </para>
/// <para>
/// Per activation row and sub-block: 4 × (activation's 4 quants broadcast and negated where w &lt; 0, one
/// <c>vpmaddubsw</c> of |w| ≤ 32 by them) summed in int16 (each int16 lane then holds 8 products, |Σ| ≤ 8·32·127 =
/// 32512: no saturation), one <c>vpmaddwd</c> by the sub-block's scale; the two sub-blocks added
/// give the block's exact int32 Σ sc·q·a, then f += f32(dot)·(d·da). Each activation row's arithmetic is the same
/// whatever its batch mates, so a row's result does not depend on the batch — decode's single row included, which
/// runs this kernel too. Its results differ from the one-row kernel's in f32 rounding (one conversion per block where
/// that one sums eight lanes per row), as <see cref="PackedQ4_K"/>'s do.
/// </para>
/// </summary>
public sealed unsafe class PackedQ6_K
{
    /// <summary>Rows per interleaved group.</summary>
    public const int Rows = 8;

    /// <summary>Rows of the kernel's pass: two groups, the sixteen lanes of a 512-bit register.</summary>
    public const int PairRows = 2 * Rows;

    /// <summary>Bytes of one group's block of 32 columns: quants, the two sub-blocks' scales, d.</summary>
    public const int GroupBlockBytes = 8 * 32 + 3 * Rows * sizeof(int);

    readonly byte[] _data; // pinned: the kernel takes its address once

    PackedQ6_K(byte[] data, int rows, int columns) => (_data, RowCount, Columns) = (data, rows, columns);

    /// <summary>Whether the kernel runs here (AVX-512BW).</summary>
    public static bool IsSupported => Avx512BW.IsSupported;

    /// <summary>Rows of the matrix.</summary>
    public int RowCount { get; }

    /// <summary>Columns of the matrix (a multiple of 256).</summary>
    public int Columns { get; }

    int Blocks => Columns / QK;
    long GroupBytes => (long)Blocks * GroupBlockBytes;

    /// <summary>Repacks a row-major <paramref name="rows"/> × <paramref name="columns"/> Q6_K matrix (missing rows of the last group are zero).</summary>
    public static PackedQ6_K Pack(ReadOnlySpan<byte> weights, int rows, int columns)
    {
        if (!IsSupported) throw new NotSupportedException("PackedQ6_K needs AVX-512BW");
        if (rows < 0 || columns <= 0 || columns % QK_K != 0)
            throw new ArgumentException($"PackedQ6_K.Pack: a {rows} × {columns} matrix is not a whole number of Q6_K super-blocks ({QK_K}) per row");
        long rowBytes = (long)columns / QK_K * Q6_KBytes;
        if (weights.Length != rowBytes * rows)
            throw new ArgumentException($"PackedQ6_K.Pack: a {rows} × {columns} Q6_K matrix takes {rowBytes * rows} bytes, but weights has {weights.Length}");
        int groups = (rows + Rows - 1) / Rows, blocks = columns / QK;
        long groupBytes = (long)blocks * GroupBlockBytes;
        var data = Memory.NativeBuffer.PinnedStreamingArray(groups * groupBytes, "PackedQ6_K.Pack");
        fixed (byte* w = weights)
        fixed (byte* dst = data)
        {
            byte* src = w, to = dst;
            Parallel.For(0, groups, g =>
            {
                for (int b = 0; b < blocks; b++)
                {
                    byte* t = to + g * groupBytes + (long)b * GroupBlockBytes;
                    int* scales = (int*)(t + 256);
                    float* d = (float*)(t + 256 + 2 * Rows * sizeof(int));
                    for (int r = 0; r < Rows; r++)
                    {
                        int row = g * Rows + r;
                        if (row >= rows)
                        {
                            for (int e = 0; e < QK; e++) t[e / 4 * 32 + 4 * r + e % 4] = 0;
                            scales[r] = scales[Rows + r] = 0;
                            d[r] = 0;
                            continue;
                        }
                        byte* superBlock = src + row * rowBytes + (long)(b / 8) * Q6_KBytes;
                        int first = b % 8 * QK; // this block's first element in its super-block
                        for (int e = 0; e < QK; e++) t[e / 4 * 32 + 4 * r + e % 4] = (byte)(sbyte)Quant(superBlock, first + e);
                        short scA = ((sbyte*)superBlock)[192 + first / 16], scB = ((sbyte*)superBlock)[192 + first / 16 + 1];
                        scales[r] = (ushort)scA | scA << 16;
                        scales[Rows + r] = (ushort)scB | scB << 16;
                        d[r] = Fp16.ToSingle(Unsafe.ReadUnaligned<ushort>(superBlock + 208));
                    }
                }
            });
        }
        return new PackedQ6_K(data, rows, columns);
    }

    /// <summary>Element <paramref name="i"/> (0…255) of a Q6_K super-block as q − 32 (ggml's layout, see <see cref="Dequantize"/>).</summary>
    internal static int Quant(byte* superBlock, int i)
    {
        int half = i / 128, p = i % 128, k = p / 32, l = p % 32;
        byte* ql = superBlock + 64 * half, qh = superBlock + 128 + 32 * half;
        int low = k % 2 == 0 ? ql[l] : ql[l + 32];
        low = k < 2 ? low & 0xF : low >> 4;
        return (low | (qh[l] >> 2 * k & 3) << 4) - 32;
    }

    /// <summary>
    /// y[i·<paramref name="yStride"/> + r] = row r · activation row i for rows [r0, r0 + count) (r0 a multiple of 8) and
    /// i &lt; n: activations quantized by <see cref="QuantizedDot.QuantizeActivations"/> (<paramref name="xq"/> n × columns,
    /// scales <paramref name="xd"/> n × blocks).
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public void Multiply(int r0, int count, sbyte* xq, float* xd, int n, float* y, int yStride)
    {
        if (r0 < 0 || (count > 0 && r0 % Rows != 0) || count < 0 || r0 + count > RowCount)
            throw new ArgumentOutOfRangeException(nameof(count), $"PackedQ6_K.Multiply: rows {r0}..{r0 + count} of {RowCount} (the first must be a multiple of {Rows})");
        int blocks = Blocks, cols = Columns;
        var result = stackalloc float[PairRows];
        fixed (byte* data = _data)
            // As PackedQ8_0's: groups g and g + 1 side by side (a lone last group read for both halves), over passes of
            // activation rows that stay in L2.
            for (int i0 = 0; i0 < n; i0 += PackedQ4_0.ActivationRowsPerPass)
            {
                int m = Math.Min(PackedQ4_0.ActivationRowsPerPass, n - i0);
                for (int g = r0; g < r0 + count; g += PairRows)
                {
                    byte* tile = data + g / Rows * GroupBytes;
                    int rowsHere = Math.Min(PairRows, r0 + count - g);
                    Multiply16(tile, rowsHere > Rows ? GroupBytes : 0, g + PairRows < r0 + count ? tile + 2 * GroupBytes : null, blocks,
                        xq + (long)i0 * cols, xd + (long)i0 * blocks, m, y + (long)i0 * yStride + g, yStride, rowsHere, result);
                }
            }
    }

    /// <summary>
    /// Groups at <paramref name="tile"/> and <paramref name="tile"/> + <paramref name="second"/> (lanes 0…7 and 8…15)
    /// against the n activation rows, eight, then four, then one at a time; <paramref name="next"/> (the pair this range
    /// computes next, or null) is brought into L2 meanwhile.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    static void Multiply16(byte* tile, long second, byte* next, int blocks, sbyte* xq, float* xd, int n, float* y, int yStride, int rowsHere, float* result)
    {
        int cols = blocks * QK;
        int i = 0, aheadAt = IntegerTile.AheadPass(n, 8, 4);
        for (; i + 8 <= n; i += 8)
        {
            sbyte* a0 = xq + (long)i * cols;
            float* d0 = xd + (long)i * blocks;
            Vector512<float> f0 = Vector512<float>.Zero, f1 = f0, f2 = f0, f3 = f0, f4 = f0, f5 = f0, f6 = f0, f7 = f0;
            byte* t = tile;
            byte* ahead = i == aheadAt ? next : null; // as in PackedQ4_0.Multiply16
            for (int b = 0; b < blocks; b++, t += GroupBlockBytes, a0 += QK)
            {
                IntegerTile.PrefetchPairBlock(ahead, t - tile, second, GroupBlockBytes);
                Vector512<int> e0 = Vector512<int>.Zero, e1 = e0, e2 = e0, e3 = e0, e4 = e0, e5 = e0, e6 = e0, e7 = e0;
                for (int h = 0; h < 2; h++) // the block's two sub-blocks of 16
                {
                    Vector512<short> p0 = Vector512<short>.Zero, p1 = p0, p2 = p0, p3 = p0, p4 = p0, p5 = p0, p6 = p0, p7 = p0;
                    for (int c = 4 * h; c < 4 * h + 4; c++)
                    {
                        var w = IntegerTile.LoadPair(t + 32 * c, second).AsSByte();
                        var abs = Avx512BW.Abs(w);
                        sbyte* a = a0 + 4 * c;
                        p0 = Pairs(p0, abs, w, a);
                        p1 = Pairs(p1, abs, w, a + cols);
                        p2 = Pairs(p2, abs, w, a + 2 * cols);
                        p3 = Pairs(p3, abs, w, a + 3 * cols);
                        p4 = Pairs(p4, abs, w, a + 4 * cols);
                        p5 = Pairs(p5, abs, w, a + 5 * cols);
                        p6 = Pairs(p6, abs, w, a + 6 * cols);
                        p7 = Pairs(p7, abs, w, a + 7 * cols);
                    }
                    var sc = IntegerTile.LoadPair(t + 256 + 32 * h, second).AsInt16();
                    e0 += Avx512BW.MultiplyAddAdjacent(p0, sc);
                    e1 += Avx512BW.MultiplyAddAdjacent(p1, sc);
                    e2 += Avx512BW.MultiplyAddAdjacent(p2, sc);
                    e3 += Avx512BW.MultiplyAddAdjacent(p3, sc);
                    e4 += Avx512BW.MultiplyAddAdjacent(p4, sc);
                    e5 += Avx512BW.MultiplyAddAdjacent(p5, sc);
                    e6 += Avx512BW.MultiplyAddAdjacent(p6, sc);
                    e7 += Avx512BW.MultiplyAddAdjacent(p7, sc);
                }
                var d = IntegerTile.LoadPair(t + 320, second).AsSingle();
                f0 = PackedQ8_0.Step16(f0, e0, d, d0[b]);
                f1 = PackedQ8_0.Step16(f1, e1, d, d0[b + blocks]);
                f2 = PackedQ8_0.Step16(f2, e2, d, d0[b + 2 * blocks]);
                f3 = PackedQ8_0.Step16(f3, e3, d, d0[b + 3 * blocks]);
                f4 = PackedQ8_0.Step16(f4, e4, d, d0[b + 4 * blocks]);
                f5 = PackedQ8_0.Step16(f5, e5, d, d0[b + 5 * blocks]);
                f6 = PackedQ8_0.Step16(f6, e6, d, d0[b + 6 * blocks]);
                f7 = PackedQ8_0.Step16(f7, e7, d, d0[b + 7 * blocks]);
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
                for (int h = 0; h < 2; h++)
                {
                    Vector512<short> p0 = Vector512<short>.Zero, p1 = p0, p2 = p0, p3 = p0;
                    for (int c = 4 * h; c < 4 * h + 4; c++)
                    {
                        var w = IntegerTile.LoadPair(t + 32 * c, second).AsSByte();
                        var abs = Avx512BW.Abs(w);
                        sbyte* a = a0 + 4 * c;
                        p0 = Pairs(p0, abs, w, a);
                        p1 = Pairs(p1, abs, w, a + cols);
                        p2 = Pairs(p2, abs, w, a + 2 * cols);
                        p3 = Pairs(p3, abs, w, a + 3 * cols);
                    }
                    var sc = IntegerTile.LoadPair(t + 256 + 32 * h, second).AsInt16();
                    e0 += Avx512BW.MultiplyAddAdjacent(p0, sc);
                    e1 += Avx512BW.MultiplyAddAdjacent(p1, sc);
                    e2 += Avx512BW.MultiplyAddAdjacent(p2, sc);
                    e3 += Avx512BW.MultiplyAddAdjacent(p3, sc);
                }
                var d = IntegerTile.LoadPair(t + 320, second).AsSingle();
                f0 = PackedQ8_0.Step16(f0, e0, d, d0[b]);
                f1 = PackedQ8_0.Step16(f1, e1, d, d0[b + blocks]);
                f2 = PackedQ8_0.Step16(f2, e2, d, d0[b + 2 * blocks]);
                f3 = PackedQ8_0.Step16(f3, e3, d, d0[b + 3 * blocks]);
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
                var e0 = Vector512<int>.Zero;
                for (int h = 0; h < 2; h++)
                {
                    // Two int16 chains of two chunks each (one row has no other rows' work to hide a latency behind).
                    Vector512<short> p0 = Vector512<short>.Zero, q0 = p0;
                    for (int c = 4 * h; c < 4 * h + 4; c += 2)
                    {
                        var w = IntegerTile.LoadPair(t + 32 * c, second).AsSByte();
                        var v = IntegerTile.LoadPair(t + 32 * c + 32, second).AsSByte();
                        p0 = Pairs(p0, Avx512BW.Abs(w), w, a0 + 4 * c);
                        q0 = Pairs(q0, Avx512BW.Abs(v), v, a0 + 4 * c + 4);
                    }
                    e0 += Avx512BW.MultiplyAddAdjacent(p0 + q0, IntegerTile.LoadPair(t + 256 + 32 * h, second).AsInt16());
                }
                f0 = PackedQ8_0.Step16(f0, e0, IntegerTile.LoadPair(t + 320, second).AsSingle(), d0[b]);
            }
            PackedQ4_0.Store16(f0, result, y + (long)i * yStride, rowsHere);
        }
    }

    /// <summary>p + the int16 pair sums of |w|·(a with w's sign) (<see cref="PackedQ8_0.SignedPairs"/>).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    static Vector512<short> Pairs(Vector512<short> p, Vector512<byte> abs, Vector512<sbyte> w, sbyte* a) => p + PackedQ8_0.SignedPairs(abs, w, a);
}
