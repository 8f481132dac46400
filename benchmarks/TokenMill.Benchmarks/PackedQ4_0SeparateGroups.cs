using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;
using static TokenMill.Quantization.BlockFormats;

using TokenMill.Quantization;

namespace TokenMill.Benchmarks;

/// <summary>
/// <see cref="PackedQ4_0"/> as it was before its groups were paired (commit 5844ad1): each group of 8 rows stored
/// block after block on its own (160 bytes per group and block), so the AVX-512 kernel built each 16-row register
/// from two 256-bit loads and an insert. Kept only as the baseline of <see cref="IntegerDotBenchmarks.RepackedSeparateGroups"/>.
/// </summary>
public sealed unsafe class PackedQ4_0SeparateGroups
{
    public const int Rows = 8;
    public const int GroupBlockBytes = 4 * 32 + Rows * sizeof(float);

    /// <summary>
    /// Activation rows run over the whole row range before the next ones: with a prefill's 512 rows, every group
    /// would stream all of them (1 MB at 2048 columns) from L3 again; 64 rows (≤ 360 KB at 5632 columns, with their
    /// scales and sums) stay in the 1 MB L2 while the weights of the range stream past them.
    /// </summary>
    const int ActivationRowsPerPass = 64;

    readonly byte[] _data; // pinned: the kernels take its address once

    PackedQ4_0SeparateGroups(byte[] data, int rows, int columns) => (_data, RowCount, Columns) = (data, rows, columns);

    /// <summary>Whether the repacked kernel runs here (AVX2 + FMA; AVX-VNNI's vpdpbusd when present).</summary>
    public static bool IsSupported => Avx2.IsSupported && Fma.IsSupported;

    public int RowCount { get; }
    public int Columns { get; }
    int Blocks => Columns / QK;
    long GroupBytes => (long)Blocks * GroupBlockBytes;

    /// <summary>Repacks a row-major <paramref name="rows"/> × <paramref name="columns"/> Q4_0 matrix (missing rows of the last group are zero).</summary>
    public static PackedQ4_0SeparateGroups Pack(ReadOnlySpan<byte> weights, int rows, int columns)
    {
        if (!IsSupported) throw new NotSupportedException("PackedQ4_0 needs AVX2 and FMA");
        if (rows < 0 || columns <= 0 || columns % QK != 0)
            throw new ArgumentException($"PackedQ4_0.Pack: a {rows} × {columns} matrix is not a whole number of Q4_0 blocks per row");
        long rowBytes = (long)columns / QK * Q4_0Bytes;
        if (weights.Length != rowBytes * rows)
            throw new ArgumentException($"PackedQ4_0.Pack: a {rows} × {columns} Q4_0 matrix takes {rowBytes * rows} bytes, but weights has {weights.Length}");
        int groups = (rows + Rows - 1) / Rows, blocks = columns / QK;
        long bytes = (long)groups * blocks * GroupBlockBytes;
        var data = TokenMill.Memory.NativeBuffer.PinnedStreamingArray(bytes, "PackedQ4_0.Pack");
        fixed (byte* w = weights)
        fixed (byte* dst = data)
        {
            Vector256<byte>* rowsV = stackalloc Vector256<byte>[Rows];
            var k = stackalloc Vector256<int>[Rows];
            for (int g = 0; g < groups; g++)
                for (int b = 0; b < blocks; b++)
                {
                    byte* t = dst + ((long)g * blocks + b) * GroupBlockBytes;
                    float* scales = (float*)(t + 128);
                    for (int r = 0; r < Rows; r++)
                    {
                        int row = g * Rows + r;
                        if (row < rows)
                        {
                            byte* block = w + row * rowBytes + (long)b * Q4_0Bytes;
                            var packed = Sse2.LoadVector128(block + 2);
                            rowsV[r] = Avx2.And(Vector256.Create(packed, Sse2.ShiftRightLogical(packed.AsUInt16(), 4).AsByte()), Vector256.Create((byte)0xF));
                            scales[r] = Fp16.ToSingle(Unsafe.ReadUnaligned<ushort>(block));
                        }
                        else
                        {
                            rowsV[r] = Vector256<byte>.Zero;
                            scales[r] = 0;
                        }
                    }
                    IntegerTile.Transpose8x8((Vector256<int>*)rowsV, k);
                    for (int c = 0; c < 4; c++)
                        Avx.Store(t + 32 * c, Avx2.Or(k[c].AsByte(), Avx2.ShiftLeftLogical(k[c + 4].AsUInt16(), 4).AsByte()));
                }
        }
        return new PackedQ4_0SeparateGroups(data, rows, columns);
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
            throw new ArgumentOutOfRangeException(nameof(count), $"PackedQ4_0.Multiply: rows {r0}..{r0 + count} of {RowCount} (the first must be a multiple of {Rows})");
        int blocks = Blocks;
        var result = stackalloc float[2 * Rows];
        fixed (byte* data = _data)
        {
            for (int i0 = 0; i0 < n; i0 += ActivationRowsPerPass)
            {
                int m = Math.Min(ActivationRowsPerPass, n - i0);
                sbyte* q = xq + (long)i0 * Columns;
                float* d = xd + (long)i0 * blocks;
                int* c = xc + (long)i0 * blocks;
                float* yi = y + (long)i0 * yStride;
                int g = r0;
                // Two groups side by side in 512-bit registers (AVX-512BW), several activation rows per pass; the last
                // odd group, one activation row (decode) and machines without AVX-512 take the eight-row kernel.
                // Both compute the same exact integer block dots and the same f32 steps, so they agree bit for bit.
                if (Avx512BW.IsSupported && m >= 2)
                    for (; g + Rows < r0 + count; g += 2 * Rows)
                        Multiply16(data + g / Rows * GroupBytes, GroupBytes, blocks, q, d, c, m, yi + g, yStride, Math.Min(2 * Rows, r0 + count - g), result);
                for (; g < r0 + count; g += Rows)
                    Multiply8(data + g / Rows * GroupBytes, blocks, q, d, c, m, yi + g, yStride, Math.Min(Rows, r0 + count - g), result);
            }
        }
    }

    /// <summary>One group of 8 rows (<paramref name="tile"/>) against the n activation rows, two at a time (AVX2, vpdpbusd with AVX-VNNI).</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    static void Multiply8(byte* tile, int blocks, sbyte* xq, float* xd, int* xc, int n, float* y, int yStride, int rowsHere, float* result)
    {
        int cols = blocks * QK;
        int i = 0;
        for (; i + 2 <= n; i += 2)
        {
            sbyte* a0 = xq + (long)i * cols, a1 = a0 + cols;
            float* d0 = xd + (long)i * blocks, d1 = d0 + blocks;
            int* c0 = xc + (long)i * blocks, c1 = c0 + blocks;
            Vector256<float> f0 = Vector256<float>.Zero, f1 = f0;
            byte* t = tile;
            for (int b = 0; b < blocks; b++, t += GroupBlockBytes, a0 += QK, a1 += QK)
            {
                Vector256<int> e0 = Vector256.Create(c0[b]), o0 = Vector256<int>.Zero, e1 = Vector256.Create(c1[b]), o1 = o0;
                for (int c = 0; c < 4; c += 2)
                {
                    var (lo0, hi0) = Nibbles(t + 32 * c);
                    var (lo1, hi1) = Nibbles(t + 32 * c + 32);
                    e0 = Dot(e0, lo0, a0 + 4 * c);
                    e1 = Dot(e1, lo0, a1 + 4 * c);
                    o0 = Dot(o0, lo1, a0 + 4 * c + 4);
                    o1 = Dot(o1, lo1, a1 + 4 * c + 4);
                    e0 = Dot(e0, hi0, a0 + 4 * c + 16);
                    e1 = Dot(e1, hi0, a1 + 4 * c + 16);
                    o0 = Dot(o0, hi1, a0 + 4 * c + 20);
                    o1 = Dot(o1, hi1, a1 + 4 * c + 20);
                }
                var scales = Avx.LoadVector256((float*)(t + 128));
                f0 = Fma.MultiplyAdd(Avx.ConvertToVector256Single(Avx2.Add(e0, o0)), Avx.Multiply(scales, Vector256.Create(d0[b])), f0);
                f1 = Fma.MultiplyAdd(Avx.ConvertToVector256Single(Avx2.Add(e1, o1)), Avx.Multiply(scales, Vector256.Create(d1[b])), f1);
            }
            IntegerTile.Store(f0, result, y + (long)i * yStride, rowsHere);
            IntegerTile.Store(f1, result, y + (long)(i + 1) * yStride, rowsHere);
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
                Vector256<int> e0 = Vector256.Create(c0[b]), o0 = Vector256<int>.Zero;
                for (int c = 0; c < 4; c += 2)
                {
                    var (lo0, hi0) = Nibbles(t + 32 * c);
                    var (lo1, hi1) = Nibbles(t + 32 * c + 32);
                    e0 = Dot(e0, lo0, a0 + 4 * c);
                    o0 = Dot(o0, lo1, a0 + 4 * c + 4);
                    e0 = Dot(e0, hi0, a0 + 4 * c + 16);
                    o0 = Dot(o0, hi1, a0 + 4 * c + 20);
                }
                var scales = Avx.LoadVector256((float*)(t + 128));
                f0 = Fma.MultiplyAdd(Avx.ConvertToVector256Single(Avx2.Add(e0, o0)), Avx.Multiply(scales, Vector256.Create(d0[b])), f0);
            }
            IntegerTile.Store(f0, result, y + (long)i * yStride, rowsHere);
        }
    }

    /// <summary>
    /// Two groups (<paramref name="tile"/> and the one <paramref name="groupBytes"/> after it, 16 rows, lanes 8..15 the
    /// second) against the n activation rows, eight at a time, with AVX-512BW. Per block and activation row:
    /// 8 <c>vpmaddubsw</c> (unsigned nibble × signed activation, pairs of products as int16: |pair| ≤ 2·15·127), their
    /// sum in int16 (8 pairs = 16 products, |Σ| ≤ 30480 &lt; 32767: no saturation), one <c>vpmaddwd</c> by 1 into the
    /// int32 block dot plus −8·Σa, then the eight-row kernel's f32 steps on 16 lanes. Each block's nibbles are
    /// unpacked once for eight activation rows, and vpmaddubsw at 512 bits does 64 products per instruction where
    /// 256-bit vpdpbusd does 32.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    static void Multiply16(byte* tile, long groupBytes, int blocks, sbyte* xq, float* xd, int* xc, int n, float* y, int yStride, int rowsHere, float* result)
    {
        int cols = blocks * QK;
        int i = 0;
        // Eight activation rows per pass where there are eight (one unpack per block for eight rows; 8 of the 32
        // registers hold the nibbles, 8 the accumulators), then four, then one.
        for (; i + 8 <= n; i += 8)
        {
            sbyte* a0 = xq + (long)i * cols, a1 = a0 + cols, a2 = a1 + cols, a3 = a2 + cols, a4 = a3 + cols, a5 = a4 + cols, a6 = a5 + cols, a7 = a6 + cols;
            float* d0 = xd + (long)i * blocks;
            int* c0 = xc + (long)i * blocks;
            Vector512<float> f0 = Vector512<float>.Zero, f1 = f0, f2 = f0, f3 = f0, f4 = f0, f5 = f0, f6 = f0, f7 = f0;
            byte* t = tile;
            for (int b = 0; b < blocks; b++, t += GroupBlockBytes, a0 += QK, a1 += QK, a2 += QK, a3 += QK, a4 += QK, a5 += QK, a6 += QK, a7 += QK)
            {
                var (l0, h0) = Nibbles16(t, groupBytes);
                var (l1, h1) = Nibbles16(t + 32, groupBytes);
                var (l2, h2) = Nibbles16(t + 64, groupBytes);
                var (l3, h3) = Nibbles16(t + 96, groupBytes);
                var scales = Vector512.Create(Avx.LoadVector256((float*)(t + 128)), Avx.LoadVector256((float*)(t + groupBytes + 128)));
                f0 = Step16(f0, l0, l1, l2, l3, h0, h1, h2, h3, a0, c0[b], scales, d0[b]);
                f1 = Step16(f1, l0, l1, l2, l3, h0, h1, h2, h3, a1, c0[b + blocks], scales, d0[b + blocks]);
                f2 = Step16(f2, l0, l1, l2, l3, h0, h1, h2, h3, a2, c0[b + 2 * blocks], scales, d0[b + 2 * blocks]);
                f3 = Step16(f3, l0, l1, l2, l3, h0, h1, h2, h3, a3, c0[b + 3 * blocks], scales, d0[b + 3 * blocks]);
                f4 = Step16(f4, l0, l1, l2, l3, h0, h1, h2, h3, a4, c0[b + 4 * blocks], scales, d0[b + 4 * blocks]);
                f5 = Step16(f5, l0, l1, l2, l3, h0, h1, h2, h3, a5, c0[b + 5 * blocks], scales, d0[b + 5 * blocks]);
                f6 = Step16(f6, l0, l1, l2, l3, h0, h1, h2, h3, a6, c0[b + 6 * blocks], scales, d0[b + 6 * blocks]);
                f7 = Step16(f7, l0, l1, l2, l3, h0, h1, h2, h3, a7, c0[b + 7 * blocks], scales, d0[b + 7 * blocks]);
            }
            Store16(f0, result, y + (long)i * yStride, rowsHere);
            Store16(f1, result, y + (long)(i + 1) * yStride, rowsHere);
            Store16(f2, result, y + (long)(i + 2) * yStride, rowsHere);
            Store16(f3, result, y + (long)(i + 3) * yStride, rowsHere);
            Store16(f4, result, y + (long)(i + 4) * yStride, rowsHere);
            Store16(f5, result, y + (long)(i + 5) * yStride, rowsHere);
            Store16(f6, result, y + (long)(i + 6) * yStride, rowsHere);
            Store16(f7, result, y + (long)(i + 7) * yStride, rowsHere);
        }
        for (; i + 4 <= n; i += 4)
        {
            sbyte* a0 = xq + (long)i * cols, a1 = a0 + cols, a2 = a1 + cols, a3 = a2 + cols;
            float* d0 = xd + (long)i * blocks, d1 = d0 + blocks, d2 = d1 + blocks, d3 = d2 + blocks;
            int* c0 = xc + (long)i * blocks, c1 = c0 + blocks, c2 = c1 + blocks, c3 = c2 + blocks;
            Vector512<float> f0 = Vector512<float>.Zero, f1 = f0, f2 = f0, f3 = f0;
            byte* t = tile;
            for (int b = 0; b < blocks; b++, t += GroupBlockBytes, a0 += QK, a1 += QK, a2 += QK, a3 += QK)
            {
                var (l0, h0) = Nibbles16(t, groupBytes);
                var (l1, h1) = Nibbles16(t + 32, groupBytes);
                var (l2, h2) = Nibbles16(t + 64, groupBytes);
                var (l3, h3) = Nibbles16(t + 96, groupBytes);
                var scales = Vector512.Create(Avx.LoadVector256((float*)(t + 128)), Avx.LoadVector256((float*)(t + groupBytes + 128)));
                f0 = Step16(f0, l0, l1, l2, l3, h0, h1, h2, h3, a0, c0[b], scales, d0[b]);
                f1 = Step16(f1, l0, l1, l2, l3, h0, h1, h2, h3, a1, c1[b], scales, d1[b]);
                f2 = Step16(f2, l0, l1, l2, l3, h0, h1, h2, h3, a2, c2[b], scales, d2[b]);
                f3 = Step16(f3, l0, l1, l2, l3, h0, h1, h2, h3, a3, c3[b], scales, d3[b]);
            }
            Store16(f0, result, y + (long)i * yStride, rowsHere);
            Store16(f1, result, y + (long)(i + 1) * yStride, rowsHere);
            Store16(f2, result, y + (long)(i + 2) * yStride, rowsHere);
            Store16(f3, result, y + (long)(i + 3) * yStride, rowsHere);
        }
        for (; i < n; i++) // the same arithmetic for one row
        {
            sbyte* a0 = xq + (long)i * cols;
            float* d0 = xd + (long)i * blocks;
            int* c0 = xc + (long)i * blocks;
            var f0 = Vector512<float>.Zero;
            byte* t = tile;
            for (int b = 0; b < blocks; b++, t += GroupBlockBytes, a0 += QK)
            {
                var (l0, h0) = Nibbles16(t, groupBytes);
                var (l1, h1) = Nibbles16(t + 32, groupBytes);
                var (l2, h2) = Nibbles16(t + 64, groupBytes);
                var (l3, h3) = Nibbles16(t + 96, groupBytes);
                var scales = Vector512.Create(Avx.LoadVector256((float*)(t + 128)), Avx.LoadVector256((float*)(t + groupBytes + 128)));
                f0 = Step16(f0, l0, l1, l2, l3, h0, h1, h2, h3, a0, c0[b], scales, d0[b]);
            }
            Store16(f0, result, y + (long)i * yStride, rowsHere);
        }
    }

    /// <summary>The nibbles of 32 packed bytes of two groups (the second <paramref name="groupBytes"/> on): 16 rows × 4 unsigned weights, low and high.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    static (Vector512<byte> Low, Vector512<byte> High) Nibbles16(byte* chunk, long groupBytes)
    {
        var v = Vector512.Create(Avx.LoadVector256(chunk), Avx.LoadVector256(chunk + groupBytes));
        var mask = Vector512.Create((byte)0xF);
        return (Avx512F.And(v, mask), Avx512F.And(Avx512BW.ShiftRightLogical(v.AsUInt16(), 4).AsByte(), mask));
    }

    /// <summary>f + f32(Σ nibble·a − 8·Σa)·(scales·da) for one block of one activation row (<paramref name="a"/>, its 32 quants).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    static Vector512<float> Step16(Vector512<float> f, Vector512<byte> l0, Vector512<byte> l1, Vector512<byte> l2, Vector512<byte> l3,
        Vector512<byte> h0, Vector512<byte> h1, Vector512<byte> h2, Vector512<byte> h3, sbyte* a, int start, Vector512<float> scales, float da)
    {
        // Chunk c's low nibbles are elements 4c..4c+3, its high ones 4c+16..4c+19.
        var p = Avx512BW.Add(
            Avx512BW.Add(Avx512BW.Add(Pairs(l0, a), Pairs(l1, a + 4)), Avx512BW.Add(Pairs(l2, a + 8), Pairs(l3, a + 12))),
            Avx512BW.Add(Avx512BW.Add(Pairs(h0, a + 16), Pairs(h1, a + 20)), Avx512BW.Add(Pairs(h2, a + 24), Pairs(h3, a + 28))));
        var dot = Avx512F.Add(Avx512BW.MultiplyAddAdjacent(p, Vector512.Create((short)1)), Vector512.Create(start));
        return Avx512F.FusedMultiplyAdd(Avx512F.ConvertToVector512Single(dot), Avx512F.Multiply(scales, Vector512.Create(da)), f);
    }

    /// <summary>vpmaddubsw of 16 rows × 4 unsigned weights with the 4 activations at <paramref name="a"/> broadcast to every lane.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    static Vector512<short> Pairs(Vector512<byte> u, sbyte* a) =>
        Avx512BW.MultiplyAddAdjacent(u, Vector512.Create(Unsafe.ReadUnaligned<int>(a)).AsSByte());

    /// <summary>The first <paramref name="count"/> of 16 lanes to <paramref name="y"/>.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    static void Store16(Vector512<float> v, float* scratch, float* y, int count)
    {
        if (count == 2 * Rows)
        {
            Avx512F.Store(y, v);
            return;
        }
        Avx512F.Store(scratch, v);
        for (int r = 0; r < count; r++) y[r] = scratch[r];
    }

    /// <summary>The low and high nibbles of 32 packed bytes: two vectors of 8 rows × 4 unsigned weights.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    static (Vector256<byte> Low, Vector256<byte> High) Nibbles(byte* chunk)
    {
        var v = Avx.LoadVector256(chunk);
        var mask = Vector256.Create((byte)0xF);
        return (Avx2.And(v, mask), Avx2.And(Avx2.ShiftRightLogical(v.AsUInt16(), 4).AsByte(), mask));
    }

    /// <summary>acc + Σ over each 4-byte group of u·s, with the activation's 4 bytes at <paramref name="a"/> broadcast to every lane.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    static Vector256<int> Dot(Vector256<int> acc, Vector256<byte> u, sbyte* a)
    {
        var s = Vector256.Create(Unsafe.ReadUnaligned<int>(a)).AsSByte();
        if (AvxVnni.IsSupported) return AvxVnni.MultiplyWideningAndAdd(acc, u, s);
        // u ≤ 15 and |s| ≤ 127: the 16-bit pair sums of vpmaddubsw cannot saturate.
        return Avx2.Add(acc, Avx2.MultiplyAddAdjacent(Avx2.MultiplyAddAdjacent(u, s), Vector256.Create((short)1)));
    }
}
