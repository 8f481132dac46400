using TokenMill.Sampling;

namespace TokenMill.Core;

/// <summary>One request to the engine: a prompt (text or token ids) and how to continue it.</summary>
public sealed record GenerationRequest
{
    /// <summary>Caller's id for logs and aborts; the engine makes one when null.</summary>
    public string? RequestId { get; init; }

    /// <summary>Prompt text; BOS is added as the model says and special-token text is parsed.</summary>
    public string? Prompt { get; init; }

    /// <summary>Prompt as token ids (used as is, no BOS added); wins over <see cref="Prompt"/>.</summary>
    public IReadOnlyList<int>? PromptTokenIds { get; init; }

    public SamplingParams Sampling { get; init; } = new();

    /// <summary>Lower runs first (vLLM's convention); ties go first come, first served.</summary>
    public int Priority { get; init; }

    /// <summary>
    /// Completions to sample from the prompt (OpenAI's and vLLM's <c>n</c>). The prompt is computed once and
    /// its KV blocks shared by the forks; fork i samples with seed <c>Seed + i</c>. Chunks carry the fork's
    /// <see cref="CompletionChunk.Index"/>; the stream ends when every fork has ended.
    /// </summary>
    public int N { get; init; } = 1;

    /// <summary>Prefix-cache salt (vLLM's <c>cache_salt</c>): cached blocks are shared only among requests with the same salt.</summary>
    public string? CacheSalt { get; init; }

    /// <summary>
    /// Beam search with this many beams (vLLM's <c>use_beam_search</c> with <c>beam_width</c>); null samples as
    /// <see cref="Sampling"/> says. Beam search is deterministic: temperature, top-k/p, min-p, penalties, logit bias and seed
    /// do not apply. The request returns its <see cref="N"/> (≤ width) best hypotheses, each as one final chunk.
    /// </summary>
    public int? BeamWidth { get; init; }

    /// <summary>Exponent of the length in a beam hypothesis's score <c>cum_logprob / length ** LengthPenalty</c> (beam search only).</summary>
    public float LengthPenalty { get; init; } = 1f;

    /// <summary>Most forks one request may ask for: enough for best-of sampling, small enough that one request cannot fill the batch.</summary>
    public const int MaxN = 128;

    /// <summary>Most beams one request may ask for (vLLM's server allows as many; each beam is a running sequence).</summary>
    public const int MaxBeamWidth = 32;
}

/// <summary>Why a request ended.</summary>
public static class FinishReason
{
    public const string Stop = "stop";
    public const string Length = "length";
    public const string Abort = "abort";
}

/// <summary>
/// One piece of a request's output stream: the new text and token ids of a step, their logprobs when
/// asked for, and on the last chunk the finish reason (with the time the request waited before it
/// first ran, <see cref="QueueTime"/>). Token counts are running totals.
/// <see cref="CachedPromptTokens"/> is how many prompt tokens came from the prefix cache
/// (<c>usage.prompt_tokens_details.cached_tokens</c>); <see cref="Index"/> is the choice (fork) of a request with <c>n &gt; 1</c>.
/// A beam-search request sends one chunk per returned hypothesis, final, with its whole text, tokens and <see cref="CumulativeLogprob"/>.
/// </summary>
public sealed record CompletionChunk(
    string RequestId,
    string Text,
    int[] TokenIds,
    IReadOnlyList<SampledToken>? Logprobs,
    string? FinishReason,
    int PromptTokens,
    int CompletionTokens,
    string? StopReason = null,
    int CachedPromptTokens = 0,
    int Index = 0,
    TimeSpan? QueueTime = null,
    double? CumulativeLogprob = null)
{
    public bool IsFinal => FinishReason is not null;
}

/// <summary>The whole output of a request, collected from its chunks.</summary>
public sealed record CompletionResult(
    string RequestId,
    string Text,
    int[] TokenIds,
    string FinishReason,
    int PromptTokens,
    int CompletionTokens,
    IReadOnlyList<SampledToken>? Logprobs,
    int CachedPromptTokens = 0,
    int Index = 0,
    double? CumulativeLogprob = null);
