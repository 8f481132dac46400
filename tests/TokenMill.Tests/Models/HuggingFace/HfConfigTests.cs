using System.Text.Json;
using TokenMill.Models;
using TokenMill.Models.Dummy;
using TokenMill.Models.HuggingFace;
using TokenMill.Models.Safetensors;

namespace TokenMill.Tests.Models.HuggingFace;

/// <summary><c>config.json</c> files as transformers writes them → <see cref="ModelConfig"/>, and what the loader refuses.</summary>
public sealed class HfConfigTests : IDisposable
{
    readonly DirectoryInfo _dir = Directory.CreateTempSubdirectory("tokenmill-hfcfg-");

    public void Dispose() => _dir.Delete(recursive: true);

    static (ModelConfig Config, bool Tied) Parse(string json)
    {
        using var doc = JsonDocument.Parse(json);
        return HfConfig.Parse("config.json", doc.RootElement);
    }

    // meta-llama/Llama-3.1-8B's config.json (the fields that matter)
    const string Llama31 = """
        {"architectures": ["LlamaForCausalLM"], "attention_bias": false, "hidden_act": "silu", "hidden_size": 4096,
         "intermediate_size": 14336, "max_position_embeddings": 131072, "mlp_bias": false, "model_type": "llama",
         "num_attention_heads": 32, "num_hidden_layers": 32, "num_key_value_heads": 8, "rms_norm_eps": 1e-05,
         "rope_scaling": {"factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                          "original_max_position_embeddings": 8192, "rope_type": "llama3"},
         "rope_theta": 500000.0, "tie_word_embeddings": false, "torch_dtype": "bfloat16", "vocab_size": 128256}
        """;

    [Fact]
    public void Llama_3_1_config_matches_the_dummy_preset_of_the_same_model()
    {
        var (c, tied) = Parse(Llama31);
        var preset = DummyPresets.All["llama-3.1-8b"].Config;
        Assert.False(tied);
        Assert.Equal((preset.VocabSize, preset.EmbeddingLength, preset.BlockCount, preset.FeedForwardLength, preset.HeadCount, preset.HeadCountKv, preset.HeadDim),
            (c.VocabSize, c.EmbeddingLength, c.BlockCount, c.FeedForwardLength, c.HeadCount, c.HeadCountKv, c.HeadDim));
        Assert.Equal((preset.ContextLength, preset.RmsNormEps, preset.RopeFreqBase), (c.ContextLength, c.RmsNormEps, c.RopeFreqBase));
        Assert.Equal(preset.RopeFreqFactors, c.RopeFreqFactors);
        Assert.Equal(RopeType.Neox, c.RopeType); // unpermuted HF rows: see HfConfig
        Assert.Equal("llama", c.Architecture);
    }

    [Fact]
    public void Qwen_configs_read_head_dim_ties_and_defaults()
    {
        // Qwen/Qwen3-0.6B
        var (q3, tied3) = Parse("""
            {"architectures": ["Qwen3ForCausalLM"], "attention_bias": false, "head_dim": 128, "hidden_act": "silu",
             "hidden_size": 1024, "intermediate_size": 3072, "max_position_embeddings": 40960, "num_attention_heads": 16,
             "num_hidden_layers": 28, "num_key_value_heads": 8, "rms_norm_eps": 1e-06, "rope_scaling": null,
             "rope_theta": 1000000, "sliding_window": null, "tie_word_embeddings": true, "vocab_size": 151936}
            """);
        Assert.True(tied3);
        Assert.Equal(("qwen3", 128, 16 * 128, 8 * 128, 1e6f), (q3.Architecture, q3.HeadDim, q3.QDim, q3.KvDim, q3.RopeFreqBase));
        // Defaults: no num_key_value_heads = MHA, no head_dim = hidden / heads, no rope_theta = 10000.
        var (q2, tied2) = Parse("""{"architectures": ["Qwen2ForCausalLM"], "hidden_size": 64, "intermediate_size": 96, "num_attention_heads": 4, "num_hidden_layers": 1, "vocab_size": 10}""");
        Assert.False(tied2);
        Assert.Equal((4, 16, 10000f, 2048, 1e-6f), (q2.HeadCountKv, q2.HeadDim, q2.RopeFreqBase, q2.ContextLength, q2.RmsNormEps));
        Assert.Equal("llama", Parse(Llama31.Replace("LlamaForCausalLM", "MistralForCausalLM")).Config.Architecture);
    }

    // google/gemma-3-1b-it's config.json (the fields that matter)
    const string Gemma3 = """
        {"architectures": ["Gemma3ForCausalLM"], "attn_logit_softcapping": null, "final_logit_softcapping": null,
         "head_dim": 256, "hidden_activation": "gelu_pytorch_tanh", "hidden_size": 1152, "intermediate_size": 6912,
         "max_position_embeddings": 32768, "num_attention_heads": 4, "num_hidden_layers": 26, "num_key_value_heads": 1,
         "query_pre_attn_scalar": 256, "rms_norm_eps": 1e-06, "rope_local_base_freq": 10000, "rope_scaling": null,
         "rope_theta": 1000000, "sliding_window": 512, "sliding_window_pattern": 6, "vocab_size": 262144}
        """;

    [Fact]
    public void Gemma3_config_gives_the_gemma_specifics()
    {
        var (c, tied) = Parse(Gemma3);
        Assert.True(tied); // Gemma3TextConfig ties by default
        Assert.Equal(("gemma3", FfnActivation.GeluTanh, MathF.Sqrt(1152), 512, 6, 10000f, 1e6f),
            (c.Architecture, c.Activation, c.EmbeddingScale, c.SlidingWindow, c.SlidingWindowPattern, c.RopeFreqBaseSwa, c.RopeFreqBase));
        Assert.True(c.IsSlidingWindowLayer(4));
        Assert.False(c.IsSlidingWindowLayer(5));

        var e = Assert.Throws<NotSupportedException>(() => Parse(Gemma3.Replace("\"query_pre_attn_scalar\": 256", "\"query_pre_attn_scalar\": 144")));
        Assert.Equal("config.json: query_pre_attn_scalar 144 ≠ head_dim 256 is not supported (attention scales by 1/sqrt(head_dim))", e.Message);
        Assert.Contains("final_logit_softcapping 30 is not supported",
            Assert.Throws<NotSupportedException>(() => Parse(Gemma3.Replace("\"final_logit_softcapping\": null", "\"final_logit_softcapping\": 30"))).Message);
        string irregular = Gemma3.Replace("\"num_hidden_layers\": 26", "\"num_hidden_layers\": 3")
            .Replace("\"sliding_window_pattern\": 6", "\"layer_types\": [\"full_attention\", \"sliding_attention\", \"full_attention\"]");
        Assert.Contains("layer_types: this arrangement", Assert.Throws<NotSupportedException>(() => Parse(irregular)).Message);
    }

    [Fact]
    public void Phi3_partial_rotary_factor_and_longrope()
    {
        const string phi = """
            {"architectures": ["Phi3ForCausalLM"], "hidden_act": "silu", "hidden_size": 3072, "intermediate_size": 8192,
             "num_attention_heads": 24, "num_hidden_layers": 32, "num_key_value_heads": 8, "partial_rotary_factor": 0.75,
             "rope_theta": 10000.0, "vocab_size": 200064, "tie_word_embeddings": true}
            """;
        var (c, _) = Parse(phi);
        Assert.Equal(("phi3", 128, 96), (c.Architecture, c.HeadDim, c.RopeDimensionCount));
        var e = Assert.Throws<NotSupportedException>(() => Parse(phi.Replace("\"rope_theta\"", "\"rope_scaling\": {\"type\": \"longrope\", \"long_factor\": [1], \"short_factor\": [1]}, \"rope_theta\"")));
        Assert.Contains("rope_scaling type 'longrope' is not supported", e.Message);
    }

    [Fact]
    public void Linear_rope_scaling_divides_positions()
    {
        var (c, _) = Parse(Llama31.Replace("\"rope_type\": \"llama3\"", "\"type\": \"linear\""));
        Assert.Equal(8f, c.RopeLinearScale);
        Assert.Null(c.RopeFreqFactors);
    }

    [Theory]
    [InlineData("\"LlamaForCausalLM\"", "\"GPT2LMHeadModel\"", "architecture GPT2LMHeadModel is not supported (supported: LlamaForCausalLM, MistralForCausalLM, Qwen2ForCausalLM, Qwen3ForCausalLM, Phi3ForCausalLM, Gemma3ForCausalLM)")]
    [InlineData("\"rope_type\": \"llama3\"", "\"rope_type\": \"yarn\"", "rope_scaling type 'yarn' is not supported (supported: default, linear, llama3)")]
    [InlineData("\"hidden_act\": \"silu\"", "\"hidden_act\": \"gelu\"", "hidden_act 'gelu' is not supported for LlamaForCausalLM (supported: silu)")]
    [InlineData("\"attention_bias\": false", "\"attention_bias\": true", "attention_bias true is not supported for LlamaForCausalLM (o_proj has a bias)")]
    public void Unsupported_configs_say_what_and_where(string from, string to, string message)
    {
        var e = Assert.Throws<NotSupportedException>(() => Parse(Llama31.Replace(from, to)));
        Assert.Equal("config.json: " + message, e.Message);
    }

    [Theory]
    [InlineData("\"hidden_size\": 4096,", "", "config.json: hidden_size: missing")]
    [InlineData("\"hidden_size\": 4096", "\"hidden_size\": -1", "config.json: hidden_size: expected a positive integer, found -1")]
    [InlineData("\"num_key_value_heads\": 8", "\"num_key_value_heads\": 5", "head_count 32 must be a multiple of head_count_kv 5")]
    [InlineData("\"low_freq_factor\": 1.0,", "", "rope_scaling.low_freq_factor: expected a positive number")]
    [InlineData("[\"LlamaForCausalLM\"]", "[]", "architectures: missing")]
    public void Malformed_configs_name_the_field(string from, string to, string message)
    {
        var e = Assert.Throws<InvalidDataException>(() => Parse(Llama31.Replace(from, to)));
        Assert.Contains(message, e.Message);
    }

    string Folder(HfTestModel spec, Action<Dictionary<string, object?>>? edit = null)
    {
        string folder = Path.Combine(_dir.FullName, Guid.NewGuid().ToString("N"));
        spec.WriteHf(folder);
        if (edit is not null)
        {
            var config = spec.Config();
            edit(config);
            File.WriteAllText(Path.Combine(folder, "config.json"), JsonSerializer.Serialize(config));
        }
        return folder;
    }

    [Fact]
    public void Folder_without_a_tokenizer_says_how_to_give_one()
    {
        string folder = Folder(new HfTestModel { Arch = "llama" });
        var e = Assert.Throws<FileNotFoundException>(() => ModelLoader.Load(folder));
        Assert.StartsWith(folder + ": no tokenizer.json; pass --tokenizer FILE.gguf", e.Message);
        Assert.Contains("without config.json", Assert.Throws<FileNotFoundException>(() => ModelLoader.Load(_dir.FullName)).Message);
        Assert.Contains("--dtype", Assert.Throws<ArgumentException>(() =>
            ModelLoader.Load(folder, new ModelLoadOptions { DType = TokenMill.Models.Gguf.GgmlType.F16 })).Message);
    }

    [Fact]
    public void Weights_that_do_not_fit_the_config_name_the_file_and_tensor()
    {
        var tokenizer = Core.ByteTokenizer.Bytes(); // 257 ids
        var spec = new HfTestModel { Arch = "qwen2", Vocab = 300 };
        string narrow = Folder(spec, c => c["intermediate_size"] = 96);
        var e = Assert.Throws<SafetensorsFormatException>(() => HfModelLoader.Load(narrow, tokenizer));
        Assert.Equal($"{Path.Combine(narrow, "model.safetensors")}: tensor 'model.layers.0.mlp.gate_proj.weight' shape: expected [96, 64] for this model's config, found [128, 64]", e.Message);

        // No lm_head.weight, and config.json does not tie it to the embedding.
        string headless = Folder(new HfTestModel { Arch = "qwen2", Vocab = 300, Tied = true }, c => c["tie_word_embeddings"] = false);
        var missing = Assert.Throws<SafetensorsFormatException>(() => HfModelLoader.Load(headless, tokenizer));
        Assert.Contains("tensor 'lm_head.weight': missing, and config.json does not set tie_word_embeddings", missing.Message);

        // A tokenizer with more ids than the model embeds is refused before any weight is read.
        string small = Folder(new HfTestModel { Arch = "qwen2", Vocab = 100 });
        Assert.Contains("the tokenizer has 257 tokens but the model's vocab_size is 100",
            Assert.Throws<InvalidDataException>(() => HfModelLoader.Load(small, tokenizer)).Message);
    }
}
