namespace TokenMill.Sampling;

/// <summary>How the next token is picked from the logits. Temperature 0 is greedy.</summary>
public sealed record SamplingParams
{
    public float Temperature { get; init; } = 1f;

    /// <summary>Keep only the k most likely tokens; 0 keeps all.</summary>
    public int TopK { get; init; }

    /// <summary>Keep the smallest set of most likely tokens whose probability reaches p; 1 keeps all.</summary>
    public float TopP { get; init; } = 1f;

    /// <summary>Drop tokens less likely than min_p × the most likely one; 0 keeps all.</summary>
    public float MinP { get; init; }

    /// <summary>Seed of this request's random stream; null draws one.</summary>
    public ulong? Seed { get; init; }

    public static SamplingParams Greedy { get; } = new() { Temperature = 0 };

    public bool IsGreedy => Temperature <= 0 || TopK == 1;

    /// <summary>Rejects out-of-range values with a message naming the parameter.</summary>
    public void Validate()
    {
        if (float.IsNaN(Temperature) || Temperature < 0) throw new ArgumentOutOfRangeException(nameof(Temperature), Temperature, "temperature must be ≥ 0");
        if (TopK < 0) throw new ArgumentOutOfRangeException(nameof(TopK), TopK, "top-k must be ≥ 0 (0 disables it)");
        if (!(TopP > 0 && TopP <= 1)) throw new ArgumentOutOfRangeException(nameof(TopP), TopP, "top-p must be in (0, 1]");
        if (!(MinP >= 0 && MinP <= 1)) throw new ArgumentOutOfRangeException(nameof(MinP), MinP, "min-p must be in [0, 1]");
    }
}
