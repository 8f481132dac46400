using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;
using static TokenMill.Quantization.BlockFormats;

namespace TokenMill.Quantization;

/// <summary>
/// A Q4_0 matrix repacked once, rows interleaved, for the integer kernel (the idea of llama.cpp's
/// <c>block_q4_0x8</c> repacking, in a layout of our own): one <c>vpdpbusd</c> then computes a 4-element partial
/// dot for eight rows at once (lane r = row r), so a block of 8 rows × 32 weights takes 4 loads, 8 nibble
/// unpacks and 8 <c>vpdpbusd</c> — where the one-row kernel decodes, sign-flips, sums and converts each row's
/// block on its own. Decode (one activation row) is the product this speeds up most.
/// <para>
/// Layout, per pair of 8-row groups (<see cref="PairRows"/> = 16 rows; the rows are padded with zero rows to a
/// whole number of pairs) and block of 32 columns (<see cref="PairBlockBytes"/> = 288 bytes, 0.5625 bytes per weight as
/// in Q4_0 itself: decode streams no more bytes than the file holds): 4 × 64 bytes of nibble pairs, then the 16 rows'
/// f16 scales as stored (first group's 8, then the second's), widened to f32 in the kernel (<see cref="FiniteHalves"/>). Bytes 0…31 of 64-byte chunk c
/// belong to the first group, 32…63 to the second; byte 4r + e of a group's 32 holds its row r's element 4c + e in
/// its low nibble and element 4(c + 4) + e in its high one; nibbles stay unsigned (0…15). A chunk is then one
/// 512-bit load of 16 rows × 4 weights (lane = row) for the AVX-512 kernel, and its halves the eight-row kernel's
/// 256-bit loads; the two groups' scales are one 256-bit load. Blocks are not cache-line aligned (4.5 lines each):
/// a split load costs a cycle, which decode (bound by memory) does not see and a batch spreads over its rows.
/// </para>
/// <para>
/// The weights are w = nibble − 8, and vpdpbusd multiplies unsigned by signed bytes, so each block's dot is
/// Σ nibble·a − 8·Σa: the activation row's block sums (<see cref="BlockSums"/>, −8·Σa per block) start each
/// block's accumulator. Every block's dot is the exact integer Σ w·a (as in <see cref="IntegerDot.DotScalar"/>),
/// scaled by dw·da and accumulated in f32 block by block, in the same order for every activation row whatever
/// its batch mates: a row's result does not depend on the batch.
/// </para>
/// <para>
/// With AVX-512BW every product runs through <see cref="Multiply16"/>: a pair of groups in 512-bit registers, each
/// block's nibbles unpacked once for eight activation rows, and 512-bit <c>vpmaddubsw</c> (64 products per
/// instruction, where 256-bit <c>vpdpbusd</c> — .NET 10 has no 512-bit one — does 32). It computes the same integer
/// dots and the same f32 steps as the eight-row kernel, so a row's result is the same bit for bit alone (decode) as
/// in any batch, and on a machine with AVX2 only.
/// </para>
/// </summary>
public sealed unsafe class PackedQ4_0
{
    /// <summary>Rows of one group: the eight lanes of a 256-bit register of int32 dots.</summary>
    public const int Rows = 8;
    /// <summary>Rows interleaved in the layout: two groups, the sixteen lanes of a 512-bit register.</summary>
    public const int PairRows = 2 * Rows;
    /// <summary>Bytes of one block (32 columns) of a pair of groups: 4 × 64 bytes of nibbles, 16 f16 scales.</summary>
    public const int PairBlockBytes = 4 * 64 + PairRows * sizeof(ushort);

    /// <summary>
    /// Activation rows run over the whole row range before the next ones: with a prefill's 512 rows, every group
    /// would stream all of them (1 MB at 2048 columns) from L3 again; 64 rows (≤ 360 KB at 5632 columns, with their
    /// scales and sums) stay in the 1 MB L2 while the weights of the range stream past them.
    /// </summary>
    internal const int ActivationRowsPerPass = 64;

    readonly byte[] _data; // pinned: the kernels take its address once
    // Whether some scale is ±inf or NaN (f16 exponent 31): then the kernels widen scales with ExactHalves, which keeps
    // them; a real model's scales are finite and take FiniteHalves' four instructions.
    readonly bool _specialScales;

    PackedQ4_0(byte[] data, int rows, int columns, bool specialScales) =>
        (_data, RowCount, Columns, _specialScales) = (data, rows, columns, specialScales);

    /// <summary>Whether the repacked kernel runs here (AVX2 + FMA; AVX-VNNI's vpdpbusd when present).</summary>
    public static bool IsSupported => Avx2.IsSupported && Fma.IsSupported;

    public int RowCount { get; }
    public int Columns { get; }
    int Blocks => Columns / QK;
    long PairBytes => (long)Blocks * PairBlockBytes;

    /// <summary>Repacks a row-major <paramref name="rows"/> × <paramref name="columns"/> Q4_0 matrix (missing rows of the last pair are zero).</summary>
    public static PackedQ4_0 Pack(ReadOnlySpan<byte> weights, int rows, int columns)
    {
        if (!IsSupported) throw new NotSupportedException("PackedQ4_0 needs AVX2 and FMA");
        if (rows < 0 || columns <= 0 || columns % QK != 0)
            throw new ArgumentException($"PackedQ4_0.Pack: a {rows} × {columns} matrix is not a whole number of Q4_0 blocks per row");
        long rowBytes = (long)columns / QK * Q4_0Bytes;
        if (weights.Length != rowBytes * rows)
            throw new ArgumentException($"PackedQ4_0.Pack: a {rows} × {columns} Q4_0 matrix takes {rowBytes * rows} bytes, but weights has {weights.Length}");
        int groups = (rows + PairRows - 1) / PairRows * 2, blocks = columns / QK;
        long bytes = (long)groups / 2 * blocks * PairBlockBytes;
        var data = Memory.NativeBuffer.PinnedStreamingArray(bytes, "PackedQ4_0.Pack");
        bool special = false;
        fixed (byte* w = weights)
        fixed (byte* dst = data)
        {
            Vector256<byte>* rowsV = stackalloc Vector256<byte>[Rows];
            var k = stackalloc Vector256<int>[Rows];
            for (int g = 0; g < groups; g++)
                for (int b = 0; b < blocks; b++)
                {
                    // Group g is half g % 2 of pair g / 2: its 32 bytes of each chunk and its 8 scales come after the first half's.
                    byte* pair = dst + ((long)(g / 2) * blocks + b) * PairBlockBytes;
                    byte* t = pair + g % 2 * 32;
                    ushort* scales = (ushort*)(pair + 4 * 64) + g % 2 * Rows;
                    for (int r = 0; r < Rows; r++)
                    {
                        int row = g * Rows + r;
                        if (row < rows)
                        {
                            byte* block = w + row * rowBytes + (long)b * Q4_0Bytes;
                            var packed = Sse2.LoadVector128(block + 2);
                            rowsV[r] = Avx2.And(Vector256.Create(packed, Sse2.ShiftRightLogical(packed.AsUInt16(), 4).AsByte()), Vector256.Create((byte)0xF));
                            scales[r] = Unsafe.ReadUnaligned<ushort>(block);
                            special |= (scales[r] & 0x7C00) == 0x7C00;
                        }
                        else
                        {
                            rowsV[r] = Vector256<byte>.Zero;
                            scales[r] = 0;
                        }
                    }
                    IntegerTile.Transpose8x8((Vector256<int>*)rowsV, k);
                    for (int c = 0; c < 4; c++)
                        Avx.Store(t + 64 * c, Avx2.Or(k[c].AsByte(), Avx2.ShiftLeftLogical(k[c + 4].AsUInt16(), 4).AsByte()));
                }
        }
        return new PackedQ4_0(data, rows, columns, special);
    }

    /// <summary>
    /// xc[b] = −8·Σ q[32b … 32b + 31] for one quantized activation row (<paramref name="q"/>, a whole number of blocks): the
    /// start of each block's accumulator in <see cref="Multiply"/>.
    /// </summary>
    public static void BlockSums(ReadOnlySpan<sbyte> q, Span<int> xc)
    {
        int blocks = q.Length / QK;
        if (q.Length % QK != 0 || xc.Length < blocks) throw new ArgumentException($"BlockSums: {q.Length} quants need {q.Length / QK} sums");
        if (Avx2.IsSupported)
        {
            // Every product of a prefill's rows needs these (the Q8_0 kernel too): vpmaddubsw by 1 and vpmaddwd by 1
            // sum a block in two instructions (|pair| ≤ 254, no saturation) where the scalar loop takes 32 adds.
            fixed (sbyte* pq = q)
                for (int b = 0; b < blocks; b++)
                {
                    var pairs = Avx2.MultiplyAddAdjacent(Vector256<byte>.One, Avx.LoadVector256(pq + b * QK));
                    xc[b] = -8 * Vector256.Sum(Avx2.MultiplyAddAdjacent(pairs, Vector256<short>.One));
                }
            return;
        }
        for (int b = 0; b < blocks; b++)
        {
            int sum = 0;
            foreach (sbyte v in q.Slice(b * QK, QK)) sum += v;
            xc[b] = -8 * sum;
        }
    }

    /// <summary>
    /// y[i·<paramref name="yStride"/> + r] = row r · activation row i for rows [r0, r0 + count) (r0 a multiple of
    /// 8) and i &lt; n: activations quantized by <see cref="QuantizedDot.QuantizeActivations"/> (<paramref name="xq"/>
    /// n × columns, scales <paramref name="xd"/> n × blocks) with their <see cref="BlockSums"/> (<paramref name="xc"/> n × blocks).
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public void Multiply(int r0, int count, sbyte* xq, float* xd, int* xc, int n, float* y, int yStride)
    {
        if (r0 < 0 || (count > 0 && r0 % Rows != 0) || count < 0 || r0 + count > RowCount)
            throw new ArgumentOutOfRangeException(nameof(count), $"PackedQ4_0.Multiply: rows {r0}..{r0 + count} of {RowCount} (the first must be a multiple of {Rows})");
        if (_specialScales) Multiply<ExactHalves>(r0, count, xq, xd, xc, n, y, yStride);
        else Multiply<FiniteHalves>(r0, count, xq, xd, xc, n, y, yStride);
    }

    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    void Multiply<TScales>(int r0, int count, sbyte* xq, float* xd, int* xc, int n, float* y, int yStride) where TScales : struct, IHalfWidening
    {
        int blocks = Blocks;
        long pairBytes = PairBytes;
        var result = stackalloc float[PairRows];
        fixed (byte* data = _data)
        {
            for (int i0 = 0; i0 < n; i0 += ActivationRowsPerPass)
            {
                int m = Math.Min(ActivationRowsPerPass, n - i0);
                sbyte* q = xq + (long)i0 * Columns;
                float* d = xd + (long)i0 * blocks;
                int* c = xc + (long)i0 * blocks;
                float* yi = y + (long)i0 * yStride;
                int g = r0, end = r0 + count;
                // A pair of groups in 512-bit registers (AVX-512BW), from decode's one activation row up; a range that
                // starts at a pair's second group and machines without AVX-512 take the eight-row kernel on each group.
                // Both compute the same exact integer block dots and the same f32 steps, so they agree bit for bit.
                if (Avx512BW.IsSupported)
                {
                    if (g % PairRows != 0 && g < end)
                    {
                        byte* pair = data + g / PairRows * pairBytes;
                        Multiply8<TScales>(pair + 32, pair + 4 * 64 + 2 * Rows, blocks, q, d, c, m, yi + g, yStride, Math.Min(Rows, end - g), result);
                        g += Rows;
                    }
                    for (; g < end; g += PairRows) // a last pair of fewer rows computes its zero rows too and stores only its own
                    {
                        byte* tile = data + g / PairRows * pairBytes;
                        Multiply16<TScales>(tile, g + PairRows < end ? tile + pairBytes : null, blocks, q, d, c, m, yi + g, yStride, Math.Min(PairRows, end - g), result);
                    }
                }
                for (; g < end; g += Rows)
                {
                    byte* pair = data + g / PairRows * pairBytes;
                    int half = g / Rows % 2;
                    Multiply8<TScales>(pair + half * 32, pair + 4 * 64 + half * 2 * Rows, blocks, q, d, c, m, yi + g, yStride, Math.Min(Rows, end - g), result);
                }
            }
        }
    }

    /// <summary>
    /// One group of 8 rows (<paramref name="tile"/>: its half of the pair's first chunk; <paramref name="scaleTile"/>: its
    /// 8 scales in the first block) against the n activation rows, two at a time (AVX2, vpdpbusd with AVX-VNNI).
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    static void Multiply8<TScales>(byte* tile, byte* scaleTile, int blocks, sbyte* xq, float* xd, int* xc, int n, float* y, int yStride, int rowsHere, float* result)
        where TScales : struct, IHalfWidening
    {
        int cols = blocks * QK;
        int i = 0;
        for (; i + 2 <= n; i += 2)
        {
            sbyte* a0 = xq + (long)i * cols, a1 = a0 + cols;
            float* d0 = xd + (long)i * blocks, d1 = d0 + blocks;
            int* c0 = xc + (long)i * blocks, c1 = c0 + blocks;
            Vector256<float> f0 = Vector256<float>.Zero, f1 = f0;
            byte* t = tile, st = scaleTile;
            for (int b = 0; b < blocks; b++, t += PairBlockBytes, st += PairBlockBytes, a0 += QK, a1 += QK)
            {
                Vector256<int> e0 = Vector256.Create(c0[b]), o0 = Vector256<int>.Zero, e1 = Vector256.Create(c1[b]), o1 = o0;
                for (int c = 0; c < 4; c += 2)
                {
                    var (lo0, hi0) = Nibbles(t + 64 * c);
                    var (lo1, hi1) = Nibbles(t + 64 * c + 64);
                    e0 = Dot(e0, lo0, a0 + 4 * c);
                    e1 = Dot(e1, lo0, a1 + 4 * c);
                    o0 = Dot(o0, lo1, a0 + 4 * c + 4);
                    o1 = Dot(o1, lo1, a1 + 4 * c + 4);
                    e0 = Dot(e0, hi0, a0 + 4 * c + 16);
                    e1 = Dot(e1, hi0, a1 + 4 * c + 16);
                    o0 = Dot(o0, hi1, a0 + 4 * c + 20);
                    o1 = Dot(o1, hi1, a1 + 4 * c + 20);
                }
                var scales = TScales.Widen8(st);
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
            byte* t = tile, st = scaleTile;
            for (int b = 0; b < blocks; b++, t += PairBlockBytes, st += PairBlockBytes, a0 += QK)
            {
                Vector256<int> e0 = Vector256.Create(c0[b]), o0 = Vector256<int>.Zero;
                for (int c = 0; c < 4; c += 2)
                {
                    var (lo0, hi0) = Nibbles(t + 64 * c);
                    var (lo1, hi1) = Nibbles(t + 64 * c + 64);
                    e0 = Dot(e0, lo0, a0 + 4 * c);
                    o0 = Dot(o0, lo1, a0 + 4 * c + 4);
                    e0 = Dot(e0, hi0, a0 + 4 * c + 16);
                    o0 = Dot(o0, hi1, a0 + 4 * c + 20);
                }
                var scales = TScales.Widen8(st);
                f0 = Fma.MultiplyAdd(Avx.ConvertToVector256Single(Avx2.Add(e0, o0)), Avx.Multiply(scales, Vector256.Create(d0[b])), f0);
            }
            IntegerTile.Store(f0, result, y + (long)i * yStride, rowsHere);
        }
    }

    /// <summary>
    /// A pair of groups (<paramref name="tile"/>, 16 rows, lanes 8..15 the second group) against the n activation rows,
    /// eight at a time, with AVX-512BW; <paramref name="next"/> (the pair this range computes next, or null) is brought
    /// into L2 meanwhile. Per block and activation row:
    /// 8 <c>vpmaddubsw</c> (unsigned nibble × signed activation, pairs of products as int16: |pair| ≤ 2·15·127), their
    /// sum in int16 (8 pairs = 16 products, |Σ| ≤ 30480 &lt; 32767: no saturation), one <c>vpmaddwd</c> by 1 into the
    /// int32 block dot plus −8·Σa, then the eight-row kernel's f32 steps on 16 lanes. Each block's nibbles are
    /// unpacked once for eight activation rows, and vpmaddubsw at 512 bits does 64 products per instruction where
    /// 256-bit vpdpbusd does 32.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    static void Multiply16<TScales>(byte* tile, byte* next, int blocks, sbyte* xq, float* xd, int* xc, int n, float* y, int yStride, int rowsHere, float* result)
        where TScales : struct, IHalfWidening
    {
        int cols = blocks * QK;
        int i = 0, aheadAt = IntegerTile.AheadPass(n, 8, 4);
        // Eight activation rows per pass where there are eight (one unpack per block for eight rows; 8 of the 32
        // registers hold the nibbles, 8 the accumulators), then four, then one.
        for (; i + 8 <= n; i += 8)
        {
            sbyte* a0 = xq + (long)i * cols;
            float* d0 = xd + (long)i * blocks;
            int* c0 = xc + (long)i * blocks;
            Vector512<float> f0 = Vector512<float>.Zero, f1 = f0, f2 = f0, f3 = f0, f4 = f0, f5 = f0, f6 = f0, f7 = f0;
            byte* t = tile;
            // The first pass over this pair's weights streams them from memory at the rate it computes, the next ones
            // find them in L2 and leave the memory idle: the second pass prefetches the next pair's block by block,
            // whose first pass then finds them in L2. (At 32 activation rows, weights that do not fit in L3 — every
            // decode step's — went from ~200 to ~300 GMAC/s a thread, as fast as weights in L3.) A single pass — one
            // row, four or eight — prefetches the next pair as it streams this one (IntegerTile.AheadPass).
            byte* ahead = i == aheadAt ? next : null;
            for (int b = 0; b < blocks; b++, t += PairBlockBytes, a0 += QK)
            {
                if (ahead != null) IntegerTile.PrefetchBlock(ahead + (t - tile), PairBlockBytes);
                var (l0, h0) = Nibbles16(t);
                var (l1, h1) = Nibbles16(t + 64);
                var (l2, h2) = Nibbles16(t + 128);
                var (l3, h3) = Nibbles16(t + 192);
                var scales = TScales.Widen16(t + 4 * 64);
                f0 = Step16(f0, l0, l1, l2, l3, h0, h1, h2, h3, a0, c0 + b, scales, d0 + b);
                f1 = Step16(f1, l0, l1, l2, l3, h0, h1, h2, h3, a0 + cols, c0 + b + blocks, scales, d0 + b + blocks);
                f2 = Step16(f2, l0, l1, l2, l3, h0, h1, h2, h3, a0 + 2 * cols, c0 + b + 2 * blocks, scales, d0 + b + 2 * blocks);
                f3 = Step16(f3, l0, l1, l2, l3, h0, h1, h2, h3, a0 + 3 * cols, c0 + b + 3 * blocks, scales, d0 + b + 3 * blocks);
                f4 = Step16(f4, l0, l1, l2, l3, h0, h1, h2, h3, a0 + 4 * cols, c0 + b + 4 * blocks, scales, d0 + b + 4 * blocks);
                f5 = Step16(f5, l0, l1, l2, l3, h0, h1, h2, h3, a0 + 5 * cols, c0 + b + 5 * blocks, scales, d0 + b + 5 * blocks);
                f6 = Step16(f6, l0, l1, l2, l3, h0, h1, h2, h3, a0 + 6 * cols, c0 + b + 6 * blocks, scales, d0 + b + 6 * blocks);
                f7 = Step16(f7, l0, l1, l2, l3, h0, h1, h2, h3, a0 + 7 * cols, c0 + b + 7 * blocks, scales, d0 + b + 7 * blocks);
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
            byte* ahead = i == aheadAt ? next : null;
            for (int b = 0; b < blocks; b++, t += PairBlockBytes, a0 += QK, a1 += QK, a2 += QK, a3 += QK)
            {
                if (ahead != null) IntegerTile.PrefetchBlock(ahead + (t - tile), PairBlockBytes);
                var (l0, h0) = Nibbles16(t);
                var (l1, h1) = Nibbles16(t + 64);
                var (l2, h2) = Nibbles16(t + 128);
                var (l3, h3) = Nibbles16(t + 192);
                var scales = TScales.Widen16(t + 4 * 64);
                f0 = Step16(f0, l0, l1, l2, l3, h0, h1, h2, h3, a0, c0 + b, scales, d0 + b);
                f1 = Step16(f1, l0, l1, l2, l3, h0, h1, h2, h3, a1, c1 + b, scales, d1 + b);
                f2 = Step16(f2, l0, l1, l2, l3, h0, h1, h2, h3, a2, c2 + b, scales, d2 + b);
                f3 = Step16(f3, l0, l1, l2, l3, h0, h1, h2, h3, a3, c3 + b, scales, d3 + b);
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
            byte* ahead = i == aheadAt ? next : null;
            for (int b = 0; b < blocks; b++, t += PairBlockBytes, a0 += QK)
            {
                if (ahead != null) IntegerTile.PrefetchBlock(ahead + (t - tile), PairBlockBytes);
                var (l0, h0) = Nibbles16(t);
                var (l1, h1) = Nibbles16(t + 64);
                var (l2, h2) = Nibbles16(t + 128);
                var (l3, h3) = Nibbles16(t + 192);
                var scales = TScales.Widen16(t + 4 * 64);
                f0 = Step16(f0, l0, l1, l2, l3, h0, h1, h2, h3, a0, c0 + b, scales, d0 + b);
            }
            Store16(f0, result, y + (long)i * yStride, rowsHere);
        }
    }

    /// <summary>The nibbles of one 64-byte chunk of a pair of groups: 16 rows × 4 unsigned weights, low and high.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    static (Vector512<byte> Low, Vector512<byte> High) Nibbles16(byte* chunk)
    {
        var v = Avx512F.LoadVector512(chunk);
        var mask = Vector512.Create((byte)0xF);
        return (Avx512F.And(v, mask), Avx512F.And(Avx512BW.ShiftRightLogical(v.AsUInt16(), 4).AsByte(), mask));
    }

    /// <summary>
    /// f + f32(Σ nibble·a − 8·Σa)·(scales·da) for one block of one activation row (<paramref name="a"/>, its 32 quants;
    /// −8·Σa at <paramref name="start"/>, da at <paramref name="da"/>: read where they are used, so both are broadcast
    /// from memory by the load ports, not moved through registers by the vector ports the products need).
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    static Vector512<float> Step16(Vector512<float> f, Vector512<byte> l0, Vector512<byte> l1, Vector512<byte> l2, Vector512<byte> l3,
        Vector512<byte> h0, Vector512<byte> h1, Vector512<byte> h2, Vector512<byte> h3, sbyte* a, int* start, Vector512<float> scales, float* da)
    {
        var dot = Avx512F.Add(NibbleDot16(l0, l1, l2, l3, h0, h1, h2, h3, a), Vector512.Create(*start));
        return Avx512F.FusedMultiplyAdd(Avx512F.ConvertToVector512Single(dot), Avx512F.Multiply(scales, Vector512.Create(*da)), f);
    }

    /// <summary>
    /// Σ nibble·a over one block of 32 for 16 rows (lane = row), exact: chunk c's low nibbles are elements 4c..4c+3, its
    /// high ones 4c+16..4c+19; 8 <c>vpmaddubsw</c> summed in int16 (|Σ| ≤ 16·15·127 = 30480, no saturation), one
    /// <c>vpmaddwd</c> by 1. Shared by the Q4_K kernel, whose quants are nibbles too.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    internal static Vector512<int> NibbleDot16(Vector512<byte> l0, Vector512<byte> l1, Vector512<byte> l2, Vector512<byte> l3,
        Vector512<byte> h0, Vector512<byte> h1, Vector512<byte> h2, Vector512<byte> h3, sbyte* a)
    {
        var p = Avx512BW.Add(
            Avx512BW.Add(Avx512BW.Add(Pairs(l0, a), Pairs(l1, a + 4)), Avx512BW.Add(Pairs(l2, a + 8), Pairs(l3, a + 12))),
            Avx512BW.Add(Avx512BW.Add(Pairs(h0, a + 16), Pairs(h1, a + 20)), Avx512BW.Add(Pairs(h2, a + 24), Pairs(h3, a + 28))));
        return Avx512BW.MultiplyAddAdjacent(p, Vector512.Create((short)1));
    }

    /// <summary>vpmaddubsw of 16 rows × 4 unsigned weights with the 4 activations at <paramref name="a"/> broadcast to every lane.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    static Vector512<short> Pairs(Vector512<byte> u, sbyte* a) =>
        Avx512BW.MultiplyAddAdjacent(u, Vector512.Create(Unsafe.ReadUnaligned<int>(a)).AsSByte());

    /// <summary>The first <paramref name="count"/> of 16 lanes to <paramref name="y"/>.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    internal static void Store16(Vector512<float> v, float* scratch, float* y, int count)
    {
        if (count == PairRows)
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
