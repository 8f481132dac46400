using TokenMill.Models.Gguf;

namespace TokenMill.Models;

/// <summary>How rotary embeddings pair up the dimensions of a head (llama.cpp's rope types).</summary>
public enum RopeType
{
    /// <summary>Adjacent pairs (2i, 2i+1): Llama as converted to GGUF.</summary>
    Norm,

    /// <summary>Halves (i, i + d/2): GPT-NeoX, Qwen2/3, Phi-3, Gemma.</summary>
    Neox,
}

/// <summary>The gated MLP's activation: SwiGLU (Llama, Qwen, Phi-3) or GeGLU with tanh GELU (Gemma).</summary>
public enum FfnActivation
{
    Silu,
    GeluTanh,
}

/// <summary>
/// Hyperparameters of a Llama-family decoder (Llama 2/3, TinyLlama, Mistral, Qwen2/3), read from
/// GGUF metadata (<c>{arch}.*</c> keys) or given by a dummy preset.
/// </summary>
public sealed record ModelConfig
{
    public required string Architecture { get; init; }
    public required int VocabSize { get; init; }
    public required int EmbeddingLength { get; init; }
    public required int BlockCount { get; init; }
    public required int FeedForwardLength { get; init; }
    public required int HeadCount { get; init; }
    public required int HeadCountKv { get; init; }

    /// <summary>Per-head width of Q and K (<c>attention.key_length</c>; Qwen3 sets it ≠ n_embd / n_head).</summary>
    public required int HeadDim { get; init; }

    /// <summary>Per-head width of V (<c>attention.value_length</c>).</summary>
    public int ValueHeadDim { get; init; }

    public required int ContextLength { get; init; }
    public required float RmsNormEps { get; init; }
    public required RopeType RopeType { get; init; }

    /// <summary>How many dimensions of each head are rotated (<c>rope.dimension_count</c>).</summary>
    public required int RopeDimensionCount { get; init; }

    public float RopeFreqBase { get; init; } = 10000f;

    /// <summary>Linear position scaling (<c>rope.scaling.factor</c> with type linear): positions are divided by it.</summary>
    public float RopeLinearScale { get; init; } = 1f;

    /// <summary>Llama 3 style per-frequency divisors (from the <c>rope_freqs.weight</c> tensor), or null.</summary>
    public float[]? RopeFreqFactors { get; init; }

    /// <summary>The input embedding is multiplied by this (Gemma: sqrt(n_embd)); the tied output matrix is not.</summary>
    public float EmbeddingScale { get; init; } = 1f;

    public FfnActivation Activation { get; init; } = FfnActivation.Silu;

    /// <summary>Keys a sliding-window layer's query sees: positions p − window + 1 … p; 0 means no window.</summary>
    public int SlidingWindow { get; init; }

    /// <summary>Every pattern-th layer is global, the rest use the window (Gemma 3: layer il is local iff il % pattern &lt; pattern − 1); 0 = all layers windowed.</summary>
    public int SlidingWindowPattern { get; init; }

    /// <summary>Rope base of sliding-window layers (Gemma 3's <c>rope.freq_base_swa</c>); they get no linear scaling.</summary>
    public float? RopeFreqBaseSwa { get; init; }

    public bool IsSlidingWindowLayer(int layer) =>
        SlidingWindow > 0 && (SlidingWindowPattern <= 0 || layer % SlidingWindowPattern < SlidingWindowPattern - 1);

    public int QueryGroupSize => HeadCount / HeadCountKv;
    public int KvDim => HeadCountKv * HeadDim;
    public int QDim => HeadCount * HeadDim;

    /// <summary>Architectures this forward pass computes; the rest are rejected when the model is loaded.</summary>
    public static readonly IReadOnlySet<string> SupportedArchitectures = new HashSet<string> { "llama", "mistral", "qwen2", "qwen3", "gemma3", "phi3" };

    public static ModelConfig FromGguf(GgufFile f)
    {
        string arch = f.RequireString("general.architecture");
        if (!SupportedArchitectures.Contains(arch))
            throw new NotSupportedException(
                $"{f.Path}: general.architecture '{arch}' is not supported (supported: {string.Join(", ", SupportedArchitectures)})");

        // Every size must be a positive int: a corrupt file must fail here, not divide by zero or overflow later.
        int Positive(string key, long v) => v is > 0 and <= int.MaxValue
            ? (int)v
            : throw new GgufFormatException(f.Path, $"{arch}.{key}", $"must be a positive 32-bit integer, got {v}");
        int Int(string key) => Positive(key, f.RequireInt($"{arch}.{key}"));
        int? OptInt(string key) => f.GetInt($"{arch}.{key}") is long v ? Positive(key, v) : null;

        int nEmbd = Int("embedding_length");
        int nHead = Int("attention.head_count");
        int nHeadKv = OptInt("attention.head_count_kv") ?? nHead;
        int headDim = OptInt("attention.key_length") ?? nEmbd / nHead;
        int vocab = OptInt("vocab_size")
            ?? f.GetArray("tokenizer.ggml.tokens")?.Length
            ?? checked((int)f.GetTensor("token_embd.weight").Dimensions[^1]);

        if (nHeadKv <= 0 || nHead % nHeadKv != 0)
            throw new GgufFormatException(f.Path, $"{arch}.attention.head_count_kv", $"{nHeadKv} does not divide head_count {nHead}");

        float linearScale = 1f;
        string? scalingType = f.GetString($"{arch}.rope.scaling.type");
        if (scalingType is "linear" && f.GetFloat($"{arch}.rope.scaling.factor") is double factor && factor > 0)
            linearScale = (float)factor;
        else if (scalingType is not (null or "none" or "linear"))
            throw new NotSupportedException($"{f.Path}: {arch}.rope.scaling.type '{scalingType}' is not supported (supported: none, linear; Llama 3 scaling comes from rope_freqs.weight)");

        float[]? freqFactors = null;
        if (f.TryGetTensor("rope_freqs.weight", out var rf))
        {
            if (rf.Type != GgmlType.F32)
                throw new GgufFormatException(f.Path, "tensor 'rope_freqs.weight' type", $"expected F32, found {rf.Type}");
            freqFactors = System.Runtime.InteropServices.MemoryMarshal.Cast<byte, float>(f.GetTensorBytes(rf)).ToArray();
        }

        var config = new ModelConfig
        {
            Architecture = arch,
            VocabSize = vocab,
            EmbeddingLength = nEmbd,
            BlockCount = Int("block_count"),
            FeedForwardLength = Int("feed_forward_length"),
            HeadCount = nHead,
            HeadCountKv = nHeadKv,
            HeadDim = headDim,
            ValueHeadDim = OptInt("attention.value_length") ?? headDim,
            ContextLength = OptInt("context_length") ?? 2048,
            RmsNormEps = (float)(f.GetFloat($"{arch}.attention.layer_norm_rms_epsilon") ?? 1e-5),
            RopeType = arch is "llama" or "mistral" ? RopeType.Norm : RopeType.Neox,
            RopeDimensionCount = OptInt("rope.dimension_count") ?? headDim,
            RopeFreqBase = (float)(f.GetFloat($"{arch}.rope.freq_base") ?? 10000.0),
            RopeLinearScale = linearScale,
            RopeFreqFactors = freqFactors,
            EmbeddingScale = arch == "gemma3" ? MathF.Sqrt(nEmbd) : 1f,
            Activation = arch == "gemma3" ? FfnActivation.GeluTanh : FfnActivation.Silu,
            SlidingWindow = OptInt("attention.sliding_window") ?? 0,
            SlidingWindowPattern = OptInt("attention.sliding_window_pattern") ?? (arch == "gemma3" ? 6 : 0),
            RopeFreqBaseSwa = f.GetFloat($"{arch}.rope.freq_base_swa") is double swa ? (float)swa : null,
        };
        config.Validate(f.Path);
        return config;
    }

    /// <summary>Checks the shape is self-consistent; <paramref name="source"/> names the model in the message.</summary>
    public void Validate(string source)
    {
        void Check(bool ok, string what)
        {
            if (!ok) throw new InvalidDataException($"{source}: invalid model shape: {what}");
        }
        Check(VocabSize > 0 && EmbeddingLength > 0 && BlockCount > 0 && FeedForwardLength > 0, "sizes must be positive");
        Check(HeadCount > 0 && HeadCountKv > 0 && HeadCount % HeadCountKv == 0, $"head_count {HeadCount} must be a multiple of head_count_kv {HeadCountKv}");
        Check(HeadDim > 0 && HeadDim % 2 == 0, $"head dimension {HeadDim} must be even");
        Check(ValueHeadDim == HeadDim, $"value_length {ValueHeadDim} ≠ key_length {HeadDim} is not supported");
        Check(RopeDimensionCount > 0 && RopeDimensionCount <= HeadDim && RopeDimensionCount % 2 == 0,
            $"rope.dimension_count {RopeDimensionCount} must be even and at most the head dimension {HeadDim}");
        Check(RopeFreqFactors is null || RopeFreqFactors.Length == RopeDimensionCount / 2,
            $"rope_freqs has {RopeFreqFactors?.Length} entries, expected {RopeDimensionCount / 2}");
    }
}
