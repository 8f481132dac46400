using System.Numerics.Tensors;
using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;
using TokenMill.KvCache;

namespace TokenMill.Backends.Cpu;

/// <summary>
/// Softmax attention of a few query heads that share one key/value head (grouped-query attention) over positions
/// gathered from the paged cache: <c>o_h = Σ_j softmax_j(scale · q_h·k_j) · v_j</c>. Each key and value row is read
/// once for the whole group — from memory or L2 once, from L1 for the group's other heads — and its address is
/// computed once, where one head at a time re-walks the block table and re-reads every row for each head.
/// </summary>
/// <remarks>
/// The dot products accumulate in one 16-lane f32 partial sum reduced at the end (the order of a blocked dot,
/// as ggml's vec_dot_f32), the value sum in f32 position by position; with no 512-bit vectors, or a head
/// dimension not a multiple of 16, <see cref="TensorPrimitives"/> computes the same sums in its own order.
/// </remarks>
public static unsafe class CpuAttention
{
    /// <summary>
    /// <paramref name="output"/>[h·headDim …] for each of <paramref name="heads"/> query heads (<paramref name="q"/>,
    /// rows of <paramref name="headDim"/>): attention over the <paramref name="count"/> positions whose cache slots are
    /// <paramref name="slots"/>; slot s's key is at <paramref name="keys"/> + s·<paramref name="slotStride"/> (the
    /// pointers already at this key/value head), likewise its value. <paramref name="scores"/> holds heads × count floats.
    /// </summary>
    public static void Attend(float* q, int heads, int headDim, float* keys, float* values, long slotStride, int* slots, int count,
        float scale, float* scores, float* output) =>
        Attend(q, heads, headDim, keys, values, slotStride, slots, count, scale, scores, output, Vector512.IsHardwareAccelerated);

    /// <summary>The f32 kernel with the 512-bit path chosen or not (tests run both).</summary>
    internal static void Attend(float* q, int heads, int headDim, float* keys, float* values, long slotStride, int* slots, int count,
        float scale, float* scores, float* output, bool vector512)
    {
        bool fast = Fast(vector512, headDim);
        if (fast) Scores512(q, heads, headDim, keys, slotStride, slots, count, scale, scores, count);
        else Scores(q, heads, headDim, keys, slotStride, slots, count, scale, scores, count);
        SoftMax(heads, count, scores);
        if (fast) Values512(heads, headDim, values, slotStride, slots, count, scores, count, output, accumulate: false);
        else Values(heads, headDim, values, slotStride, slots, count, scores, count, output, accumulate: false);
    }

    /// <summary>
    /// <see cref="Attend(float*, int, int, float*, float*, long, int*, int, float, float*, float*)"/> over an f16 or Q8_0
    /// cache: <paramref name="keys"/> and <paramref name="values"/> point at this head's part of a slot's row as stored,
    /// <paramref name="slotStride"/> is a row's bytes. The rows are widened to f32 exactly (Q8_0: each value times its
    /// block's scale, as ggml dequantizes), <see cref="WideTile"/> positions at a time, into a scratch the f32 kernels then
    /// read, so each element is converted once (not once per query head of the group) and the result is bit for bit the
    /// f32 kernel's on the widened rows: a score depends on its own key alone, the tiles are whole 16-position blocks, and
    /// the value sums run position by position through accumulators carried from tile to tile in <paramref name="output"/>.
    /// </summary>
    public static void Attend(float* q, int heads, int headDim, KvCacheDtype dtype, byte* keys, byte* values, long slotStride, int* slots,
        int count, float scale, float* scores, float* output) =>
        Attend(q, heads, headDim, dtype, keys, values, slotStride, slots, count, scale, scores, output, Vector512.IsHardwareAccelerated);

    /// <summary>The f16/Q8_0 kernel with the 512-bit path chosen or not.</summary>
    internal static void Attend(float* q, int heads, int headDim, KvCacheDtype dtype, byte* keys, byte* values, long slotStride, int* slots,
        int count, float scale, float* scores, float* output, bool vector512)
    {
        if (dtype == KvCacheDtype.F32) throw new ArgumentException("an f32 cache is read in place: use the float overload", nameof(dtype));
        if (dtype.Unsupported(headDim) is { } why) throw new ArgumentException(why, nameof(headDim));
        bool fast = Fast(vector512, headDim);
        float* rows = WideScratch(headDim);
        int* identity = Identity;
        for (int j0 = 0; j0 < count; j0 += WideTile)
        {
            int n = Math.Min(WideTile, count - j0);
            Widen(dtype, keys, slotStride, slots + j0, n, headDim, rows, vector512);
            if (fast) Scores512(q, heads, headDim, rows, headDim, identity, n, scale, scores + j0, count);
            else Scores(q, heads, headDim, rows, headDim, identity, n, scale, scores + j0, count);
        }
        SoftMax(heads, count, scores);
        for (int j0 = 0; j0 < count; j0 += WideTile)
        {
            int n = Math.Min(WideTile, count - j0);
            Widen(dtype, values, slotStride, slots + j0, n, headDim, rows, vector512);
            if (fast) Values512(heads, headDim, rows, headDim, identity, n, scores + j0, count, output, accumulate: j0 > 0);
            else Values(heads, headDim, rows, headDim, identity, n, scores + j0, count, output, accumulate: j0 > 0);
        }
    }

    /// <summary>Positions a tile widens at once: a multiple of 16 (the score kernel's block); 64 rows of a 128-wide head are 32 KiB.</summary>
    internal const int WideTile = 64;

    static readonly int* Identity = IdentitySlots();

    static int* IdentitySlots()
    {
        var slots = (int*)System.Runtime.InteropServices.NativeMemory.Alloc(WideTile * sizeof(int)); // once for the process
        for (int i = 0; i < WideTile; i++) slots[i] = i;
        return slots;
    }

    [ThreadStatic] static float[]? t_wideScratch;

    /// <summary>This thread's scratch of <see cref="WideTile"/> widened rows (pinned, grown on demand, kept for the thread's life).</summary>
    static float* WideScratch(int headDim)
    {
        int length = WideTile * headDim;
        if (t_wideScratch is null || t_wideScratch.Length < length) t_wideScratch = GC.AllocateUninitializedArray<float>(length, pinned: true);
        return (float*)Unsafe.AsPointer(ref System.Runtime.InteropServices.MemoryMarshal.GetArrayDataReference(t_wideScratch));
    }

    /// <summary>The n rows at <paramref name="slots"/> (<paramref name="stride"/> bytes apart) as consecutive f32 rows of
    /// <paramref name="hd"/>: exact (f16 infinity and NaN included; Q8_0 as ggml's <c>dequantize_row_q8_0</c>). Without
    /// <paramref name="vector512"/> (or AVX-512) the portable conversions run, which give the same values.</summary>
    static void Widen(KvCacheDtype dtype, byte* rows, long stride, int* slots, int n, int hd, float* output, bool vector512)
    {
        bool avx512 = vector512 && Avx512F.IsSupported;
        if (dtype == KvCacheDtype.Q8_0)
        {
            if (avx512)
            {
                // Each block: 32 int8 values times the block's f16 scale, one f32 product each (ggml's q · d, exactly).
                for (int j = 0; j < n; j++)
                {
                    byte* block = rows + slots[j] * stride;
                    float* o = output + (long)j * hd;
                    for (int d = 0; d < hd; d += 32, block += 34)
                    {
                        var scale = Vector512.Create(Quantization.Fp16.Table[*(ushort*)block]);
                        (Avx512F.ConvertToVector512Single(Avx512F.ConvertToVector512Int32(Vector128.Load((sbyte*)block + 2))) * scale).Store(o + d);
                        (Avx512F.ConvertToVector512Single(Avx512F.ConvertToVector512Int32(Vector128.Load((sbyte*)block + 18))) * scale).Store(o + d + 16);
                    }
                }
                return;
            }
            int bytes = (int)dtype.RowBytes(hd);
            for (int j = 0; j < n; j++)
                Quantization.Dequantize.Row(Models.Gguf.GgmlType.Q8_0, new ReadOnlySpan<byte>(rows + slots[j] * stride, bytes), new Span<float>(output + (long)j * hd, hd));
            return;
        }
        if (avx512 && hd % 16 == 0)
        {
            for (int j = 0; j < n; j++)
            {
                byte* row = rows + slots[j] * stride;
                float* o = output + (long)j * hd;
                for (int d = 0; d < hd; d += 16) Quantization.ExactHalves.Widen16(row + 2 * d).Store(o + d);
            }
            return;
        }
        for (int j = 0; j < n; j++)
            TensorPrimitives.ConvertToSingle(new ReadOnlySpan<Half>(rows + slots[j] * stride, hd), new Span<float>(output + (long)j * hd, hd));
    }

    static bool Fast(bool vector512, int headDim) => vector512 && Avx512F.IsSupported && headDim % Vector512<float>.Count == 0;

    static void SoftMax(int heads, int count, float* scores)
    {
        for (int h = 0; h < heads; h++)
        {
            var s = new Span<float>(scores + (long)h * count, count);
            TensorPrimitives.SoftMax(s, s);
        }
    }

    // The kernels below write or read head h's score of position j at scores[h·ld + j]: ld is the whole count, where a
    // call covers one tile of the positions.

    static void Scores(float* q, int heads, int hd, float* keys, long stride, int* slots, int count, float scale, float* scores, int ld)
    {
        for (int j = 0; j < count; j++)
        {
            var k = new ReadOnlySpan<float>(keys + slots[j] * stride, hd);
            for (int h = 0; h < heads; h++)
                scores[(long)h * ld + j] = TensorPrimitives.Dot(new ReadOnlySpan<float>(q + (long)h * hd, hd), k) * scale;
        }
    }

    static void Values(int heads, int hd, float* values, long stride, int* slots, int count, float* scores, int ld, float* output, bool accumulate)
    {
        if (!accumulate) new Span<float>(output, heads * hd).Clear();
        for (int j = 0; j < count; j++)
        {
            var v = new ReadOnlySpan<float>(values + slots[j] * stride, hd);
            for (int h = 0; h < heads; h++)
            {
                var o = new Span<float>(output + (long)h * hd, hd);
                TensorPrimitives.MultiplyAdd(v, scores[(long)h * ld + j], o, o);
            }
        }
    }

    /// <summary>
    /// The scores sixteen positions at a time: for each head, sixteen 16-lane partial dots (the key rows stay in L1
    /// across the group's heads), reduced together by <see cref="Sum16"/> into one vector of sixteen scores.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    static void Scores512(float* q, int heads, int hd, float* keys, long stride, int* slots, int count, float scale, float* scores, int ld)
    {
        int j = 0;
        for (; j + 16 <= count; j += 16)
        {
            float* k0 = keys + slots[j] * stride, k1 = keys + slots[j + 1] * stride, k2 = keys + slots[j + 2] * stride, k3 = keys + slots[j + 3] * stride;
            float* k4 = keys + slots[j + 4] * stride, k5 = keys + slots[j + 5] * stride, k6 = keys + slots[j + 6] * stride, k7 = keys + slots[j + 7] * stride;
            float* k8 = keys + slots[j + 8] * stride, k9 = keys + slots[j + 9] * stride, k10 = keys + slots[j + 10] * stride, k11 = keys + slots[j + 11] * stride;
            float* k12 = keys + slots[j + 12] * stride, k13 = keys + slots[j + 13] * stride, k14 = keys + slots[j + 14] * stride, k15 = keys + slots[j + 15] * stride;
            // The next sixteen key rows are requested now: decode's keys come from memory (a step reads every layer's
            // cache once), and the group's heads compute on these meanwhile.
            for (int next = j + 16, end = Math.Min(count, j + 32); next < end; next++)
            {
                byte* row = (byte*)(keys + slots[next] * stride);
                for (int line = 0; line < hd * sizeof(float); line += 64) Sse.Prefetch0(row + line);
            }
            float* qh = q;
            for (int h = 0; h < heads; h++, qh += hd)
            {
                var sum = Sum16(
                    Partial(qh, k0, hd), Partial(qh, k1, hd), Partial(qh, k2, hd), Partial(qh, k3, hd),
                    Partial(qh, k4, hd), Partial(qh, k5, hd), Partial(qh, k6, hd), Partial(qh, k7, hd),
                    Partial(qh, k8, hd), Partial(qh, k9, hd), Partial(qh, k10, hd), Partial(qh, k11, hd),
                    Partial(qh, k12, hd), Partial(qh, k13, hd), Partial(qh, k14, hd), Partial(qh, k15, hd));
                (sum * scale).Store(scores + (long)h * ld + j);
            }
        }
        for (; j < count; j++)
        {
            float* k = keys + slots[j] * stride;
            float* qh = q;
            for (int h = 0; h < heads; h++, qh += hd)
                scores[(long)h * ld + j] = Vector512.Sum(Partial(qh, k, hd)) * scale;
        }
    }

    /// <summary>The 16 lane-wise partial sums of q·k (hd a multiple of 16).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    static Vector512<float> Partial(float* q, float* k, int hd)
    {
        var a = Vector512.Load(q) * Vector512.Load(k);
        for (int d = 16; d < hd; d += 16)
            a = Vector512.FusedMultiplyAdd(Vector512.Load(q + d), Vector512.Load(k + d), a);
        return a;
    }

    /// <summary>
    /// Lane i of the result = the sum of a_i's 16 lanes: pairs added within 128-bit lanes (unpack), then quads
    /// (shuffle), then across the 128-bit lanes (shuffle_f32x4) — 45 operations for sixteen sums, where one
    /// horizontal sum each takes eight.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    static Vector512<float> Sum16(Vector512<float> a0, Vector512<float> a1, Vector512<float> a2, Vector512<float> a3,
        Vector512<float> a4, Vector512<float> a5, Vector512<float> a6, Vector512<float> a7,
        Vector512<float> a8, Vector512<float> a9, Vector512<float> a10, Vector512<float> a11,
        Vector512<float> a12, Vector512<float> a13, Vector512<float> a14, Vector512<float> a15)
    {
        var r0 = Quad(Pair(a0, a1), Pair(a2, a3));
        var r1 = Quad(Pair(a4, a5), Pair(a6, a7));
        var r2 = Quad(Pair(a8, a9), Pair(a10, a11));
        var r3 = Quad(Pair(a12, a13), Pair(a14, a15));
        // r_k's 128-bit lane L holds partial sums of rows 4k..4k+3; add the four lanes of each.
        var h01 = Avx512F.Shuffle4x128(r0, r1, 0x88) + Avx512F.Shuffle4x128(r0, r1, 0xDD);
        var h23 = Avx512F.Shuffle4x128(r2, r3, 0x88) + Avx512F.Shuffle4x128(r2, r3, 0xDD);
        return Avx512F.Shuffle4x128(h01, h23, 0x88) + Avx512F.Shuffle4x128(h01, h23, 0xDD);
    }

    // Per 128-bit lane: [a0+a2, b0+b2, a1+a3, b1+b3].
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    static Vector512<float> Pair(Vector512<float> a, Vector512<float> b) => Avx512F.UnpackLow(a, b) + Avx512F.UnpackHigh(a, b);

    // Per 128-bit lane, from two Pair results: [Σa, Σb, Σc, Σd] of that lane.
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    static Vector512<float> Quad(Vector512<float> ab, Vector512<float> cd) => Avx512F.Shuffle(ab, cd, 0x44) + Avx512F.Shuffle(ab, cd, 0xEE);

    /// <summary>
    /// The weighted sum of the value rows: two heads at a time, four 16-wide strips of the head per pass (each value
    /// chunk loaded once for both heads; eight independent accumulator chains keep both FMA pipes busy).
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    static void Values512(int heads, int hd, float* values, long stride, int* slots, int count, float* scores, int ld, float* output, bool accumulate)
    {
        const int W = 16;
        int h = 0;
        for (; h + 2 <= heads; h += 2)
        {
            float* p = scores + (long)h * ld, pb = p + ld;
            float* o = output + (long)h * hd, ob = o + hd;
            int d = 0;
            for (; d + 4 * W <= hd; d += 4 * W)
            {
                Vector512<float> a0 = Vector512<float>.Zero, a1 = a0, a2 = a0, a3 = a0, b0 = a0, b1 = a0, b2 = a0, b3 = a0;
                if (accumulate)
                {
                    a0 = Vector512.Load(o + d); a1 = Vector512.Load(o + d + W); a2 = Vector512.Load(o + d + 2 * W); a3 = Vector512.Load(o + d + 3 * W);
                    b0 = Vector512.Load(ob + d); b1 = Vector512.Load(ob + d + W); b2 = Vector512.Load(ob + d + 2 * W); b3 = Vector512.Load(ob + d + 3 * W);
                }
                for (int j = 0; j < count; j++)
                {
                    float* v = values + slots[j] * stride + d;
                    var v0 = Vector512.Load(v);
                    var v1 = Vector512.Load(v + W);
                    var v2 = Vector512.Load(v + 2 * W);
                    var v3 = Vector512.Load(v + 3 * W);
                    var w = Vector512.Create(p[j]);
                    var wb = Vector512.Create(pb[j]);
                    a0 = Vector512.FusedMultiplyAdd(v0, w, a0);
                    a1 = Vector512.FusedMultiplyAdd(v1, w, a1);
                    a2 = Vector512.FusedMultiplyAdd(v2, w, a2);
                    a3 = Vector512.FusedMultiplyAdd(v3, w, a3);
                    b0 = Vector512.FusedMultiplyAdd(v0, wb, b0);
                    b1 = Vector512.FusedMultiplyAdd(v1, wb, b1);
                    b2 = Vector512.FusedMultiplyAdd(v2, wb, b2);
                    b3 = Vector512.FusedMultiplyAdd(v3, wb, b3);
                }
                a0.Store(o + d);
                a1.Store(o + d + W);
                a2.Store(o + d + 2 * W);
                a3.Store(o + d + 3 * W);
                b0.Store(ob + d);
                b1.Store(ob + d + W);
                b2.Store(ob + d + 2 * W);
                b3.Store(ob + d + 3 * W);
            }
            for (; d < hd; d += W) // 16-wide strips left (head dimensions 80, 96, 112, …)
            {
                Vector512<float> x = accumulate ? Vector512.Load(o + d) : Vector512<float>.Zero, y = accumulate ? Vector512.Load(ob + d) : Vector512<float>.Zero;
                for (int j = 0; j < count; j++)
                {
                    var v = Vector512.Load(values + slots[j] * stride + d);
                    x = Vector512.FusedMultiplyAdd(v, Vector512.Create(p[j]), x);
                    y = Vector512.FusedMultiplyAdd(v, Vector512.Create(pb[j]), y);
                }
                x.Store(o + d);
                y.Store(ob + d);
            }
        }
        for (; h < heads; h++)
        {
            float* p = scores + (long)h * ld;
            float* o = output + (long)h * hd;
            for (int d = 0; d < hd; d += W)
            {
                var a = accumulate ? Vector512.Load(o + d) : Vector512<float>.Zero;
                for (int j = 0; j < count; j++)
                    a = Vector512.FusedMultiplyAdd(Vector512.Load(values + slots[j] * stride + d), Vector512.Create(p[j]), a);
                a.Store(o + d);
            }
        }
    }
}
