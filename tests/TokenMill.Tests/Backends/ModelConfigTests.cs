using TokenMill.Models;
using TokenMill.Models.Dummy;
using TokenMill.Models.Gguf;

namespace TokenMill.Tests.Backends;

public class ModelConfigTests
{
    [SkippableFact]
    public void Llama3_rope_factors_match_the_converters_output_in_arch_llama3()
    {
        // arch-llama3 was converted with factor 8, low 1, high 4, original context 64 (see arch/README.md).
        using var f = GgufFile.Open(TestData.Require("arch/arch-llama3.gguf"));
        var config = ModelConfig.FromGguf(f);
        var ours = DummyPresets.Llama3RopeFactors(ropeBase: 500000f, headDim: 16, factor: 8f, lowFreqFactor: 1f, highFreqFactor: 4f, originalContext: 64);
        Assert.NotNull(config.RopeFreqFactors);
        Assert.Equal(config.RopeFreqFactors!.Length, ours.Length);
        for (int i = 0; i < ours.Length; i++) Assert.Equal(config.RopeFreqFactors[i], ours[i], 1e-4f);
    }

    [SkippableFact]
    public void Reads_stories260K_shape()
    {
        using var f = GgufFile.Open(TestData.Require("models/stories260K.gguf"));
        var c = ModelConfig.FromGguf(f);
        Assert.Equal((512, 64, 5, 172, 8, 4, 8), (c.VocabSize, c.EmbeddingLength, c.BlockCount, c.FeedForwardLength, c.HeadCount, c.HeadCountKv, c.HeadDim));
        Assert.Equal(RopeType.Norm, c.RopeType);
        Assert.Equal(1e-5f, c.RmsNormEps);
    }

    [Fact]
    public void Unsupported_architecture_is_named_in_the_error()
    {
        var dir = Directory.CreateTempSubdirectory("tokenmill-arch").FullName;
        try
        {
            var path = TokenMill.Tests.Models.GgufTestWriter.Save(dir, "mamba.gguf",
                new TokenMill.Tests.Models.GgufTestWriter().Add("general.architecture", "mamba").Build());
            using var f = GgufFile.Open(path);
            var e = Assert.Throws<NotSupportedException>(() => ModelConfig.FromGguf(f));
            Assert.Contains("'mamba'", e.Message);
            Assert.Contains("mamba.gguf", e.Message);
        }
        finally
        {
            Directory.Delete(dir, recursive: true);
        }
    }

    [Fact]
    public void Every_dummy_preset_has_a_valid_shape()
    {
        foreach (var (name, preset) in DummyPresets.All)
        {
            preset.Config.Validate(name);
            Assert.Equal(0, preset.Config.EmbeddingLength % 32); // whole Q8_0/Q4_0 blocks per row
            Assert.Equal(0, preset.Config.FeedForwardLength % 32);
        }
    }
}
