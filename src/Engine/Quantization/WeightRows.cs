using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;

namespace TokenMill.Quantization;

/// <summary>
/// How the microkernel reads a weight row: element k (16 of them from k for <see cref="Load"/>) of the row at
/// <c>w</c> as f32, exactly as <see cref="Dequantize.Row"/> decodes it.
/// </summary>
internal unsafe interface IWeightRows
{
    static abstract Vector512<float> Load(byte* w, long k);
    static abstract float Scalar(byte* w, long k);
    static abstract int Bytes { get; }
}

internal readonly unsafe struct F32Rows : IWeightRows
{
    public static int Bytes => 4;

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector512<float> Load(byte* w, long k) => Avx512F.LoadVector512((float*)w + k);

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static float Scalar(byte* w, long k) => ((float*)w)[k];
}

/// <summary>
/// f16 → f32 bit-identical with <see cref="Fp16.ToSingle"/> (NaNs up to their quiet bit, which the multiply-add
/// sets anyway): sign-extended and shifted left by 13, a half's exponent and mantissa sit in f32 position with
/// the sign in bit 31 (and copies of it in bits 28–30, cleared), so one multiply by 2^112 rebiases the exponent,
/// subnormals included. vcvtph2ps would do it in one instruction, but .NET 10 has no intrinsic for it.
/// </summary>
internal readonly unsafe struct F16Rows : IWeightRows
{
    public static int Bytes => 2;

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector512<float> Load(byte* w, long k)
    {
        var h = Shifted(w, k);
        var f = Finite(h);
        // Exponent all ones (infinity, NaN): the product is ±2^16·1.m, exponent 143 where 255 is wanted.
        var special = Vector512.Equals(h & Vector512.Create(0x0F800000), Vector512.Create(0x0F800000));
        return Vector512.ConditionalSelect(special.AsSingle(), f | Vector512.Create(0x38000000).AsSingle(), f);
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static float Scalar(byte* w, long k) => Fp16.ToSingle(((ushort*)w)[k]);

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    internal static Vector512<int> Shifted(byte* w, long k) =>
        Avx512F.ShiftLeftLogical(Avx512F.ConvertToVector512Int32(Avx.LoadVector256((short*)w + k)), 13);

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    internal static Vector512<float> Finite(Vector512<int> h) =>
        (h & Vector512.Create(unchecked((int)0x8FFFFFFF))).AsSingle() * Vector512.Create(0x77800000).AsSingle(); // 2^112
}

/// <summary>
/// <see cref="F16Rows"/> for rows known to hold no infinity or NaN (<see cref="TileGemm.HasInfOrNaN"/>): the three
/// instructions that fix those up cost a quarter of the kernel's speed at 32 activation rows.
/// </summary>
internal readonly unsafe struct F16FiniteRows : IWeightRows
{
    public static int Bytes => 2;

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector512<float> Load(byte* w, long k) => FiniteHalves.Widen16(w + 2 * k);

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static float Scalar(byte* w, long k) => Fp16.ToSingle(((ushort*)w)[k]);
}

/// <summary>
/// Finite f16 rows read against activations scaled by 2^112 (<see cref="TileGemm.ScaleActivations"/>): the half's sign, exponent
/// and mantissa moved into an f32's fields as <see cref="FiniteHalves"/> does, without its multiply by 2^112 that
/// rebiases the exponent. That value is w·2^−112 exactly (a subnormal half becomes a subnormal f32, exactly), and
/// (w·2^−112)·(x·2^112) is the same real number as w·x, so each fused multiply-add, and each rounded product of the
/// tail, gives the bits it gives with <see cref="F16FiniteRows"/>. Two integer instructions after the widening load
/// instead of three and a multiply on the FMA ports.
/// </summary>
internal readonly unsafe struct F16UnrebiasedRows : IWeightRows
{
    public static int Bytes => 2;

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector512<float> Load(byte* w, long k) =>
        (Vector512.ShiftLeft(Avx512F.ConvertToVector512Int32(Avx.LoadVector256((short*)w + k)), 13) & Vector512.Create(unchecked((int)0x8FFFE000))).AsSingle();

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static float Scalar(byte* w, long k) => BitConverter.Int32BitsToSingle((((short*)w)[k] << 13) & unchecked((int)0x8FFFE000));
}


internal readonly unsafe struct BF16Rows : IWeightRows
{
    public static int Bytes => 2;

    /// <summary>bf16 is the top half of an f32: zero-extend, shift into place.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector512<float> Load(byte* w, long k) =>
        Avx512F.ShiftLeftLogical(Avx512F.ConvertToVector512Int32(Avx.LoadVector256((ushort*)w + k)), 16).AsSingle();

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static float Scalar(byte* w, long k) => Bf16.ToSingle(((ushort*)w)[k]);
}
