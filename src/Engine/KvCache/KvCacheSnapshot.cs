namespace TokenMill.KvCache;

/// <summary>What a KV block holds at the moment of a <see cref="KvCacheSnapshot"/>.</summary>
public enum KvBlockState : byte
{
    /// <summary>Reference count 0 and no prefix hash: nothing worth keeping.</summary>
    Free,

    /// <summary>Reference count 0 but registered in the prefix cache: a later request with the same prefix reuses it until it is evicted.</summary>
    Cached,

    /// <summary>Reference count 1: one sequence's block table holds it.</summary>
    Owned,

    /// <summary>Reference count above 1: a prefix-cache hit shared by several requests, or the forks of one (n &gt; 1, beams) before copy-on-write.</summary>
    Shared,
}

/// <summary>One live sequence's block table (block indices in order of position), named by its request id and choice index.</summary>
public sealed record KvSequenceBlocks(string RequestId, int Index, bool Running, int PromptTokens, int OutputTokens, int[] Blocks);

/// <summary>
/// A picture of the whole KV cache between two engine steps: every block's state and the block table of every
/// sequence that holds blocks. Taken on the engine thread (see <c>LlmEngine.SnapshotAsync</c>), so the states and
/// tables agree with each other; it carries request ids and token counts, never token ids or text. <paramref name="EventCount"/>
/// is the ordinal of the last KV event raised before it (<see cref="KvCacheEvent.Ordinal"/>).
/// </summary>
public sealed record KvCacheSnapshot(long Step, int BlockSize, KvBlockState[] States, IReadOnlyList<KvSequenceBlocks> Sequences, long EventCount)
{
    /// <summary>Reads the pool's states and the given sequences' tables. Engine thread only: the pool is not thread-safe.</summary>
    public static KvCacheSnapshot Take(KvCacheManager kv, long step, IEnumerable<(long SequenceId, string RequestId, int Index, bool Running, int PromptTokens, int OutputTokens)> sequences)
    {
        var pool = kv.Pool;
        var states = new KvBlockState[pool.BlockCount];
        for (int b = 0; b < states.Length; b++)
        {
            int refs = pool.RefCount(b);
            states[b] = refs > 1 ? KvBlockState.Shared : refs == 1 ? KvBlockState.Owned : pool.IsCached(b) ? KvBlockState.Cached : KvBlockState.Free;
        }
        var tables = new List<KvSequenceBlocks>();
        foreach (var s in sequences)
        {
            var table = kv.BlockTable(s.SequenceId);
            if (table.Count > 0) tables.Add(new KvSequenceBlocks(s.RequestId, s.Index, s.Running, s.PromptTokens, s.OutputTokens, [.. table]));
        }
        return new KvCacheSnapshot(step, kv.BlockSize, states, tables, pool.EventCount);
    }

    /// <summary>How many blocks are in the given state.</summary>
    public int Count(KvBlockState state) => States.Count(s => s == state);
}
