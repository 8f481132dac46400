using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;

namespace TokenMill.Quantization;

/// <summary>
/// The f32 matrix product behind <see cref="QuantizedDot.MatMul"/> and <see cref="QuantizedDot.MatMulRowRange"/>
/// on AVX-512: ys[i, r] = Σ_k tile[r, k]·xs[i, k] for a tile of weight rows (F32 weights in place, every other
/// type dequantized into it) and n activation rows, both row-major with k contiguous.
/// </summary>
/// <remarks>
/// <para>
/// A register-blocked microkernel in the manner of llamafile's tinyBLAS: a block of 6 activation rows × 4 weight
/// rows keeps its 24 partial sums in zmm registers (of 32) and loads 6 + 4 vectors for every 24 fused
/// multiply-adds (12 cycles at two a cycle). One Zen 5 core ran ≈ 175 GFLOP/s on 16 × 2048 tiles against 120
/// rows, where the AVX2 4 × 2 kernel ran 95 and FMAs alone 261. The k loop runs in panels of
/// <see cref="PanelColumns"/> with the 24 accumulators parked in a stack buffer between panels: a panel of the
/// 6 activation rows (12 KiB) then stays in L1 while the 16 weight rows of a block pass by, however long the rows.
/// </para>
/// <para>
/// Batch invariance: every output is computed the same way whatever the block shape that holds it — lane j of its
/// accumulator sums w[k]·x[k] for k ≡ j (mod 16) in increasing k by FMA, then the 16 lanes are added in one
/// fixed tree (<see cref="HalfSums"/>, then two pairwise steps), then the columns past the last multiple of 16 are
/// added one by one. Parking accumulators between panels stores them exactly. So a row's result does not depend
/// on n, on its position in the batch, or on which rows share its tile: bit for bit.
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
    /// Columns per k panel: 6 activation rows × 512 × 4 B = 12 KiB stay in L1 (48 KiB on Zen 5, 32–48 KiB on recent
    /// Intel) next to the weight rows streaming from L2. Measured 1.07× over no panels at 2048 columns and ≈ 1.2× at
    /// 5632 (Zen 5); panels of 256 and 1024 were slower.
    /// </summary>
    const int PanelColumns = 512;

    interface ICount { static abstract int Value { get; } }
    struct One : ICount { public static int Value => 1; }
    struct Two : ICount { public static int Value => 2; }
    struct Three : ICount { public static int Value => 3; }
    struct Four : ICount { public static int Value => 4; }
    struct Five : ICount { public static int Value => 5; }
    struct Six : ICount { public static int Value => 6; }

    /// <summary>
    /// ys[i·ldy + r] = Σ_k tile[r·cols + k]·xs[i·cols + k] for r &lt; <paramref name="count"/>, i &lt; <paramref name="n"/>.
    /// Callers check <see cref="IsSupported"/> and the extents.
    /// </summary>
    /// <remarks>
    /// SkipLocalsInit: the 6 KiB of parked accumulators need no zeroing on every call (a work item of 16 rows × 2048
    /// columns at n = 2 is only ~130 k multiply-adds); every slot is written before it is read (a panel reads
    /// only what the previous one parked).
    /// </remarks>
    [SkipLocalsInit]
    public static void Multiply(float* tile, int count, int cols, float* xs, int n, float* ys, int ldy)
    {
        Vector512<float>* parked = stackalloc Vector512<float>[BlockRows / WeightRows * ActivationRows * WeightRows];
        for (int r0 = 0; r0 < count; r0 += BlockRows)
        {
            int rows = Math.Min(BlockRows, count - r0);
            float* w = tile + (long)r0 * cols;
            int i = 0;
            for (; i + ActivationRows <= n; i += ActivationRows)
                Block<Six>(w, rows, cols, xs + (long)i * cols, ys + (long)i * ldy + r0, ldy, parked);
            float* x = xs + (long)i * cols;
            float* y = ys + (long)i * ldy + r0;
            switch (n - i)
            {
                case 5: Block<Five>(w, rows, cols, x, y, ldy, parked); break;
                case 4: Block<Four>(w, rows, cols, x, y, ldy, parked); break;
                case 3: Block<Three>(w, rows, cols, x, y, ldy, parked); break;
                case 2: Block<Two>(w, rows, cols, x, y, ldy, parked); break;
                case 1: Block<One>(w, rows, cols, x, y, ldy, parked); break;
            }
        }
    }

    /// <summary>TN activation rows against up to <see cref="BlockRows"/> weight rows, panel by panel.</summary>
    static void Block<TN>(float* w, int rows, int cols, float* x, float* y, int ldy, Vector512<float>* parked) where TN : struct, ICount
    {
        int whole = cols & ~15; // columns the vectors cover; the rest are added one by one at the end
        int k0 = 0;
        do
        {
            int k1 = Math.Min(whole, k0 + PanelColumns);
            bool first = k0 == 0, last = k1 == whole;
            int r = 0;
            for (; r + WeightRows <= rows; r += WeightRows)
                Kernel<TN, Four>(w + (long)r * cols, cols, x, k0, k1, parked + r * ActivationRows, first, last, y + r, ldy);
            for (; r < rows; r++)
                Kernel<TN, One>(w + (long)r * cols, cols, x, k0, k1, parked + r * ActivationRows, first, last, y + r, ldy);
            k0 = k1;
        }
        while (k0 < whole);
    }

    /// <summary>
    /// The microkernel: TN (1–6) activation rows × TM (1 or 4) weight rows over columns [k0, k1). The generic
    /// arguments are structs, so the JIT compiles one body per shape with the unused accumulators gone.
    /// Accumulator (i, j) is parked at parked[i·TM + j] between panels: weight row r of a block owns
    /// parked[6r .. 6r + 5], whichever kernel shape covers it.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    static void Kernel<TN, TM>(float* w0, int cols, float* x0, int k0, int k1, Vector512<float>* parked, bool first, bool last, float* y, int ldy)
        where TN : struct, ICount where TM : struct, ICount
    {
        int n = TN.Value, m = TM.Value;
        long ld = cols;
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
        float* x = x0 + k0;
        float* w = w0 + k0;
        for (long k = 0, kn = k1 - k0; k < kn; k += 16)
        {
            Vector512<float> v0 = Avx512F.LoadVector512(x + k), v1 = default, v2 = default, v3 = default, v4 = default, v5 = default;
            if (n > 1) v1 = Avx512F.LoadVector512(x + ld + k);
            if (n > 2) v2 = Avx512F.LoadVector512(x + 2 * ld + k);
            if (n > 3) v3 = Avx512F.LoadVector512(x + 3 * ld + k);
            if (n > 4) v4 = Avx512F.LoadVector512(x + 4 * ld + k);
            if (n > 5) v5 = Avx512F.LoadVector512(x + 5 * ld + k);
            var b = Avx512F.LoadVector512(w + k);
            a00 = Avx512F.FusedMultiplyAdd(b, v0, a00);
            if (n > 1) a10 = Avx512F.FusedMultiplyAdd(b, v1, a10);
            if (n > 2) a20 = Avx512F.FusedMultiplyAdd(b, v2, a20);
            if (n > 3) a30 = Avx512F.FusedMultiplyAdd(b, v3, a30);
            if (n > 4) a40 = Avx512F.FusedMultiplyAdd(b, v4, a40);
            if (n > 5) a50 = Avx512F.FusedMultiplyAdd(b, v5, a50);
            if (m > 1)
            {
                b = Avx512F.LoadVector512(w + ld + k);
                a01 = Avx512F.FusedMultiplyAdd(b, v0, a01);
                if (n > 1) a11 = Avx512F.FusedMultiplyAdd(b, v1, a11);
                if (n > 2) a21 = Avx512F.FusedMultiplyAdd(b, v2, a21);
                if (n > 3) a31 = Avx512F.FusedMultiplyAdd(b, v3, a31);
                if (n > 4) a41 = Avx512F.FusedMultiplyAdd(b, v4, a41);
                if (n > 5) a51 = Avx512F.FusedMultiplyAdd(b, v5, a51);
                b = Avx512F.LoadVector512(w + 2 * ld + k);
                a02 = Avx512F.FusedMultiplyAdd(b, v0, a02);
                if (n > 1) a12 = Avx512F.FusedMultiplyAdd(b, v1, a12);
                if (n > 2) a22 = Avx512F.FusedMultiplyAdd(b, v2, a22);
                if (n > 3) a32 = Avx512F.FusedMultiplyAdd(b, v3, a32);
                if (n > 4) a42 = Avx512F.FusedMultiplyAdd(b, v4, a42);
                if (n > 5) a52 = Avx512F.FusedMultiplyAdd(b, v5, a52);
                b = Avx512F.LoadVector512(w + 3 * ld + k);
                a03 = Avx512F.FusedMultiplyAdd(b, v0, a03);
                if (n > 1) a13 = Avx512F.FusedMultiplyAdd(b, v1, a13);
                if (n > 2) a23 = Avx512F.FusedMultiplyAdd(b, v2, a23);
                if (n > 3) a33 = Avx512F.FusedMultiplyAdd(b, v3, a33);
                if (n > 4) a43 = Avx512F.FusedMultiplyAdd(b, v4, a43);
                if (n > 5) a53 = Avx512F.FusedMultiplyAdd(b, v5, a53);
            }
        }
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
        Finish<TM>(a00, a01, a02, a03, w0, x0, cols, y);
        if (n > 1) Finish<TM>(a10, a11, a12, a13, w0, x0 + ld, cols, y + ldy);
        if (n > 2) Finish<TM>(a20, a21, a22, a23, w0, x0 + 2 * ld, cols, y + 2 * ldy);
        if (n > 3) Finish<TM>(a30, a31, a32, a33, w0, x0 + 3 * ld, cols, y + 3 * ldy);
        if (n > 4) Finish<TM>(a40, a41, a42, a43, w0, x0 + 4 * ld, cols, y + 4 * ldy);
        if (n > 5) Finish<TM>(a50, a51, a52, a53, w0, x0 + 5 * ld, cols, y + 5 * ldy);
    }

    /// <summary>
    /// One activation row's TM results: each accumulator's 16 lanes added in the fixed tree, then the columns
    /// past the last multiple of 16. Four results share the last two steps of their trees (two rounds of
    /// horizontal adds: (q0 + q1) + (q2 + q3) in every lane, as the one-result path computes).
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    static void Finish<TM>(Vector512<float> s0, Vector512<float> s1, Vector512<float> s2, Vector512<float> s3, float* w, float* x, int cols, float* y)
        where TM : struct, ICount
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
                y[j] = AddTail(sums.GetElement(j), w + (long)j * cols, x, whole, cols);
        }
        else
        {
            var q = HalfSums(s0);
            var h = Sse3.HorizontalAdd(q, q);
            y[0] = AddTail(Sse3.HorizontalAdd(h, h).ToScalar(), w, x, whole, cols);
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
    static float AddTail(float sum, float* w, float* x, int from, int cols)
    {
        for (int k = from; k < cols; k++) sum += w[k] * x[k];
        return sum;
    }
}
