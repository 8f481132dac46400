using TokenMill.Core;
using TokenMill.Models;
using TokenMill.Models.Dummy;
using TokenMill.Models.Gguf;
using TokenMill.Sampling;
using TokenMill.Tests.Core;

namespace TokenMill.Tests.Backends;

/// <summary>
/// A model in Q4_K / Q6_K runs the K-quant integer kernels in every product; continuous batching must not change
/// what a request gets (the kernels give each activation row the same arithmetic whatever its batch mates). In F16
/// a request decoding alone takes the one-row kernel (<see cref="TokenMill.Quantization.DotAvx2.F16Finite"/> on
/// AVX-512) and one decoding in a batch the tile kernel: the same products summed in another order, so the same
/// greedy tokens, not the same bits.
/// </summary>
public class KQuantForwardTests
{
    /// <summary>TinyLlama-1.1B's widths (2048, FFN 5632, 4 KV heads of 64: all whole super-blocks of 256), one layer, a 2048-token vocabulary.</summary>
    static Model SmallTinyLlama(GgmlType dtype)
    {
        var preset = DummyPresets.All["tinyllama-1.1b"];
        return DummyModelFactory.Create(preset with { Config = preset.Config with { BlockCount = 1, VocabSize = 2048, ContextLength = 256 } },
            "tinyllama-1.1b-1layer", dtype, seed: 3);
    }

    static GenerationRequest Greedy(string prompt) =>
        new() { Prompt = prompt, Sampling = SamplingParams.Greedy with { MaxTokens = 12, IgnoreEos = true } };

    [Theory]
    [InlineData(GgmlType.Q4_K)]
    [InlineData(GgmlType.Q6_K)]
    [InlineData(GgmlType.F16)]
    public async Task Greedy_outputs_of_a_batch_equal_each_prompt_run_alone(GgmlType dtype)
    {
        using var model = SmallTinyLlama(dtype);
        var prompts = LlmEngineTests.Prompts.Take(9).ToArray();
        int[][] alone;
        using (var single = new LlmEngine(model, new EngineOptions { MaxNumSeqs = 1, MaxModelLen = 128 }))
            alone = (await Task.WhenAll(prompts.Select(p => single.CompleteAsync(Greedy(p))))).Select(r => r.TokenIds).ToArray();
        using var batched = new LlmEngine(model, new EngineOptions { MaxModelLen = 128, MaxNumBatchedTokens = 48 });
        var together = (await Task.WhenAll(prompts.Select(p => batched.CompleteAsync(Greedy(p))))).Select(r => r.TokenIds).ToArray();
        for (int i = 0; i < prompts.Length; i++) Assert.Equal(alone[i], together[i]);
        // Not a degenerate model that always says the same thing: the prompts lead to different continuations.
        Assert.True(alone.Select(t => string.Join(",", t)).Distinct().Count() > 1);
    }

    [Fact]
    public void A_preset_whose_widths_are_not_whole_super_blocks_is_refused_with_the_width()
    {
        // Qwen2.5-0.5B's embedding length is 896 = 3.5 × 256.
        var e = Assert.Throws<ArgumentException>(() => DummyModelFactory.Create("dummy:qwen2.5-0.5b", GgmlType.Q4_K, blockCount: 1));
        Assert.Contains("896", e.Message);
        Assert.Contains("256", e.Message);
    }
}
