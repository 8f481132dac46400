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
    }

    public long Id { get; }
    public string RequestId { get; }
    public int[] PromptTokens { get; }
    public SamplingParams Sampling { get; }
    public int Priority { get; }

    /// <summary>Order of arrival: first come, first served among equal priorities.</summary>
    public long Arrival { get; }

    public SequenceStatus Status { get; internal set; } = SequenceStatus.Waiting;

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

    public override string ToString() => $"seq {Id} ({RequestId}) {Status} {ComputedTokens}/{TotalTokens}";
}
