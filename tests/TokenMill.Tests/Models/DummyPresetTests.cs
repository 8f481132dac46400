using System.Runtime.InteropServices;
using TokenMill.Models;
using TokenMill.Models.Dummy;
using TokenMill.Models.Gguf;
using TokenMill.Quantization;
using TokenMill.Tokenization;

namespace TokenMill.Tests.Models;

/// <summary>
/// The dummy presets in the shapes of real family members: parameter counts against the published model sizes (an
/// independent check of every width), <c>info</c>'s description, and a forward pass through one layer of each new
/// architecture at full width with the family's real tokenizer (one layer keeps the memory to a few hundred MB).
/// </summary>
public class DummyPresetTests
{
    // Loaded once for the class: Gemma's tokenizer.json alone is 33 MB.
    static readonly Dictionary<string, Lazy<ITokenizer>> Tokenizers = new[] { "qwen3", "gemma3" }.ToDictionary(f => f,
        f => new Lazy<ITokenizer>(() => HfTokenizerLoader.Load(Path.GetDirectoryName(TestData.Require($"hf-tokenizers/{f}/tokenizer.json"))!)));

    static System.Text.Json.JsonElement Info(string preset)
    {
        var stdout = new StringWriter();
        Assert.Equal(0, TokenMill.Server.Cli.Cli.Run(["info", "dummy:" + preset, "--json"], stdout, new StringWriter()));
        return System.Text.Json.JsonDocument.Parse(stdout.ToString()).RootElement;
    }

    [Theory]
    [InlineData("qwen3-0.6b", 596_049_920L)]   // Qwen/Qwen3-0.6B: 0.6 B (safetensors: 596 M with the tied embedding once)
    [InlineData("qwen3-8b", 8_190_735_360L)]   // Qwen/Qwen3-8B: 8.2 B
    [InlineData("gemma3-1b", 999_885_952L)]    // google/gemma-3-1b-it: 999,885,952
    [InlineData("phi3-mini", 3_821_079_552L)]  // microsoft/Phi-3-mini-4k-instruct: 3.82 B
    [InlineData("llama-3.1-8b", 8_030_261_248L)] // meta-llama/Llama-3.1-8B: 8.03 B
    public void Preset_has_the_parameter_count_of_the_real_model(string preset, long expected) =>
        Assert.Equal(expected, Info(preset).GetProperty("parameters").GetInt64());

    [Fact]
    public void Info_prints_the_shape_of_qwen3_0_6b()
    {
        var stdout = new StringWriter();
        Assert.Equal(0, TokenMill.Server.Cli.Cli.Run(["info", "dummy:qwen3-0.6b"], stdout, new StringWriter()));
        string text = stdout.ToString();
        Assert.Contains("architecture               qwen3", text);
        Assert.Contains("layers                     28", text);
        Assert.Contains("embedding length           1024", text);
        Assert.Contains("heads                      16 query, 8 key/value, head dim 128", text);
        Assert.Contains("vocab size                 151936", text);
        Assert.Contains("context length             40960", text);
        Assert.Contains("Neox, base 1000000", text);
        Assert.Contains("596.05 M", text);
        // 28 layers × 2 (K, V) × 8 heads × 128 × 4 bytes (f32 cache) = 229,376 bytes per token.
        Assert.Equal(229_376, Info("qwen3-0.6b").GetProperty("kv_bytes_per_token").GetInt64());
    }

    [Fact]
    public void Info_describes_gemma3s_sliding_window_layers()
    {
        string rope = Info("gemma3-1b").GetProperty("rope").GetString()!;
        Assert.Equal("Neox, base 1000000, sliding window 512 on 5 of every 6 layers (their rope base 10000)", rope);
    }

    [SkippableTheory]
    [InlineData("qwen3-0.6b", "qwen3", 9707)]   // "Hello" in Qwen's vocabulary
    [InlineData("gemma3-1b", "gemma3", 9259)]   // "Hello" in Gemma's
    public void One_layer_of_the_preset_runs_with_the_real_tokenizer(string preset, string family, int helloId)
    {
        var tokenizer = Tokenizers[family].Value;
        using var model = DummyModelFactory.Create("dummy:" + preset, GgmlType.Q4_0, seed: 1, tokenizer, blockCount: 1);
        var full = DummyPresets.All[preset].Config;
        Assert.Equal(full with { BlockCount = 1 }, model.Config with { RopeFreqFactors = full.RopeFreqFactors });
        // Qwen3's 151,669 tokens are padded to the 151,936 rows; Gemma's tokenizer keeps <image_soft_token> beyond its rows.
        Assert.Equal(family == "gemma3" ? 262145 : full.VocabSize, model.Tokenizer.VocabSize);
        int[] prompt = model.Tokenizer.Encode("Hello", addSpecial: true);
        Assert.Equal(helloId, prompt[^1]);

        using var forward = new TokenMill.Backends.Cpu.CpuForward(model, maxBatchTokens: 8);
        using var seq = new TokenMill.Generation.SingleSequence(forward, 8);
        var logits = new float[full.VocabSize];
        seq.Feed(prompt, logits);
        Assert.All(logits, l => Assert.True(float.IsFinite(l)));
        // Any id the model can produce decodes without error (padding rows decode to nothing).
        Assert.Equal(family == "gemma3" ? "<unused6241>" : "", model.Tokenizer.Decode([full.VocabSize - 1]));

        if (family != "gemma3") return;
        // A prompt naming a token the model has no row for (Gemma 3 1B and the multimodal <image_soft_token>) is refused, not run.
        using var engine = new TokenMill.Core.LlmEngine(model, new TokenMill.Core.EngineOptions { MaxModelLen = 64, NumKvBlocks = 8 });
        var e = Assert.Throws<TokenMill.Core.InvalidRequestException>(() =>
            engine.Generate(new TokenMill.Core.GenerationRequest { Prompt = "a <image_soft_token>" }));
        Assert.Contains("262144", e.Message);
        Assert.Contains("<image_soft_token>", e.Message);
    }

    /// <summary>
    /// F32 weights holding another type's values (<c>--dummy-values</c>) are that type's model dequantized, bit for
    /// bit: the same random values rounded through it.
    /// </summary>
    [Theory]
    [InlineData(GgmlType.BF16)]
    [InlineData(GgmlType.F16)]
    [InlineData(GgmlType.Q8_0)]
    public void F32_weights_of_another_types_values_are_that_model_dequantized(GgmlType values)
    {
        using var f32 = DummyModelFactory.Create("dummy:qwen3-0.6b", GgmlType.F32, seed: 9, blockCount: 1, valuesOf: values);
        using var typed = DummyModelFactory.Create("dummy:qwen3-0.6b", values, seed: 9, blockCount: 1);
        foreach (var (a, b) in new[] { (f32.Weights.Layers[0].Wk, typed.Weights.Layers[0].Wk), (f32.Weights.Layers[0].Down, typed.Weights.Layers[0].Down) })
        {
            Assert.Equal(GgmlType.F32, a.Type);
            var expected = new float[b.Columns];
            for (long r = 0; r < a.Rows; r += 37)
            {
                Dequantize.Row(b.Type, b.Row(r), expected);
                Assert.Equal(expected.Select(BitConverter.SingleToInt32Bits), MemoryMarshal.Cast<byte, float>(a.Row(r)).ToArray().Select(BitConverter.SingleToInt32Bits));
            }
        }
    }

    [Fact]
    public void Phi3_mini_builds_with_the_fitted_tokenizer()
    {
        using var model = DummyModelFactory.Create("dummy:phi3-mini", GgmlType.Q4_0, seed: 1, blockCount: 1);
        Assert.Equal(32064, model.Tokenizer.VocabSize);
        Assert.Equal(96, model.Config.HeadDim);
        Assert.Equal(32 * 96, model.Weights.Layers[0].Wq.Rows);
        Assert.Equal(3072, model.Weights.Layers[0].Wq.Columns);
    }

    [SkippableFact]
    public void A_tokenizer_larger_than_the_vocabulary_is_refused_with_both_sizes()
    {
        var gemma = Tokenizers["gemma3"].Value;
        var e = Assert.Throws<ArgumentException>(() => DummyModelFactory.Create("dummy:qwen3-0.6b", GgmlType.Q4_0, tokenizer: gemma, blockCount: 1));
        Assert.Contains("262145 tokens", e.Message);
        Assert.Contains("151936", e.Message);
    }
}
