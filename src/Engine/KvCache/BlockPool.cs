namespace TokenMill.KvCache;

/// <summary>
/// The fixed pool of KV blocks, with a reference count per block. A block is free when its count is
/// zero; the free list is FIFO so that a just-freed block is reused last (what prefix caching wants:
/// it stays readable for as long as possible).
/// </summary>
public sealed class BlockPool
{
    readonly int[] _refCounts;
    readonly Queue<int> _free;

    public BlockPool(int blockCount)
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(blockCount, 1);
        _refCounts = new int[blockCount];
        _free = new Queue<int>(Enumerable.Range(0, blockCount));
    }

    public int BlockCount => _refCounts.Length;
    public int FreeCount => _free.Count;

    public int RefCount(int block) => _refCounts[block];

    /// <summary>Takes a free block with reference count 1, or returns false when none is free.</summary>
    public bool TryAllocate(out int block)
    {
        if (!_free.TryDequeue(out block)) return false;
        _refCounts[block] = 1;
        return true;
    }

    /// <summary>One more owner of an allocated block (a forked sequence sharing it).</summary>
    public void Retain(int block)
    {
        if (_refCounts[block] <= 0) throw new InvalidOperationException($"KV block {block} is free and cannot be shared");
        _refCounts[block]++;
    }

    /// <summary>One owner fewer; the block returns to the free list when none is left.</summary>
    public void Release(int block)
    {
        if (_refCounts[block] <= 0) throw new InvalidOperationException($"KV block {block} is already free (double release)");
        if (--_refCounts[block] == 0) _free.Enqueue(block);
    }
}
