using System.Text.Json;
using TokenMill.Models.Dummy;

namespace TokenMill.Models.HuggingFace;

/// <summary>
/// Reads a Hugging Face <c>config.json</c> into a <see cref="ModelConfig"/> for the architectures the
/// forward pass computes. Anything the forward pass would get wrong (another activation, an
/// o_proj bias, a rope scaling it does not implement) is refused here with a precise message.
/// </summary>
public static class HfConfig
{
    /// <summary><c>architectures[0]</c> → our architecture name.</summary>
    public static readonly IReadOnlyDictionary<string, string> Architectures = new Dictionary<string, string>
    {
        ["LlamaForCausalLM"] = "llama",
        ["MistralForCausalLM"] = "llama", // llama.cpp's converter writes Mistral as llama too
        ["Qwen2ForCausalLM"] = "qwen2",
        ["Qwen3ForCausalLM"] = "qwen3",
        ["Phi3ForCausalLM"] = "phi3",
        ["Gemma3ForCausalLM"] = "gemma3",
    };

    /// <summary>The config and whether the checkpoint ties lm_head to the embedding.</summary>
    public static (ModelConfig Config, bool TiedEmbeddings) Read(string path)
    {
        JsonDocument doc;
        try
        {
            doc = JsonDocument.Parse(File.ReadAllBytes(path));
        }
        catch (JsonException e)
        {
            throw new InvalidDataException($"{path}: not valid JSON: {e.Message}", e);
        }
        using (doc)
        {
            return Parse(path, doc.RootElement);
        }
    }

    public static (ModelConfig Config, bool TiedEmbeddings) Parse(string path, JsonElement root)
    {
        if (root.ValueKind != JsonValueKind.Object)
            throw new InvalidDataException($"{path}: must be a JSON object");

        string hfArch = root.TryGetProperty("architectures", out var archs) && archs.ValueKind == JsonValueKind.Array
                        && archs.GetArrayLength() > 0 && archs[0].ValueKind == JsonValueKind.String
            ? archs[0].GetString()!
            : throw new InvalidDataException($"{path}: architectures: missing (expected e.g. [\"LlamaForCausalLM\"])");
        if (!Architectures.TryGetValue(hfArch, out var arch))
            throw new NotSupportedException($"{path}: architecture {hfArch} is not supported (supported: {string.Join(", ", Architectures.Keys)})");

        JsonElement? Field(string key) =>
            root.TryGetProperty(key, out var v) && v.ValueKind != JsonValueKind.Null ? v : null;
        InvalidDataException Bad(string key, string expected, JsonElement v) =>
            new($"{path}: {key}: expected {expected}, found {v.GetRawText()}");
        int? OptInt(string key) => Field(key) is { } v
            ? (v.ValueKind == JsonValueKind.Number && v.TryGetInt32(out int n) && n > 0 ? n : throw Bad(key, "a positive integer", v))
            : null;
        int Int(string key) => OptInt(key) ?? throw new InvalidDataException($"{path}: {key}: missing");
        double? OptFloat(string key) => Field(key) is { } v
            ? (v.ValueKind == JsonValueKind.Number && v.TryGetDouble(out double d) && double.IsFinite(d) ? d : throw Bad(key, "a number", v))
            : null;
        bool? OptBool(string key) => Field(key) is { } v
            ? (v.ValueKind is JsonValueKind.True or JsonValueKind.False ? v.GetBoolean() : throw Bad(key, "true or false", v))
            : null;
        string? OptString(string key) => Field(key) is { } v
            ? (v.ValueKind == JsonValueKind.String ? v.GetString() : throw Bad(key, "a string", v))
            : null;

        bool gemma = arch == "gemma3";
        string act = OptString("hidden_activation") ?? OptString("hidden_act") ?? (gemma ? "gelu_pytorch_tanh" : "silu");
        // Gemma's GeGLU uses the tanh approximation of GELU; everything else here is SwiGLU.
        string expectedAct = gemma ? "gelu_pytorch_tanh" : "silu";
        if (act != expectedAct)
            throw new NotSupportedException($"{path}: hidden_act '{act}' is not supported for {hfArch} (supported: {expectedAct})");
        if (OptBool("mlp_bias") == true)
            throw new NotSupportedException($"{path}: mlp_bias true is not supported");
        // Llama's attention_bias adds an o_proj bias as well, which the forward pass has no place for.
        if (arch == "llama" && OptBool("attention_bias") == true)
            throw new NotSupportedException($"{path}: attention_bias true is not supported for {hfArch} (o_proj has a bias)");

        int hidden = Int("hidden_size");
        int heads = Int("num_attention_heads");
        int kvHeads = OptInt("num_key_value_heads") ?? heads;
        int headDim = OptInt("head_dim") ?? hidden / heads;
        float ropeTheta = (float)(OptFloat("rope_theta") ?? 10000.0);

        float linearScale = 1f;
        float[]? freqFactors = null;
        if (Field("rope_scaling") is { } rs)
        {
            if (rs.ValueKind != JsonValueKind.Object) throw Bad("rope_scaling", "an object or null", rs);
            string? type = rs.TryGetProperty("rope_type", out var t) && t.ValueKind == JsonValueKind.String ? t.GetString()
                : rs.TryGetProperty("type", out t) && t.ValueKind == JsonValueKind.String ? t.GetString() : null;
            double Num(string key, double? fallback = null) =>
                rs.TryGetProperty(key, out var v) && v.ValueKind == JsonValueKind.Number && v.TryGetDouble(out double d) && d > 0 && double.IsFinite(d)
                    ? d
                    : fallback ?? throw new InvalidDataException($"{path}: rope_scaling.{key}: expected a positive number");
            switch (type)
            {
                case "default":
                    break;
                case "linear":
                    linearScale = (float)Num("factor");
                    break;
                case "llama3":
                    double low = Num("low_freq_factor"), high = Num("high_freq_factor");
                    if (high <= low) throw new InvalidDataException($"{path}: rope_scaling: high_freq_factor {high} must exceed low_freq_factor {low}");
                    freqFactors = DummyPresets.Llama3RopeFactors(ropeTheta, headDim, (float)Num("factor"), (float)low, (float)high,
                        checked((int)Num("original_max_position_embeddings")));
                    break;
                default:
                    throw new NotSupportedException($"{path}: rope_scaling type '{type ?? "(none)"}' is not supported (supported: default, linear, llama3)");
            }
        }

        // Phi-4-mini (also Phi3ForCausalLM) rotates only the first partial_rotary_factor of each head.
        double partial = OptFloat("partial_rotary_factor") ?? 1.0;
        int ropeDims = (int)Math.Round(headDim * partial);

        int slidingWindow = 0, pattern = 0;
        float? swaBase = null;
        if (gemma)
        {
            if (OptFloat("query_pre_attn_scalar") is { } qpas && qpas != headDim)
                throw new NotSupportedException($"{path}: query_pre_attn_scalar {qpas} ≠ head_dim {headDim} is not supported (attention scales by 1/sqrt(head_dim))");
            foreach (var key in new[] { "final_logit_softcapping", "attn_logit_softcapping" })
                if (OptFloat(key) is { } cap)
                    throw new NotSupportedException($"{path}: {key} {cap} is not supported");
            slidingWindow = OptInt("sliding_window") ?? 0;
            pattern = OptInt("sliding_window_pattern") ?? 6;
            if (Field("layer_types") is { } types)
                pattern = PatternOf(path, types, Int("num_hidden_layers"));
            swaBase = (float)(OptFloat("rope_local_base_freq") ?? 10000.0);
        }

        var config = new ModelConfig
        {
            Architecture = arch,
            VocabSize = Int("vocab_size"),
            EmbeddingLength = hidden,
            BlockCount = Int("num_hidden_layers"),
            FeedForwardLength = Int("intermediate_size"),
            HeadCount = heads,
            HeadCountKv = kvHeads,
            HeadDim = headDim,
            ValueHeadDim = headDim,
            ContextLength = OptInt("max_position_embeddings") ?? 2048,
            RmsNormEps = (float)(OptFloat("rms_norm_eps") ?? 1e-6),
            // Hugging Face checkpoints rotate halves (rotate_half) for every architecture here; llama.cpp's converter
            // permutes Llama's q/k rows so that adjacent pairs do the same. Loading the rows as they are with NEOX
            // is the same computation and keeps the weights memory-mapped (no permuted copy).
            RopeType = RopeType.Neox,
            RopeDimensionCount = ropeDims,
            RopeFreqBase = ropeTheta,
            RopeLinearScale = linearScale,
            RopeFreqFactors = freqFactors,
            EmbeddingScale = gemma ? MathF.Sqrt(hidden) : 1f,
            Activation = gemma ? FfnActivation.GeluTanh : FfnActivation.Silu,
            SlidingWindow = slidingWindow,
            SlidingWindowPattern = pattern,
            RopeFreqBaseSwa = swaBase,
        };
        config.Validate(path);
        // Gemma's config class ties by default; the others here do not.
        return (config, OptBool("tie_word_embeddings") ?? gemma);
    }

    /// <summary>
    /// Gemma 3's <c>layer_types</c> as the pattern the forward pass knows: every pattern-th layer global
    /// (layer il is local iff il % pattern &lt; pattern − 1). Any other arrangement is refused.
    /// </summary>
    static int PatternOf(string path, JsonElement types, int layers)
    {
        if (types.ValueKind != JsonValueKind.Array || types.GetArrayLength() != layers
            || types.EnumerateArray().Any(t => t.ValueKind != JsonValueKind.String || t.GetString() is not ("sliding_attention" or "full_attention")))
            throw new InvalidDataException($"{path}: layer_types: expected {layers} entries of \"sliding_attention\" or \"full_attention\"");
        var global = types.EnumerateArray().Select(t => t.GetString() == "full_attention").ToArray();
        int pattern = Array.IndexOf(global, true) + 1;
        if (pattern == 0) pattern = layers + 1; // no global layer in this depth: any pattern longer than the model
        for (int il = 0; il < layers; il++)
            if (global[il] != (il % pattern == pattern - 1))
                throw new NotSupportedException($"{path}: layer_types: this arrangement of sliding and full attention layers is not supported (only every n-th layer full)");
        return pattern;
    }
}
