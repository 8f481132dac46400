using System.Diagnostics.CodeAnalysis;
using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;
using TokenMill.Models.Gguf;
using static TokenMill.Quantization.BlockFormats;

namespace TokenMill.Quantization;

/// <summary>
/// Integer dot products of Q4_K / Q6_K weight rows with the activations <see cref="IntegerDot.QuantizeActivations"/>
/// makes (int8 blocks of 32, an f32 scale each): the K-quants' sub-blocks line up with those blocks, so every
/// product of a sub-block is an exact int32 sum, scaled once in f32.
/// <list type="bullet">
/// <item>Q4_K (8 sub-blocks of 32, 6-bit scale sc and min m, quants 0…15): over activation block j,
/// Σ w·a = d·sc·da·Σ(q·aq) − dmin·m·da·Σaq. The quants are unsigned, so Σ q·aq is one <c>vpdpbusd</c> (or
/// <c>vpmaddubsw</c> + <c>vpmaddwd</c>: 15·127·2 fits int16); Σaq, the activation block sums
/// (<see cref="BlockSums"/>), are computed once per activation row, and the min term of a super-block is one
/// 8-lane product m·Σaq·da.</item>
/// <item>Q6_K (16 sub-blocks of 16, int8 scales, quants q − 32 in −32…31): two sub-blocks per activation block.
/// |w| × (aq · sign w) by <c>vpmaddubsw</c> (32·127·2 fits int16), then <c>vpmaddwd</c> with the two sub-block
/// scales as int16 gives int32 lanes sc·Σ w·aq, exact (|sum| ≤ 128·4·32·127 per lane).</item>
/// </list>
/// Each activation row's arithmetic is the same in the one-row and the four-row kernels and whatever its batch
/// mates (the f32 accumulators get the same values in the same order), so a row's result does not depend on
/// the batch. The independent reference is the f64 dot of the dequantized weights with the dequantized
/// activations (the tests).
/// </summary>
internal static unsafe class IntegerDotK
{
    /// <summary>Whether the kernels run here (AVX2 + FMA; AVX-VNNI's vpdpbusd is used for Q4_K when present).</summary>
    public static bool IsSupported => Avx2.IsSupported && Fma.IsSupported;

    /// <summary>Whether <paramref name="type"/> has a kernel here.</summary>
    public static bool HasKernel(GgmlType type) => type is GgmlType.Q4_K or GgmlType.Q6_K;

    /// <summary>Whether <paramref name="type"/>'s kernel needs the activation <see cref="BlockSums"/> (Q4_K's mins).</summary>
    public static bool NeedsBlockSums(GgmlType type) => type == GgmlType.Q4_K;

    /// <summary>s[b] = Σ q[32b … 32b + 31] for one quantized activation row (a whole number of blocks).</summary>
    public static void BlockSums(ReadOnlySpan<sbyte> q, Span<int> s)
    {
        int blocks = q.Length / QK;
        if (q.Length % QK != 0 || s.Length < blocks) throw new ArgumentException($"IntegerDotK.BlockSums: {q.Length} quants need {q.Length / QK} sums, not {s.Length}");
        fixed (sbyte* p = q)
        {
            for (int b = 0; b < blocks; b++)
            {
                if (Avx2.IsSupported)
                {
                    // Σ of 32 signed bytes: widen to int16, pair-add with ones (vpmaddwd), fold the 8 lanes.
                    var v = Avx.LoadVector256(p + b * QK);
                    var lo = Avx2.ConvertToVector256Int16(v.GetLower());
                    var hi = Avx2.ConvertToVector256Int16(v.GetUpper());
                    var ones = Vector256.Create((short)1);
                    s[b] = Vector256.Sum(Avx2.Add(Avx2.MultiplyAddAdjacent(lo, ones), Avx2.MultiplyAddAdjacent(hi, ones)));
                }
                else
                {
                    int sum = 0;
                    for (int j = 0; j < QK; j++) sum += p[b * QK + j];
                    s[b] = sum;
                }
            }
        }
    }

    // ---- the u8 × s8 block dot: AVX-VNNI or AVX2 ----------------------------------------------------------

    /// <summary>Eight int32 sums of 4 products u·s each (u ≤ 15 here, so the AVX2 form cannot saturate).</summary>
    internal interface IByteDot
    {
        static abstract Vector256<int> Dot(Vector256<byte> u, Vector256<sbyte> s);
    }

    /// <summary>vpdpbusd.</summary>
    internal readonly struct Vnni : IByteDot
    {
        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        public static Vector256<int> Dot(Vector256<byte> u, Vector256<sbyte> s) => AvxVnni.MultiplyWideningAndAdd(Vector256<int>.Zero, u, s);
    }

    /// <summary>vpmaddubsw + vpmaddwd with ones: the same sums on AVX2 alone.</summary>
    internal readonly struct Avx2Dot : IByteDot
    {
        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        public static Vector256<int> Dot(Vector256<byte> u, Vector256<sbyte> s) =>
            Avx2.MultiplyAddAdjacent(Avx2.MultiplyAddAdjacent(u, s), Vector256.Create((short)1));
    }

    // ---- Q4_K ------------------------------------------------------------------------------------------------

    /// <summary>
    /// The 6-bit scales and mins of a Q4_K super-block (<see cref="BlockFormats.ScaleMinK4"/> for all eight at once,
    /// as llama.cpp unpacks them: three 32-bit words reshuffled so that bytes 0…7 are the scales and 8…15 the mins).
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    static (Vector256<int> Scales, Vector256<int> Mins) ScalesMins(byte* p)
    {
        const uint Low6 = 0x3F3F3F3F, Low4 = 0x0F0F0F0F, Low2 = 0x03030303;
        uint u0 = Unsafe.ReadUnaligned<uint>(p), u1 = Unsafe.ReadUnaligned<uint>(p + 4), u2 = Unsafe.ReadUnaligned<uint>(p + 8);
        uint s0 = u0 & Low6, s1 = (u2 & Low4) | (((u0 >> 6) & Low2) << 4);
        uint m0 = u1 & Low6, m1 = ((u2 >> 4) & Low4) | (((u1 >> 6) & Low2) << 4);
        var scales = Avx2.ConvertToVector256Int32(Vector128.CreateScalar(s0 | (ulong)s1 << 32).AsByte());
        var mins = Avx2.ConvertToVector256Int32(Vector128.CreateScalar(m0 | (ulong)m1 << 32).AsByte());
        return (scales, mins);
    }

    /// <summary>Lane <paramref name="j"/> of <paramref name="v"/> in every lane.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    static Vector256<float> Lane(Vector256<float> v, int j) => Avx2.PermuteVar8x32(v, Vector256.Create(j));

    // Per activation row and super-block: sl = d·sc·da (8 lanes, one per sub-block), then for each sub-block j
    // lo/hi += f32(Σ q·aq) · sl[j] (low-nibble sub-blocks 0, 2, 4, 6 into lo, high-nibble ones into hi: two FMA
    // chains), and mn += f32(m·Σaq)·da · dmin. The result is Σ(lo + hi) − Σ mn. DotQ4_K and DotQ4_K4 do exactly this.

    /// <summary>One Q4_K weight row × one activation row (<paramref name="a"/> quants, <paramref name="ad"/> scales, <paramref name="asum"/> block sums).</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public static float DotQ4_K<TDot>(byte* w, sbyte* a, float* ad, int* asum, int superBlocks) where TDot : struct, IByteDot
    {
        float* f16 = Fp16.Table;
        var mask = Vector256.Create((byte)0xF);
        Vector256<float> lo = Vector256<float>.Zero, hi = lo, mn = lo;
        for (int s = 0; s < superBlocks; s++, w += Q4_KBytes, a += QK_K, ad += 8, asum += 8)
        {
            float d = f16[Unsafe.ReadUnaligned<ushort>(w)], dmin = f16[Unsafe.ReadUnaligned<ushort>(w + 2)];
            var (sc, m) = ScalesMins(w + 4);
            var da = Avx.LoadVector256(ad);
            var sl = Avx.Multiply(Avx.Multiply(Avx.ConvertToVector256Single(sc), da), Vector256.Create(d));
            mn = Fma.MultiplyAdd(Avx.Multiply(Avx.ConvertToVector256Single(Avx2.MultiplyLow(m, Avx.LoadVector256(asum))), da), Vector256.Create(dmin), mn);
            for (int c = 0; c < 4; c++)
            {
                var qs = Avx.LoadVector256(w + 16 + 32 * c);
                var ql = Avx2.And(qs, mask);
                var qh = Avx2.And(Avx2.ShiftRightLogical(qs.AsUInt16(), 4).AsByte(), mask);
                lo = Fma.MultiplyAdd(Avx.ConvertToVector256Single(TDot.Dot(ql, Avx.LoadVector256(a + 64 * c))), Lane(sl, 2 * c), lo);
                hi = Fma.MultiplyAdd(Avx.ConvertToVector256Single(TDot.Dot(qh, Avx.LoadVector256(a + 64 * c + 32))), Lane(sl, 2 * c + 1), hi);
            }
        }
        return Vector256.Sum(lo + hi) - Vector256.Sum(mn);
    }

    /// <summary>
    /// One Q4_K weight row × four activation rows (row k at <paramref name="a"/> + k·<paramref name="stride"/>, its scales and
    /// sums at k·<paramref name="dStride"/>), results to <paramref name="y"/> + k·<paramref name="yStride"/>: the quants and
    /// sub-block scales are decoded once for all four, each row's arithmetic is <see cref="DotQ4_K{TDot}"/>'s.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public static void DotQ4_K4<TDot>(byte* w, sbyte* a, int stride, float* ad, int* asum, int dStride, int superBlocks, float* y, int yStride)
        where TDot : struct, IByteDot
    {
        float* f16 = Fp16.Table;
        var mask = Vector256.Create((byte)0xF);
        Vector256<float> lo0 = Vector256<float>.Zero, lo1 = lo0, lo2 = lo0, lo3 = lo0, hi0 = lo0, hi1 = lo0, hi2 = lo0, hi3 = lo0;
        Vector256<float> mn0 = lo0, mn1 = lo0, mn2 = lo0, mn3 = lo0;
        sbyte* a1 = a + stride, a2 = a1 + stride, a3 = a2 + stride;
        for (int s = 0; s < superBlocks; s++, w += Q4_KBytes)
        {
            float d = f16[Unsafe.ReadUnaligned<ushort>(w)], dmin = f16[Unsafe.ReadUnaligned<ushort>(w + 2)];
            var (sci, mi) = ScalesMins(w + 4);
            var sc = Avx.ConvertToVector256Single(sci);
            var vd = Vector256.Create(d);
            var vdmin = Vector256.Create(dmin);
            int o = s * 8;
            var da0 = Avx.LoadVector256(ad + o);
            var da1 = Avx.LoadVector256(ad + dStride + o);
            var da2 = Avx.LoadVector256(ad + 2 * dStride + o);
            var da3 = Avx.LoadVector256(ad + 3 * dStride + o);
            var sl0 = Avx.Multiply(Avx.Multiply(sc, da0), vd);
            var sl1 = Avx.Multiply(Avx.Multiply(sc, da1), vd);
            var sl2 = Avx.Multiply(Avx.Multiply(sc, da2), vd);
            var sl3 = Avx.Multiply(Avx.Multiply(sc, da3), vd);
            mn0 = Fma.MultiplyAdd(Avx.Multiply(Avx.ConvertToVector256Single(Avx2.MultiplyLow(mi, Avx.LoadVector256(asum + o))), da0), vdmin, mn0);
            mn1 = Fma.MultiplyAdd(Avx.Multiply(Avx.ConvertToVector256Single(Avx2.MultiplyLow(mi, Avx.LoadVector256(asum + dStride + o))), da1), vdmin, mn1);
            mn2 = Fma.MultiplyAdd(Avx.Multiply(Avx.ConvertToVector256Single(Avx2.MultiplyLow(mi, Avx.LoadVector256(asum + 2 * dStride + o))), da2), vdmin, mn2);
            mn3 = Fma.MultiplyAdd(Avx.Multiply(Avx.ConvertToVector256Single(Avx2.MultiplyLow(mi, Avx.LoadVector256(asum + 3 * dStride + o))), da3), vdmin, mn3);
            int e = s * QK_K;
            for (int c = 0; c < 4; c++, e += 64)
            {
                var qs = Avx.LoadVector256(w + 16 + 32 * c);
                var ql = Avx2.And(qs, mask);
                var qh = Avx2.And(Avx2.ShiftRightLogical(qs.AsUInt16(), 4).AsByte(), mask);
                lo0 = Fma.MultiplyAdd(Avx.ConvertToVector256Single(TDot.Dot(ql, Avx.LoadVector256(a + e))), Lane(sl0, 2 * c), lo0);
                lo1 = Fma.MultiplyAdd(Avx.ConvertToVector256Single(TDot.Dot(ql, Avx.LoadVector256(a1 + e))), Lane(sl1, 2 * c), lo1);
                lo2 = Fma.MultiplyAdd(Avx.ConvertToVector256Single(TDot.Dot(ql, Avx.LoadVector256(a2 + e))), Lane(sl2, 2 * c), lo2);
                lo3 = Fma.MultiplyAdd(Avx.ConvertToVector256Single(TDot.Dot(ql, Avx.LoadVector256(a3 + e))), Lane(sl3, 2 * c), lo3);
                hi0 = Fma.MultiplyAdd(Avx.ConvertToVector256Single(TDot.Dot(qh, Avx.LoadVector256(a + e + 32))), Lane(sl0, 2 * c + 1), hi0);
                hi1 = Fma.MultiplyAdd(Avx.ConvertToVector256Single(TDot.Dot(qh, Avx.LoadVector256(a1 + e + 32))), Lane(sl1, 2 * c + 1), hi1);
                hi2 = Fma.MultiplyAdd(Avx.ConvertToVector256Single(TDot.Dot(qh, Avx.LoadVector256(a2 + e + 32))), Lane(sl2, 2 * c + 1), hi2);
                hi3 = Fma.MultiplyAdd(Avx.ConvertToVector256Single(TDot.Dot(qh, Avx.LoadVector256(a3 + e + 32))), Lane(sl3, 2 * c + 1), hi3);
            }
        }
        y[0] = Vector256.Sum(lo0 + hi0) - Vector256.Sum(mn0);
        y[yStride] = Vector256.Sum(lo1 + hi1) - Vector256.Sum(mn1);
        y[2 * yStride] = Vector256.Sum(lo2 + hi2) - Vector256.Sum(mn2);
        y[3 * yStride] = Vector256.Sum(lo3 + hi3) - Vector256.Sum(mn3);
    }

    // ---- Q6_K ------------------------------------------------------------------------------------------------

    // A Q6_K half (128 elements) is ql[64] | qh[32] (see Dequantize.Q6_K): activation block k (0…3) of the half
    // takes its low nibbles from ql[0..31] (k = 0, 2: low / high nibble) or ql[32..63] (k = 1, 3) and its top
    // two bits from bits 2k, 2k+1 of qh[0..31]; its sub-blocks are scales[8·half + 2k] (first 16) and + 1.

    /// <summary>
    /// Quants − 32 as signed bytes, from 32 bytes of ql (<paramref name="low"/>: its low nibbles) and of qh, whose bits
    /// <paramref name="highShift"/>… are the two top bits (shifts on 16-bit lanes: 4 − 2 moves no bit across a byte).
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    static Vector256<sbyte> Q6Block(Vector256<byte> low, Vector256<byte> qh, [ConstantExpected] byte highShift)
    {
        var high = Avx2.And(Avx2.ShiftLeftLogical(qh.AsUInt16(), highShift).AsByte(), Vector256.Create((byte)0x30));
        return Avx2.Subtract(Avx2.Or(Avx2.And(low, Vector256.Create((byte)0xF)), high), Vector256.Create((byte)32)).AsSByte();
    }

    /// <summary>Each byte's high nibble into its low one (then masked by <see cref="Q6Block"/>).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    static Vector256<byte> Next4(Vector256<byte> v) => Avx2.ShiftRightLogical(v.AsUInt16(), 4).AsByte();

    /// <summary>
    /// The int16 scales of activation block b's two sub-blocks, [scales[2b] × 8 | scales[2b + 1] × 8]: a byte shuffle
    /// of the 16 scales by <paramref name="pick"/> (bytes 2b and 2b + 1), sign-extended.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    static Vector256<short> Q6Scales(Vector128<sbyte> scales, Vector128<sbyte> pick) => Avx2.ConvertToVector256Int16(Ssse3.Shuffle(scales, pick));

    /// <summary>The first pick of <see cref="Q6Scales"/> (block 0); block b's is this + 2b.</summary>
    static Vector128<sbyte> FirstPick => Vector128.Create(0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1);

    /// <summary>Eight int32 lanes, each sc·Σ of four w·aq: |w| × (aq · sign w), pair sums, times the sub-block's scale.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    static Vector256<int> Q6Dot(Vector256<byte> absW, Vector256<sbyte> w, sbyte* a, Vector256<short> scales) =>
        Avx2.MultiplyAddAdjacent(Avx2.MultiplyAddAdjacent(absW, Avx2.Sign(Avx.LoadVector256(a), w)), scales);

    // Per activation row: block b of each super-block adds f32(its 8 lanes) · d·da[b] to accumulator b & 1
    // (two FMA chains), and the result is Σ(acc0 + acc1). DotQ6_K and DotQ6_K4 do exactly this.

    /// <summary>One Q6_K weight row × one activation row (<paramref name="a"/> quants, <paramref name="ad"/> scales).</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public static float DotQ6_K(byte* w, sbyte* a, float* ad, int superBlocks)
    {
        float* f16 = Fp16.Table;
        Vector256<float> acc0 = Vector256<float>.Zero, acc1 = acc0;
        for (int s = 0; s < superBlocks; s++, w += Q6_KBytes)
        {
            float d = f16[Unsafe.ReadUnaligned<ushort>(w + 208)];
            var scales = Sse2.LoadVector128((sbyte*)(w + 192));
            var pick = FirstPick;
            for (int half = 0; half < 2; half++)
            {
                var ql0 = Avx.LoadVector256(w + 64 * half);
                var ql1 = Avx.LoadVector256(w + 64 * half + 32);
                var qh = Avx.LoadVector256(w + 128 + 32 * half);
                // Blocks 0 and 1 of the half from the low nibbles and qh bits 0…3, then 2 and 3 from the high ones.
                for (int k = 0; k < 4; k += 2, ql0 = Next4(ql0), ql1 = Next4(ql1), qh = Next4(qh))
                {
                    int b = s * 8 + half * 4 + k;
                    var w0 = Q6Block(ql0, qh, 4);
                    var w1 = Q6Block(ql1, qh, 2);
                    var sc0 = Q6Scales(scales, pick);
                    var sc1 = Q6Scales(scales, Sse2.Add(pick, Vector128.Create((sbyte)2)));
                    pick = Sse2.Add(pick, Vector128.Create((sbyte)4));
                    acc0 = Fma.MultiplyAdd(Avx.ConvertToVector256Single(Q6Dot(Avx2.Abs(w0), w0, a + b * QK, sc0)), Vector256.Create(d * ad[b]), acc0);
                    acc1 = Fma.MultiplyAdd(Avx.ConvertToVector256Single(Q6Dot(Avx2.Abs(w1), w1, a + (b + 1) * QK, sc1)), Vector256.Create(d * ad[b + 1]), acc1);
                }
            }
        }
        return Vector256.Sum(acc0 + acc1);
    }

    /// <summary>
    /// One Q6_K weight row × four activation rows (as <see cref="DotQ4_K4{TDot}"/>): the quants and scales are decoded
    /// once for all four; each row's arithmetic is <see cref="DotQ6_K"/>'s.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public static void DotQ6_K4(byte* w, sbyte* a, int stride, float* ad, int dStride, int superBlocks, float* y, int yStride)
    {
        float* f16 = Fp16.Table;
        Vector256<float> e0 = Vector256<float>.Zero, e1 = e0, e2 = e0, e3 = e0, o0 = e0, o1 = e0, o2 = e0, o3 = e0;
        sbyte* a1 = a + stride, a2 = a1 + stride, a3 = a2 + stride;
        float* d1 = ad + dStride, d2 = d1 + dStride, d3 = d2 + dStride;
        for (int s = 0; s < superBlocks; s++, w += Q6_KBytes)
        {
            float d = f16[Unsafe.ReadUnaligned<ushort>(w + 208)];
            var scales = Sse2.LoadVector128((sbyte*)(w + 192));
            var pick = FirstPick;
            for (int half = 0; half < 2; half++)
            {
                var ql0 = Avx.LoadVector256(w + 64 * half);
                var ql1 = Avx.LoadVector256(w + 64 * half + 32);
                var qh = Avx.LoadVector256(w + 128 + 32 * half);
                for (int k = 0; k < 4; k += 2, ql0 = Next4(ql0), ql1 = Next4(ql1), qh = Next4(qh))
                {
                    int b = s * 8 + half * 4 + k, x = b * QK;
                    var w0 = Q6Block(ql0, qh, 4);
                    var w1 = Q6Block(ql1, qh, 2);
                    var abs0 = Avx2.Abs(w0);
                    var abs1 = Avx2.Abs(w1);
                    var sc0 = Q6Scales(scales, pick);
                    var sc1 = Q6Scales(scales, Sse2.Add(pick, Vector128.Create((sbyte)2)));
                    pick = Sse2.Add(pick, Vector128.Create((sbyte)4));
                    e0 = Fma.MultiplyAdd(Avx.ConvertToVector256Single(Q6Dot(abs0, w0, a + x, sc0)), Vector256.Create(d * ad[b]), e0);
                    e1 = Fma.MultiplyAdd(Avx.ConvertToVector256Single(Q6Dot(abs0, w0, a1 + x, sc0)), Vector256.Create(d * d1[b]), e1);
                    e2 = Fma.MultiplyAdd(Avx.ConvertToVector256Single(Q6Dot(abs0, w0, a2 + x, sc0)), Vector256.Create(d * d2[b]), e2);
                    e3 = Fma.MultiplyAdd(Avx.ConvertToVector256Single(Q6Dot(abs0, w0, a3 + x, sc0)), Vector256.Create(d * d3[b]), e3);
                    o0 = Fma.MultiplyAdd(Avx.ConvertToVector256Single(Q6Dot(abs1, w1, a + x + QK, sc1)), Vector256.Create(d * ad[b + 1]), o0);
                    o1 = Fma.MultiplyAdd(Avx.ConvertToVector256Single(Q6Dot(abs1, w1, a1 + x + QK, sc1)), Vector256.Create(d * d1[b + 1]), o1);
                    o2 = Fma.MultiplyAdd(Avx.ConvertToVector256Single(Q6Dot(abs1, w1, a2 + x + QK, sc1)), Vector256.Create(d * d2[b + 1]), o2);
                    o3 = Fma.MultiplyAdd(Avx.ConvertToVector256Single(Q6Dot(abs1, w1, a3 + x + QK, sc1)), Vector256.Create(d * d3[b + 1]), o3);
                }
            }
        }
        y[0] = Vector256.Sum(e0 + o0);
        y[yStride] = Vector256.Sum(e1 + o1);
        y[2 * yStride] = Vector256.Sum(e2 + o2);
        y[3 * yStride] = Vector256.Sum(e3 + o3);
    }

    // ---- rows × activation rows ------------------------------------------------------------------------------

    /// <summary>
    /// y[i·rows + r] = W[r] · activation row i for r in [r0, r0 + count) and i &lt; n: four activation rows per pass over
    /// a weight row, the rest one at a time (the same per-row arithmetic either way). <paramref name="ps"/> holds the
    /// activations' <see cref="BlockSums"/> (Q4_K only; may be null for Q6_K). Arguments already checked.
    /// </summary>
    public static void MatMul(GgmlType type, byte* pw, int rowBytes, int rows, int cols, int r0, int count, sbyte* pq, float* pd, int* ps, int n, float* py)
    {
        if (type == GgmlType.Q4_K)
        {
            if (AvxVnni.IsSupported) MatMulQ4_K<Vnni>(pw, rowBytes, rows, cols, r0, count, pq, pd, ps, n, py);
            else MatMulQ4_K<Avx2Dot>(pw, rowBytes, rows, cols, r0, count, pq, pd, ps, n, py);
        }
        else MatMulQ6_K(pw, rowBytes, rows, cols, r0, count, pq, pd, n, py);
    }

    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    internal static void MatMulQ4_K<TDot>(byte* pw, int rowBytes, int rows, int cols, int r0, int count, sbyte* pq, float* pd, int* ps, int n, float* py)
        where TDot : struct, IByteDot
    {
        int blocks = cols / QK, superBlocks = cols / QK_K;
        for (int r = r0; r < r0 + count; r++)
        {
            byte* w = pw + (long)r * rowBytes;
            IntegerTile.PrefetchRowAhead(w, rowBytes);
            int i = 0;
            for (; i + 4 <= n; i += 4)
                DotQ4_K4<TDot>(w, pq + (long)i * cols, cols, pd + (long)i * blocks, ps + (long)i * blocks, blocks, superBlocks, py + (long)i * rows + r, rows);
            for (; i < n; i++)
                py[(long)i * rows + r] = DotQ4_K<TDot>(w, pq + (long)i * cols, pd + (long)i * blocks, ps + (long)i * blocks, superBlocks);
        }
    }

    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    static void MatMulQ6_K(byte* pw, int rowBytes, int rows, int cols, int r0, int count, sbyte* pq, float* pd, int n, float* py)
    {
        int blocks = cols / QK, superBlocks = cols / QK_K;
        for (int r = r0; r < r0 + count; r++)
        {
            byte* w = pw + (long)r * rowBytes;
            IntegerTile.PrefetchRowAhead(w, rowBytes);
            int i = 0;
            for (; i + 4 <= n; i += 4)
                DotQ6_K4(w, pq + (long)i * cols, cols, pd + (long)i * blocks, blocks, superBlocks, py + (long)i * rows + r, rows);
            for (; i < n; i++)
                py[(long)i * rows + r] = DotQ6_K(w, pq + (long)i * cols, pd + (long)i * blocks, superBlocks);
        }
    }
}
