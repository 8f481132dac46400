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
        float scale, float* scores, float* output, bool vector512) =>
        Attend(q, heads, headDim, KvCacheDtype.F32, (byte*)keys, (byte*)values, slotStride * sizeof(float), slots, count, scale, scores,
            output, vector512);

    /// <summary>
    /// <see cref="Attend(float*, int, int, float*, float*, long, int*, int, float, float*, float*)"/> over a cache of any
    /// <paramref name="dtype"/>: <paramref name="keys"/> and <paramref name="values"/> point at this head's part of a slot's
    /// row as stored, <paramref name="slotStride"/> is a row's bytes. With 512-bit vectors (and for every f16 or Q8_0
    /// cache) the rows are copied or widened to f32 exactly (Q8_0: each value times its block's scale, as ggml
    /// dequantizes), <see cref="WideTile"/> positions at a time, into a scratch where they lie one after another and the
    /// f32 kernels read them: each element is converted once (not once per query head of the group), the score kernel
    /// over consecutive rows more than pays for the copy (<c>AttentionBenchmarks</c>), and the result is bit for bit the
    /// one over the rows in place: a score depends on its own key alone, the tiles are whole 16-position blocks, and the
    /// value sums run position by position through accumulators carried from tile to tile in <paramref name="output"/>.
    /// One query row over an f32 cache whose slots come in runs of 16 or more (a block table's blocks) is read in place
    /// instead (<see cref="InPlace"/>): the copy would serve no other row.
    /// </summary>
    public static void Attend(float* q, int heads, int headDim, KvCacheDtype dtype, byte* keys, byte* values, long slotStride, int* slots,
        int count, float scale, float* scores, float* output) =>
        Attend(q, heads, headDim, dtype, keys, values, slotStride, slots, count, scale, scores, output, Vector512.IsHardwareAccelerated);

    /// <summary>The kernel over a cache of <paramref name="dtype"/> with the 512-bit path chosen or not.</summary>
    internal static void Attend(float* q, int heads, int headDim, KvCacheDtype dtype, byte* keys, byte* values, long slotStride, int* slots,
        int count, float scale, float* scores, float* output, bool vector512)
    {
        if (dtype.Unsupported(headDim) is { } why) throw new ArgumentException(why, nameof(headDim));
        bool fast = Fast(vector512, headDim);
        if (fast || dtype != KvCacheDtype.F32)
        {
            int first = 0;
            Tiled(q, 0, 1, heads, headDim, dtype, keys, values, slotStride, slots, &first, &count, scale, scores, output, 0, fast);
            return;
        }
        // Portable f32: the rows are read where they are.
        long stride = slotStride / sizeof(float);
        Scores(q, heads, headDim, (float*)keys, stride, slots, count, scale, scores, count);
        SoftMax(heads, count, scores);
        Values(heads, headDim, (float*)values, stride, slots, count, scores, count, output, accumulate: false);
    }

    /// <summary>
    /// Attention of several query rows of one sequence (<paramref name="rows"/> tokens whose query heads are
    /// <paramref name="qStride"/> floats apart, and likewise their outputs <paramref name="outputStride"/> apart): row r sees
    /// the <paramref name="counts"/>[r] positions from index <paramref name="firsts"/>[r] of <paramref name="slots"/> (0 for
    /// all but a sliding window's rows). Each tile of key and value rows is copied or widened once for all the rows (a
    /// prefill's rows share their prefix, or most of their window), and every row's result is bit for bit
    /// <see cref="Attend(float*, int, int, KvCacheDtype, byte*, byte*, long, int*, int, float, float*, float*)"/>'s for that
    /// row alone over its own slots: a score depends on its own key alone (every one reduced by the same tree, whichever
    /// block of sixteen holds it), and each row sums its values position by position from its first. <paramref name="scores"/>
    /// holds heads × Σ counts floats.
    /// </summary>
    public static void AttendRows(float* q, long qStride, int rows, int heads, int headDim, KvCacheDtype dtype, byte* keys, byte* values,
        long slotStride, int* slots, int* firsts, int* counts, float scale, float* scores, float* output, long outputStride) =>
        AttendRows(q, qStride, rows, heads, headDim, dtype, keys, values, slotStride, slots, firsts, counts, scale, scores, output, outputStride,
            Vector512.IsHardwareAccelerated);

    /// <summary>The several-row kernel with the 512-bit path chosen or not.</summary>
    internal static void AttendRows(float* q, long qStride, int rows, int heads, int headDim, KvCacheDtype dtype, byte* keys, byte* values,
        long slotStride, int* slots, int* firsts, int* counts, float scale, float* scores, float* output, long outputStride, bool vector512)
    {
        if (dtype.Unsupported(headDim) is { } why) throw new ArgumentException(why, nameof(headDim));
        Tiled(q, qStride, rows, heads, headDim, dtype, keys, values, slotStride, slots, firsts, counts, scale, scores, output, outputStride,
            Fast(vector512, headDim));
    }

    /// <summary>
    /// Attention over rows widened (or, for f32, copied) <see cref="WideTile"/> positions at a time into consecutive f32
    /// rows, each tile serving every query row that sees any of it. Row r's scores are heads × counts[r] floats after
    /// those of the rows before it.
    /// </summary>
    static void Tiled(float* q, long qStride, int queryRows, int heads, int headDim, KvCacheDtype dtype, byte* keys, byte* values,
        long slotStride, int* slots, int* firsts, int* counts, float scale, float* scores, float* output, long outputStride, bool fast)
    {
        int start = int.MaxValue, end = 0;
        for (int r = 0; r < queryRows; r++)
        {
            start = Math.Min(start, firsts[r]);
            end = Math.Max(end, firsts[r] + counts[r]);
        }
        TilePass(values: false, q, qStride, queryRows, heads, headDim, dtype, keys, slotStride, slots, firsts, counts, start, end, scale, scores,
            output, outputStride, fast);
        {
            float* s = scores;
            for (int r = 0; r < queryRows; s += (long)heads * counts[r], r++) SoftMax(heads, counts[r], s);
        }
        TilePass(values: true, q, qStride, queryRows, heads, headDim, dtype, values, slotStride, slots, firsts, counts, start, end, scale, scores,
            output, outputStride, fast);
    }

    /// <summary>
    /// One pass of <see cref="Tiled"/> over positions [start, end) of <paramref name="slots"/>: each tile of the cache's rows
    /// (<paramref name="cache"/>: the keys, or the values) widened once, then each row's part of it — [from, to) — through
    /// the score kernel (<paramref name="values"/> false) or the weighted value sum (true; a row's first tile starts its sums).
    /// </summary>
    static void TilePass(bool values, float* q, long qStride, int queryRows, int heads, int headDim, KvCacheDtype dtype, byte* cache,
        long slotStride, int* slots, int* firsts, int* counts, int start, int end, float scale, float* scores, float* output, long outputStride,
        bool fast)
    {
        if (dtype == KvCacheDtype.F32 && fast && queryRows == 1 && LongRuns(slots + firsts[0], counts[0]))
        {
            InPlace(values, q, heads, headDim, (float*)cache, slotStride / sizeof(float), slots, firsts[0], counts[0], scale, scores, output);
            return;
        }
        float* rows = WideScratch(headDim);
        int* identity = Identity;
        for (int j0 = start; j0 < end; j0 += WideTile)
        {
            int n = Math.Min(WideTile, end - j0);
            Widen(dtype, cache, slotStride, slots + j0, n, headDim, rows, fast);
            float* s = scores;
            for (int r = 0; r < queryRows; s += (long)heads * counts[r], r++)
            {
                int from = Math.Max(j0, firsts[r]), to = Math.Min(j0 + n, firsts[r] + counts[r]);
                if (to <= from) continue;
                float* tile = rows + (long)(from - j0) * headDim, at = s + (from - firsts[r]);
                if (values)
                {
                    float* o = output + r * outputStride;
                    bool accumulate = from > firsts[r];
                    if (fast) Values512(heads, headDim, tile, headDim, to - from, at, counts[r], o, accumulate);
                    else Values(heads, headDim, tile, headDim, identity, to - from, at, counts[r], o, accumulate);
                }
                else if (fast) ScoresContiguous512(q + r * qStride, heads, headDim, tile, headDim, to - from, scale, at, counts[r]);
                else Scores(q + r * qStride, heads, headDim, tile, headDim, identity, to - from, scale, at, counts[r]);
            }
        }
    }

    /// <summary>
    /// One query row over an f32 cache (decode): the kernels read the rows where they are, run by run of consecutive
    /// slots (a block's positions), since a copy into a tile would serve no other row. The same arithmetic in the same
    /// order as over a tile — a score depends on its own key alone, the value sums run position by position — so the
    /// same bits.
    /// </summary>
    static void InPlace(bool values, float* q, int heads, int headDim, float* cache, long stride, int* slots, int first, int count, float scale,
        float* scores, float* output)
    {
        for (int j0 = first, end = first + count; j0 < end;)
        {
            int j1 = j0 + 1;
            while (j1 < end && slots[j1] == slots[j1 - 1] + 1) j1++;
            float* rows = cache + slots[j0] * stride, at = scores + (j0 - first);
            if (values) Values512(heads, headDim, rows, stride, j1 - j0, at, count, output, accumulate: j0 > first);
            else ScoresContiguous512(q, heads, headDim, rows, stride, j1 - j0, scale, at, count);
            j0 = j1;
        }
    }

    /// <summary>
    /// Whether every run of consecutive slots but the last is at least 16 long (the score kernel's block: blocks of 16
    /// or more positions). Shorter runs would send each position through the kernels' one-position tails: the tile instead.
    /// </summary>
    static bool LongRuns(int* slots, int count)
    {
        int run = 1;
        for (int j = 1; j < count; j++)
        {
            if (slots[j] == slots[j - 1] + 1) run++;
            else if (run < 16) return false;
            else run = 1;
        }
        return true;
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

    /// <summary>This thread's scratch of <see cref="WideTile"/> widened rows, 64-byte aligned (pinned, grown on demand, kept for the thread's life).</summary>
    static float* WideScratch(int headDim)
    {
        int length = WideTile * headDim + 16;
        if (t_wideScratch is null || t_wideScratch.Length < length) t_wideScratch = GC.AllocateUninitializedArray<float>(length, pinned: true);
        var p = (nint)Unsafe.AsPointer(ref System.Runtime.InteropServices.MemoryMarshal.GetArrayDataReference(t_wideScratch));
        return (float*)((p + 63) & ~(nint)63);
    }

    /// <summary>The n rows at <paramref name="slots"/> (<paramref name="stride"/> bytes apart) as consecutive f32 rows of
    /// <paramref name="hd"/>: exact (f16 infinity and NaN included; Q8_0 as ggml's <c>dequantize_row_q8_0</c>). Without
    /// <paramref name="vector512"/> (or AVX-512) the portable conversions run, which give the same values.</summary>
    static void Widen(KvCacheDtype dtype, byte* rows, long stride, int* slots, int n, int hd, float* output, bool vector512)
    {
        bool avx512 = vector512 && Avx512F.IsSupported;
        if (dtype == KvCacheDtype.F32)
        {
            // Decode reads these rows from memory: the next ones are requested while this one is copied.
            for (int j = 0; j < n; j++)
            {
                if (j + 4 < n)
                {
                    byte* ahead = rows + slots[j + 4] * stride;
                    for (int line = 0; line < hd * sizeof(float); line += 64) Sse.Prefetch0(ahead + line);
                }
                float* from = (float*)(rows + slots[j] * stride), to = output + (long)j * hd;
                if (avx512 && hd % 16 == 0)
                    for (int d = 0; d < hd; d += 16) Vector512.Load(from + d).Store(to + d);
                else new ReadOnlySpan<float>(from, hd).CopyTo(new Span<float>(to, hd));
            }
            return;
        }
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

    /// <summary>
    /// Each head's scores into probabilities: exp(s − max s) / Σ. The maximum must come off first: <see
    /// cref="TensorPrimitives.SoftMax{T}(ReadOnlySpan{T}, Span{T})"/> exponentiates the scores as they are, so a score
    /// above ~88 overflowed to ∞ and the row became NaN (a query 10× the scale of a dummy model's already did).
    /// </summary>
    static void SoftMax(int heads, int count, float* scores)
    {
        for (int h = 0; h < heads; h++)
        {
            var s = new Span<float>(scores + (long)h * count, count);
            TensorPrimitives.Subtract(s, TensorPrimitives.Max(s), s);
            TensorPrimitives.Exp(s, s);
            TensorPrimitives.Divide(s, TensorPrimitives.Sum(s), s);
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
    /// The scores sixteen positions at a time over rows laid one after another (a tile, <paramref name="hd"/> floats
    /// apart): for each head, sixteen 16-lane partial dots built with the head-dimension loop outside the sixteen
    /// positions (each 16-wide piece of q loaded once for all sixteen, the rows addressed from one pointer), reduced
    /// together by <see cref="Sum16"/> into one vector of sixteen scores. 0.59× the time of the previous kernel, which
    /// gathered the rows through the slots and ran one position's whole dot at a time, with the same products and sums,
    /// bit for bit (8 heads, 64 positions, head dimension 64). The tile must be 64-byte aligned: split loads made the
    /// whole prefill 20% slower.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    static void ScoresContiguous512(float* q, int heads, int hd, float* rows, long rowStride, int count, float scale, float* scores, int ld)
    {
        int j = 0;
        long s = rowStride;
        for (; j + 16 <= count; j += 16)
        {
            float* k = rows + j * s;
            float* qh = q;
            int h = 0;
            for (; h + 4 <= heads; h += 4, qh += 4 * hd)
                for (int p = 0; p < 16; p += 4)
                    Scores4x4(qh, hd, k + p * s, s, scale, scores + (long)h * ld + j + p, ld);
            for (; h < heads; h++, qh += hd)
            {
                var qv = Vector512.Load(qh);
                Vector512<float> a0 = qv * Vector512.Load(k), a1 = qv * Vector512.Load(k + s), a2 = qv * Vector512.Load(k + 2 * s), a3 = qv * Vector512.Load(k + 3 * s);
                Vector512<float> a4 = qv * Vector512.Load(k + 4 * s), a5 = qv * Vector512.Load(k + 5 * s), a6 = qv * Vector512.Load(k + 6 * s), a7 = qv * Vector512.Load(k + 7 * s);
                Vector512<float> a8 = qv * Vector512.Load(k + 8 * s), a9 = qv * Vector512.Load(k + 9 * s), a10 = qv * Vector512.Load(k + 10 * s), a11 = qv * Vector512.Load(k + 11 * s);
                Vector512<float> a12 = qv * Vector512.Load(k + 12 * s), a13 = qv * Vector512.Load(k + 13 * s), a14 = qv * Vector512.Load(k + 14 * s), a15 = qv * Vector512.Load(k + 15 * s);
                for (int d = 16; d < hd; d += 16)
                {
                    qv = Vector512.Load(qh + d);
                    float* kd = k + d;
                    a0 = Vector512.FusedMultiplyAdd(qv, Vector512.Load(kd), a0);
                    a1 = Vector512.FusedMultiplyAdd(qv, Vector512.Load(kd + s), a1);
                    a2 = Vector512.FusedMultiplyAdd(qv, Vector512.Load(kd + 2 * s), a2);
                    a3 = Vector512.FusedMultiplyAdd(qv, Vector512.Load(kd + 3 * s), a3);
                    a4 = Vector512.FusedMultiplyAdd(qv, Vector512.Load(kd + 4 * s), a4);
                    a5 = Vector512.FusedMultiplyAdd(qv, Vector512.Load(kd + 5 * s), a5);
                    a6 = Vector512.FusedMultiplyAdd(qv, Vector512.Load(kd + 6 * s), a6);
                    a7 = Vector512.FusedMultiplyAdd(qv, Vector512.Load(kd + 7 * s), a7);
                    a8 = Vector512.FusedMultiplyAdd(qv, Vector512.Load(kd + 8 * s), a8);
                    a9 = Vector512.FusedMultiplyAdd(qv, Vector512.Load(kd + 9 * s), a9);
                    a10 = Vector512.FusedMultiplyAdd(qv, Vector512.Load(kd + 10 * s), a10);
                    a11 = Vector512.FusedMultiplyAdd(qv, Vector512.Load(kd + 11 * s), a11);
                    a12 = Vector512.FusedMultiplyAdd(qv, Vector512.Load(kd + 12 * s), a12);
                    a13 = Vector512.FusedMultiplyAdd(qv, Vector512.Load(kd + 13 * s), a13);
                    a14 = Vector512.FusedMultiplyAdd(qv, Vector512.Load(kd + 14 * s), a14);
                    a15 = Vector512.FusedMultiplyAdd(qv, Vector512.Load(kd + 15 * s), a15);
                }
                (Sum16(a0, a1, a2, a3, a4, a5, a6, a7, a8, a9, a10, a11, a12, a13, a14, a15) * scale).Store(scores + (long)h * ld + j);
            }
        }
        for (; j < count; j++)
        {
            float* k = rows + j * s;
            float* qh = q;
            for (int h = 0; h < heads; h++, qh += hd)
                scores[(long)h * ld + j] = TreeSum(Partial(qh, k, hd)) * scale;
        }
    }

    /// <summary>
    /// Four heads' scores of four consecutive rows (<paramref name="hd"/> floats apart): the same sixteen lane-wise partial
    /// dots and <see cref="Sum16"/> tree as the one-head block — so the same bits — with each 16-wide piece of a key row
    /// loaded once for the four heads (eight loads per sixteen multiply-adds, where one head takes seventeen). Head i's
    /// four scores land at <paramref name="scores"/> + i·<paramref name="ld"/>.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    static void Scores4x4(float* q, int hd, float* k, long rowStride, float scale, float* scores, int ld)
    {
        float* q1 = q + hd, q2 = q1 + hd, q3 = q2 + hd, k1 = k + rowStride, k2 = k1 + rowStride, k3 = k2 + rowStride;
        Vector512<float> qa = Vector512.Load(q), qb = Vector512.Load(q1), qc = Vector512.Load(q2), qd = Vector512.Load(q3);
        Vector512<float> x0 = Vector512.Load(k), x1 = Vector512.Load(k1), x2 = Vector512.Load(k2), x3 = Vector512.Load(k3);
        Vector512<float> a0 = qa * x0, a1 = qa * x1, a2 = qa * x2, a3 = qa * x3;
        Vector512<float> b0 = qb * x0, b1 = qb * x1, b2 = qb * x2, b3 = qb * x3;
        Vector512<float> c0 = qc * x0, c1 = qc * x1, c2 = qc * x2, c3 = qc * x3;
        Vector512<float> d0 = qd * x0, d1 = qd * x1, d2 = qd * x2, d3 = qd * x3;
        for (int d = 16; d < hd; d += 16)
        {
            qa = Vector512.Load(q + d); qb = Vector512.Load(q1 + d); qc = Vector512.Load(q2 + d); qd = Vector512.Load(q3 + d);
            x0 = Vector512.Load(k + d); x1 = Vector512.Load(k1 + d); x2 = Vector512.Load(k2 + d); x3 = Vector512.Load(k3 + d);
            a0 = Vector512.FusedMultiplyAdd(qa, x0, a0); a1 = Vector512.FusedMultiplyAdd(qa, x1, a1);
            a2 = Vector512.FusedMultiplyAdd(qa, x2, a2); a3 = Vector512.FusedMultiplyAdd(qa, x3, a3);
            b0 = Vector512.FusedMultiplyAdd(qb, x0, b0); b1 = Vector512.FusedMultiplyAdd(qb, x1, b1);
            b2 = Vector512.FusedMultiplyAdd(qb, x2, b2); b3 = Vector512.FusedMultiplyAdd(qb, x3, b3);
            c0 = Vector512.FusedMultiplyAdd(qc, x0, c0); c1 = Vector512.FusedMultiplyAdd(qc, x1, c1);
            c2 = Vector512.FusedMultiplyAdd(qc, x2, c2); c3 = Vector512.FusedMultiplyAdd(qc, x3, c3);
            d0 = Vector512.FusedMultiplyAdd(qd, x0, d0); d1 = Vector512.FusedMultiplyAdd(qd, x1, d1);
            d2 = Vector512.FusedMultiplyAdd(qd, x2, d2); d3 = Vector512.FusedMultiplyAdd(qd, x3, d3);
        }
        var sums = Sum16(a0, a1, a2, a3, b0, b1, b2, b3, c0, c1, c2, c3, d0, d1, d2, d3) * scale;
        sums.GetLower().GetLower().Store(scores);
        sums.GetLower().GetUpper().Store(scores + ld);
        sums.GetUpper().GetLower().Store(scores + 2 * ld);
        sums.GetUpper().GetUpper().Store(scores + 3 * ld);
    }

    /// <summary>
    /// The sum of v's lanes in <see cref="Sum16"/>'s order for one vector — in each 128-bit lane (e0 + e2) + (e1 + e3),
    /// then (L0 + L1) + (L2 + L3) — so a score past the last whole block of sixteen has the bits it would have inside one:
    /// a score does not depend on where a tile, a window or a row's range starts.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    internal static float TreeSum(Vector512<float> v)
    {
        var pairs = v + Avx512F.Permute4x32(v, 0b01_00_11_10);         // lane i: e_i + e_(i xor 2)
        var quads = pairs + Avx512F.Permute4x32(pairs, 0b10_11_00_01); // lane i: (e0 + e2) + (e1 + e3) of its 128 bits
        var halves = quads + Avx512F.Shuffle4x128(quads, quads, 0b10_11_00_01); // 128-bit lane 0: L0 + L1, lane 2: L2 + L3
        return halves.ToScalar() + halves.GetUpper().ToScalar();
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
    internal static Vector512<float> Sum16(Vector512<float> a0, Vector512<float> a1, Vector512<float> a2, Vector512<float> a3,
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
    /// Four heads' sums over one 64-wide strip of the value rows (at <paramref name="values"/>, rows <paramref name="hd"/>
    /// apart; head i's weights at <paramref name="p"/> + i·<paramref name="ld"/>, its strip of the output at
    /// <paramref name="o"/> + i·<paramref name="hd"/>): sixteen accumulators, each strip of a row loaded once for the four
    /// heads. Every accumulator sums position by position as the two-head pass does, so the sums are the same bits.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    static void Values4x64(int hd, float* values, long rowStride, int count, float* p, int ld, float* o, bool accumulate)
    {
        const int W = 16;
        float* p1 = p + ld, p2 = p1 + ld, p3 = p2 + ld, o1 = o + hd, o2 = o1 + hd, o3 = o2 + hd;
        Vector512<float> a0 = default, a1 = default, a2 = default, a3 = default, b0 = default, b1 = default, b2 = default, b3 = default;
        Vector512<float> c0 = default, c1 = default, c2 = default, c3 = default, d0 = default, d1 = default, d2 = default, d3 = default;
        if (accumulate)
        {
            a0 = Vector512.Load(o); a1 = Vector512.Load(o + W); a2 = Vector512.Load(o + 2 * W); a3 = Vector512.Load(o + 3 * W);
            b0 = Vector512.Load(o1); b1 = Vector512.Load(o1 + W); b2 = Vector512.Load(o1 + 2 * W); b3 = Vector512.Load(o1 + 3 * W);
            c0 = Vector512.Load(o2); c1 = Vector512.Load(o2 + W); c2 = Vector512.Load(o2 + 2 * W); c3 = Vector512.Load(o2 + 3 * W);
            d0 = Vector512.Load(o3); d1 = Vector512.Load(o3 + W); d2 = Vector512.Load(o3 + 2 * W); d3 = Vector512.Load(o3 + 3 * W);
        }
        float* v = values;
        for (int j = 0; j < count; j++, v += rowStride)
        {
            var v0 = Vector512.Load(v);
            var v1 = Vector512.Load(v + W);
            var v2 = Vector512.Load(v + 2 * W);
            var v3 = Vector512.Load(v + 3 * W);
            var w = Vector512.Create(p[j]);
            a0 = Vector512.FusedMultiplyAdd(v0, w, a0); a1 = Vector512.FusedMultiplyAdd(v1, w, a1);
            a2 = Vector512.FusedMultiplyAdd(v2, w, a2); a3 = Vector512.FusedMultiplyAdd(v3, w, a3);
            w = Vector512.Create(p1[j]);
            b0 = Vector512.FusedMultiplyAdd(v0, w, b0); b1 = Vector512.FusedMultiplyAdd(v1, w, b1);
            b2 = Vector512.FusedMultiplyAdd(v2, w, b2); b3 = Vector512.FusedMultiplyAdd(v3, w, b3);
            w = Vector512.Create(p2[j]);
            c0 = Vector512.FusedMultiplyAdd(v0, w, c0); c1 = Vector512.FusedMultiplyAdd(v1, w, c1);
            c2 = Vector512.FusedMultiplyAdd(v2, w, c2); c3 = Vector512.FusedMultiplyAdd(v3, w, c3);
            w = Vector512.Create(p3[j]);
            d0 = Vector512.FusedMultiplyAdd(v0, w, d0); d1 = Vector512.FusedMultiplyAdd(v1, w, d1);
            d2 = Vector512.FusedMultiplyAdd(v2, w, d2); d3 = Vector512.FusedMultiplyAdd(v3, w, d3);
        }
        a0.Store(o); a1.Store(o + W); a2.Store(o + 2 * W); a3.Store(o + 3 * W);
        b0.Store(o1); b1.Store(o1 + W); b2.Store(o1 + 2 * W); b3.Store(o1 + 3 * W);
        c0.Store(o2); c1.Store(o2 + W); c2.Store(o2 + 2 * W); c3.Store(o2 + 3 * W);
        d0.Store(o3); d1.Store(o3 + W); d2.Store(o3 + 2 * W); d3.Store(o3 + 3 * W);
    }

    /// <summary>
    /// The weighted sum of a tile's value rows, laid one after another (<paramref name="hd"/> floats apart): two heads at a
    /// time, four 16-wide strips of the head per pass (each value chunk loaded once for both heads; eight independent
    /// accumulator chains keep both FMA pipes busy).
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    static void Values512(int heads, int hd, float* values, long rowStride, int count, float* scores, int ld, float* output, bool accumulate)
    {
        const int W = 16;
        int h = 0;
        for (; h + 4 <= heads && hd % (4 * W) == 0; h += 4)
            for (int d = 0; d < hd; d += 4 * W)
                Values4x64(hd, values + d, rowStride, count, scores + (long)h * ld, ld, output + (long)h * hd + d, accumulate);
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
                    float* v = values + j * rowStride + d;
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
                    var v = Vector512.Load(values + j * rowStride + d);
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
                    a = Vector512.FusedMultiplyAdd(Vector512.Load(values + j * rowStride + d), Vector512.Create(p[j]), a);
                a.Store(o + d);
            }
        }
    }
}
