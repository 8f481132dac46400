using TokenMill.Benchmarks;
using TokenMill.Quantization;
using TokenMill.Models.Gguf;

namespace TokenMill.Tests.Quantization;

/// <summary>
/// Every kernel benchmark computes what it claims: one run of each, at each of its parameters, against the
/// f64 product of the dequantized weights (so a benchmark cannot silently time a wrong or empty path).
/// </summary>
public class BenchmarkSmokeTests
{
    public static TheoryData<GgmlType> MatVecTypes => [GgmlType.F32, GgmlType.F16, GgmlType.BF16, GgmlType.Q8_0, GgmlType.Q4_0, GgmlType.Q4_K, GgmlType.Q6_K];

    [Theory]
    [MemberData(nameof(MatVecTypes))]
    public void MatVec_benchmark_computes_the_product(GgmlType type) =>
        Assert.InRange(new MatVecBenchmarks { Type = type }.Check(), 0, 1e-4f);

    [Theory]
    [InlineData(GgmlType.F32)]
    [InlineData(GgmlType.F16)]
    [InlineData(GgmlType.BF16)]
    [InlineData(GgmlType.Q8_0)]
    [InlineData(GgmlType.Q4_K)]
    public void MatMul_benchmark_computes_the_product(GgmlType type) =>
        Assert.InRange(new MatMulBenchmarks { Type = type, N = 4 }.Check(), 0, 1e-4f);

    [SkippableTheory]
    [InlineData(GgmlType.F32)]
    [InlineData(GgmlType.F16)]
    [InlineData(GgmlType.BF16)]
    public void Panel_benchmark_gets_the_tile_kernels_bits(GgmlType type)
    {
        Skip.IfNot(TileGemm.IsSupported, "the panel kernel needs AVX-512F");
        Assert.InRange(new PanelGemmBenchmarks { Type = type, N = 30 }.Check(), 0, 1e-4f);
    }

    [Theory]
    [InlineData(GgmlType.Q8_0, 1)]
    [InlineData(GgmlType.Q4_0, 4)]
    [InlineData(GgmlType.Q8_0, 9)]
    [InlineData(GgmlType.Q4_0, 9)]
    public void Integer_benchmarks_compute_the_product_within_activation_rounding(GgmlType type, int n) =>
        // 8-bit activations: each block's rounding error is at most half a step of 1/127 of its largest value.
        Assert.InRange(new IntegerDotBenchmarks { Type = type, N = n }.Check(), 0, 2e-2f);

    [Theory]
    [InlineData(GgmlType.Q4_K, 1)]
    [InlineData(GgmlType.Q6_K, 5)]
    public void KQuant_integer_benchmark_computes_the_product_within_activation_rounding(GgmlType type, int n) =>
        Assert.InRange(new KQuantDotBenchmarks { Type = type, N = n }.Check(), 0, 2e-2f);

    [Theory]
    [InlineData(128)]
    [InlineData(2048)]
    public void Attention_benchmark_forms_agree(int positions)
    {
        Assert.InRange(new AttentionBenchmarks { Positions = positions }.Check(), 0, 1e-5f);
        Assert.True(new AttentionBenchmarks { Positions = positions }.CheckPrefillRows());
        // Values in [-1, 1] rounded to f16 (half an ulp ≤ 2^-12): the weighted average moves by less than that; Q8_0
        // (half a step of max|x|/127 ≤ 1/254 for each value) by less than 4e-3.
        Assert.InRange(new AttentionBenchmarks { Positions = positions }.CheckStoredCache(TokenMill.KvCache.KvCacheDtype.F16), 1e-7f, 2.5e-4f);
        Assert.InRange(new AttentionBenchmarks { Positions = positions }.CheckStoredCache(TokenMill.KvCache.KvCacheDtype.Q8_0), 1e-6f, 4e-3f);
    }

    [Theory]
    [InlineData(GgmlType.Q4_0, 1)]
    [InlineData(GgmlType.Q8_0, 1)]
    [InlineData(GgmlType.Q4_0, 4)]
    [InlineData(GgmlType.Q8_0, 5)]
    public void Decode_streaming_benchmark_gets_the_same_bits_asking_ahead_or_not(GgmlType type, int n)
    {
        if (!TokenMill.Quantization.PackedQ4_0.IsSupported) return; // the repacked kernels need AVX2 and FMA
        Assert.Equal(0, new DecodeStreamingBenchmarks { Type = type, N = n, Matrices = 2 }.Check());
    }

    [SkippableTheory]
    [InlineData(GgmlType.F16, 32, 16)]
    [InlineData(GgmlType.F16, 32, 12)]
    [InlineData(GgmlType.BF16, 16, 16)]
    [InlineData(GgmlType.F32, 64, 12)]
    [InlineData(GgmlType.F16, 1, 16)]
    [InlineData(GgmlType.F32, 1, 12)]
    public void Half_tile_benchmark_gets_the_tile_kernels_bits(GgmlType type, int n, int blockRows)
    {
        Skip.IfNot(TileGemm.IsSupported, "the packed kernel needs AVX-512F");
        Assert.Equal(0, new HalfTileBenchmarks { Type = type, N = n, BlockRows = blockRows, Matrices = 1 }.Check());
    }

    [Fact]
    public void F16_decode_row_benchmark_forms_agree()
    {
        if (!System.Runtime.Intrinsics.X86.Avx512F.IsSupported) return; // the previous form is the AVX-512 loop
        Assert.InRange(new F16DecodeRowBenchmarks().Check(), 0, 1e-5f);
    }
}

public class Fp16TableTests
{
    [Fact]
    public unsafe void Table_holds_every_f16_value()
    {
        for (int h = 0; h < 65536; h++)
        {
            float expected = TokenMill.Quantization.Fp16.ToSingle((ushort)h), got = TokenMill.Quantization.Fp16.Table[h];
            Assert.True(BitConverter.SingleToUInt32Bits(expected) == BitConverter.SingleToUInt32Bits(got), $"f16 0x{h:X4}: {got} instead of {expected}");
        }
    }
}
