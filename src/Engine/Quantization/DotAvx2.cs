using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;
using static TokenMill.Quantization.BlockFormats;

namespace TokenMill.Quantization;

/// <summary>
/// Fused dequantize-and-dot kernels for AVX2 + FMA: the weights are decoded into registers and never
/// stored. Within a block the quants are multiplied by the activations first and the block's scale is
/// applied once to that partial sum (and, for Q4_K, the min once to the sum of the activations), so the
/// result differs from "dequantize, then dot" only by f32 rounding. Callers check
/// <see cref="IsSupported"/> and the lengths.
/// </summary>
internal static unsafe class DotAvx2
{
    public static bool IsSupported => Avx2.IsSupported && Fma.IsSupported;

    /// <summary>
    /// Eight f16 → f32, exact for every finite value: the exponent and mantissa shifted into f32 position
    /// are a number 2^112 too small (f16 subnormals land on f32 normals), so one multiply rescales them;
    /// infinities and NaNs get the f32 all-ones exponent instead.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    static Vector256<float> F16x8(ushort* h)
    {
        var v = Avx2.ConvertToVector256Int32(h);
        var sign = Avx2.ShiftLeftLogical(Avx2.And(v, Vector256.Create(0x8000)), 16);
        var em = Avx2.ShiftLeftLogical(Avx2.And(v, Vector256.Create(0x7FFF)), 13);
        var scaled = Avx.Multiply(em.AsSingle(), Vector256.Create(0x77800000).AsSingle()); // 2^112
        var special = Avx2.CompareGreaterThan(em, Vector256.Create(0x0F7FFFFF)); // f16 exponent all ones
        var infNan = Avx2.Or(em, Vector256.Create(0x70000000)).AsSingle();
        return Avx.Or(Avx.BlendVariable(scaled, infNan, special.AsSingle()), sign.AsSingle());
    }

    /// <summary><see cref="F16x8"/> for sixteen lanes (AVX-512F): the same arithmetic, so the same values.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    static Vector512<float> F16x16(ushort* h)
    {
        var v = Avx512F.ConvertToVector512Int32(Avx.LoadVector256(h));
        var sign = Vector512.ShiftLeft(v & Vector512.Create(0x8000), 16);
        var em = Vector512.ShiftLeft(v & Vector512.Create(0x7FFF), 13);
        var scaled = em.AsSingle() * Vector512.Create(0x77800000).AsSingle(); // 2^112
        var special = Vector512.GreaterThan(em, Vector512.Create(0x0F7FFFFF)); // f16 exponent all ones
        var infNan = (em | Vector512.Create(0x70000000)).AsSingle();
        return Vector512.ConditionalSelect(special.AsSingle(), infNan, scaled) | sign.AsSingle();
    }

    /// <summary>One F16 row: with AVX-512F <see cref="F32"/>'s loop over the widened weights, else eight-lane sums.</summary>
    public static float F16(byte* w, float* x, int n) => Avx512F.IsSupported ? Row<F16Rows>(w, x, n) : F16Avx2<AnyHalves>(w, x, n);

    /// <summary>
    /// <see cref="F16"/> for a row known to hold no inf or NaN (<see cref="HalfRange"/>): the same sums in the same
    /// order, each sixteen weights widened in four instructions (<see cref="FiniteHalves"/>, the same value for every
    /// finite f16) instead of nine — one-row decode of F16 weights is bound by the conversion.
    /// </summary>
    public static float F16Finite(byte* w, float* x, int n) => Avx512F.IsSupported ? Row<F16FiniteRows>(w, x, n) : F16Avx2<FiniteHalves>(w, x, n);

    /// <summary>
    /// <see cref="F16Finite"/>'s sums, bit for bit, over finite halves read unrebiased (<see cref="F16UnrebiasedRows"/>)
    /// against the activation row times 2^112, or a <see cref="LiftedF16"/> row against it times 2^102 (AVX-512F).
    /// </summary>
    public static float F16Unrebiased(byte* w, float* xScaled, int n) => Row<F16UnrebiasedRows>(w, xScaled, n);

    /// <summary>
    /// How far ahead of the weights it reads a one-row kernel (F16, F32) asks for lines to be brought into L2 (AVX-512
    /// path): two 4 KiB pages. The hardware prefetcher stops at each page — one row of 2048 columns — so decode,
    /// which streams every row from memory once, waited at each. Two Zen 5 cores streaming F16 rows of 2048 from
    /// memory: 39 → 44 GB/s (as much as the F32 kernel streams), with 4 KiB ahead 1.07× less on one core. The in-place
    /// integer row kernels ask the same distance ahead (<see cref="IntegerTile.PrefetchRowAhead"/>); on this project's
    /// Xeon 16, 32 and 64 KiB streamed F32 rows no faster than 8.
    /// </summary>
    internal const int RowPrefetchBytes = 8192;

    /// <summary>
    /// One F32 row (AVX-512F): four sums of sixteen lanes, the lines <see cref="RowPrefetchBytes"/> ahead asked into
    /// L2 as it goes, as <see cref="F16"/> does. Decode of F32 weights went 16.0 → 16.9 tok/s with it against
    /// <c>TensorPrimitives.Dot</c> (three alternated runs, <c>bench latency --dtype f32</c>).
    /// </summary>
    public static float F32(float* w, float* x, int n) => Row<F32Rows>((byte*)w, x, n);

    /// <summary>
    /// One BF16 row: with AVX-512F <see cref="F32"/>'s loop over the widened weights (so a row whose values are all
    /// bf16 gives the bits of the F32 kernel on the same values), else eight-lane sums.
    /// </summary>
    public static float BF16(byte* w, float* x, int n) => Avx512F.IsSupported ? Row<BF16Rows>(w, x, n) : BF16Avx2(w, x, n);

    /// <summary>
    /// The AVX-512 one-row loop: weights 64 at a time into four sums, then 16 at a time into the first, the four
    /// added in one fixed order, then the columns past the last multiple of 16 one by one.
    /// </summary>
    static float Row<TW>(byte* w, float* x, int n) where TW : struct, IWeightRows
    {
        var a0 = Vector512<float>.Zero;
        var a1 = Vector512<float>.Zero;
        var a2 = Vector512<float>.Zero;
        var a3 = Vector512<float>.Zero;
        int i = 0;
        for (; i + 64 <= n; i += 64)
        {
            byte* p = w + (long)i * TW.Bytes + RowPrefetchBytes;
            Sse.Prefetch1(p);
            Sse.Prefetch1(p + 64);
            if (TW.Bytes == 4)
            {
                Sse.Prefetch1(p + 128);
                Sse.Prefetch1(p + 192);
            }
            a0 = Avx512F.FusedMultiplyAdd(TW.Load(w, i), Avx512F.LoadVector512(x + i), a0);
            a1 = Avx512F.FusedMultiplyAdd(TW.Load(w, i + 16), Avx512F.LoadVector512(x + i + 16), a1);
            a2 = Avx512F.FusedMultiplyAdd(TW.Load(w, i + 32), Avx512F.LoadVector512(x + i + 32), a2);
            a3 = Avx512F.FusedMultiplyAdd(TW.Load(w, i + 48), Avx512F.LoadVector512(x + i + 48), a3);
        }
        for (; i + 16 <= n; i += 16) a0 = Avx512F.FusedMultiplyAdd(TW.Load(w, i), Avx512F.LoadVector512(x + i), a0);
        float sum = Vector512.Sum((a0 + a1) + (a2 + a3));
        for (; i < n; i++) sum += TW.Scalar(w, i) * x[i];
        return sum;
    }

    static float F16Avx2<TWiden>(byte* w, float* x, int n) where TWiden : struct, IHalfWidening
    {
        int i = 0;
        float sum = 0;
        var acc0 = Vector256<float>.Zero;
        var acc1 = Vector256<float>.Zero;
        for (; i + 16 <= n; i += 16)
        {
            acc0 = Fma.MultiplyAdd(TWiden.Widen8(w + 2 * i), Avx.LoadVector256(x + i), acc0);
            acc1 = Fma.MultiplyAdd(TWiden.Widen8(w + 2 * (i + 8)), Avx.LoadVector256(x + i + 8), acc1);
        }
        sum += Vector256.Sum(Avx.Add(acc0, acc1));
        for (; i < n; i++) sum += Fp16.ToSingle(((ushort*)w)[i]) * x[i];
        return sum;
    }

    /// <summary>The general widening above (<see cref="F16x16"/>, <see cref="F16x8"/>) as a type argument.</summary>
    readonly struct AnyHalves : IHalfWidening
    {
        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        public static Vector512<float> Widen16(byte* p) => F16x16((ushort*)p);

        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        public static Vector256<float> Widen8(byte* p) => F16x8((ushort*)p);
    }

    static float BF16Avx2(byte* w, float* x, int n)
    {
        var acc0 = Vector256<float>.Zero;
        var acc1 = Vector256<float>.Zero;
        ushort* h = (ushort*)w;
        int i = 0;
        for (; i + 16 <= n; i += 16)
        {
            var a = Avx2.ShiftLeftLogical(Avx2.ConvertToVector256Int32(h + i), 16).AsSingle();
            var b = Avx2.ShiftLeftLogical(Avx2.ConvertToVector256Int32(h + i + 8), 16).AsSingle();
            acc0 = Fma.MultiplyAdd(a, Avx.LoadVector256(x + i), acc0);
            acc1 = Fma.MultiplyAdd(b, Avx.LoadVector256(x + i + 8), acc1);
        }
        float sum = Vector256.Sum(Avx.Add(acc0, acc1));
        for (; i < n; i++) sum += Bf16.ToSingle(h[i]) * x[i];
        return sum;
    }

    public static float Q8_0(byte* w, float* x, int n)
    {
        var acc = Vector256<float>.Zero;
        for (int i = 0; i < n; i += QK, w += Q8_0Bytes, x += QK)
        {
            sbyte* q = (sbyte*)(w + 2);
            var s = Avx.Multiply(Avx.ConvertToVector256Single(Avx2.ConvertToVector256Int32(q)), Avx.LoadVector256(x));
            s = Fma.MultiplyAdd(Avx.ConvertToVector256Single(Avx2.ConvertToVector256Int32(q + 8)), Avx.LoadVector256(x + 8), s);
            s = Fma.MultiplyAdd(Avx.ConvertToVector256Single(Avx2.ConvertToVector256Int32(q + 16)), Avx.LoadVector256(x + 16), s);
            s = Fma.MultiplyAdd(Avx.ConvertToVector256Single(Avx2.ConvertToVector256Int32(q + 24)), Avx.LoadVector256(x + 24), s);
            acc = Fma.MultiplyAdd(Vector256.Create(Fp16.ToSingle(Unsafe.ReadUnaligned<ushort>(w))), s, acc);
        }
        return Vector256.Sum(acc);
    }

    public static float Q4_0(byte* w, float* x, int n)
    {
        var acc = Vector256<float>.Zero;
        var eight = Vector256.Create(8);
        for (int i = 0; i < n; i += QK, w += Q4_0Bytes, x += QK)
        {
            var (lo, hi) = DequantizeAvx2.Nibbles(Sse2.LoadVector128(w + 2));
            var s = Avx.Multiply(Avx.ConvertToVector256Single(Avx2.Subtract(Avx2.ConvertToVector256Int32(lo), eight)), Avx.LoadVector256(x));
            s = Fma.MultiplyAdd(Avx.ConvertToVector256Single(Avx2.Subtract(Avx2.ConvertToVector256Int32(DequantizeAvx2.Upper8(lo)), eight)), Avx.LoadVector256(x + 8), s);
            s = Fma.MultiplyAdd(Avx.ConvertToVector256Single(Avx2.Subtract(Avx2.ConvertToVector256Int32(hi), eight)), Avx.LoadVector256(x + 16), s);
            s = Fma.MultiplyAdd(Avx.ConvertToVector256Single(Avx2.Subtract(Avx2.ConvertToVector256Int32(DequantizeAvx2.Upper8(hi)), eight)), Avx.LoadVector256(x + 24), s);
            acc = Fma.MultiplyAdd(Vector256.Create(Fp16.ToSingle(Unsafe.ReadUnaligned<ushort>(w))), s, acc);
        }
        return Vector256.Sum(acc);
    }

    // Σ (d·sc·q − dmin·m)·x = Σ_sub d·sc·(Σ q·x) − dmin·m·(Σ x): two accumulators, one subtraction at the end.
    public static float Q4_K(byte* w, float* x, int n)
    {
        var accQ = Vector256<float>.Zero;
        var accM = Vector256<float>.Zero;
        var mask = Vector256.Create(0xF);
        for (int i = 0; i < n; i += QK_K, w += Q4_KBytes, x += QK_K)
        {
            float d = Fp16.ToSingle(Unsafe.ReadUnaligned<ushort>(w));
            float dmin = Fp16.ToSingle(Unsafe.ReadUnaligned<ushort>(w + 2));
            var scales = new ReadOnlySpan<byte>(w + 4, 12);
            for (int j = 0; j < 4; j++)
            {
                byte* q = w + 16 + 32 * j;
                float* xl = x + 64 * j;
                float* xh = xl + 32;
                Vector256<float> sLo = Vector256<float>.Zero, sHi = Vector256<float>.Zero;
                Vector256<float> xsLo = Vector256<float>.Zero, xsHi = Vector256<float>.Zero;
                for (int k = 0; k < 32; k += 8)
                {
                    var v = Avx2.ConvertToVector256Int32(q + k);
                    var a = Avx.LoadVector256(xl + k);
                    var b = Avx.LoadVector256(xh + k);
                    sLo = Fma.MultiplyAdd(Avx.ConvertToVector256Single(Avx2.And(v, mask)), a, sLo);
                    sHi = Fma.MultiplyAdd(Avx.ConvertToVector256Single(Avx2.ShiftRightLogical(v, 4)), b, sHi);
                    xsLo = Avx.Add(xsLo, a);
                    xsHi = Avx.Add(xsHi, b);
                }
                var (sc1, m1) = ScaleMinK4(2 * j, scales);
                var (sc2, m2) = ScaleMinK4(2 * j + 1, scales);
                accQ = Fma.MultiplyAdd(Vector256.Create(d * sc1), sLo, accQ);
                accQ = Fma.MultiplyAdd(Vector256.Create(d * sc2), sHi, accQ);
                accM = Fma.MultiplyAdd(Vector256.Create(dmin * m1), xsLo, accM);
                accM = Fma.MultiplyAdd(Vector256.Create(dmin * m2), xsHi, accM);
            }
        }
        return Vector256.Sum(accQ) - Vector256.Sum(accM);
    }

    // As Q4_K, with the fifth bit of each quant from qh.
    public static float Q5_K(byte* w, float* x, int n)
    {
        var accQ = Vector256<float>.Zero;
        var accM = Vector256<float>.Zero;
        for (int i = 0; i < n; i += QK_K, w += Q5_KBytes, x += QK_K)
        {
            float d = Fp16.ToSingle(Unsafe.ReadUnaligned<ushort>(w));
            float dmin = Fp16.ToSingle(Unsafe.ReadUnaligned<ushort>(w + 2));
            var scales = new ReadOnlySpan<byte>(w + 4, 12);
            for (int j = 0; j < 4; j++)
            {
                float* xl = x + 64 * j;
                float* xh = xl + 32;
                Vector256<float> sLo = Vector256<float>.Zero, sHi = Vector256<float>.Zero;
                Vector256<float> xsLo = Vector256<float>.Zero, xsHi = Vector256<float>.Zero;
                for (int k = 0; k < 32; k += 8)
                {
                    DequantizeAvx2.Q5Quants(w + 48 + 32 * j + k, w + 16 + k, j, out var lo, out var hi);
                    var a = Avx.LoadVector256(xl + k);
                    var b = Avx.LoadVector256(xh + k);
                    sLo = Fma.MultiplyAdd(Avx.ConvertToVector256Single(lo), a, sLo);
                    sHi = Fma.MultiplyAdd(Avx.ConvertToVector256Single(hi), b, sHi);
                    xsLo = Avx.Add(xsLo, a);
                    xsHi = Avx.Add(xsHi, b);
                }
                var (sc1, m1) = ScaleMinK4(2 * j, scales);
                var (sc2, m2) = ScaleMinK4(2 * j + 1, scales);
                accQ = Fma.MultiplyAdd(Vector256.Create(d * sc1), sLo, accQ);
                accQ = Fma.MultiplyAdd(Vector256.Create(d * sc2), sHi, accQ);
                accM = Fma.MultiplyAdd(Vector256.Create(dmin * m1), xsLo, accM);
                accM = Fma.MultiplyAdd(Vector256.Create(dmin * m2), xsHi, accM);
            }
        }
        return Vector256.Sum(accQ) - Vector256.Sum(accM);
    }

    public static float Q6_K(byte* w, float* x, int n)
    {
        var acc = Vector256<float>.Zero;
        for (int i = 0; i < n; i += QK_K, w += Q6_KBytes, x += QK_K)
        {
            float d = Fp16.ToSingle(Unsafe.ReadUnaligned<ushort>(w + 208));
            sbyte* sc = (sbyte*)(w + 192);
            for (int half = 0; half < 2; half++)
            {
                byte* ql = w + 64 * half;
                byte* qh = w + 128 + 32 * half;
                float* xh = x + 128 * half;
                sbyte* sch = sc + 8 * half;
                // Elements l..l+15 (+32k) form sub-block l/16 (+2k): sum 16 products, then scale.
                for (int l = 0; l < 32; l += 16)
                {
                    Vector256<float> s1 = Vector256<float>.Zero, s2 = s1, s3 = s1, s4 = s1;
                    for (int k = l; k < l + 16; k += 8)
                    {
                        DequantizeAvx2.Q6Quants(ql + k, qh + k, out var q1, out var q2, out var q3, out var q4);
                        s1 = Fma.MultiplyAdd(Avx.ConvertToVector256Single(q1), Avx.LoadVector256(xh + k), s1);
                        s2 = Fma.MultiplyAdd(Avx.ConvertToVector256Single(q2), Avx.LoadVector256(xh + k + 32), s2);
                        s3 = Fma.MultiplyAdd(Avx.ConvertToVector256Single(q3), Avx.LoadVector256(xh + k + 64), s3);
                        s4 = Fma.MultiplyAdd(Avx.ConvertToVector256Single(q4), Avx.LoadVector256(xh + k + 96), s4);
                    }
                    int sub = l / 16;
                    acc = Fma.MultiplyAdd(Vector256.Create(d * sch[sub]), s1, acc);
                    acc = Fma.MultiplyAdd(Vector256.Create(d * sch[sub + 2]), s2, acc);
                    acc = Fma.MultiplyAdd(Vector256.Create(d * sch[sub + 4]), s3, acc);
                    acc = Fma.MultiplyAdd(Vector256.Create(d * sch[sub + 6]), s4, acc);
                }
            }
        }
        return Vector256.Sum(acc);
    }
}
