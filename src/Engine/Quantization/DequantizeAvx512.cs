using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;

namespace TokenMill.Quantization;

/// <summary>
/// Sixteen-lane (AVX-512F) decoders for the 16-bit float types, which the matrix product turns into an f32 tile
/// once per 16 weight rows. Bit-identical with <see cref="Fp16.ToSingle"/> and <see cref="Bf16.ToSingle"/> for
/// every pattern, NaNs included. Callers check <see cref="IsSupported"/> and the lengths.
/// </summary>
internal static unsafe class DequantizeAvx512
{
    public static bool IsSupported => Avx512F.IsSupported;

    public static void F16(ReadOnlySpan<byte> src, Span<float> dst)
    {
        fixed (byte* s = src)
        fixed (float* y = dst)
        {
            ushort* h = (ushort*)s;
            int n = dst.Length, i = 0;
            for (; i + 16 <= n; i += 16) Avx512F.Store(y + i, F16x16(Avx.LoadVector256(h + i)));
            for (; i < n; i++) y[i] = Fp16.ToSingle(h[i]);
        }
    }

    public static void BF16(ReadOnlySpan<byte> src, Span<float> dst)
    {
        fixed (byte* s = src)
        fixed (float* y = dst)
        {
            ushort* h = (ushort*)s;
            int n = dst.Length, i = 0;
            for (; i + 16 <= n; i += 16)
                Avx512F.Store(y + i, Avx512F.ShiftLeftLogical(Avx512F.ConvertToVector512Int32(Avx.LoadVector256(h + i)), 16).AsSingle());
            for (; i < n; i++) y[i] = Bf16.ToSingle(h[i]);
        }
    }

    /// <summary>
    /// Sixteen f16 → f32: exponent and mantissa shifted into f32 position are the value times 2^-112 (f16
    /// subnormals land on f32 normals, exactly), so one multiply rescales them. Infinities and NaNs take the f32
    /// all-ones exponent instead, with the quiet bit set on NaNs as the multiply in <see cref="Fp16.ToSingle"/> sets it.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    static Vector512<float> F16x16(Vector256<ushort> h)
    {
        var v = Avx512F.ConvertToVector512Int32(h);
        var sign = Vector512.ShiftLeft(v & Vector512.Create(0x8000), 16);
        var em = Vector512.ShiftLeft(v & Vector512.Create(0x7FFF), 13);
        var scaled = em.AsSingle() * Vector512.Create(0x77800000).AsSingle(); // 2^112
        var special = Vector512.GreaterThan(em, Vector512.Create(0x0F7FFFFF)); // f16 exponent all ones
        var nan = Vector512.GreaterThan(em, Vector512.Create(0x0F800000)) & Vector512.Create(0x00400000);
        var infNan = (em | Vector512.Create(0x70000000) | nan).AsSingle();
        return Vector512.ConditionalSelect(special.AsSingle(), infNan, scaled) | sign.AsSingle();
    }
}
