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
    TimeSpan? QueueTime = null)
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
    IReadOnlyList<SampledToken>? Logprobs);
