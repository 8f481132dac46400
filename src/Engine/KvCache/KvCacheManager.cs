namespace TokenMill.KvCache;

/// <summary>
/// Gives every sequence a block table over the shared <see cref="BlockPool"/>: position p of a
/// sequence lives in slot <c>table[p / block_size] * block_size + p % block_size</c>. Sequences grow
/// a block at a time as the scheduler admits their tokens, and give every block back when they end.
/// Not thread-safe: only the engine loop touches it.
/// </summary>
public sealed class KvCacheManager
{
    readonly BlockPool _pool;
    readonly Dictionary<long, List<int>> _tables = [];

    public KvCacheManager(int blockCount, int blockSize)
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(blockSize, 1);
        _pool = new BlockPool(blockCount);
        BlockSize = blockSize;
    }

    public int BlockSize { get; }
    public int BlockCount => _pool.BlockCount;
    public int FreeBlockCount => _pool.FreeCount;
    public int SequenceCount => _tables.Count;

    public static int BlocksFor(int tokens, int blockSize) => (tokens + blockSize - 1) / blockSize;

    /// <summary>The block table of a sequence (empty if it holds no blocks).</summary>
    public IReadOnlyList<int> BlockTable(long sequenceId) =>
        _tables.TryGetValue(sequenceId, out var t) ? t : [];

    /// <summary>Blocks that must be newly allocated for the sequence to hold <paramref name="tokens"/> tokens.</summary>
    public int BlocksNeeded(long sequenceId, int tokens) =>
        Math.Max(0, BlocksFor(tokens, BlockSize) - BlockTable(sequenceId).Count);

    public bool CanHold(long sequenceId, int tokens) => BlocksNeeded(sequenceId, tokens) <= _pool.FreeCount;

    /// <summary>
    /// Grows the sequence's table to hold <paramref name="tokens"/> tokens. All or nothing: returns
    /// false, and allocates nothing, when the free blocks do not suffice.
    /// </summary>
    public bool TryReserve(long sequenceId, int tokens)
    {
        int needed = BlocksNeeded(sequenceId, tokens);
        if (needed > _pool.FreeCount) return false;
        if (needed == 0) return true;
        if (!_tables.TryGetValue(sequenceId, out var table)) _tables[sequenceId] = table = [];
        for (int i = 0; i < needed; i++)
        {
            _pool.TryAllocate(out int block);
            table.Add(block);
        }
        return true;
    }

    /// <summary>The cache slot of a sequence's token position (which must already be reserved).</summary>
    public int Slot(long sequenceId, int position)
    {
        var table = _tables[sequenceId];
        return table[position / BlockSize] * BlockSize + position % BlockSize;
    }

    /// <summary>Gives back every block of the sequence (finished, aborted or preempted).</summary>
    public void Free(long sequenceId)
    {
        if (!_tables.Remove(sequenceId, out var table)) return;
        foreach (int block in table) _pool.Release(block);
    }

    /// <summary>Reference count of a block (0 = free).</summary>
    public int RefCount(int block) => _pool.RefCount(block);
}
