using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;
using TokenMill.Models.Gguf;

namespace TokenMill.Quantization;

/// <summary>
/// IEEE binary16 ("f16") conversions, bit-identical with ggml's portable ones
/// (<c>ggml_compute_fp16_to_fp32</c> / <c>ggml_compute_fp32_to_fp16</c> in ggml-impl.h), which are
/// what its reference quantizers use. Both come from Maratyszcza's FP16 library: the float unit does
/// the rounding, so finite values round to nearest, ties to even, with subnormals kept.
/// </summary>
public static class Fp16
{
    // 2^-112 rescales an f16 exponent (bias 15) into an f32 exponent (bias 127) after the shift below.
    static readonly float ExpScale = BitConverter.UInt32BitsToSingle(0x07800000);
    // 2^112 and 2^-110: the first pushes values that overflow f16 to infinity, the second brings the
    // rest back so that the addition in FromSingle rounds at f16's precision.
    static readonly float ScaleToInf = BitConverter.UInt32BitsToSingle(0x77800000);
    static readonly float ScaleToZero = BitConverter.UInt32BitsToSingle(0x08800000);

    /// <summary>
    /// All 65,536 f16 values as f32 (256 KiB, allocated once for the process): the integer kernels look their
    /// block scales up here, as ggml does where it has no F16C — a load instead of a dozen scalar operations
    /// per block. Entry h is <see cref="ToSingle"/>(h). Declared after the constants above: static fields
    /// initialize in textual order, and <see cref="BuildTable"/> uses them.
    /// </summary>
    internal static readonly unsafe float* Table = BuildTable();

    static unsafe float* BuildTable()
    {
        var table = (float*)System.Runtime.InteropServices.NativeMemory.AlignedAlloc(65536 * sizeof(float), 64);
        for (int h = 0; h < 65536; h++) table[h] = ToSingle((ushort)h);
        return table;
    }

    /// <summary>The f32 value of an f16 bit pattern (exact; NaN payloads are kept).</summary>
    /// <remarks>Inlined: the integer dot kernels convert a scale per block, and a call there would make the JIT spill their accumulators.</remarks>
    [System.Runtime.CompilerServices.MethodImpl(System.Runtime.CompilerServices.MethodImplOptions.AggressiveInlining)]
    public static float ToSingle(ushort h)
    {
        uint w = (uint)h << 16;
        uint sign = w & 0x80000000u;
        uint twoW = w + w; // drops the sign

        // Normal, infinite and NaN: move the exponent and mantissa into f32 position, then scale.
        float normalized = BitConverter.UInt32BitsToSingle((twoW >> 4) + (0xE0u << 23)) * ExpScale;
        // Subnormal: build 0.5 + m * 2^-24 (a float whose low bits are the mantissa), subtract 0.5.
        float denormalized = BitConverter.UInt32BitsToSingle((twoW >> 17) | (126u << 23)) - 0.5f;

        uint bits = twoW < (1u << 27) ? BitConverter.SingleToUInt32Bits(denormalized) : BitConverter.SingleToUInt32Bits(normalized);
        return BitConverter.UInt32BitsToSingle(sign | bits);
    }

    /// <summary>
    /// The f16 bit pattern nearest to <paramref name="f"/> (ties to even; overflow gives infinity).
    /// Every NaN becomes the quiet NaN 0x7E00 with the input's sign, as in ggml.
    /// </summary>
    public static ushort FromSingle(float f)
    {
        float b = MathF.Abs(f) * ScaleToInf * ScaleToZero;

        uint w = BitConverter.SingleToUInt32Bits(f);
        uint shl1W = w + w;
        uint sign = w & 0x80000000u;
        uint bias = shl1W & 0xFF000000u;
        if (bias < 0x71000000u) bias = 0x71000000u; // values below f16's normal range share one bias

        b = BitConverter.UInt32BitsToSingle((bias >> 1) + 0x07800000u) + b;
        uint bits = BitConverter.SingleToUInt32Bits(b);
        uint expBits = (bits >> 13) & 0x00007C00u;
        uint mantissaBits = bits & 0x00000FFFu;
        uint nonSign = expBits + mantissaBits;
        return (ushort)((sign >> 16) | (shl1W > 0xFF000000u ? 0x7E00u : nonSign));
    }
}

/// <summary>
/// bfloat16 conversions, bit-identical with ggml's <c>ggml_compute_bf16_to_fp32</c> and
/// <c>ggml_compute_fp32_to_bf16</c>: round to nearest even, subnormals kept, NaN made quiet.
/// </summary>
public static class Bf16
{
    /// <summary>The f32 value of a bf16 bit pattern: bf16 is the top half of an f32.</summary>
    public static float ToSingle(ushort b) => BitConverter.UInt32BitsToSingle((uint)b << 16);

    public static ushort FromSingle(float f)
    {
        uint u = BitConverter.SingleToUInt32Bits(f);
        if ((u & 0x7FFFFFFFu) > 0x7F800000u)
            return (ushort)((u >> 16) | 64); // NaN: keep sign and top payload, set the quiet bit
        return (ushort)((u + (0x7FFFu + ((u >> 16) & 1))) >> 16);
    }
}

/// <summary>
/// What one scan of an F16 matrix found: whether every weight is finite. A matrix that is (every real model's) has
/// its rows widened by <see cref="DotAvx2.F16Finite"/>, which leaves out the inf/NaN handling; the scan is made once
/// per matrix and kept with it (<see cref="Models.WeightTensor"/>'s packed form).
/// </summary>
internal sealed class HalfRange
{
    HalfRange(int maxExponent) => MaxExponent = maxExponent;

    /// <summary>No weight is ±inf or NaN (f16 exponent 31).</summary>
    public bool Finite => MaxExponent < 31;

    /// <summary>The largest exponent field among the weights (0…31).</summary>
    public int MaxExponent { get; }

    /// <summary>Whether the matrix can be lifted (<see cref="LiftedF16"/>): finite, every |w| &lt; 64.</summary>
    public bool Liftable => MaxExponent <= LiftedF16.MaxExponent;

    LiftedF16? _lifted;
    readonly Lock _liftLock = new();

    /// <summary>The matrix times 2^10 (<see cref="LiftedF16"/>), made on the first call; null where it is not <see cref="Liftable"/>.</summary>
    public LiftedF16? Lifted(Models.WeightTensor w) => !Liftable ? null : Volatile.Read(ref _lifted) ?? MakeLifted(w);

    // Asked by every product: the hot path above is one read; the closure is made only here.
    LiftedF16 MakeLifted(Models.WeightTensor w)
    {
        lock (_liftLock) return _lifted ??= LiftedF16.Of(w);
    }

    PackedFloat? _tiles;
    bool _tilesMade;
    readonly Lock _tilesLock = new();

    /// <summary>
    /// The matrix repacked for decode (<see cref="PackedFloat"/>), made on the first call: finite halves as they are,
    /// or lifted a tile at a time where subnormals are slow (<see cref="LiftedF16.SubnormalsAreSlow"/>) and it lifts
    /// (no <see cref="Lifted"/> copy is made for it); null where it holds infinities or NaNs, or where its shape or the
    /// memory left does not allow the copy.
    /// </summary>
    public PackedFloat? Tiles(Models.WeightTensor w)
    {
        if (Volatile.Read(ref _tilesMade)) return _tiles;
        lock (_tilesLock)
        {
            if (!_tilesMade)
            {
                if (Finite && PackedFloat.Packs(w.Rows, w.Columns, sizeof(ushort)))
                {
                    bool lift = LiftedF16.SubnormalsAreSlow && Liftable;
                    unsafe { _tiles = PackedFloat.PackHalves(GgmlType.F16, w.Data, w.RowBytes, checked((int)w.Rows), (int)w.Columns, lift); }
                }
                Volatile.Write(ref _tilesMade, true);
            }
        }
        return _tiles;
    }

    public static HalfRange Scan(ReadOnlySpan<byte> f16)
    {
        var h = MemoryMarshal.Cast<byte, ushort>(f16);
        var exponent = Vector512.Create((ushort)0x7C00);
        var max = Vector512<ushort>.Zero;
        int i = 0;
        for (; i + 32 <= h.Length; i += 32) max = Vector512.Max(max, Vector512.Create(h.Slice(i, 32)) & exponent);
        int top = 0;
        for (int k = 0; k < Vector512<ushort>.Count; k++) top = Math.Max(top, max[k]);
        for (; i < h.Length; i++) top = Math.Max(top, h[i] & 0x7C00);
        return new HalfRange(top >> 10);
    }
}

/// <summary>How a kernel widens f16 values (weights, block scales) to f32, eight or sixteen at a time (.NET 10 has no
/// <c>vcvtph2ps</c>); a type argument, so that each kernel is compiled for one way with no test in its loop.</summary>
internal unsafe interface IHalfWidening
{
    /// <summary>The 16 halves at <paramref name="p"/> (AVX-512F).</summary>
    static abstract Vector512<float> Widen16(byte* p);
    /// <summary>The 8 halves at <paramref name="p"/> (AVX2).</summary>
    static abstract Vector256<float> Widen8(byte* p);
}

/// <summary>
/// Exact for every finite f16, subnormals included: sign-extended to 32 bits and shifted left 13, the sign lands in
/// bit 31, copies of it in bits 30…28 (cleared), the exponent and mantissa in f32's fields; times 2^112 (f16's
/// bias to f32's) that is the value. An exponent of 31 (inf, NaN) would come out finite: <see cref="ExactHalves"/>,
/// or a scan that rules them out (<see cref="HalfRange"/>, or each format's own at repacking).
/// </summary>
internal readonly unsafe struct FiniteHalves : IHalfWidening
{
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector512<float> Widen16(byte* p)
    {
        var h = Avx512F.ConvertToVector512Int32(Avx.LoadVector256((short*)p));
        return (Vector512.ShiftLeft(h, 13) & Vector512.Create(unchecked((int)0x8FFFE000))).AsSingle() * Vector512.Create(0x77800000).AsSingle();
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector256<float> Widen8(byte* p)
    {
        var h = Avx2.ConvertToVector256Int32((short*)p);
        return (Vector256.ShiftLeft(h, 13) & Vector256.Create(unchecked((int)0x8FFFE000))).AsSingle() * Vector256.Create(0x77800000).AsSingle();
    }
}

/// <summary><see cref="FiniteHalves"/> with inf and NaN given f32's all-ones exponent (sign and payload kept).</summary>
internal readonly unsafe struct ExactHalves : IHalfWidening
{
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector512<float> Widen16(byte* p)
    {
        var h = Avx512F.ConvertToVector512Int32(Avx.LoadVector256((short*)p));
        var special = Vector512.Equals(h & Vector512.Create(0x7C00), Vector512.Create(0x7C00));
        var bits = Vector512.ShiftLeft(h, 13) & Vector512.Create(unchecked((int)0x8FFFE000));
        return Vector512.ConditionalSelect(special.AsSingle(), (bits | Vector512.Create(0x7F800000)).AsSingle(), bits.AsSingle() * Vector512.Create(0x77800000).AsSingle());
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector256<float> Widen8(byte* p)
    {
        var h = Avx2.ConvertToVector256Int32((short*)p);
        var special = Vector256.Equals(h & Vector256.Create(0x7C00), Vector256.Create(0x7C00));
        var bits = Vector256.ShiftLeft(h, 13) & Vector256.Create(unchecked((int)0x8FFFE000));
        return Vector256.ConditionalSelect(special.AsSingle(), (bits | Vector256.Create(0x7F800000)).AsSingle(), bits.AsSingle() * Vector256.Create(0x77800000).AsSingle());
    }
}
