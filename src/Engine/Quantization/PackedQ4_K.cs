using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;
using static TokenMill.Quantization.BlockFormats;

namespace TokenMill.Quantization;

/// <summary>
/// A Q4_K matrix repacked once, eight rows interleaved, in <see cref="PackedQ4_0"/>'s way: one <c>vpdpbusd</c> computes a
/// 4-element partial dot for all eight rows at once (lane r = row r), where the one-row kernel
/// (<see cref="IntegerDotK"/>) converts, broadcasts a scale and multiplies for each row and sub-block on its own.
/// <para>
/// Layout, per group of 8 rows and sub-block of 32 columns (<see cref="GroupBlockBytes"/> = 192 bytes, 0.75 bytes per
/// weight against Q4_K's 0.5625): 4 × 32 bytes of nibble pairs (byte 4r + e of chunk c: row r's element 4c + e in
/// the low nibble, 4(c + 4) + e in the high one; quants 0…15), then 8 f32 d·sc, then 8 f32 dmin·m — the sub-block's
/// scale and min with the super-block's f16 factors applied once at packing.
/// </para>
/// <para>
/// Per activation block: Σ w·a = (d·sc)·da·Σ(q·aq) − (dmin·m)·(da·Σaq), Σ q·aq an exact int32 (quants unsigned, so no
/// offset to cancel) and Σaq the activation's block sum (<see cref="IntegerDotK.BlockSums"/>). Each activation row's
/// arithmetic is the same whatever its batch mates, so a row's result does not depend on the batch.
/// </para>
/// <para>
/// Without AVX-VNNI the same bytes go through <see cref="Multiply16"/> (<see cref="PackedKernel.Avx512BW"/>): two
/// groups side by side in 512-bit registers, each sub-block's nibbles unpacked once for eight activation rows,
/// 512-bit <c>vpmaddubsw</c> summed in int16 (<see cref="PackedQ4_0.NibbleDot16"/>) — the same integer dots and f32
/// steps, the same bits.
/// </para>
/// </summary>
public sealed unsafe class PackedQ4_K
{
    /// <summary>Rows per interleaved group.</summary>
    public const int Rows = 8;

    /// <summary>Bytes of one group's sub-block: quants, scales, mins.</summary>
    public const int GroupBlockBytes = 4 * 32 + 2 * Rows * sizeof(float);

    /// <summary>Rows of the 512-bit kernel's pass: two groups.</summary>
    public const int PairRows = 2 * Rows;

    readonly byte[] _data; // pinned: the kernels take its address once
    readonly PackedKernel _kernel;

    PackedQ4_K(byte[] data, int rows, int columns, PackedKernel kernel) => (_data, RowCount, Columns, _kernel) = (data, rows, columns, kernel);

    /// <summary>Whether a repacked kernel runs here: AVX2 and FMA, with AVX-VNNI or AVX-512BW.</summary>
    public static bool IsSupported => PackedKernels.AnySupported;

    /// <summary>Rows of the matrix.</summary>
    public int RowCount { get; }

    /// <summary>Columns of the matrix (a multiple of 256).</summary>
    public int Columns { get; }

    int Blocks => Columns / QK;
    long GroupBytes => (long)Blocks * GroupBlockBytes;

    /// <summary>Repacks a row-major <paramref name="rows"/> × <paramref name="columns"/> Q4_K matrix (missing rows of the last group are zero).</summary>
    public static PackedQ4_K Pack(ReadOnlySpan<byte> weights, int rows, int columns) => Pack(weights, rows, columns, PackedKernels.Preferred);

    /// <summary>Repacks for the kernel <paramref name="kernel"/> (tests run both where both run).</summary>
    internal static PackedQ4_K Pack(ReadOnlySpan<byte> weights, int rows, int columns, PackedKernel kernel)
    {
        if (!PackedKernels.Supports(kernel))
            throw new NotSupportedException(kernel == PackedKernel.Vnni ? "PackedQ4_K's vpdpbusd kernel needs AVX-VNNI, AVX2 and FMA" : "PackedQ4_K's 512-bit kernel needs AVX-512BW, AVX2 and FMA");
        if (rows < 0 || columns <= 0 || columns % QK_K != 0)
            throw new ArgumentException($"PackedQ4_K.Pack: a {rows} × {columns} matrix is not a whole number of Q4_K super-blocks ({QK_K}) per row");
        long rowBytes = (long)columns / QK_K * Q4_KBytes;
        if (weights.Length != rowBytes * rows)
            throw new ArgumentException($"PackedQ4_K.Pack: a {rows} × {columns} Q4_K matrix takes {rowBytes * rows} bytes, but weights has {weights.Length}");
        int groups = (rows + Rows - 1) / Rows, blocks = columns / QK;
        long bytes = (long)groups * blocks * GroupBlockBytes;
        var data = Memory.NativeBuffer.PinnedStreamingArray(bytes, "PackedQ4_K.Pack");
        fixed (byte* w = weights)
        fixed (byte* dst = data)
        {
            Vector256<byte>* rowsV = stackalloc Vector256<byte>[Rows];
            var k = stackalloc Vector256<int>[Rows];
            var mask = Vector256.Create((byte)0xF);
            for (int g = 0; g < groups; g++)
                for (int b = 0; b < blocks; b++)
                {
                    byte* t = dst + ((long)g * blocks + b) * GroupBlockBytes;
                    float* scales = (float*)(t + 128), mins = scales + Rows;
                    int j = b % 8; // sub-block of its super-block
                    for (int r = 0; r < Rows; r++)
                    {
                        int row = g * Rows + r;
                        if (row < rows)
                        {
                            byte* block = w + row * rowBytes + (long)(b / 8) * Q4_KBytes;
                            var qs = Avx.LoadVector256(block + 16 + 32 * (j / 2));
                            rowsV[r] = j % 2 == 0 ? Avx2.And(qs, mask) : Avx2.And(Avx2.ShiftRightLogical(qs.AsUInt16(), 4).AsByte(), mask);
                            var (sc, m) = ScaleMinK4(j, new ReadOnlySpan<byte>(block + 4, 12));
                            scales[r] = Fp16.ToSingle(Unsafe.ReadUnaligned<ushort>(block)) * sc;
                            mins[r] = Fp16.ToSingle(Unsafe.ReadUnaligned<ushort>(block + 2)) * m;
                        }
                        else
                        {
                            rowsV[r] = Vector256<byte>.Zero;
                            scales[r] = mins[r] = 0;
                        }
                    }
                    IntegerTile.Transpose8x8((Vector256<int>*)rowsV, k);
                    for (int c = 0; c < 4; c++)
                        Avx.Store(t + 32 * c, Avx2.Or(k[c].AsByte(), Avx2.ShiftLeftLogical(k[c + 4].AsUInt16(), 4).AsByte()));
                }
        }
        return new PackedQ4_K(data, rows, columns, kernel);
    }

    /// <summary>
    /// y[i·<paramref name="yStride"/> + r] = row r · activation row i for rows [r0, r0 + count) (r0 a multiple of 8) and
    /// i &lt; n: activations quantized by <see cref="QuantizedDot.QuantizeActivations"/> (<paramref name="xq"/> n × columns,
    /// scales <paramref name="xd"/> n × blocks) with their <see cref="QuantizedDot.ActivationBlockSums"/> (<paramref name="xs"/> n × blocks).
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public void Multiply(int r0, int count, sbyte* xq, float* xd, int* xs, int n, float* y, int yStride)
    {
        if (r0 < 0 || (count > 0 && r0 % Rows != 0) || count < 0 || r0 + count > RowCount)
            throw new ArgumentOutOfRangeException(nameof(count), $"PackedQ4_K.Multiply: rows {r0}..{r0 + count} of {RowCount} (the first must be a multiple of {Rows})");
        int blocks = Blocks, cols = Columns;
        var result = stackalloc float[PairRows];
        fixed (byte* data = _data)
        {
            if (_kernel == PackedKernel.Avx512BW)
            {
                // As PackedQ8_0's: groups g and g + 1 side by side (a lone last group read for both halves), over passes
                // of activation rows that stay in L2.
                for (int i0 = 0; i0 < n; i0 += PackedQ4_0.ActivationRowsPerPass)
                {
                    int m = Math.Min(PackedQ4_0.ActivationRowsPerPass, n - i0);
                    for (int g = r0; g < r0 + count; g += PairRows)
                    {
                        byte* tile = data + g / Rows * GroupBytes;
                        int rowsHere = Math.Min(PairRows, r0 + count - g);
                        Multiply16(tile, rowsHere > Rows ? GroupBytes : 0, g + PairRows < r0 + count ? tile + 2 * GroupBytes : null, blocks,
                            xq + (long)i0 * cols, xd + (long)i0 * blocks, xs + (long)i0 * blocks, m, y + (long)i0 * yStride + g, yStride, rowsHere, result);
                    }
                }
                return;
            }
            for (int g = r0; g < r0 + count; g += Rows)
            {
                byte* tile = data + g / Rows * GroupBytes, next = g + Rows < r0 + count ? tile + GroupBytes : null;
                int rowsHere = Math.Min(Rows, r0 + count - g);
                int i = 0, aheadAt = IntegerTile.AheadPass(n, 2, 2);
                for (; i + 2 <= n; i += 2)
                {
                    sbyte* a0 = xq + (long)i * cols, a1 = a0 + cols;
                    float* d0 = xd + (long)i * blocks, d1 = d0 + blocks;
                    int* s0 = xs + (long)i * blocks, s1 = s0 + blocks;
                    Vector256<float> f0 = Vector256<float>.Zero, f1 = f0;
                    byte* t = tile;
                    byte* ahead = i == aheadAt ? next : null;
                    for (int b = 0; b < blocks; b++, t += GroupBlockBytes, a0 += QK, a1 += QK)
                    {
                        if (ahead != null) IntegerTile.PrefetchBlock(ahead + (t - tile), GroupBlockBytes);
                        Vector256<int> e0 = Vector256<int>.Zero, o0 = e0, e1 = e0, o1 = e0;
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
                        var mins = Avx.LoadVector256((float*)(t + 160));
                        f0 = Step(f0, Avx2.Add(e0, o0), scales, mins, d0[b], s0[b]);
                        f1 = Step(f1, Avx2.Add(e1, o1), scales, mins, d1[b], s1[b]);
                    }
                    IntegerTile.Store(f0, result, y + (long)i * yStride + g, rowsHere);
                    IntegerTile.Store(f1, result, y + (long)(i + 1) * yStride + g, rowsHere);
                }
                for (; i < n; i++) // the same arithmetic for one row
                {
                    sbyte* a0 = xq + (long)i * cols;
                    float* d0 = xd + (long)i * blocks;
                    int* s0 = xs + (long)i * blocks;
                    var f0 = Vector256<float>.Zero;
                    byte* t = tile;
                    byte* ahead = i == aheadAt ? next : null;
                    for (int b = 0; b < blocks; b++, t += GroupBlockBytes, a0 += QK)
                    {
                        if (ahead != null) IntegerTile.PrefetchBlock(ahead + (t - tile), GroupBlockBytes);
                        Vector256<int> e0 = Vector256<int>.Zero, o0 = e0;
                        for (int c = 0; c < 4; c += 2)
                        {
                            var (lo0, hi0) = Nibbles(t + 32 * c);
                            var (lo1, hi1) = Nibbles(t + 32 * c + 32);
                            e0 = Dot(e0, lo0, a0 + 4 * c);
                            o0 = Dot(o0, lo1, a0 + 4 * c + 4);
                            e0 = Dot(e0, hi0, a0 + 4 * c + 16);
                            o0 = Dot(o0, hi1, a0 + 4 * c + 20);
                        }
                        f0 = Step(f0, Avx2.Add(e0, o0), Avx.LoadVector256((float*)(t + 128)), Avx.LoadVector256((float*)(t + 160)), d0[b], s0[b]);
                    }
                    IntegerTile.Store(f0, result, y + (long)i * yStride + g, rowsHere);
                }
            }
        }
    }

    /// <summary>
    /// Groups at <paramref name="tile"/> and <paramref name="tile"/> + <paramref name="second"/> (lanes 0…7 and 8…15)
    /// against the n activation rows — eight, then four, then one at a time — with AVX-512BW; <paramref name="next"/>
    /// (the pair this range computes next, or null) is brought into L2 meanwhile. Per sub-block: its nibbles unpacked
    /// once, then for each activation row <see cref="PackedQ4_0.NibbleDot16"/> and the eight-row kernel's f32 step on
    /// 16 lanes.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    static void Multiply16(byte* tile, long second, byte* next, int blocks, sbyte* xq, float* xd, int* xs, int n, float* y, int yStride, int rowsHere, float* result)
    {
        int cols = blocks * QK;
        int i = 0, aheadAt = IntegerTile.AheadPass(n, 8, 4);
        for (; i + 8 <= n; i += 8)
        {
            sbyte* a0 = xq + (long)i * cols;
            float* d0 = xd + (long)i * blocks;
            int* s0 = xs + (long)i * blocks;
            Vector512<float> f0 = Vector512<float>.Zero, f1 = f0, f2 = f0, f3 = f0, f4 = f0, f5 = f0, f6 = f0, f7 = f0;
            byte* t = tile;
            byte* ahead = i == aheadAt ? next : null; // as in PackedQ4_0.Multiply16
            for (int b = 0; b < blocks; b++, t += GroupBlockBytes, a0 += QK)
            {
                IntegerTile.PrefetchPairBlock(ahead, t - tile, second, GroupBlockBytes);
                var (l0, h0) = Nibbles16(t, second);
                var (l1, h1) = Nibbles16(t + 32, second);
                var (l2, h2) = Nibbles16(t + 64, second);
                var (l3, h3) = Nibbles16(t + 96, second);
                var scales = IntegerTile.LoadPair(t + 128, second).AsSingle();
                var mins = IntegerTile.LoadPair(t + 160, second).AsSingle();
                f0 = Step16(f0, PackedQ4_0.NibbleDot16(l0, l1, l2, l3, h0, h1, h2, h3, a0), scales, mins, d0[b], s0[b]);
                f1 = Step16(f1, PackedQ4_0.NibbleDot16(l0, l1, l2, l3, h0, h1, h2, h3, a0 + cols), scales, mins, d0[b + blocks], s0[b + blocks]);
                f2 = Step16(f2, PackedQ4_0.NibbleDot16(l0, l1, l2, l3, h0, h1, h2, h3, a0 + 2 * cols), scales, mins, d0[b + 2 * blocks], s0[b + 2 * blocks]);
                f3 = Step16(f3, PackedQ4_0.NibbleDot16(l0, l1, l2, l3, h0, h1, h2, h3, a0 + 3 * cols), scales, mins, d0[b + 3 * blocks], s0[b + 3 * blocks]);
                f4 = Step16(f4, PackedQ4_0.NibbleDot16(l0, l1, l2, l3, h0, h1, h2, h3, a0 + 4 * cols), scales, mins, d0[b + 4 * blocks], s0[b + 4 * blocks]);
                f5 = Step16(f5, PackedQ4_0.NibbleDot16(l0, l1, l2, l3, h0, h1, h2, h3, a0 + 5 * cols), scales, mins, d0[b + 5 * blocks], s0[b + 5 * blocks]);
                f6 = Step16(f6, PackedQ4_0.NibbleDot16(l0, l1, l2, l3, h0, h1, h2, h3, a0 + 6 * cols), scales, mins, d0[b + 6 * blocks], s0[b + 6 * blocks]);
                f7 = Step16(f7, PackedQ4_0.NibbleDot16(l0, l1, l2, l3, h0, h1, h2, h3, a0 + 7 * cols), scales, mins, d0[b + 7 * blocks], s0[b + 7 * blocks]);
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
            int* s0 = xs + (long)i * blocks;
            Vector512<float> f0 = Vector512<float>.Zero, f1 = f0, f2 = f0, f3 = f0;
            byte* t = tile;
            byte* ahead = i == aheadAt ? next : null;
            for (int b = 0; b < blocks; b++, t += GroupBlockBytes, a0 += QK)
            {
                IntegerTile.PrefetchPairBlock(ahead, t - tile, second, GroupBlockBytes);
                var (l0, h0) = Nibbles16(t, second);
                var (l1, h1) = Nibbles16(t + 32, second);
                var (l2, h2) = Nibbles16(t + 64, second);
                var (l3, h3) = Nibbles16(t + 96, second);
                var scales = IntegerTile.LoadPair(t + 128, second).AsSingle();
                var mins = IntegerTile.LoadPair(t + 160, second).AsSingle();
                f0 = Step16(f0, PackedQ4_0.NibbleDot16(l0, l1, l2, l3, h0, h1, h2, h3, a0), scales, mins, d0[b], s0[b]);
                f1 = Step16(f1, PackedQ4_0.NibbleDot16(l0, l1, l2, l3, h0, h1, h2, h3, a0 + cols), scales, mins, d0[b + blocks], s0[b + blocks]);
                f2 = Step16(f2, PackedQ4_0.NibbleDot16(l0, l1, l2, l3, h0, h1, h2, h3, a0 + 2 * cols), scales, mins, d0[b + 2 * blocks], s0[b + 2 * blocks]);
                f3 = Step16(f3, PackedQ4_0.NibbleDot16(l0, l1, l2, l3, h0, h1, h2, h3, a0 + 3 * cols), scales, mins, d0[b + 3 * blocks], s0[b + 3 * blocks]);
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
            int* s0 = xs + (long)i * blocks;
            var f0 = Vector512<float>.Zero;
            byte* t = tile;
            byte* ahead = i == aheadAt ? next : null;
            for (int b = 0; b < blocks; b++, t += GroupBlockBytes, a0 += QK)
            {
                IntegerTile.PrefetchPairBlock(ahead, t - tile, second, GroupBlockBytes);
                var (l0, h0) = Nibbles16(t, second);
                var (l1, h1) = Nibbles16(t + 32, second);
                var (l2, h2) = Nibbles16(t + 64, second);
                var (l3, h3) = Nibbles16(t + 96, second);
                f0 = Step16(f0, PackedQ4_0.NibbleDot16(l0, l1, l2, l3, h0, h1, h2, h3, a0),
                    IntegerTile.LoadPair(t + 128, second).AsSingle(), IntegerTile.LoadPair(t + 160, second).AsSingle(), d0[b], s0[b]);
            }
            PackedQ4_0.Store16(f0, result, y + (long)i * yStride, rowsHere);
        }
    }

    /// <summary>The nibbles of chunk <paramref name="chunk"/> of both groups: 16 rows × 4 quants, low and high.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    static (Vector512<byte> Low, Vector512<byte> High) Nibbles16(byte* chunk, long second)
    {
        var v = IntegerTile.LoadPair(chunk, second);
        var mask = Vector512.Create((byte)0xF);
        return (Avx512F.And(v, mask), Avx512F.And(Avx512BW.ShiftRightLogical(v.AsUInt16(), 4).AsByte(), mask));
    }

    /// <summary><see cref="Step"/> on 16 lanes.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    static Vector512<float> Step16(Vector512<float> acc, Vector512<int> dot, Vector512<float> scales, Vector512<float> mins, float da, int sum) =>
        Avx512F.FusedMultiplyAddNegated(mins, Vector512.Create(da * sum),
            Avx512F.FusedMultiplyAdd(Avx512F.ConvertToVector512Single(dot), Avx512F.Multiply(scales, Vector512.Create(da)), acc));

    /// <summary>acc + f32(Σ q·aq)·(d·sc)·da − (dmin·m)·(da·Σaq), for the eight rows of one sub-block.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    static Vector256<float> Step(Vector256<float> acc, Vector256<int> dot, Vector256<float> scales, Vector256<float> mins, float da, int sum) =>
        Fma.MultiplyAddNegated(mins, Vector256.Create(da * sum), Fma.MultiplyAdd(Avx.ConvertToVector256Single(dot), Avx.Multiply(scales, Vector256.Create(da)), acc));

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
    static Vector256<int> Dot(Vector256<int> acc, Vector256<byte> u, sbyte* a) =>
        AvxVnni.MultiplyWideningAndAdd(acc, u, Vector256.Create(Unsafe.ReadUnaligned<int>(a)).AsSByte());
}
