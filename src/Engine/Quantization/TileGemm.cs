using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;
using TokenMill.Models.Gguf;

namespace TokenMill.Quantization;

/// <summary>
/// The f32 matrix product behind <see cref="QuantizedDot.MatMul"/> and <see cref="QuantizedDot.MatMulRowRange"/>
/// on AVX-512: ys[i, r] = Σ_k tile[r, k]·xs[i, k] for a tile of weight rows (F32 weights in place, F16 and BF16
/// converted as the microkernel loads them, every other type dequantized into it) and n activation rows, both
/// row-major with k contiguous.
/// </summary>
/// <remarks>
/// <para>
/// A register-blocked microkernel in the manner of llamafile's tinyBLAS: a block of 6 activation rows × 4 weight
/// rows keeps its 24 partial sums in zmm registers (of 32) and loads 6 + 4 vectors for every 24 fused
/// multiply-adds (12 cycles at two a cycle). One Zen 5 core ran ≈ 175 GFLOP/s on 16 × 2048 tiles against 120
/// rows, where the AVX2 4 × 2 kernel ran 95 and FMAs alone 261. The k loop runs in panels of
/// <see cref="PanelColumns"/> with the 24 accumulators parked in a stack buffer between panels: a panel of the
/// 6 activation rows (24 KiB) then stays in L1 while the 16 weight rows of a block pass by, however long the rows.
/// </para>
/// <para>
/// Batch invariance: every output is computed the same way whatever the block shape that holds it — lane j of its
/// accumulator sums w[k]·x[k] for k ≡ j (mod 16) in increasing k by FMA, then the 16 lanes are added in one
/// fixed tree (<see cref="HalfSums"/>, then two pairwise steps), then the columns past the last multiple of 16 are
/// added one by one. Parking accumulators between panels stores them exactly. So a row's result does not depend
/// on n, on its position in the batch, or on which rows share its tile: bit for bit. F16 and BF16 weights are
/// converted exactly (the f32 values <see cref="Dequantize.Row"/> gives), so converting them in the kernel changes
/// no sum either.
/// </para>
/// <para>
/// CpuForward multiplies chunks of <see cref="PanelGemm.MinRows"/> rows or more (prefill) with <see cref="PanelGemm"/>
/// instead, whose packed outer-product microkernel computes these same sums in the same order.
/// </para>
/// </remarks>
internal static unsafe class TileGemm
{
    /// <summary>Whether this kernel runs here (AVX-512F; SSE3's horizontal adds come with it).</summary>
    public static bool IsSupported => Avx512F.IsSupported && Sse3.IsSupported;

    /// <summary>Activation rows per register block: 6 × 4 accumulators + 6 activation vectors + 1 weight vector = 31 of 32 zmm.</summary>
    const int ActivationRows = 6;

    /// <summary>Weight rows per register block.</summary>
    const int WeightRows = 4;

    /// <summary>
    /// Weight rows whose accumulators one activation block keeps across k panels: 16 (the tile CpuForward hands a
    /// worker), 96 parked vectors = 6 KiB of stack.
    /// </summary>
    const int BlockRows = 16;

    /// <summary>
    /// Columns per k panel: 6 activation rows × 1024 × 4 B = 24 KiB stay in L1 (48 KiB on Zen 5, 32–48 KiB on recent
    /// Intel) next to the weight rows streaming from L2. Measured 1.07× over no panels at 2048 columns and ≈ 1.2× at
    /// 5632 (Zen 5) with panels of 512, when 1024 was slower; once the activation rows were a line further apart than
    /// a row (<see cref="QuantizedDot.PaddedStride"/>) and no longer shared L1 sets, 1024 ran 1.07–1.11× the medians
    /// of 512 on one core (16-row items of 2048 and 5632 columns, 32 and 512 activation rows, in cache) and the engine's
    /// F32 pp512 174.2 against 164.1 tok/s (three alternated runs; F16 171.0 against 165.9); 256 was slower than both.
    /// </summary>
    const int PanelColumns = 1024;

    /// <summary>
    /// The most activation rows <see cref="Interleaved"/> takes (11 blocks: 66 KiB of parked accumulators on the stack).
    /// Past it each weight's trip from memory is a small share of its work: two threads, F32 out of memory, n = 64
    /// ran 1.05× interleaved, n = 96 1.02×; prefill's chunks run as blocks.
    /// </summary>
    const int InterleavedMaxRows = 64;

    /// <summary>
    /// Whether batches of 7 to <see cref="InterleavedMaxRows"/> activation rows run <see cref="Interleaved"/> (the
    /// same bits either way; off only to compare them in tests and benchmarks).
    /// </summary>
    internal static bool InterleavesSmallBatches { get; set; } = true;

    /// <summary>
    /// ys[i·ldy + r] = Σ_k tile[r·cols + k]·xs[i·ldx + k] for r &lt; <paramref name="count"/>, i &lt; <paramref name="n"/>
    /// (<paramref name="ldx"/> ≥ cols). Callers check <see cref="IsSupported"/> and the extents. [<paramref name="ahead"/>, + <paramref name="aheadBytes"/>)
    /// are the weights the caller expects to multiply next: the activation blocks after the first ask for their lines
    /// into L2, two a step, while they reuse this tile's rows from cache (a hint; no result depends on it). Batched
    /// decode of 32 sequences with F16 weights ran 1.05× with it (F32: the same within noise).
    /// </summary>
    public static void Multiply(float* tile, int count, int cols, float* xs, int ldx, int n, float* ys, int ldy, byte* ahead = null, long aheadBytes = 0) =>
        MultiplyCore<F32Rows, F32Rows>((byte*)tile, (long)cols * sizeof(float), count, cols, xs, ldx, n, ys, ldy, new Ahead(ahead, aheadBytes));

    /// <summary>
    /// <see cref="Multiply"/> for F16 or BF16 weight rows (<paramref name="rowBytes"/> apart from
    /// <paramref name="weights"/>): the sums of dequantizing the rows into an f32 tile with
    /// <see cref="Dequantize.Row"/> and multiplying that, bit for bit, without the separate pass over the weights.
    /// </summary>
    /// <remarks>
    /// The microkernel converts 16 weights per vector as it loads them, again for every block of activation rows:
    /// two or four more instructions per 6 multiply-adds, but the rows cross memory and L2 at half the bytes, and a
    /// panel of them takes half the L1. One Zen 5 core, 16-row work items of 2048 × 2048 weights out of L3, against
    /// dequantize-then-multiply (prefetching both): F16 1.42× at 32 activation rows, 1.03× at 512, 1.9× at 8 (the
    /// pass over the weights was a larger share there); BF16 1.50× at 32, 1.22× at 512.
    /// <para>
    /// With <paramref name="xsScaled"/> the activation rows were multiplied by 2^112 (<see cref="ScaleActivations"/>)
    /// and the F16 rows are finite: the microkernel then leaves each half's exponent unrebiased
    /// (<see cref="F16UnrebiasedRows"/>), which saves the multiply that shares the FMA ports, and every sum stays the same bits.
    /// </para>
    /// </remarks>
    public static void MultiplyHalf(GgmlType type, byte* weights, long rowBytes, int count, int cols, float* xs, int ldx, int n, float* ys, int ldy,
        bool finite = false, byte* ahead = null, long aheadBytes = 0, bool xsScaled = false)
    {
        var next = new Ahead(ahead, aheadBytes);
        if (xsScaled)
        {
            if (type != GgmlType.F16 || !finite)
                throw new ArgumentException($"TileGemm.MultiplyHalf: activations scaled by 2^112 go with finite F16 weights, not {(finite ? "" : "possibly non-finite ")}{type}", nameof(xsScaled));
            MultiplyCore<F16UnrebiasedRows, F16UnrebiasedRows>(weights, rowBytes, count, cols, xs, ldx, n, ys, ldy, next);
        }
        else if (type == GgmlType.F16 && finite) MultiplyCore<F16FiniteRows, F16FiniteRows>(weights, rowBytes, count, cols, xs, ldx, n, ys, ldy, next);
        else if (type == GgmlType.F16) MultiplyCore<F16Rows, F16FiniteRows>(weights, rowBytes, count, cols, xs, ldx, n, ys, ldy, next);
        else if (type == GgmlType.BF16) MultiplyCore<BF16Rows, BF16Rows>(weights, rowBytes, count, cols, xs, ldx, n, ys, ldy, next);
        else throw new NotSupportedException($"TileGemm.MultiplyHalf: {type} is not a 16-bit float type");
    }

    /// <summary>
    /// The block loops over weight rows read by TW. TFinite reads them as TW does where they hold no infinity or NaN
    /// (<see cref="HasInfOrNaN"/>); it serves every activation block after the first.
    /// </summary>
    /// <remarks>
    /// SkipLocalsInit: the 6 KiB of parked accumulators need no zeroing on every call (a work item of 16 rows × 2048
    /// columns at n = 2 is only ~130 k multiply-adds); every slot is written before it is read (a panel reads
    /// only what the previous one parked).
    /// </remarks>
    [SkipLocalsInit]
    static void MultiplyCore<TW, TFinite>(byte* weights, long rowBytes, int count, int cols, float* xs, long ldx, int n, float* ys, int ldy, Ahead next)
        where TW : struct, IWeightRows where TFinite : struct, IWeightRows
    {
        Ahead* ahead = &next;
        if (typeof(TFinite) == typeof(TW) && n > ActivationRows && n <= InterleavedMaxRows && InterleavesSmallBatches)
        {
            Vector512<float>* all = stackalloc Vector512<float>[(n + ActivationRows - 1) / ActivationRows * BlockRows * ActivationRows];
            for (int r0 = 0; r0 < count; r0 += BlockRows)
            {
                int rows = Math.Min(BlockRows, count - r0);
                // The next tile: this call's next rows, or the rows the caller expects to multiply next.
                bool inCall = r0 + BlockRows < count;
                byte* following = inCall ? weights + (r0 + BlockRows) * rowBytes : next.Next;
                long followingBytes = inCall ? Math.Min(BlockRows, count - r0 - BlockRows) * rowBytes : Math.Min(BlockRows * rowBytes, next.End - next.Next);
                Interleaved<TW>(n, weights + r0 * rowBytes, rowBytes, rows, cols, xs, ldx, ys + r0, ldy, all, following, followingBytes);
            }
            return;
        }
        Vector512<float>* parked = stackalloc Vector512<float>[BlockRows / WeightRows * ActivationRows * WeightRows];
        for (int r0 = 0; r0 < count; r0 += BlockRows)
        {
            int rows = Math.Min(BlockRows, count - r0);
            byte* w = weights + r0 * rowBytes;
            int first = Math.Min(n, ActivationRows);
            if (typeof(TFinite) == typeof(TW) || n <= first)
            {
                Shape<TW>(n, w, rowBytes, rows, cols, xs, ldx, ys + r0, ldy, parked, prefetch: true, ahead);
                continue;
            }
            // The first activation rows bring the weights into L2; the scan then reads them from there.
            Shape<TW>(first, w, rowBytes, rows, cols, xs, ldx, ys + r0, ldy, parked, prefetch: true, ahead);
            float* x = xs + first * ldx, y = ys + (long)first * ldy + r0;
            if (HasInfOrNaN(w, rowBytes, rows, cols)) Shape<TW>(n - first, w, rowBytes, rows, cols, x, ldx, y, ldy, parked, prefetch: false, ahead);
            else Shape<TFinite>(n - first, w, rowBytes, rows, cols, x, ldx, y, ldy, parked, prefetch: false, ahead);
        }
    }

    /// <summary>
    /// n activation rows (7 to <see cref="InterleavedMaxRows"/>: batched decode) against up to <see cref="BlockRows"/>
    /// weight rows, with the activation blocks innermost: each 4-row group's panel is brought in from memory once and
    /// multiplied by every block while it is in L1, so the weights stream at an even rate over the whole tile.
    /// </summary>
    /// <remarks>
    /// <para>
    /// Why: <see cref="Shape"/>'s order multiplies the first 6 activation rows by the whole tile before the others, so
    /// that one block reads every weight from memory: for n = 32 a sixth of the work waits on all of the tile's bytes
    /// (on this project's Xeon a pass of 6 rows out of memory ran at 0.37 of its speed from L2), and a core can keep
    /// only so many lines in flight (Intel's line-fill buffers, which software prefetches take too). Here group g + 1's
    /// lines are asked for while every block multiplies group g (block b asks for rows b, b + blocks, … of it, one
    /// line per row per step), and the next tile's bytes go to L2 at the rate that spreads them over this tile's steps
    /// (<see cref="Ahead.Stride"/>). The activation panels come from L2 instead of L1, which cost nothing measurable.
    /// </para>
    /// <para>
    /// Two threads, 16-row items of 5632 × 2048 F32 matrices out of memory (8 of them), n = 32, 15 alternated pairs:
    /// 1.08× the blocked order (n = 48 and 64 1.05×; n = 8 to 16 the same within the noise); the engine's F32 batched decode of 32 sequences
    /// 1.1× (F16 the same: it streams half the bytes for the same work). Each output is still summed lane by lane in
    /// increasing k with its accumulators parked exactly between panels, so the bits are <see cref="Shape"/>'s.
    /// </para>
    /// </remarks>
    static void Interleaved<TW>(int n, byte* w, long wld, int rows, int cols, float* xs, long ldx, float* ys, int ldy, Vector512<float>* parked,
        byte* following, long followingBytes)
        where TW : struct, IWeightRows
    {
        int blocks = (n + ActivationRows - 1) / ActivationRows;
        int whole = cols & ~15;
        var next = new Ahead(following, followingBytes);
        long steps = (long)blocks * (rows / WeightRows) * (whole / 16);
        // Finish at 4/5 of the steps; at least a line every two steps, at most two a step.
        if (steps > 0) next.Stride = Math.Clamp((followingBytes * 5 + steps * 4 - 1) / (steps * 4), 32, 128);
        Ahead* ahead = following == null ? null : &next;
        int k0 = 0;
        do
        {
            int k1 = Math.Min(whole, k0 + PanelColumns);
            bool first = k0 == 0, last = k1 == whole;
            int r = 0;
            for (; r + WeightRows <= rows; r += WeightRows)
            {
                // The group after this one: the next 4 rows, the next panel's first 4, or the next tile's first 4.
                byte* pf = r + 2 * WeightRows <= rows ? w + (r + WeightRows) * wld
                    : k1 < whole ? w + (long)PanelColumns * TW.Bytes
                    : following == null ? null : following - (long)k0 * TW.Bytes;
                EveryBlock<Four, TW>(n, w + r * wld, wld, cols, xs, ldx, k0, k1, parked + r * ActivationRows, first, last, ys + r, ldy, pf, ahead);
            }
            for (; r < rows; r++)
                EveryBlock<One, TW>(n, w + r * wld, wld, cols, xs, ldx, k0, k1, parked + r * ActivationRows, first, last, ys + r, ldy, null, null);
            k0 = k1;
        }
        while (k0 < whole);
    }

    /// <summary>
    /// TM weight rows (a group of 4, or one) over columns [k0, k1) against every block of <see cref="Shape"/>'s sizes
    /// in turn; block b parks at parked + b·<see cref="BlockRows"/>·6 and asks for rows b, b + blocks, … of the group
    /// at <paramref name="pf"/>.
    /// </summary>
    static void EveryBlock<TM, TW>(int n, byte* g, long wld, int cols, float* xs, long ldx, int k0, int k1, Vector512<float>* parked, bool first, bool last,
        float* ys, int ldy, byte* pf, Ahead* ahead)
        where TM : struct, ICount where TW : struct, IWeightRows
    {
        int blocks = (n + ActivationRows - 1) / ActivationRows;
        int small = n / blocks, larger = n % blocks;
        for (int b = 0, i = 0; b < blocks; b++)
        {
            int size = b < larger ? small + 1 : small;
            int pfRows = 0;
            for (int j = b; j < WeightRows; j += blocks) pfRows |= 1 << j;
            Vector512<float>* p = parked + b * BlockRows * ActivationRows;
            float* x = xs + i * ldx, y = ys + (long)i * ldy;
            byte* f = pfRows == 0 ? null : pf;
            switch (size) // n > 6 makes blocks of 3 to 6 rows
            {
                case 6: Kernel<Six, TM, TW>(g, wld, cols, x, ldx, k0, k1, p, first, last, y, ldy, f, ahead, pfRows); break;
                case 5: Kernel<Five, TM, TW>(g, wld, cols, x, ldx, k0, k1, p, first, last, y, ldy, f, ahead, pfRows); break;
                case 4: Kernel<Four, TM, TW>(g, wld, cols, x, ldx, k0, k1, p, first, last, y, ldy, f, ahead, pfRows); break;
                case 3: Kernel<Three, TM, TW>(g, wld, cols, x, ldx, k0, k1, p, first, last, y, ldy, f, ahead, pfRows); break;
            }
            i += size;
        }
    }

    /// <summary>
    /// n activation rows against one block of weight rows: ⌈n/6⌉ blocks of as even a size as they can be (32 rows as
    /// 6, 6, 5, 5, 5, 5 rather than five of 6 and one of 2 paying the loop's cost for a third of the work; an F16 matrix
    /// scanned for inf/NaN hands its first six rows over apart, see MultiplyCore). In-process alternation, one core, 8 rows
    /// 1.05×, 32 rows against 16 × 5632 in cache 1.03×, F16 out of memory 1.02×, F32 out of memory and 512 rows the
    /// same. With <paramref name="prefetch"/> the weights are not in cache yet, and the first block prefetches them.
    /// </summary>
    static void Shape<TW>(int n, byte* w, long wld, int rows, int cols, float* xs, long ldx, float* ys, int ldy, Vector512<float>* parked, bool prefetch, Ahead* ahead)
        where TW : struct, IWeightRows
    {
        int blocks = (n + ActivationRows - 1) / ActivationRows;
        if (blocks == 0) return;
        int small = n / blocks, larger = n % blocks; // e.g. 32 rows: 6, 6, 5, 5, 5, 5 rather than 6 × 5 and 2
        for (int b = 0, i = 0; b < blocks; b++)
        {
            int size = b < larger ? small + 1 : small;
            Sized<TW>(size, w, wld, rows, cols, xs + i * ldx, ldx, ys + (long)i * ldy, ldy, parked, prefetch && i == 0, ahead);
            i += size;
        }
    }

    /// <summary>One block of <paramref name="size"/> (0–6) activation rows.</summary>
    static void Sized<TW>(int size, byte* w, long wld, int rows, int cols, float* x, long ldx, float* y, int ldy, Vector512<float>* parked, bool prefetch, Ahead* ahead)
        where TW : struct, IWeightRows
    {
        switch (size)
        {
            case 6: Block<Six, TW>(w, wld, rows, cols, x, ldx, y, ldy, parked, prefetch, ahead); break;
            case 5: Block<Five, TW>(w, wld, rows, cols, x, ldx, y, ldy, parked, prefetch, ahead); break;
            case 4: Block<Four, TW>(w, wld, rows, cols, x, ldx, y, ldy, parked, prefetch, ahead); break;
            case 3: Block<Three, TW>(w, wld, rows, cols, x, ldx, y, ldy, parked, prefetch, ahead); break;
            case 2: Block<Two, TW>(w, wld, rows, cols, x, ldx, y, ldy, parked, prefetch, ahead); break;
            case 1: Block<One, TW>(w, wld, rows, cols, x, ldx, y, ldy, parked, prefetch, ahead); break;
        }
    }

    /// <summary>
    /// TN activation rows against up to <see cref="BlockRows"/> weight rows, panel by panel. With
    /// <paramref name="prefetch"/> (the first activation block, which brings the rows in from memory) the kernel on
    /// 4 weight rows prefetches the next 4 rows' same columns, or the next panel of the first 4 after the last group:
    /// a panel's worth of multiply-adds ahead of their use, enough to cover a DRAM access. One Zen 5 core, 2048 × 2048
    /// out of L3 at 32 activation rows: 1.09× for F32, 1.12× for F16; 1.2–1.3× at 8 rows.
    /// </summary>
    static void Block<TN, TW>(byte* w, long wld, int rows, int cols, float* x, long ldx, float* y, int ldy, Vector512<float>* parked, bool prefetch, Ahead* ahead)
        where TN : struct, ICount where TW : struct, IWeightRows
    {
        int whole = cols & ~15; // columns the vectors cover; the rest are added one by one at the end
        int k0 = 0;
        do
        {
            int k1 = Math.Min(whole, k0 + PanelColumns);
            bool first = k0 == 0, last = k1 == whole;
            int r = 0;
            for (; r + WeightRows <= rows; r += WeightRows)
            {
                byte* pf = !prefetch ? null : r + 2 * WeightRows <= rows ? w + (r + WeightRows) * wld : w + (long)PanelColumns * TW.Bytes;
                Kernel<TN, Four, TW>(w + r * wld, wld, cols, x, ldx, k0, k1, parked + r * ActivationRows, first, last, y + r, ldy, pf, prefetch ? null : ahead);
            }
            for (; r < rows; r++)
                Kernel<TN, One, TW>(w + r * wld, wld, cols, x, ldx, k0, k1, parked + r * ActivationRows, first, last, y + r, ldy, null, null);
            k0 = k1;
        }
        while (k0 < whole);
    }

    /// <summary>
    /// The microkernel: TN (1–6) activation rows × TM (1 or 4) weight rows over columns [k0, k1). The generic
    /// arguments are structs, so the JIT compiles one body per shape with the unused accumulators gone.
    /// Accumulator (i, j) is parked at parked[i·TM + j] between panels: weight row r of a block owns
    /// parked[6r .. 6r + 5], whichever kernel shape covers it. Where <paramref name="pf"/> is not null, the lines at pf +
    /// the columns' offset in 4 rows <paramref name="wld"/> apart (those whose bits <paramref name="pfRows"/> sets) are
    /// prefetched into L1 as the loop goes; where <paramref name="ahead"/> is not null, its lines into L2.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    static void Kernel<TN, TM, TW>(byte* w0, long wld, int cols, float* x0, long ldx, int k0, int k1, Vector512<float>* parked, bool first, bool last, float* y, int ldy, byte* pf, Ahead* ahead, int pfRows = 0b1111)
        where TN : struct, ICount where TM : struct, ICount where TW : struct, IWeightRows
    {
        int n = TN.Value, m = TM.Value;
        long ld = ldx;
        Vector512<float> a00 = default, a01 = default, a02 = default, a03 = default;
        Vector512<float> a10 = default, a11 = default, a12 = default, a13 = default;
        Vector512<float> a20 = default, a21 = default, a22 = default, a23 = default;
        Vector512<float> a30 = default, a31 = default, a32 = default, a33 = default;
        Vector512<float> a40 = default, a41 = default, a42 = default, a43 = default;
        Vector512<float> a50 = default, a51 = default, a52 = default, a53 = default;
        if (!first)
        {
            a00 = parked[0]; if (m > 1) { a01 = parked[1]; a02 = parked[2]; a03 = parked[3]; }
            if (n > 1) { a10 = parked[1 * m]; if (m > 1) { a11 = parked[1 * m + 1]; a12 = parked[1 * m + 2]; a13 = parked[1 * m + 3]; } }
            if (n > 2) { a20 = parked[2 * m]; if (m > 1) { a21 = parked[2 * m + 1]; a22 = parked[2 * m + 2]; a23 = parked[2 * m + 3]; } }
            if (n > 3) { a30 = parked[3 * m]; if (m > 1) { a31 = parked[3 * m + 1]; a32 = parked[3 * m + 2]; a33 = parked[3 * m + 3]; } }
            if (n > 4) { a40 = parked[4 * m]; if (m > 1) { a41 = parked[4 * m + 1]; a42 = parked[4 * m + 2]; a43 = parked[4 * m + 3]; } }
            if (n > 5) { a50 = parked[5 * m]; if (m > 1) { a51 = parked[5 * m + 1]; a52 = parked[5 * m + 2]; a53 = parked[5 * m + 3]; } }
        }
        long ldb = ld * sizeof(float), ld2 = 2 * ldb, wld2 = 2 * wld;
        byte* xa = (byte*)(x0 + k0), xb = xa + 3 * ldb;
        byte* wa = w0 + (long)k0 * TW.Bytes, wb = wa + wld2;
        byte* p = pf == null ? null : pf + (long)k0 * TW.Bytes;
        byte* s = null, se = null;
        long stride = 0;
        if (ahead != null) { s = ahead->Next; se = ahead->End; stride = ahead->Stride; }
        for (byte* end = xa + (long)(k1 - k0) * sizeof(float); xa < end; xa += 64, xb += 64, wa += 16 * TW.Bytes, wb += 16 * TW.Bytes)
        {
            Vector512<float> v0 = Avx512F.LoadVector512((float*)xa), v1 = default, v2 = default, v3 = default, v4 = default, v5 = default;
            if (n > 1) v1 = Avx512F.LoadVector512((float*)(xa + ldb));
            if (n > 2) v2 = Avx512F.LoadVector512((float*)(xa + ld2));
            if (n > 3) v3 = Avx512F.LoadVector512((float*)xb);
            if (n > 4) v4 = Avx512F.LoadVector512((float*)(xb + ldb));
            if (n > 5) v5 = Avx512F.LoadVector512((float*)(xb + ld2));
            if (p != null)
            {
                if ((pfRows & 1) != 0) Sse.Prefetch0(p);
                if ((pfRows & 2) != 0) Sse.Prefetch0(p + wld);
                if ((pfRows & 4) != 0) Sse.Prefetch0(p + wld2);
                if ((pfRows & 8) != 0) Sse.Prefetch0(p + wld2 + wld);
                p += 16 * TW.Bytes;
            }
            if (s < se)
            {
                Sse.Prefetch1(s);
                if (stride > 64) Sse.Prefetch1(s + 64);
                s += stride;
            }
            var b = TW.Load(wa, 0);
            a00 = Avx512F.FusedMultiplyAdd(b, v0, a00);
            if (n > 1) a10 = Avx512F.FusedMultiplyAdd(b, v1, a10);
            if (n > 2) a20 = Avx512F.FusedMultiplyAdd(b, v2, a20);
            if (n > 3) a30 = Avx512F.FusedMultiplyAdd(b, v3, a30);
            if (n > 4) a40 = Avx512F.FusedMultiplyAdd(b, v4, a40);
            if (n > 5) a50 = Avx512F.FusedMultiplyAdd(b, v5, a50);
            if (m > 1)
            {
                b = TW.Load(wa + wld, 0);
                a01 = Avx512F.FusedMultiplyAdd(b, v0, a01);
                if (n > 1) a11 = Avx512F.FusedMultiplyAdd(b, v1, a11);
                if (n > 2) a21 = Avx512F.FusedMultiplyAdd(b, v2, a21);
                if (n > 3) a31 = Avx512F.FusedMultiplyAdd(b, v3, a31);
                if (n > 4) a41 = Avx512F.FusedMultiplyAdd(b, v4, a41);
                if (n > 5) a51 = Avx512F.FusedMultiplyAdd(b, v5, a51);
                b = TW.Load(wb, 0);
                a02 = Avx512F.FusedMultiplyAdd(b, v0, a02);
                if (n > 1) a12 = Avx512F.FusedMultiplyAdd(b, v1, a12);
                if (n > 2) a22 = Avx512F.FusedMultiplyAdd(b, v2, a22);
                if (n > 3) a32 = Avx512F.FusedMultiplyAdd(b, v3, a32);
                if (n > 4) a42 = Avx512F.FusedMultiplyAdd(b, v4, a42);
                if (n > 5) a52 = Avx512F.FusedMultiplyAdd(b, v5, a52);
                b = TW.Load(wb + wld, 0);
                a03 = Avx512F.FusedMultiplyAdd(b, v0, a03);
                if (n > 1) a13 = Avx512F.FusedMultiplyAdd(b, v1, a13);
                if (n > 2) a23 = Avx512F.FusedMultiplyAdd(b, v2, a23);
                if (n > 3) a33 = Avx512F.FusedMultiplyAdd(b, v3, a33);
                if (n > 4) a43 = Avx512F.FusedMultiplyAdd(b, v4, a43);
                if (n > 5) a53 = Avx512F.FusedMultiplyAdd(b, v5, a53);
            }
        }
        if (ahead != null) ahead->Next = s;
        if (!last)
        {
            parked[0] = a00; if (m > 1) { parked[1] = a01; parked[2] = a02; parked[3] = a03; }
            if (n > 1) { parked[1 * m] = a10; if (m > 1) { parked[1 * m + 1] = a11; parked[1 * m + 2] = a12; parked[1 * m + 3] = a13; } }
            if (n > 2) { parked[2 * m] = a20; if (m > 1) { parked[2 * m + 1] = a21; parked[2 * m + 2] = a22; parked[2 * m + 3] = a23; } }
            if (n > 3) { parked[3 * m] = a30; if (m > 1) { parked[3 * m + 1] = a31; parked[3 * m + 2] = a32; parked[3 * m + 3] = a33; } }
            if (n > 4) { parked[4 * m] = a40; if (m > 1) { parked[4 * m + 1] = a41; parked[4 * m + 2] = a42; parked[4 * m + 3] = a43; } }
            if (n > 5) { parked[5 * m] = a50; if (m > 1) { parked[5 * m + 1] = a51; parked[5 * m + 2] = a52; parked[5 * m + 3] = a53; } }
            return;
        }
        Finish<TM, TW>(a00, a01, a02, a03, w0, wld, x0, cols, y);
        if (n > 1) Finish<TM, TW>(a10, a11, a12, a13, w0, wld, x0 + ld, cols, y + ldy);
        if (n > 2) Finish<TM, TW>(a20, a21, a22, a23, w0, wld, x0 + 2 * ld, cols, y + 2 * ldy);
        if (n > 3) Finish<TM, TW>(a30, a31, a32, a33, w0, wld, x0 + 3 * ld, cols, y + 3 * ldy);
        if (n > 4) Finish<TM, TW>(a40, a41, a42, a43, w0, wld, x0 + 4 * ld, cols, y + 4 * ldy);
        if (n > 5) Finish<TM, TW>(a50, a51, a52, a53, w0, wld, x0 + 5 * ld, cols, y + 5 * ldy);
    }

    /// <summary>
    /// One activation row's TM results: each accumulator's 16 lanes added in the fixed tree, then the columns
    /// past the last multiple of 16. Four results share the last two steps of their trees (two rounds of
    /// horizontal adds: (q0 + q1) + (q2 + q3) in every lane, as the one-result path computes).
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    static void Finish<TM, TW>(Vector512<float> s0, Vector512<float> s1, Vector512<float> s2, Vector512<float> s3, byte* w, long wld, float* x, int cols, float* y)
        where TM : struct, ICount where TW : struct, IWeightRows
    {
        int whole = cols & ~15;
        if (TM.Value == 4)
        {
            var sums = Sse3.HorizontalAdd(Sse3.HorizontalAdd(HalfSums(s0), HalfSums(s1)), Sse3.HorizontalAdd(HalfSums(s2), HalfSums(s3)));
            if (whole == cols)
            {
                Sse.Store(y, sums);
                return;
            }
            for (int j = 0; j < 4; j++)
                y[j] = AddTail<TW>(sums.GetElement(j), w + j * wld, x, whole, cols);
        }
        else
        {
            var q = HalfSums(s0);
            var h = Sse3.HorizontalAdd(q, q);
            y[0] = AddTail<TW>(Sse3.HorizontalAdd(h, h).ToScalar(), w, x, whole, cols);
        }
    }

    /// <summary>The first two levels of the lane tree: lane j + lane j+8, then + the same of lane j+4 (j &lt; 4).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    static Vector128<float> HalfSums(Vector512<float> v)
    {
        var a = v.GetLower() + v.GetUpper();
        return a.GetLower() + a.GetUpper();
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    static float AddTail<TW>(float sum, byte* w, float* x, int from, int cols) where TW : struct, IWeightRows
    {
        for (int k = from; k < cols; k++) sum += TW.Scalar(w, k) * x[k];
        return sum;
    }

    /// <summary>The lines of the next work item's weights still to be asked into L2: [Next, End).</summary>
    struct Ahead(byte* start, long bytes)
    {
        public byte* Next = start;
        public byte* End = start + bytes;

        /// <summary>Bytes the lines asked for advance a step: 128 (two lines) unless <see cref="Interleaved"/> spreads them (32–128).</summary>
        public long Stride = 128;
    }

    /// <summary>2^112: f32's exponent bias less f16's, the factor <see cref="ScaleActivations"/> applies.</summary>
    public const float HalfRebias = 5.192296858534828e33f;

    /// <summary>
    /// dst = src·2^(112 − <paramref name="lift"/>) for <see cref="MultiplyHalf"/>'s <c>xsScaled</c>, exactly (a power of
    /// two): false, with dst unspecified, where some |src[k]| ≥ 2^(16 + lift) (its product would overflow), or is
    /// infinite or NaN. <paramref name="lift"/> is 0 for a matrix as it is, <see cref="LiftedF16.Lift"/> for one read from
    /// its lifted copy.
    /// </summary>
    public static bool ScaleActivations(float* src, float* dst, int length, int lift = 0)
    {
        if (lift is < 0 or > LiftedF16.Lift) throw new ArgumentOutOfRangeException(nameof(lift), $"TileGemm.ScaleActivations: a lift of {lift}");
        int limitBits = (127 + 16 + lift) << 23; // 2^(16 + lift); infinities and NaNs compare above it too
        float factor = MathF.ScaleB(1f, 112 - lift);
        var limit = Vector512.Create(limitBits);
        var scale = Vector512.Create(factor);
        var large = Vector512<int>.Zero;
        int k = 0;
        for (; k + 16 <= length; k += 16)
        {
            var v = Vector512.Load(src + k);
            large |= Vector512.GreaterThanOrEqual(v.AsInt32() & Vector512.Create(0x7FFFFFFF), limit);
            Vector512.Store(v * scale, dst + k);
        }
        bool fits = large == Vector512<int>.Zero;
        for (; k < length; k++)
        {
            fits &= (BitConverter.SingleToInt32Bits(src[k]) & 0x7FFFFFFF) < limitBits;
            dst[k] = src[k] * factor;
        }
        return fits;
    }

    /// <summary>Whether any of the f16 rows has an all-ones exponent (infinity or NaN).</summary>
    internal static bool HasInfOrNaN(byte* w, long rowBytes, int rows, int cols)
    {
        var exponent = Vector512.Create((ushort)0x7C00);
        var max = Vector512<ushort>.Zero;
        for (int r = 0; r < rows; r++)
        {
            ushort* h = (ushort*)(w + r * rowBytes);
            int k = 0;
            for (; k + 32 <= cols; k += 32) max = Vector512.Max(max, Vector512.Load(h + k) & exponent);
            for (; k < cols; k++)
                if ((h[k] & 0x7C00) == 0x7C00) return true;
        }
        return Vector512.EqualsAny(max, exponent);
    }
}
