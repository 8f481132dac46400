namespace TokenMill.Models;

/// <summary>Weights of one transformer block. Norm weights and biases are small and kept as f32.</summary>
public sealed class LayerWeights
{
    public required float[] AttnNorm { get; init; }
    public required WeightTensor Wq { get; init; }
    public required WeightTensor Wk { get; init; }
    public required WeightTensor Wv { get; init; }
    public required WeightTensor Wo { get; init; }
    public float[]? Bq { get; init; }
    public float[]? Bk { get; init; }
    public float[]? Bv { get; init; }

    /// <summary>Per-head RMSNorm of q and k before RoPE (Qwen3), or null.</summary>
    public float[]? QNorm { get; init; }
    public float[]? KNorm { get; init; }

    /// <summary>Norms applied to the attention and MLP outputs before the residual add (Gemma), or null.</summary>
    public float[]? PostAttnNorm { get; init; }
    public float[]? PostFfnNorm { get; init; }

    public required float[] FfnNorm { get; init; }
    public required WeightTensor Gate { get; init; }
    public required WeightTensor Up { get; init; }
    public required WeightTensor Down { get; init; }
}

/// <summary>All weights of a Llama-family decoder.</summary>
public sealed class ModelWeights
{
    /// <summary>[vocab × n_embd]: row t is the embedding of token t.</summary>
    public required WeightTensor TokenEmbedding { get; init; }
    public required LayerWeights[] Layers { get; init; }
    public required float[] OutputNorm { get; init; }

    /// <summary>[vocab × n_embd] classifier; the same object as <see cref="TokenEmbedding"/> when tied.</summary>
    public required WeightTensor Output { get; init; }
}
