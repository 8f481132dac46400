using TokenMill.Backends;
using TokenMill.Backends.Cpu;
using TokenMill.KvCache;

namespace TokenMill.Generation;

/// <summary>
/// One sequence over its own small paged KV cache: feed tokens, get the logits of the last one.
/// The simplest client of the batch interface — the CLI's single-prompt path and the reference
/// that batched runs are compared with.
/// </summary>
public sealed class SingleSequence : IDisposable
{
    const int BlockSize = 16;
    const long SequenceId = 0;

    readonly CpuForward _forward;
    readonly KvCacheManager _manager;
    readonly PagedKvStore _kv;
    readonly ForwardBatch _batch = new();

    /// <param name="forward">The forward pass.</param>
    /// <param name="capacity">The most tokens the sequence will hold.</param>
    /// <param name="kvDtype">How its cache stores keys and values.</param>
    public SingleSequence(CpuForward forward, int capacity, KvCacheDtype kvDtype = KvCacheDtype.F32)
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(capacity, 1);
        _forward = forward;
        Capacity = capacity;
        int blocks = KvCacheManager.BlocksFor(capacity, BlockSize);
        _manager = new KvCacheManager(blocks, BlockSize);
        _kv = new PagedKvStore(forward.Config, blocks, BlockSize, kvDtype);
    }

    public int Capacity { get; }

    /// <summary>Tokens held so far.</summary>
    public int Length { get; private set; }

    /// <summary>Appends <paramref name="tokens"/> and writes the logits after the last of them.</summary>
    public void Feed(ReadOnlySpan<int> tokens, Span<float> logits)
    {
        if (Length + tokens.Length > Capacity)
            throw new InvalidOperationException($"{Length + tokens.Length} tokens exceed this sequence's capacity of {Capacity}");
        _manager.TryReserve(SequenceId, Length + tokens.Length);
        _batch.Clear();
        int s = _batch.AddSequence(_manager.BlockTable(SequenceId));
        for (int i = 0; i < tokens.Length; i++)
            _batch.AddToken(s, tokens[i], Length + i, _manager.Slot(SequenceId, Length + i), wantLogits: i == tokens.Length - 1);
        _forward.Forward(_batch, _kv, logits);
        Length += tokens.Length;
    }

    public void Dispose() => _kv.Dispose();
}
