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

        string act = OptString("hidden_act") ?? OptString("hidden_activation") ?? "silu";
        if (act != "silu")
            throw new NotSupportedException($"{path}: hidden_act '{act}' is not supported for {hfArch} (supported: silu)");
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
            RopeDimensionCount = headDim,
            RopeFreqBase = ropeTheta,
            RopeLinearScale = linearScale,
            RopeFreqFactors = freqFactors,
        };
        config.Validate(path);
        return (config, OptBool("tie_word_embeddings") ?? false);
    }
}
