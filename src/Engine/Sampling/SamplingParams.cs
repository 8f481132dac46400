namespace TokenMill.Sampling;

/// <summary>
/// How a request's tokens are picked and when it stops — the fields and meanings of vLLM's
/// <c>SamplingParams</c>. Temperature 0 is greedy.
/// </summary>
public sealed record SamplingParams
{
    public float Temperature { get; init; } = 1f;

    /// <summary>Keep only the k most likely tokens; 0 keeps all.</summary>
    public int TopK { get; init; }

    /// <summary>Keep the smallest set of most likely tokens whose probability reaches p; 1 keeps all.</summary>
    public float TopP { get; init; } = 1f;

    /// <summary>Drop tokens less likely than min_p × the most likely one; 0 keeps all.</summary>
    public float MinP { get; init; }

    /// <summary>Divides positive logits (multiplies negative ones) of tokens already in the prompt or output; 1 is off.</summary>
    public float RepetitionPenalty { get; init; } = 1f;

    /// <summary>Subtracted once from the logit of every token already generated; 0 is off.</summary>
    public float PresencePenalty { get; init; }

    /// <summary>Subtracted from a token's logit once per time it was generated; 0 is off.</summary>
    public float FrequencyPenalty { get; init; }

    /// <summary>Added to the logits of the given token ids before sampling (OpenAI <c>logit_bias</c>).</summary>
    public IReadOnlyDictionary<int, float>? LogitBias { get; init; }

    /// <summary>Seed of this request's random stream; null draws one.</summary>
    public ulong? Seed { get; init; }

    /// <summary>Tokens to generate at most.</summary>
    public int MaxTokens { get; init; } = 16;

    /// <summary>End-of-generation and stop tokens are suppressed until this many tokens were generated.</summary>
    public int MinTokens { get; init; }

    /// <summary>Text that ends generation; it is not included in the output.</summary>
    public IReadOnlyList<string> Stop { get; init; } = [];

    /// <summary>Token ids that end generation (besides the vocabulary's end-of-generation tokens).</summary>
    public IReadOnlyList<int> StopTokenIds { get; init; } = [];

    /// <summary>Keep generating past end-of-generation tokens (benchmarks want a fixed length).</summary>
    public bool IgnoreEos { get; init; }

    /// <summary>Return the log-probability of each sampled token and this many top alternatives; null returns none.</summary>
    public int? Logprobs { get; init; }

    public static SamplingParams Greedy { get; } = new() { Temperature = 0 };

    public bool IsGreedy => Temperature <= 0 || TopK == 1;

    public bool HasPenalties => RepetitionPenalty != 1f || PresencePenalty != 0f || FrequencyPenalty != 0f;

    /// <summary>Most top-logprobs a request may ask for (OpenAI's limit is 20).</summary>
    public const int MaxLogprobs = 20;

    /// <summary>Rejects out-of-range values with a message naming the parameter.</summary>
    public void Validate(int vocabSize = int.MaxValue)
    {
        static void Check(bool ok, string name, object value, string rule)
        {
            if (!ok) throw new ArgumentOutOfRangeException(name, value, $"{name} must be {rule}, got {value}");
        }
        Check(!float.IsNaN(Temperature) && Temperature >= 0, "temperature", Temperature, "≥ 0");
        Check(TopK >= 0, "top_k", TopK, "≥ 0 (0 disables it)");
        Check(TopP > 0 && TopP <= 1, "top_p", TopP, "in (0, 1]");
        Check(MinP >= 0 && MinP <= 1, "min_p", MinP, "in [0, 1]");
        Check(RepetitionPenalty > 0 && float.IsFinite(RepetitionPenalty), "repetition_penalty", RepetitionPenalty, "> 0");
        Check(PresencePenalty >= -2 && PresencePenalty <= 2, "presence_penalty", PresencePenalty, "in [-2, 2]");
        Check(FrequencyPenalty >= -2 && FrequencyPenalty <= 2, "frequency_penalty", FrequencyPenalty, "in [-2, 2]");
        Check(MaxTokens >= 1, "max_tokens", MaxTokens, "≥ 1");
        Check(MinTokens >= 0 && MinTokens <= MaxTokens, "min_tokens", MinTokens, $"in [0, max_tokens = {MaxTokens}]");
        Check(Logprobs is null || (Logprobs >= 0 && Logprobs <= MaxLogprobs), "logprobs", Logprobs ?? 0, $"in [0, {MaxLogprobs}]");
        foreach (var s in Stop) Check(!string.IsNullOrEmpty(s), "stop", "\"\"", "non-empty strings");
        foreach (int id in StopTokenIds) Check(id >= 0 && id < vocabSize, "stop_token_ids", id, $"in [0, {vocabSize})");
        if (LogitBias is not null)
            foreach (var (id, bias) in LogitBias)
            {
                Check(id >= 0 && id < vocabSize, "logit_bias", id, $"a token id in [0, {vocabSize})");
                Check(bias >= -100 && bias <= 100, "logit_bias", bias, "in [-100, 100]");
            }
    }
}
