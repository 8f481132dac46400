using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;
using static TokenMill.Quantization.BlockFormats;

namespace TokenMill.Quantization;

/// <summary>
/// AVX2 decoders for the common types. Each lane computes the scalar reference's expression
/// (a multiply, then a subtract where there is a min; never a fused multiply-add), so the results are
/// bit-identical with <see cref="Dequantize"/>'s scalar path. Callers check <c>Avx2.IsSupported</c>
/// and the lengths.
/// </summary>
internal static unsafe class DequantizeAvx2
{
    public static void BF16(ReadOnlySpan<byte> src, Span<float> dst)
    {
        fixed (byte* s = src)
        fixed (float* y = dst)
        {
            int n = dst.Length, i = 0;
            for (; i + 8 <= n; i += 8)
                Avx.Store(y + i, Avx2.ShiftLeftLogical(Avx2.ConvertToVector256Int32((ushort*)s + i), 16).AsSingle());
            for (; i < n; i++) y[i] = Bf16.ToSingle(((ushort*)s)[i]);
        }
    }

    public static void Q8_0(ReadOnlySpan<byte> src, Span<float> dst)
    {
        fixed (byte* s0 = src)
        fixed (float* y0 = dst)
        {
            byte* s = s0;
            for (float* y = y0, end = y0 + dst.Length; y < end; y += QK, s += Q8_0Bytes)
            {
                var d = Vector256.Create(Fp16.ToSingle(Unsafe.ReadUnaligned<ushort>(s)));
                sbyte* q = (sbyte*)(s + 2);
                for (int k = 0; k < QK; k += 8)
                    Avx.Store(y + k, Avx.Multiply(Avx.ConvertToVector256Single(Avx2.ConvertToVector256Int32(q + k)), d));
            }
        }
    }

    public static void Q4_0(ReadOnlySpan<byte> src, Span<float> dst)
    {
        var eight = Vector256.Create(8);
        fixed (byte* s0 = src)
        fixed (float* y0 = dst)
        {
            byte* s = s0;
            for (float* y = y0, end = y0 + dst.Length; y < end; y += QK, s += Q4_0Bytes)
            {
                var d = Vector256.Create(Fp16.ToSingle(Unsafe.ReadUnaligned<ushort>(s)));
                var (lo, hi) = Nibbles(Sse2.LoadVector128(s + 2));
                Avx.Store(y + 0, Avx.Multiply(Avx.ConvertToVector256Single(Avx2.Subtract(Avx2.ConvertToVector256Int32(lo), eight)), d));
                Avx.Store(y + 8, Avx.Multiply(Avx.ConvertToVector256Single(Avx2.Subtract(Avx2.ConvertToVector256Int32(Upper8(lo)), eight)), d));
                Avx.Store(y + 16, Avx.Multiply(Avx.ConvertToVector256Single(Avx2.Subtract(Avx2.ConvertToVector256Int32(hi), eight)), d));
                Avx.Store(y + 24, Avx.Multiply(Avx.ConvertToVector256Single(Avx2.Subtract(Avx2.ConvertToVector256Int32(Upper8(hi)), eight)), d));
            }
        }
    }

    public static void Q4_K(ReadOnlySpan<byte> src, Span<float> dst)
    {
        var mask = Vector256.Create(0xF);
        fixed (byte* s0 = src)
        fixed (float* y0 = dst)
        {
            byte* s = s0;
            for (float* y = y0, end = y0 + dst.Length; y < end; y += QK_K, s += Q4_KBytes)
            {
                float d = Fp16.ToSingle(Unsafe.ReadUnaligned<ushort>(s));
                float min = Fp16.ToSingle(Unsafe.ReadUnaligned<ushort>(s + 2));
                var scales = new ReadOnlySpan<byte>(s + 4, 12);
                for (int j = 0; j < 4; j++)
                {
                    var (sc1, m1) = ScaleMinK4(2 * j, scales);
                    var (sc2, m2) = ScaleMinK4(2 * j + 1, scales);
                    var d1 = Vector256.Create(d * sc1);
                    var min1 = Vector256.Create(min * m1);
                    var d2 = Vector256.Create(d * sc2);
                    var min2 = Vector256.Create(min * m2);
                    byte* q = s + 16 + 32 * j;
                    float* yj = y + 64 * j;
                    for (int k = 0; k < 32; k += 8)
                    {
                        var v = Avx2.ConvertToVector256Int32(q + k);
                        var lo = Avx.ConvertToVector256Single(Avx2.And(v, mask));
                        var hi = Avx.ConvertToVector256Single(Avx2.ShiftRightLogical(v, 4));
                        Avx.Store(yj + k, Avx.Subtract(Avx.Multiply(d1, lo), min1));
                        Avx.Store(yj + 32 + k, Avx.Subtract(Avx.Multiply(d2, hi), min2));
                    }
                }
            }
        }
    }

    public static void Q5_K(ReadOnlySpan<byte> src, Span<float> dst)
    {
        fixed (byte* s0 = src)
        fixed (float* y0 = dst)
        {
            byte* s = s0;
            for (float* y = y0, end = y0 + dst.Length; y < end; y += QK_K, s += Q5_KBytes)
            {
                float d = Fp16.ToSingle(Unsafe.ReadUnaligned<ushort>(s));
                float min = Fp16.ToSingle(Unsafe.ReadUnaligned<ushort>(s + 2));
                var scales = new ReadOnlySpan<byte>(s + 4, 12);
                for (int j = 0; j < 4; j++)
                {
                    var (sc1, m1) = ScaleMinK4(2 * j, scales);
                    var (sc2, m2) = ScaleMinK4(2 * j + 1, scales);
                    var d1 = Vector256.Create(d * sc1);
                    var min1 = Vector256.Create(min * m1);
                    var d2 = Vector256.Create(d * sc2);
                    var min2 = Vector256.Create(min * m2);
                    float* yj = y + 64 * j;
                    for (int k = 0; k < 32; k += 8)
                    {
                        Q5Quants(s + 48 + 32 * j + k, s + 16 + k, j, out var lo, out var hi);
                        Avx.Store(yj + k, Avx.Subtract(Avx.Multiply(d1, Avx.ConvertToVector256Single(lo)), min1));
                        Avx.Store(yj + 32 + k, Avx.Subtract(Avx.Multiply(d2, Avx.ConvertToVector256Single(hi)), min2));
                    }
                }
            }
        }
    }

    /// <summary>
    /// 8 five-bit Q5_K quants of chunk <paramref name="j"/> from each nibble of the 8 bytes at <paramref name="ql"/>:
    /// the fifth bit is bit 2j (low nibbles) or 2j+1 (high nibbles) of the matching qh byte.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    internal static void Q5Quants(byte* ql, byte* qh, int j, out Vector256<int> lo, out Vector256<int> hi)
    {
        var m4 = Vector256.Create(0xF);
        var bit4 = Vector256.Create(0x10);
        var v = Avx2.ConvertToVector256Int32(ql);
        var h = Avx2.ConvertToVector256Int32(qh);
        var down = Vector128.CreateScalar(2 * j); // a shift count held in a register
        // Bit 2j moved to bit 4: up by 4, down by 2j (and bit 2j+1: up by 3, down by 2j).
        lo = Avx2.Or(Avx2.And(v, m4), Avx2.And(Avx2.ShiftRightLogical(Avx2.ShiftLeftLogical(h, 4), down), bit4));
        hi = Avx2.Or(Avx2.ShiftRightLogical(v, 4), Avx2.And(Avx2.ShiftRightLogical(Avx2.ShiftLeftLogical(h, 3), down), bit4));
    }

    public static void Q6_K(ReadOnlySpan<byte> src, Span<float> dst)
    {
        fixed (byte* s0 = src)
        fixed (float* y0 = dst)
        {
            byte* s = s0;
            for (float* y = y0, end = y0 + dst.Length; y < end; y += QK_K, s += Q6_KBytes)
            {
                float d = Fp16.ToSingle(Unsafe.ReadUnaligned<ushort>(s + 208));
                sbyte* sc = (sbyte*)(s + 192);
                for (int half = 0; half < 2; half++)
                {
                    byte* ql = s + 64 * half;
                    byte* qh = s + 128 + 32 * half;
                    float* yh = y + 128 * half;
                    sbyte* sch = sc + 8 * half;
                    for (int l = 0; l < 32; l += 8)
                    {
                        int sub = l / 16;
                        Q6Quants(ql + l, qh + l, out var q1, out var q2, out var q3, out var q4);
                        Avx.Store(yh + l, Avx.Multiply(Vector256.Create(d * sch[sub]), Avx.ConvertToVector256Single(q1)));
                        Avx.Store(yh + l + 32, Avx.Multiply(Vector256.Create(d * sch[sub + 2]), Avx.ConvertToVector256Single(q2)));
                        Avx.Store(yh + l + 64, Avx.Multiply(Vector256.Create(d * sch[sub + 4]), Avx.ConvertToVector256Single(q3)));
                        Avx.Store(yh + l + 96, Avx.Multiply(Vector256.Create(d * sch[sub + 6]), Avx.ConvertToVector256Single(q4)));
                    }
                }
            }
        }
    }

    /// <summary>Low and high nibbles of 16 bytes, each still one per byte.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    internal static (Vector128<byte> Lo, Vector128<byte> Hi) Nibbles(Vector128<byte> raw)
    {
        var mask = Vector128.Create((byte)0xF);
        return (Sse2.And(raw, mask), Sse2.And(Sse2.ShiftRightLogical(raw.AsUInt16(), 4).AsByte(), mask));
    }

    /// <summary>Bytes 8..15 moved down to 0..7 (so the widening conversions see them).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    internal static Vector128<byte> Upper8(Vector128<byte> v) => Sse2.ShiftRightLogical128BitLane(v, 8);

    /// <summary>
    /// The four groups of 8 signed 6-bit Q6_K quants (already minus 32) that share the 8 bytes at
    /// <paramref name="ql"/>, <paramref name="ql"/>+32 and <paramref name="qh"/>: elements l, l+32, l+64, l+96.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    internal static void Q6Quants(byte* ql, byte* qh, out Vector256<int> q1, out Vector256<int> q2, out Vector256<int> q3, out Vector256<int> q4)
    {
        var m4 = Vector256.Create(0xF);
        var m2 = Vector256.Create(0x30);
        var bias = Vector256.Create(32);
        var a = Avx2.ConvertToVector256Int32(ql);
        var b = Avx2.ConvertToVector256Int32(ql + 32);
        var h = Avx2.ConvertToVector256Int32(qh);
        q1 = Avx2.Subtract(Avx2.Or(Avx2.And(a, m4), Avx2.And(Avx2.ShiftLeftLogical(h, 4), m2)), bias);
        q2 = Avx2.Subtract(Avx2.Or(Avx2.And(b, m4), Avx2.And(Avx2.ShiftLeftLogical(h, 2), m2)), bias);
        q3 = Avx2.Subtract(Avx2.Or(Avx2.ShiftRightLogical(a, 4), Avx2.And(h, m2)), bias);
        q4 = Avx2.Subtract(Avx2.Or(Avx2.ShiftRightLogical(b, 4), Avx2.And(Avx2.ShiftRightLogical(h, 2), m2)), bias);
    }
}
