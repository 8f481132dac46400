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
/// </summary>
public sealed unsafe class PackedQ8_0
{
    public const int Rows = 8;
    public const int GroupBlockBytes = Rows * QK + Rows * sizeof(ushort);

    readonly byte[] _data; // pinned: the kernels take its address once
    readonly bool _specialScales; // some scale is ±inf or NaN: widened by ExactHalves

    PackedQ8_0(byte[] data, int rows, int columns, bool specialScales) =>
        (_data, RowCount, Columns, _specialScales) = (data, rows, columns, specialScales);

    /// <summary>Whether the packed kernel runs here (AVX-VNNI, AVX2 and FMA).</summary>
    public static bool IsSupported => AvxVnni.IsSupported && Avx2.IsSupported && Fma.IsSupported;

    public int RowCount { get; }
    public int Columns { get; }
    int Blocks => Columns / QK;
    long GroupBytes => (long)Blocks * GroupBlockBytes;

    /// <summary>Repacks a row-major <paramref name="rows"/> × <paramref name="columns"/> Q8_0 matrix (missing rows of the last group are zero).</summary>
    public static PackedQ8_0 Pack(ReadOnlySpan<byte> weights, int rows, int columns)
    {
        if (!IsSupported) throw new NotSupportedException("PackedQ8_0 needs AVX-VNNI");
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
        return new PackedQ8_0(data, rows, columns, special);
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
        var result = stackalloc float[Rows];
        fixed (byte* data = _data)
            for (int i0 = 0; i0 < n; i0 += PackedQ4_0.ActivationRowsPerPass)
            {
                int m = Math.Min(PackedQ4_0.ActivationRowsPerPass, n - i0);
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
        int i = 0;
        for (; i + 4 <= n; i += 4)
        {
            sbyte* a0 = xq + (long)i * cols, a1 = a0 + cols, a2 = a1 + cols, a3 = a2 + cols;
            float* d0 = xd + (long)i * blocks, d1 = d0 + blocks, d2 = d1 + blocks, d3 = d2 + blocks;
            int* c0 = xc + (long)i * blocks, c1 = c0 + blocks, c2 = c1 + blocks, c3 = c2 + blocks;
            Vector256<float> f0 = Vector256<float>.Zero, f1 = f0, f2 = f0, f3 = f0;
            byte* t = tile;
            // As in PackedQ4_0.Multiply16: the second pass over this group's weights (found in L2) prefetches the next
            // group's, whose first pass would otherwise wait on memory.
            byte* ahead = i == 4 ? next : null;
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
            for (int b = 0; b < blocks; b++, t += GroupBlockBytes, a0 += QK)
            {
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

    /// <summary>−128·Σa in every lane, from the block's −8·Σa (<see cref="PackedQ4_0.BlockSums"/>).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    static Vector256<int> Start(int blockSum) => Vector256.Create(blockSum << 4);

    /// <summary>acc + Σ over each 4-byte group of (w + 128)·a, with the activation's 4 bytes at <paramref name="a"/> broadcast to every lane.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    static Vector256<int> Dot(Vector256<int> acc, Vector256<byte> u, sbyte* a) =>
        AvxVnni.MultiplyWideningAndAdd(acc, u, Vector256.Create(Unsafe.ReadUnaligned<int>(a)).AsSByte());
}
