using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;
using TokenMill.Models.Gguf;

namespace TokenMill.Quantization;

/// <summary>
/// <see cref="TileGemm"/>'s product for many activation rows (prefill) in the outer-product form of a packed GEMM
/// (BLIS, GotoBLAS): the weights of a work item and the activation rows are first packed into panels, and the
/// microkernel multiplies one vector of 16 weight rows at one column by 24 activations broadcast from memory into 24
/// accumulators, so each 24 fused multiply-adds load one vector and 24 floats (<see cref="TileGemm"/>'s dot-product
/// form loads 10 vectors for its 24). The results are <see cref="TileGemm"/>'s bits.
/// </summary>
/// <remarks>
/// <para>
/// Same bits: <see cref="TileGemm"/> sums w[k]·x[k] in lane j of an accumulator for the columns k ≡ j (mod 16) in
/// increasing k, then adds the 16 lanes in one fixed tree. Here the packed panels are <em>class-major</em>: for each j
/// the columns j, j + 16, j + 32, … follow one another (<see cref="PackWeights"/>, <see cref="PackActivations"/>), the
/// microkernel runs the 16 classes one after another, each a chain of fused multiply-adds in the same order as that
/// lane's, parks each class's 24 × 16 sums, and <see cref="Combine"/> adds the 16 classes of every result in the
/// lane tree's order. Every weight is widened to the f32 that <see cref="Dequantize.Row"/> gives. Columns must be a
/// multiple of 16 (TileGemm adds the rest one by one at the end; every model here has such rows).
/// </para>
/// <para>
/// Why: the dot-product form reads 640 bytes of vectors per 24 multiply-adds, the weights' share from L2, and on
/// Intel's cores its F16 conversion shares the FMA ports. One core of this project's Xeon (Emerald Rapids, FMAs alone
/// 175 GFLOP/s), 2048 × 2048 F16 weights against 504 activation rows: TileGemm 75 GFLOP/s (F32 weights 100), this
/// microkernel alone 140, with its packing 126–136 (see <see cref="MinRows"/>). At 32 rows (batched decode), even with
/// the weights packed once at load, it ran 0.75–0.93× TileGemm's interleaved order out of memory, so decode keeps that.
/// </para>
/// </remarks>
internal static unsafe class PanelGemm
{
    /// <summary>Activation rows per block: 24 accumulators + the weight vector (the 24 activations are broadcast from memory).</summary>
    public const int BlockRows = 24;

    /// <summary>
    /// The fewest activation rows CpuForward multiplies this way (prefill chunks; below it <see cref="TileGemm"/>).
    /// The engine on the Xeon, two threads, 4 TinyLlama layers, one prefill chunk of n rows each way alternated (8
    /// pairs, median): F32 n = 64 0.90×, 96 1.01×, 128 1.07×, 192 1.08×, 512 1.23×; F16 (which the tile kernel
    /// converts with its FMA ports there) 1.19× at 64, 1.31× at 128; BF16 1.19× at 128. One core in cache, GFLOP/s of
    /// this kernel with its packing against TileGemm on F32 weights: n = 64 95/118, 96 115/120, 128 105/122, 512 126/100.
    /// </summary>
    public const int MinRows = 128;

    /// <summary>Weight rows per packed tile: one vector.</summary>
    public const int TileRows = 16;

    /// <summary>
    /// Bytes of packed weights a work item keeps in L2 while every activation block passes (Zen 5 has 1 MiB a core, recent
    /// Xeons 2 MiB). The activation panels are read once per item, so larger items read them less often: one Xeon core,
    /// 2048 × 5632 F32 against 512 rows, items of 16 rows (360 KiB) ran 101 GFLOP/s, 32 rows (704 KiB) 120, 64 rows 92.
    /// </summary>
    const int ItemBytes = 768 * 1024;

    /// <summary>Whether this product runs here: the AVX-512 microkernel, and rows of a multiple of 16 columns.</summary>
    public static bool Supports(int cols) => TileGemm.IsSupported && cols > 0 && cols % TileRows == 0;

    /// <summary>Activation blocks for <paramref name="n"/> rows (the last one padded with zero rows).</summary>
    public static int Blocks(int n) => (n + BlockRows - 1) / BlockRows;

    /// <summary>Floats <see cref="PackActivations"/> writes for <paramref name="n"/> rows of <paramref name="cols"/>.</summary>
    public static long ActivationFloats(int n, int cols) => (long)Blocks(n) * BlockRows * cols;

    /// <summary>
    /// Weight rows per work item for rows of <paramref name="cols"/> columns: as many tiles (16 to 64 rows) as keep
    /// their packed f32 panels within <see cref="ItemBytes"/>, so that they stay in L2 while every activation block
    /// passes, and the activation panels are read once per item.
    /// </summary>
    public static int ItemRows(int cols) => Math.Clamp(ItemBytes / (cols * sizeof(float)) / TileRows * TileRows, TileRows, 4 * TileRows);

    /// <summary>Floats of packed weights <see cref="Multiply"/> needs for a work item of rows of <paramref name="cols"/> columns.</summary>
    public static long WeightFloats(int cols) => (long)ItemRows(cols) * cols;

    /// <summary>Floats of <see cref="Multiply"/>'s parked sums: 16 classes × 24 activations × 16 rows, for each of up to 4 tiles.</summary>
    public const int PartialFloats = 4 * TileRows * BlockRows * TileRows;

    /// <summary>
    /// Activation rows [24·<paramref name="block"/>, + 24) of xs (<paramref name="ldx"/> apart; rows from
    /// <paramref name="n"/> on are zeros) into the block's class-major panel at packed + 24·cols·block: for class j and
    /// step m, the 24 activations' column 16m + j, 24 floats in a row.
    /// </summary>
    public static void PackActivations(float* xs, long ldx, int n, int cols, int block, float* packed)
    {
        int steps = cols / TileRows;
        int i0 = block * BlockRows, end = Math.Min(n, i0 + BlockRows);
        float* panel = packed + (long)block * BlockRows * cols;
        long stride = (long)steps * BlockRows;
        Vector512<float>* v = stackalloc Vector512<float>[TileRows];
        for (int m = 0; m < steps; m++)
        {
            long k = (long)m * TileRows;
            // Rows i0 … i0 + 15, then i0 + 16 … i0 + 23 (and 8 zero rows): class j's activations, 16 and 8 of them.
            for (int half = 0; half < BlockRows; half += TileRows)
            {
                for (int i = 0; i < TileRows; i++)
                {
                    int row = i0 + half + i;
                    v[i] = half + i < BlockRows && row < end ? Avx512F.LoadVector512(xs + row * ldx + k) : default;
                }
                TransposeStore(v, panel + (long)m * BlockRows + half, stride, lower: half > 0);
            }
        }
    }

    /// <summary>
    /// Weight rows [<paramref name="r0"/>, + <paramref name="count"/>) (F32, F16 or BF16, <paramref name="rowBytes"/>
    /// apart) times the packed activations of n rows: ys[i·ldy + r] for r in the range. <paramref name="packedWeights"/>
    /// holds <see cref="WeightFloats"/>, <paramref name="partials"/> <see cref="PartialFloats"/> (the caller's per-thread
    /// scratch); count is at most <see cref="ItemRows"/>. Given the same matrix's <see cref="PackedFloat"/> tiles
    /// (<paramref name="fromTiles"/>, r0 a multiple of 16), the panels are copied from them and the rows are not read:
    /// half a tile is already a class-major panel of 16 rows (<see cref="PackedFloat.CopyPanel"/>). (For F32, the kernel
    /// reading the tiles in place, with no copy, ran TinyLlama's pp512 0.95× on the Xeon: three alternated pairs.)
    /// </summary>
    public static void Multiply(GgmlType type, byte* weights, long rowBytes, int r0, int count, int cols, float* packedActivations, int n,
        float* ys, int ldy, float* packedWeights, float* partials, PackedFloat? fromTiles = null)
    {
        if (count > ItemRows(cols)) throw new ArgumentOutOfRangeException(nameof(count), $"PanelGemm.Multiply: {count} rows, at most {ItemRows(cols)} for {cols} columns");
        if (fromTiles is not null && (fromTiles.Type != type || fromTiles.Columns != cols || r0 % TileRows != 0 || r0 + count > fromTiles.RowCount))
            throw new ArgumentException($"PanelGemm.Multiply: {type} rows [{r0}, {r0 + count}) of {cols} columns are not in these {fromTiles.Type} tiles", nameof(fromTiles));
        int tiles = (count + TileRows - 1) / TileRows, steps = cols / TileRows;
        for (int t = 0; t < tiles; t++)
            if (fromTiles is null)
                PackWeights(type, weights + (r0 + t * TileRows) * rowBytes, rowBytes, Math.Min(TileRows, count - t * TileRows), cols, packedWeights + (long)t * TileRows * cols);
            else
                fromTiles.CopyPanel(r0 + t * TileRows, packedWeights + (long)t * TileRows * cols);
        var parked = (Vector512<float>*)partials;
        for (int b = 0; b < Blocks(n); b++)
        {
            float* x = packedActivations + (long)b * BlockRows * cols;
            int rows = Math.Min(BlockRows, n - b * BlockRows);
            // Class by class, each tile in turn: the block's class panel stays in L1 for every tile of the item.
            for (int j = 0; j < TileRows; j++)
                for (int t = 0; t < tiles; t++)
                    Kernel(packedWeights + (long)t * TileRows * cols + (long)j * steps * TileRows, steps, x + (long)j * steps * BlockRows,
                        parked + t * TileRows * BlockRows + j);
            for (int t = 0; t < tiles; t++)
                Combine(parked + t * TileRows * BlockRows, rows, Math.Min(TileRows, count - t * TileRows), ys + (long)b * BlockRows * ldy + r0 + t * TileRows, ldy);
        }
    }

    /// <summary>
    /// <paramref name="count"/> (≤ 16) weight rows widened to f32 into a class-major tile: for class j and step m, the 16
    /// rows' column 16m + j (rows past count zero).
    /// </summary>
    static void PackWeights(GgmlType type, byte* w, long rowBytes, int count, int cols, float* packed)
    {
        switch (type)
        {
            case GgmlType.F32: PackWeights<F32Rows>(w, rowBytes, count, cols, packed); break;
            case GgmlType.F16: PackWeights<F16Rows>(w, rowBytes, count, cols, packed); break;
            case GgmlType.BF16: PackWeights<BF16Rows>(w, rowBytes, count, cols, packed); break;
            default: throw new NotSupportedException($"PanelGemm: {type} weights are not 16- or 32-bit floats");
        }
    }

    static void PackWeights<TW>(byte* w, long rowBytes, int count, int cols, float* packed) where TW : struct, IWeightRows
    {
        int steps = cols / TileRows;
        Vector512<float>* v = stackalloc Vector512<float>[TileRows];
        for (int m = 0; m < steps; m++)
        {
            long k = (long)m * TileRows;
            for (int r = 0; r < TileRows; r++) v[r] = r < count ? TW.Load(w + r * rowBytes, k) : default;
            TransposeStore(v, packed + (long)m * TileRows, (long)steps * TileRows);
        }
    }

    /// <summary>
    /// The microkernel: one class of a tile of 16 weight rows (<paramref name="steps"/> vectors) × the same class of a
    /// block of 24 activations, each of the 24 sums a chain of fused multiply-adds in increasing column; the 24
    /// vectors of sums (one lane per weight row) parked at p[16i] for activation i.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    static void Kernel(float* w, int steps, float* x, Vector512<float>* p)
    {
        Vector512<float> a0 = default, a1 = default, a2 = default, a3 = default, a4 = default, a5 = default;
        Vector512<float> a6 = default, a7 = default, a8 = default, a9 = default, a10 = default, a11 = default;
        Vector512<float> a12 = default, a13 = default, a14 = default, a15 = default, a16 = default, a17 = default;
        Vector512<float> a18 = default, a19 = default, a20 = default, a21 = default, a22 = default, a23 = default;
        for (float* end = w + (long)steps * TileRows; w < end; w += TileRows, x += BlockRows)
        {
            var b = Avx512F.LoadVector512(w);
            a0 = Avx512F.FusedMultiplyAdd(b, Vector512.Create(x[0]), a0);
            a1 = Avx512F.FusedMultiplyAdd(b, Vector512.Create(x[1]), a1);
            a2 = Avx512F.FusedMultiplyAdd(b, Vector512.Create(x[2]), a2);
            a3 = Avx512F.FusedMultiplyAdd(b, Vector512.Create(x[3]), a3);
            a4 = Avx512F.FusedMultiplyAdd(b, Vector512.Create(x[4]), a4);
            a5 = Avx512F.FusedMultiplyAdd(b, Vector512.Create(x[5]), a5);
            a6 = Avx512F.FusedMultiplyAdd(b, Vector512.Create(x[6]), a6);
            a7 = Avx512F.FusedMultiplyAdd(b, Vector512.Create(x[7]), a7);
            a8 = Avx512F.FusedMultiplyAdd(b, Vector512.Create(x[8]), a8);
            a9 = Avx512F.FusedMultiplyAdd(b, Vector512.Create(x[9]), a9);
            a10 = Avx512F.FusedMultiplyAdd(b, Vector512.Create(x[10]), a10);
            a11 = Avx512F.FusedMultiplyAdd(b, Vector512.Create(x[11]), a11);
            a12 = Avx512F.FusedMultiplyAdd(b, Vector512.Create(x[12]), a12);
            a13 = Avx512F.FusedMultiplyAdd(b, Vector512.Create(x[13]), a13);
            a14 = Avx512F.FusedMultiplyAdd(b, Vector512.Create(x[14]), a14);
            a15 = Avx512F.FusedMultiplyAdd(b, Vector512.Create(x[15]), a15);
            a16 = Avx512F.FusedMultiplyAdd(b, Vector512.Create(x[16]), a16);
            a17 = Avx512F.FusedMultiplyAdd(b, Vector512.Create(x[17]), a17);
            a18 = Avx512F.FusedMultiplyAdd(b, Vector512.Create(x[18]), a18);
            a19 = Avx512F.FusedMultiplyAdd(b, Vector512.Create(x[19]), a19);
            a20 = Avx512F.FusedMultiplyAdd(b, Vector512.Create(x[20]), a20);
            a21 = Avx512F.FusedMultiplyAdd(b, Vector512.Create(x[21]), a21);
            a22 = Avx512F.FusedMultiplyAdd(b, Vector512.Create(x[22]), a22);
            a23 = Avx512F.FusedMultiplyAdd(b, Vector512.Create(x[23]), a23);
        }
        p[0] = a0; p[16] = a1; p[32] = a2; p[48] = a3; p[64] = a4; p[80] = a5;
        p[96] = a6; p[112] = a7; p[128] = a8; p[144] = a9; p[160] = a10; p[176] = a11;
        p[192] = a12; p[208] = a13; p[224] = a14; p[240] = a15; p[256] = a16; p[272] = a17;
        p[288] = a18; p[304] = a19; p[320] = a20; p[336] = a21; p[352] = a22; p[368] = a23;
    }

    /// <summary>
    /// Each result's 16 classes added in <see cref="TileGemm"/>'s lane tree — ((s0 + s8) + (s4 + s12)) for q0 … q3,
    /// then (q0 + q1) + (q2 + q3) — for the first <paramref name="rows"/> activations and <paramref name="count"/> weight rows.
    /// </summary>
    static void Combine(Vector512<float>* parked, int rows, int count, float* ys, int ldy)
    {
        for (int i = 0; i < rows; i++) CombineClasses(parked + i * TileRows, count, ys + (long)i * ldy);
    }

    /// <summary>
    /// One result vector's 16 classes (s[0] … s[15]) added in the lane tree, its first <paramref name="count"/> lanes to
    /// y (<see cref="PackedFloat"/> shares it).
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    internal static void CombineClasses(Vector512<float>* s, int count, float* y)
    {
        var q0 = (s[0] + s[8]) + (s[4] + s[12]);
        var q1 = (s[1] + s[9]) + (s[5] + s[13]);
        var q2 = (s[2] + s[10]) + (s[6] + s[14]);
        var q3 = (s[3] + s[11]) + (s[7] + s[15]);
        var sum = (q0 + q1) + (q2 + q3);
        if (count == TileRows) Avx512F.Store(y, sum);
        else for (int r = 0; r < count; r++) y[r] = sum.GetElement(r);
    }

    /// <summary>
    /// Stores the transpose of the 16 × 16 floats in <paramref name="rows"/> (row i in rows[i]): column j to dst + j·<paramref name="stride"/>,
    /// all 16 floats, or with <paramref name="lower"/> only the first 8 (rows r8 … r15 are then zeros). Unpacks, then 128-bit shuffles, in registers.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    internal static void TransposeStore(Vector512<float>* rows, float* dst, long stride, bool lower = false)
    {
        var r0 = rows[0]; var r1 = rows[1];
        var r2 = rows[2]; var r3 = rows[3];
        var r4 = rows[4]; var r5 = rows[5];
        var r6 = rows[6]; var r7 = rows[7];
        var r8 = rows[8]; var r9 = rows[9];
        var r10 = rows[10]; var r11 = rows[11];
        var r12 = rows[12]; var r13 = rows[13];
        var r14 = rows[14]; var r15 = rows[15];
        var t0 = Avx512F.UnpackLow(r0, r1); var t1 = Avx512F.UnpackHigh(r0, r1);
        var t2 = Avx512F.UnpackLow(r2, r3); var t3 = Avx512F.UnpackHigh(r2, r3);
        var t4 = Avx512F.UnpackLow(r4, r5); var t5 = Avx512F.UnpackHigh(r4, r5);
        var t6 = Avx512F.UnpackLow(r6, r7); var t7 = Avx512F.UnpackHigh(r6, r7);
        var t8 = Avx512F.UnpackLow(r8, r9); var t9 = Avx512F.UnpackHigh(r8, r9);
        var t10 = Avx512F.UnpackLow(r10, r11); var t11 = Avx512F.UnpackHigh(r10, r11);
        var t12 = Avx512F.UnpackLow(r12, r13); var t13 = Avx512F.UnpackHigh(r12, r13);
        var t14 = Avx512F.UnpackLow(r14, r15); var t15 = Avx512F.UnpackHigh(r14, r15);
        var u0 = Avx512F.UnpackLow(t0.AsDouble(), t2.AsDouble()).AsSingle(); var u1 = Avx512F.UnpackHigh(t0.AsDouble(), t2.AsDouble()).AsSingle();
        var u2 = Avx512F.UnpackLow(t1.AsDouble(), t3.AsDouble()).AsSingle(); var u3 = Avx512F.UnpackHigh(t1.AsDouble(), t3.AsDouble()).AsSingle();
        var u4 = Avx512F.UnpackLow(t4.AsDouble(), t6.AsDouble()).AsSingle(); var u5 = Avx512F.UnpackHigh(t4.AsDouble(), t6.AsDouble()).AsSingle();
        var u6 = Avx512F.UnpackLow(t5.AsDouble(), t7.AsDouble()).AsSingle(); var u7 = Avx512F.UnpackHigh(t5.AsDouble(), t7.AsDouble()).AsSingle();
        var u8 = Avx512F.UnpackLow(t8.AsDouble(), t10.AsDouble()).AsSingle(); var u9 = Avx512F.UnpackHigh(t8.AsDouble(), t10.AsDouble()).AsSingle();
        var u10 = Avx512F.UnpackLow(t9.AsDouble(), t11.AsDouble()).AsSingle(); var u11 = Avx512F.UnpackHigh(t9.AsDouble(), t11.AsDouble()).AsSingle();
        var u12 = Avx512F.UnpackLow(t12.AsDouble(), t14.AsDouble()).AsSingle(); var u13 = Avx512F.UnpackHigh(t12.AsDouble(), t14.AsDouble()).AsSingle();
        var u14 = Avx512F.UnpackLow(t13.AsDouble(), t15.AsDouble()).AsSingle(); var u15 = Avx512F.UnpackHigh(t13.AsDouble(), t15.AsDouble()).AsSingle();
        var v0 = Avx512F.Shuffle4x128(u0, u4, 0x88); var v4 = Avx512F.Shuffle4x128(u0, u4, 0xDD);
        var v1 = Avx512F.Shuffle4x128(u1, u5, 0x88); var v5 = Avx512F.Shuffle4x128(u1, u5, 0xDD);
        var v2 = Avx512F.Shuffle4x128(u2, u6, 0x88); var v6 = Avx512F.Shuffle4x128(u2, u6, 0xDD);
        var v3 = Avx512F.Shuffle4x128(u3, u7, 0x88); var v7 = Avx512F.Shuffle4x128(u3, u7, 0xDD);
        var v8 = Avx512F.Shuffle4x128(u8, u12, 0x88); var v12 = Avx512F.Shuffle4x128(u8, u12, 0xDD);
        var v9 = Avx512F.Shuffle4x128(u9, u13, 0x88); var v13 = Avx512F.Shuffle4x128(u9, u13, 0xDD);
        var v10 = Avx512F.Shuffle4x128(u10, u14, 0x88); var v14 = Avx512F.Shuffle4x128(u10, u14, 0xDD);
        var v11 = Avx512F.Shuffle4x128(u11, u15, 0x88); var v15 = Avx512F.Shuffle4x128(u11, u15, 0xDD);
        Put(Avx512F.Shuffle4x128(v0, v8, 0x88), dst + 0 * stride, lower);
        Put(Avx512F.Shuffle4x128(v0, v8, 0xDD), dst + 8 * stride, lower);
        Put(Avx512F.Shuffle4x128(v1, v9, 0x88), dst + 1 * stride, lower);
        Put(Avx512F.Shuffle4x128(v1, v9, 0xDD), dst + 9 * stride, lower);
        Put(Avx512F.Shuffle4x128(v2, v10, 0x88), dst + 2 * stride, lower);
        Put(Avx512F.Shuffle4x128(v2, v10, 0xDD), dst + 10 * stride, lower);
        Put(Avx512F.Shuffle4x128(v3, v11, 0x88), dst + 3 * stride, lower);
        Put(Avx512F.Shuffle4x128(v3, v11, 0xDD), dst + 11 * stride, lower);
        Put(Avx512F.Shuffle4x128(v4, v12, 0x88), dst + 4 * stride, lower);
        Put(Avx512F.Shuffle4x128(v4, v12, 0xDD), dst + 12 * stride, lower);
        Put(Avx512F.Shuffle4x128(v5, v13, 0x88), dst + 5 * stride, lower);
        Put(Avx512F.Shuffle4x128(v5, v13, 0xDD), dst + 13 * stride, lower);
        Put(Avx512F.Shuffle4x128(v6, v14, 0x88), dst + 6 * stride, lower);
        Put(Avx512F.Shuffle4x128(v6, v14, 0xDD), dst + 14 * stride, lower);
        Put(Avx512F.Shuffle4x128(v7, v15, 0x88), dst + 7 * stride, lower);
        Put(Avx512F.Shuffle4x128(v7, v15, 0xDD), dst + 15 * stride, lower);
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    static void Put(Vector512<float> v, float* at, bool lower)
    {
        if (lower) Avx.Store(at, v.GetLower());
        else Avx512F.Store(at, v);
    }
}
