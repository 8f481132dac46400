using System.Runtime.Intrinsics.X86;

namespace TokenMill.Quantization;

/// <summary>
/// Which integer kernel multiplies a repacked matrix (<see cref="PackedQ8_0"/>, <see cref="PackedQ4_K"/>): the same
/// bytes, the same exact integer block dots, the same f32 steps — the same bits either way.
/// </summary>
internal enum PackedKernel
{
    /// <summary>AVX-VNNI's 256-bit <c>vpdpbusd</c> (one instruction per 32 products), one group of eight rows.</summary>
    Vnni,

    /// <summary>
    /// AVX-512BW's 512-bit <c>vpmaddubsw</c> on two groups at once: for the AVX-512 cores without AVX-VNNI (Zen 4, Ice
    /// Lake and the others before Sapphire Rapids, or VMs that hide it), whose 512-bit EVEX <c>vpdpbusd</c> .NET 10
    /// does not expose.
    /// </summary>
    Avx512BW,
}

/// <summary>Where each <see cref="PackedKernel"/> runs, and which one a matrix gets.</summary>
internal static class PackedKernels
{
    /// <summary>Whether some packed integer kernel runs here: AVX2 and FMA, with AVX-VNNI or AVX-512BW.</summary>
    public static bool AnySupported => Supports(PackedKernel.Vnni) || Supports(PackedKernel.Avx512BW);

    /// <summary>Whether <paramref name="kernel"/> runs here.</summary>
    public static bool Supports(PackedKernel kernel) => Avx2.IsSupported && Fma.IsSupported
        && (kernel == PackedKernel.Vnni ? AvxVnni.IsSupported : Avx512BW.IsSupported);

    /// <summary>vpdpbusd where AVX-VNNI has it (about half the instructions of the 512-bit kernel), AVX-512BW otherwise.</summary>
    public static PackedKernel Preferred => AvxVnni.IsSupported ? PackedKernel.Vnni : PackedKernel.Avx512BW;
}
