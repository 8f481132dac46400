using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;
using static TokenMill.Quantization.BlockFormats;

namespace TokenMill.Quantization;

/// <summary>
/// The batched integer kernel (AVX-VNNI): eight weight rows are repacked so that one <c>vpdpbusd</c>
/// computes a 4-element partial dot for all eight rows at once (lane r = row r), then reused for every
/// activation row. Per 32-element block and activation row that is 8 <c>vpdpbusd</c> + one convert and
/// one FMA for eight weight rows, where the one-row kernel needs 8 × (dot, convert, broadcast, FMA).
/// <para>
/// Packed layout, per block of the 8-row group (<see cref="GroupBlockBytes"/> bytes): 8 × 32 bytes, where
/// the k-th 32 bytes hold elements 4k..4k+3 of rows 0..7 (signed int8 weights: Q8_0's quants, Q4_0's
/// nibble − 8); then 8 int32 −128·Σw (row sums); then 8 f32 weight scales.
/// </para>
/// <para>
/// vpdpbusd multiplies unsigned by signed bytes, so the activations go in as a + 128 (u8, see
/// <see cref="OffsetActivations"/>) and the −128·Σw start value cancels the offset exactly:
/// Σ (a + 128)·w − 128·Σ w = Σ a·w. Each activation row's arithmetic is the same whatever its batch
/// mates, so results do not depend on the batch.
/// </para>
/// </summary>
internal static unsafe class IntegerTile
{
    public const int Rows = 8;
    public const int GroupBlockBytes = Rows * QK + Rows * sizeof(int) + Rows * sizeof(float);

    public static bool IsSupported => AvxVnni.IsSupported && Avx2.IsSupported && Fma.IsSupported;

    /// <summary>u[i] = q[i] + 128 as an unsigned byte (flipping the sign bit does exactly that).</summary>
    public static void OffsetActivations(ReadOnlySpan<sbyte> q, Span<byte> u) =>
        System.Numerics.Tensors.TensorPrimitives.Xor(System.Runtime.InteropServices.MemoryMarshal.AsBytes(q), (byte)0x80, u);

    /// <summary>
    /// Packs rows [r0, r0 + count) (count ≤ 8; missing rows are zero) of <paramref name="blocks"/> blocks each into
    /// <paramref name="tile"/> (blocks × <see cref="GroupBlockBytes"/> bytes).
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public static void Pack<T>(byte* w, int rowBytes, int count, int blocks, byte* tile) where T : struct, IntegerDot.IWeightBlocks
    {
        Vector256<sbyte>* rowsV = stackalloc Vector256<sbyte>[Rows];
        var k = stackalloc Vector256<int>[Rows];
        var ones = Vector256.Create((byte)1);
        for (int b = 0; b < blocks; b++)
        {
            byte* dst = tile + (long)b * GroupBlockBytes;
            float* scales = (float*)(dst + Rows * QK + Rows * sizeof(int));
            for (int r = 0; r < Rows; r++)
            {
                if (r < count)
                {
                    byte* block = w + (long)r * rowBytes + (long)b * T.BlockBytes;
                    rowsV[r] = T.Load(block);
                    scales[r] = Fp16.ToSingle(Unsafe.ReadUnaligned<ushort>(block));
                }
                else
                {
                    rowsV[r] = Vector256<sbyte>.Zero;
                    scales[r] = 0;
                }
            }
            Transpose8x8((Vector256<int>*)rowsV, k);
            // Row sums: lane r of Σ_j dpbusd(1, k[j]) is Σ of row r's 32 weights.
            var sum = Vector256<int>.Zero;
            for (int j = 0; j < Rows; j++)
            {
                Avx.Store((int*)dst + 8 * j, k[j]);
                sum = AvxVnni.MultiplyWideningAndAdd(sum, ones, k[j].AsSByte());
            }
            Avx.Store((int*)(dst + Rows * QK), Avx2.Subtract(Vector256<int>.Zero, Avx2.ShiftLeftLogical(sum, 7)));
        }
    }

    /// <summary>An 8 × 8 transpose of int32s: <paramref name="k"/>[j] lane r = <paramref name="rows"/>[r] lane j (row r's elements 4j..4j+3).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static void Transpose8x8(Vector256<int>* rows, Vector256<int>* k)
    {
        var t0 = Avx2.UnpackLow(rows[0], rows[1]);
        var t1 = Avx2.UnpackHigh(rows[0], rows[1]);
        var t2 = Avx2.UnpackLow(rows[2], rows[3]);
        var t3 = Avx2.UnpackHigh(rows[2], rows[3]);
        var t4 = Avx2.UnpackLow(rows[4], rows[5]);
        var t5 = Avx2.UnpackHigh(rows[4], rows[5]);
        var t6 = Avx2.UnpackLow(rows[6], rows[7]);
        var t7 = Avx2.UnpackHigh(rows[6], rows[7]);
        var u0 = Avx2.UnpackLow(t0.AsInt64(), t2.AsInt64()).AsInt32();
        var u1 = Avx2.UnpackHigh(t0.AsInt64(), t2.AsInt64()).AsInt32();
        var u2 = Avx2.UnpackLow(t1.AsInt64(), t3.AsInt64()).AsInt32();
        var u3 = Avx2.UnpackHigh(t1.AsInt64(), t3.AsInt64()).AsInt32();
        var u4 = Avx2.UnpackLow(t4.AsInt64(), t6.AsInt64()).AsInt32();
        var u5 = Avx2.UnpackHigh(t4.AsInt64(), t6.AsInt64()).AsInt32();
        var u6 = Avx2.UnpackLow(t5.AsInt64(), t7.AsInt64()).AsInt32();
        var u7 = Avx2.UnpackHigh(t5.AsInt64(), t7.AsInt64()).AsInt32();
        // u0 = [k0: r0 r1 r2 r3 | k4: r0 r1 r2 r3], u4 = the same for rows 4..7; u1: k1/k5, u2: k2/k6, u3: k3/k7.
        k[0] = Avx2.Permute2x128(u0, u4, 0x20);
        k[4] = Avx2.Permute2x128(u0, u4, 0x31);
        k[1] = Avx2.Permute2x128(u1, u5, 0x20);
        k[5] = Avx2.Permute2x128(u1, u5, 0x31);
        k[2] = Avx2.Permute2x128(u2, u6, 0x20);
        k[6] = Avx2.Permute2x128(u2, u6, 0x31);
        k[3] = Avx2.Permute2x128(u3, u7, 0x20);
        k[7] = Avx2.Permute2x128(u3, u7, 0x31);
    }

    /// <summary>
    /// y[i·yStride + r] = row r · activation i for r &lt; <paramref name="count"/> and i &lt; n: the packed group
    /// against n offset activation rows (<paramref name="xu"/> + i·cols, scales <paramref name="xd"/> + i·blocks).
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public static void Multiply(byte* tile, int blocks, byte* xu, float* xd, int n, int count, float* y, int yStride)
    {
        int cols = blocks * QK;
        var result = stackalloc float[Rows];
        int i = 0;
        for (; i + 2 <= n; i += 2)
        {
            byte* a0 = xu + (long)i * cols, a1 = a0 + cols;
            float* d0 = xd + (long)i * blocks, d1 = d0 + blocks;
            Vector256<float> f0 = Vector256<float>.Zero, f1 = f0;
            byte* t = tile;
            for (int b = 0; b < blocks; b++, t += GroupBlockBytes, a0 += QK, a1 += QK)
            {
                var start = Avx.LoadVector256((int*)(t + Rows * QK));
                var scales = Avx.LoadVector256((float*)(t + Rows * QK + Rows * sizeof(int)));
                // Two chains per activation row (even and odd k) halve the vpdpbusd latency chain.
                Vector256<int> e0 = start, o0 = Vector256<int>.Zero, e1 = start, o1 = Vector256<int>.Zero;
                for (int k = 0; k < 8; k += 2)
                {
                    var w0 = Avx.LoadVector256((sbyte*)t + k * 32);
                    var w1 = Avx.LoadVector256((sbyte*)t + k * 32 + 32);
                    e0 = AvxVnni.MultiplyWideningAndAdd(e0, Vector256.Create(*(int*)(a0 + 4 * k)).AsByte(), w0);
                    e1 = AvxVnni.MultiplyWideningAndAdd(e1, Vector256.Create(*(int*)(a1 + 4 * k)).AsByte(), w0);
                    o0 = AvxVnni.MultiplyWideningAndAdd(o0, Vector256.Create(*(int*)(a0 + 4 * k + 4)).AsByte(), w1);
                    o1 = AvxVnni.MultiplyWideningAndAdd(o1, Vector256.Create(*(int*)(a1 + 4 * k + 4)).AsByte(), w1);
                }
                f0 = Fma.MultiplyAdd(Avx.ConvertToVector256Single(Avx2.Add(e0, o0)), Avx.Multiply(scales, Vector256.Create(d0[b])), f0);
                f1 = Fma.MultiplyAdd(Avx.ConvertToVector256Single(Avx2.Add(e1, o1)), Avx.Multiply(scales, Vector256.Create(d1[b])), f1);
            }
            Store(f0, result, y + (long)i * yStride, count);
            Store(f1, result, y + (long)(i + 1) * yStride, count);
        }
        for (; i < n; i++) // the same arithmetic for one row
        {
            byte* a0 = xu + (long)i * cols;
            float* d0 = xd + (long)i * blocks;
            var f0 = Vector256<float>.Zero;
            byte* t = tile;
            for (int b = 0; b < blocks; b++, t += GroupBlockBytes, a0 += QK)
            {
                var start = Avx.LoadVector256((int*)(t + Rows * QK));
                var scales = Avx.LoadVector256((float*)(t + Rows * QK + Rows * sizeof(int)));
                Vector256<int> e0 = start, o0 = Vector256<int>.Zero;
                for (int k = 0; k < 8; k += 2)
                {
                    e0 = AvxVnni.MultiplyWideningAndAdd(e0, Vector256.Create(*(int*)(a0 + 4 * k)).AsByte(), Avx.LoadVector256((sbyte*)t + k * 32));
                    o0 = AvxVnni.MultiplyWideningAndAdd(o0, Vector256.Create(*(int*)(a0 + 4 * k + 4)).AsByte(), Avx.LoadVector256((sbyte*)t + k * 32 + 32));
                }
                f0 = Fma.MultiplyAdd(Avx.ConvertToVector256Single(Avx2.Add(e0, o0)), Avx.Multiply(scales, Vector256.Create(d0[b])), f0);
            }
            Store(f0, result, y + (long)i * yStride, count);
        }
    }

    /// <summary>The first <paramref name="count"/> lanes of <paramref name="v"/> to <paramref name="y"/> (all 8 in one store when count is 8).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    internal static void Store(Vector256<float> v, float* scratch, float* y, int count)
    {
        if (count == Rows)
        {
            Avx.Store(y, v);
            return;
        }
        Avx.Store(scratch, v);
        for (int r = 0; r < count; r++) y[r] = scratch[r];
    }

    /// <summary>
    /// The 32 bytes at <paramref name="first"/> in lanes 0…255 and those at <paramref name="first"/> + <paramref name="second"/>
    /// in lanes 256…511: the same chunk of two 8-row groups, for a 512-bit kernel over a layout of 8-row groups
    /// (one load and one <c>vinserti32x8</c> from memory).
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    internal static Vector512<byte> LoadPair(byte* first, long second) =>
        Avx512F.InsertVector256(Avx.LoadVector256(first).ToVector512Unsafe(), Avx.LoadVector256(first + second), 1);

    /// <summary>
    /// Whether the repacked kernels ask for the next tile's weights into L2 (<see cref="AheadPass"/>), and the in-place row
    /// kernels for the rows ahead (<see cref="PrefetchRowAhead"/>); no result depends on
    /// it (off only to compare in benchmarks).
    /// </summary>
    internal static bool AsksAhead { get; set; } = true;

    /// <summary>
    /// The first activation row of the pass over a tile of weights that asks for the next tile's into L2, block by block
    /// (<see cref="PrefetchBlock"/>): <see cref="SecondPass"/>, or −1 (no pass) when <see cref="AsksAhead"/> is off.
    /// </summary>
    /// <remarks>
    /// The second pass where there are several finds this tile in L2 while the memory idles. The only pass where there
    /// is one — decode's single row, or a batch of exactly 4 or 8 — streams this tile from memory and asks for the next as
    /// it goes: the hardware prefetcher alone left it waiting. On this project's Xeon, two threads of Q4_0 one-row
    /// products over 5632 × 2048 matrices out of memory streamed 17.8 GB/s without it and 24.5 with it (a plain read
    /// loop: 29), and the engine's Q4_0 decode of one sequence ran ×1.34 (median of three alternated pairs).
    /// </remarks>
    internal static int AheadPass(int n, int widest, int middle) => AsksAhead ? SecondPass(n, widest, middle) : -1;

    /// <summary>
    /// For a kernel whose passes over a tile take <paramref name="widest"/> activation rows while there are that many, then
    /// <paramref name="middle"/> while there are that many, then one: the first row of its second pass, or 0 when
    /// <paramref name="n"/> rows make one pass.
    /// </summary>
    internal static int SecondPass(int n, int widest, int middle)
    {
        int first = n >= widest ? widest : n >= middle ? middle : 1;
        return n > first ? first : 0;
    }

    /// <summary>
    /// For the kernels that read a matrix's rows in place, one after another (<see cref="IntegerDotK"/>'s Q4_K and Q6_K,
    /// <see cref="QuantizedDot.MatMulQ8RowRange"/>'s Q8_0 and Q4_0): as a row starts, asks for the bytes
    /// <see cref="DotAvx2.RowPrefetchBytes"/> on, one row's worth, into L2, as the F16 and F32 one-row kernels do as they
    /// go (where <see cref="AsksAhead"/>). Two threads of rows of 2048 columns out of memory against one activation row, on
    /// this project's Xeon (medians of ten alternated pairs): Q6_K 9.7 → 11.5 and 10.2 → 13.6 GB/s in two runs, Q8_0
    /// 12.4 → 15.8. No result depends on it.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    internal static void PrefetchRowAhead(byte* row, int rowBytes)
    {
        if (AsksAhead) PrefetchBlock(row + DotAvx2.RowPrefetchBytes, rowBytes);
    }

    /// <summary>
    /// <see cref="PrefetchBlock"/> for block <paramref name="offset"/> of both groups of the next pair, the second
    /// <paramref name="second"/> bytes after the first (the 512-bit kernels' layouts of 8-row groups); nothing where
    /// <paramref name="ahead"/> is null.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    internal static void PrefetchPairBlock(byte* ahead, long offset, long second, int bytes)
    {
        if (ahead == null) return;
        PrefetchBlock(ahead + offset, bytes);
        PrefetchBlock(ahead + offset + second, bytes);
    }

    /// <summary>
    /// Requests one block of a repacked matrix (<paramref name="bytes"/> long: 288 for <see cref="PackedQ4_0"/>, 272 for
    /// <see cref="PackedQ8_0"/>, 192 for <see cref="PackedQ4_K"/>, 352 for <see cref="PackedQ6_K"/>) into L2: a line every
    /// 64 bytes from its start and the line of its last byte — every line it touches, wherever it starts.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    internal static void PrefetchBlock(byte* p, int bytes)
    {
        for (int offset = 0; offset < bytes; offset += 64) Sse.Prefetch1(p + offset);
        Sse.Prefetch1(p + bytes - 1);
    }
}
