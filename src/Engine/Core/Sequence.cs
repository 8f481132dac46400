using System.Threading.Channels;
using TokenMill.Sampling;
using TokenMill.Tokenization;

namespace TokenMill.Core;

public enum SequenceStatus
{
    Waiting,
    Running,
    Finished,
}

/// <summary>
/// The engine's view of one request while it lives: its tokens so far, how many of them are in the
/// KV cache (<see cref="ComputedTokens"/>), its sampler, detokenizer and output channel. Only the
/// engine loop touches it.
/// </summary>
public sealed class Sequence
{
    readonly List<int> _output = [];

    internal Sequence(long id, string requestId, int[] promptTokens, SamplingParams sampling, int priority, long arrival,
        Sampler sampler, IncrementalDetokenizer detokenizer, ChannelWriter<CompletionChunk>? output)
    {
        Id = id;
        RequestId = requestId;
        PromptTokens = promptTokens;
        Sampling = sampling;
        Priority = priority;
        Arrival = arrival;
        Sampler = sampler;
        Detokenizer = detokenizer;
        Output = output;
        TokenAtFunc = TokenAt;
    }

    public long Id { get; }
    public string RequestId { get; }
    public int[] PromptTokens { get; }
    public SamplingParams Sampling { get; }
    public int Priority { get; }

    /// <summary>Order of arrival: first come, first served among equal priorities.</summary>
    public long Arrival { get; }

    public SequenceStatus Status { get; internal set; } = SequenceStatus.Waiting;

    /// <summary>Salt of this request's prefix-cache hashes: only requests with the same salt share cached blocks.</summary>
    public ulong CacheSalt { get; init; }

    /// <summary>Prompt tokens found in the prefix cache when the sequence was first admitted (not computed).</summary>
    public int CachedPromptTokens { get; internal set; }

    /// <summary>Which of the request's <c>n</c> choices this sequence is (0 unless it was forked).</summary>
    public int Index { get; init; }

    /// <summary>The request's forks when it asked for <c>n &gt; 1</c>; null for a plain request.</summary>
    internal SequenceGroup? Group { get; init; }

    /// <summary>Tokens whose keys and values are in the KV cache; reset to 0 by preemption (recompute).</summary>
    public int ComputedTokens { get; internal set; }

    /// <summary>How many times this sequence was preempted.</summary>
    public int Preemptions { get; internal set; }

    /// <summary>When the request was submitted and when it was first scheduled (<see cref="System.Diagnostics.Stopwatch"/> ticks).</summary>
    internal long SubmittedAt { get; } = System.Diagnostics.Stopwatch.GetTimestamp();
    internal long FirstScheduledAt { get; set; }

    /// <summary>Whether the sequence has ever been admitted to the running batch.</summary>
    internal bool Started { get; set; }

    /// <summary>Whether it no longer counts against the waiting-queue bound (it ran, or ended first).</summary>
    internal bool LeftQueue { get; set; }

    public IReadOnlyList<int> OutputTokens => _output;
    public int TotalTokens => PromptTokens.Length + _output.Count;

    public int TokenAt(int position) =>
        position < PromptTokens.Length ? PromptTokens[position] : _output[position - PromptTokens.Length];

    internal Sampler Sampler { get; }
    internal IncrementalDetokenizer Detokenizer { get; }
    internal ChannelWriter<CompletionChunk>? Output { get; }
    internal CancellationTokenRegistration CancellationRegistration { get; set; }

    internal void AppendToken(int token) => _output.Add(token);

    /// <summary>Starts a forked beam with its parent's generated tokens.</summary>
    internal void CopyOutputFrom(Sequence parent) => _output.AddRange(parent._output);

    /// <summary>A beam's top next tokens from its latest logits, kept until every live beam of its request has them; null while pending.</summary>
    internal TokenLogprob[]? BeamProposals { get; set; }

    /// <summary>A beam whose proposals are in: it needs no computing, even if preempted, until its request takes the next step.</summary>
    internal bool Parked => BeamProposals is not null;

    /// <summary><see cref="TokenAt"/> as a delegate made once (the KV cache manager hashes blocks through it every step).</summary>
    internal Func<int, int> TokenAtFunc { get; }

    public override string ToString() => $"seq {Id} ({RequestId}) {Status} {ComputedTokens}/{TotalTokens}";
}

/// <summary>
/// The forks of one request with <c>n &gt; 1</c>: fork 0 computes the prompt, the others are forked
/// from it when it samples its first token (sharing every prompt block), and the request's stream
/// ends when the last fork ends.
/// </summary>
/// <para>
/// A beam-search request is a group too: <see cref="N"/> is its width (room the scheduler keeps for it),
/// <see cref="Forks"/> its live beams in the order of <see cref="Beam"/>'s, and <see cref="Choices"/> how many hypotheses it returns.
/// </para>
internal sealed class SequenceGroup(int n)
{
    public int N { get; } = n;

    /// <summary>The request's first sequence: it holds the cancellation registration.</summary>
    public Sequence? Root { get; set; }

    public BeamSearch? Beam { get; init; }
    public int Choices { get; init; } = n;

    /// <summary>Whether the request has ended (beam search: its live beams may all be gone before).</summary>
    public bool Ended { get; set; }

    public List<Sequence> Forks { get; } = [];
    public bool Forked { get; set; }
    public int Finished { get; set; }
}
