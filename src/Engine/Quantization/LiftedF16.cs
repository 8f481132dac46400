using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;
using TokenMill.Models;
using TokenMill.Models.Gguf;

namespace TokenMill.Quantization;

/// <summary>
/// A finite F16 matrix times 2^<see cref="Lift"/>, kept as f16: every nonzero value then a normal half, so that the
/// kernels that read halves unrebiased (<see cref="F16UnrebiasedRows"/>, against activations times 2^(112 − 10))
/// never hand a subnormal f32 to a multiply-add.
/// </summary>
/// <remarks>
/// <para>
/// Why: read unrebiased, an f16 subnormal (|w| &lt; 2^−14 — a few in every thousand weights of a real matrix) is an f32
/// subnormal, and so it is in the rebiasing multiply of <see cref="FiniteHalves"/>. Intel cores take a microcode assist
/// for every such operand (a C loop of 512-bit FMAs with one subnormal lane ran 55× slower on this project's Xeon);
/// AMD's handle them at full speed. On an Intel AVX-512 Xeon the F16 kernels ran about three times slower than their
/// instructions allow — F16 prefill below a quarter of F32's.
/// </para>
/// <para>
/// Exact: w·2^10 is a power-of-two scaling (a normal half's exponent + 10; a subnormal m·2^−24 becomes the normal
/// m·2^−14), and (w·2^10·2^−112)·(x·2^102) is the same real number as w·x, so every product and sum is the bits of
/// the plain kernels. A matrix with some |w| ≥ 64 (exponent field above <see cref="MaxExponent"/>) would overflow and
/// is not lifted; activations of 2^26 or more cannot be scaled, and such a product reads the matrix as it is.
/// </para>
/// </remarks>
internal sealed unsafe class LiftedF16
{
    /// <summary>The power of two the values are multiplied by: f16's subnormals (≥ 2^−24) become normal (≥ 2^−14).</summary>
    public const int Lift = 10;

    /// <summary>The largest f16 exponent field a liftable matrix holds: |w| &lt; 2^6, so |w|·2^10 stays finite.</summary>
    public const int MaxExponent = 30 - Lift;

    readonly byte[] _data; // pinned

    LiftedF16(byte[] data) => _data = data;

    /// <summary>The lifted halves, row-major as the matrix's.</summary>
    public byte* Data => (byte*)Unsafe.AsPointer(ref MemoryMarshal.GetArrayDataReference(_data));

    /// <summary>
    /// Whether subnormal operands cost this machine's floating-point units a microcode assist: Intel's do (every core
    /// from Sandy Bridge to Emerald Rapids), AMD's Zen cores do not, and there the lifted copy would only cost memory.
    /// </summary>
    public static bool SubnormalsAreSlow { get; } = IsIntel();

    static bool IsIntel()
    {
        if (!X86Base.IsSupported) return false;
        var (_, ebx, ecx, edx) = X86Base.CpuId(0, 0);
        return ebx == 0x756E6547 && edx == 0x49656E69 && ecx == 0x6C65746E; // "Genu" "ineI" "ntel"
    }

    /// <summary>Lifts <paramref name="w"/> (finite F16, every exponent field at most <see cref="MaxExponent"/>).</summary>
    public static LiftedF16 Of(WeightTensor w)
    {
        if (w.Type != GgmlType.F16) throw new ArgumentException($"LiftedF16: {w} is not F16", nameof(w));
        long halves = w.Rows * w.Columns;
        var data = Memory.NativeBuffer.PinnedStreamingArray(halves * sizeof(ushort), "LiftedF16.Of");
        var source = w.AllBytes();
        // Rows in parallel, as NarrowedF32's copy.
        fixed (byte* src = source)
        {
            byte* s = src;
            int cols = checked((int)w.Columns);
            Parallel.For(0, w.Rows, r =>
            {
                if (!LiftRow(new ReadOnlySpan<ushort>((ushort*)s + r * cols, cols), MemoryMarshal.Cast<byte, ushort>(data.AsSpan(checked((int)(r * cols * sizeof(ushort))), cols * sizeof(ushort)))))
                    throw new ArgumentException($"LiftedF16: {w} holds a value of 64 or more, or inf or NaN (row {r})", nameof(w));
            });
        }
        return new LiftedF16(data);
    }

    /// <summary>to = from·2^10, exactly: false where some value's exponent field is above <see cref="MaxExponent"/>.</summary>
    internal static bool LiftRow(ReadOnlySpan<ushort> from, Span<ushort> to)
    {
        var exponent = Vector512.Create((ushort)0x7C00);
        var limit = Vector512.Create((ushort)(MaxExponent << 10));
        var add = Vector512.Create((ushort)(Lift << 10));
        int i = 0;
        // Avx512BW rather than Vector512.IsHardwareAccelerated: .NET reports the latter false on the Intel cores that
        // lower their clock for 512-bit work (Skylake-SP, Cascade Lake), whose instructions still run it.
        if (Avx512BW.IsSupported)
            for (; i + 32 <= from.Length; i += 32)
            {
                var v = Vector512.Create(from.Slice(i, 32));
                var e = v & exponent;
                if (Vector512.GreaterThanAny(e, limit)) return false;
                var zeroExponent = Vector512.Equals(e, Vector512<ushort>.Zero);
                // A normal half: exponent + 10. Zero stays as it is; a subnormal is done one by one (a few per thousand).
                Vector512.ConditionalSelect(zeroExponent, v, v + add).CopyTo(to.Slice(i, 32));
                if (Vector512.AnyWhereAllBitsSet(zeroExponent & Vector512.GreaterThan(v & Vector512.Create((ushort)0x3FF), Vector512<ushort>.Zero)))
                    for (int k = i; k < i + 32; k++) to[k] = LiftOne(from[k]);
            }
        for (; i < from.Length; i++)
        {
            if ((from[i] & 0x7C00) > MaxExponent << 10) return false;
            to[i] = LiftOne(from[i]);
        }
        return true;
    }

    /// <summary>One half times 2^10 (exponent field at most <see cref="MaxExponent"/>).</summary>
    internal static ushort LiftOne(ushort h)
    {
        if ((h & 0x7C00) != 0) return (ushort)(h + (Lift << 10));
        if ((h & 0x3FF) == 0) return h; // ±0
        // m·2^−24 → m·2^−14: exact in f32 and representable as a normal half (m has at most 10 significant bits).
        return BitConverter.HalfToUInt16Bits((Half)((float)BitConverter.UInt16BitsToHalf(h) * (1 << Lift)));
    }
}
