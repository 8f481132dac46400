namespace TokenMill.KvCache;

/// <summary>A copy-on-write order: before the next forward pass, every layer's slots of <see cref="Source"/> go to <see cref="Destination"/>.</summary>
public readonly record struct BlockCopy(int Source, int Destination);

/// <summary>
/// The longest cached full-block prefix of a token sequence: the blocks that hold it and their hashes.
/// Found without side effects by <see cref="KvCacheManager.MatchPrefix"/>, taken by <see cref="KvCacheManager.TryAllocate"/>.
/// </summary>
/// <remarks><see cref="NextHash"/> is the hash of the first full block after the match (null when there is none).</remarks>
public sealed record PrefixMatch(int[] Blocks, ulong[] Hashes, int BlockSize, int QueriedTokens, ulong? NextHash = null)
{
    public static PrefixMatch None(int blockSize) => new([], [], blockSize, 0);
    public int Tokens => Blocks.Length * BlockSize;
}

/// <summary>
/// Gives every sequence a block table over the shared <see cref="BlockPool"/>: position p of a
/// sequence lives in slot <c>table[p / block_size] * block_size + p % block_size</c>. Sequences grow
/// a block at a time as the scheduler admits their tokens, and give every block back when they end.
/// <para>
/// With prefix caching, every full computed block is registered under a hash of (parent block's hash,
/// its token ids, the request's cache salt); a new sequence starts on the longest chain of cached
/// blocks that matches its tokens and computes only the rest. Blocks are shared by reference count
/// (prefix hits, forks of <c>n &gt; 1</c>); a block with more than one owner is never written: the
/// first write copies it (<see cref="PendingCopies"/>, carried out by the engine before the forward pass).
/// </para>
/// Not thread-safe: only the engine loop touches it.
/// </summary>
public sealed class KvCacheManager
{
    /// <summary>Parent hash of a sequence's first block (FNV-1a's offset basis: any fixed non-zero value).</summary>
    public const ulong RootHash = 0xcbf29ce484222325;

    readonly BlockPool _pool;
    readonly Dictionary<long, SequenceBlocks> _sequences = [];
    readonly List<BlockCopy> _copies = [];
    int[] _blockTokens;

    sealed class SequenceBlocks
    {
        public readonly List<int> Table = [];

        /// <summary>Hashes of the leading full computed blocks (prefix-cache chain), as far as known.</summary>
        public readonly List<ulong> Hashes = [];

        public ulong Salt;
        public int Priority;
    }

    public KvCacheManager(int blockCount, int blockSize, bool enablePrefixCaching = false,
        IEvictionPolicy? evictionPolicy = null, ICacheAdmissionPolicy? admissionPolicy = null)
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(blockSize, 1);
        _pool = new BlockPool(blockCount, evictionPolicy, admissionPolicy);
        BlockSize = blockSize;
        PrefixCaching = enablePrefixCaching;
        _blockTokens = new int[blockSize];
    }

    public int BlockSize { get; }
    public int BlockCount => _pool.BlockCount;
    public bool PrefixCaching { get; }

    /// <summary>Blocks that can be allocated now, cached-but-unused ones included (they are evicted on demand).</summary>
    public int FreeBlockCount => _pool.FreeCount;

    /// <summary>Blocks in the prefix cache (in use or not).</summary>
    public int CachedBlockCount => _pool.CachedCount;

    /// <summary>Cached blocks nobody uses (counted in <see cref="FreeBlockCount"/>).</summary>
    public int EvictableBlockCount => _pool.EvictableCount;

    public int SequenceCount => _sequences.Count;
    public BlockPool Pool => _pool;

    /// <summary>Tokens looked up in the prefix cache at admission, and how many of them were found.</summary>
    public long PrefixQueryTokens { get; private set; }
    public long PrefixHitTokens { get; private set; }

    /// <summary>Allocated, cached, hit and evicted blocks as they happen (on the engine thread).</summary>
    public event Action<KvCacheEvent>? Events
    {
        add => _pool.Events += value;
        remove => _pool.Events -= value;
    }

    public static int BlocksFor(int tokens, int blockSize) => (tokens + blockSize - 1) / blockSize;

    /// <summary>The block table of a sequence (empty if it holds no blocks).</summary>
    public IReadOnlyList<int> BlockTable(long sequenceId) =>
        _sequences.TryGetValue(sequenceId, out var s) ? s.Table : [];

    /// <summary>Blocks that must be newly allocated for the sequence to hold <paramref name="tokens"/> tokens.</summary>
    public int BlocksNeeded(long sequenceId, int tokens) =>
        Math.Max(0, BlocksFor(tokens, BlockSize) - BlockTable(sequenceId).Count);

    public bool CanHold(long sequenceId, int tokens) => BlocksNeeded(sequenceId, tokens) <= _pool.FreeCount;

    /// <summary>Copies ordered by copy-on-write since the last <see cref="ClearPendingCopies"/>, in order.</summary>
    public IReadOnlyList<BlockCopy> PendingCopies => _copies;
    public void ClearPendingCopies() => _copies.Clear();

    /// <summary>Grows the sequence's table to hold <paramref name="tokens"/> tokens (no writes into held blocks are planned).</summary>
    public bool TryReserve(long sequenceId, int tokens) => TryReserve(sequenceId, tokens, tokens);

    /// <summary>
    /// Makes positions [<paramref name="computedTokens"/>, <paramref name="tokens"/>) writable: a held
    /// block in that range with other owners is replaced by a private copy (copy-on-write), and the
    /// table grows to hold <paramref name="tokens"/>. All or nothing: returns false, and changes
    /// nothing, when the free blocks do not suffice.
    /// </summary>
    public bool TryReserve(long sequenceId, int computedTokens, int tokens)
    {
        _sequences.TryGetValue(sequenceId, out var seq);
        int held = seq?.Table.Count ?? 0;
        int firstWritten = computedTokens / BlockSize, end = Math.Min(held, BlocksFor(tokens, BlockSize));
        int copies = 0;
        for (int i = firstWritten; i < end; i++)
            if (NeedsCopy(seq!.Table[i])) copies++;
        int needed = BlocksNeeded(sequenceId, tokens) + copies;
        if (needed > _pool.FreeCount) return false;
        if (needed == 0) return true;
        if (seq is null) _sequences[sequenceId] = seq = new SequenceBlocks();
        for (int i = firstWritten; i < end; i++)
        {
            int source = seq.Table[i];
            if (!NeedsCopy(source)) continue;
            _pool.TryAllocate(out int copy);
            _copies.Add(new BlockCopy(source, copy));
            _pool.Release(source);
            seq.Table[i] = copy;
            if (i < seq.Hashes.Count) seq.Hashes.RemoveRange(i, seq.Hashes.Count - i);
        }
        while (seq.Table.Count < BlocksFor(tokens, BlockSize))
        {
            _pool.TryAllocate(out int block);
            seq.Table.Add(block);
        }
        return true;
    }

    /// <summary>A block to be written must have one owner and no hash (a cached block's content is promised to its hash).</summary>
    bool NeedsCopy(int block) => _pool.RefCount(block) > 1 || _pool.IsCached(block);

    /// <summary>
    /// The longest chain of cached full blocks matching the first <paramref name="maxTokens"/> tokens
    /// (pass one less than the sequence's length, so that its last token is computed and gives logits).
    /// </summary>
    public PrefixMatch MatchPrefix(Func<int, int> tokenAt, int maxTokens, ulong salt = 0)
    {
        if (!PrefixCaching) return PrefixMatch.None(BlockSize);
        var blocks = new List<int>();
        var hashes = new List<ulong>();
        ulong parent = RootHash;
        ulong? next = null;
        for (int b = 0; (b + 1) * BlockSize <= maxTokens; b++)
        {
            var tokens = BlockTokens(tokenAt, b);
            ulong hash = HashBlock(parent, tokens, salt);
            if (!_pool.TryFind(hash, parent, tokens, out int block))
            {
                next = hash;
                break;
            }
            blocks.Add(block);
            hashes.Add(hash);
            parent = hash;
        }
        return new PrefixMatch([.. blocks], [.. hashes], BlockSize, maxTokens + 1, next);
    }

    /// <summary>
    /// Gives a sequence that holds nothing the matched cached blocks (shared, reference count up) and
    /// fresh blocks up to <paramref name="tokens"/> tokens. All or nothing.
    /// </summary>
    public bool TryAllocate(long sequenceId, PrefixMatch match, int tokens, int priority = 0, ulong salt = 0)
    {
        if (_sequences.TryGetValue(sequenceId, out var existing) && existing.Table.Count > 0)
            throw new InvalidOperationException($"sequence {sequenceId} already holds blocks");
        int fresh = Math.Max(0, BlocksFor(tokens, BlockSize) - match.Blocks.Length);
        int unusedHits = match.Blocks.Count(b => _pool.RefCount(b) == 0); // taking them removes them from the free count
        if (fresh + unusedHits > _pool.FreeCount) return false;

        var seq = existing ?? new SequenceBlocks();
        _sequences[sequenceId] = seq;
        seq.Salt = salt;
        seq.Priority = priority;
        foreach (int block in match.Blocks)
        {
            _pool.Hit(block, priority);
            seq.Table.Add(block);
        }
        seq.Hashes.Clear();
        seq.Hashes.AddRange(match.Hashes);
        for (int i = 0; i < fresh; i++)
        {
            _pool.TryAllocate(out int block);
            seq.Table.Add(block);
        }
        PrefixQueryTokens += match.QueriedTokens;
        PrefixHitTokens += match.Tokens;
        return true;
    }

    /// <summary>
    /// Registers the sequence's full blocks among its first <paramref name="computedTokens"/> (their keys
    /// and values are written) in the prefix cache. Cheap when nothing new is full.
    /// </summary>
    public void CacheComputedBlocks(long sequenceId, Func<int, int> tokenAt, int computedTokens)
    {
        if (!PrefixCaching || !_sequences.TryGetValue(sequenceId, out var seq)) return;
        int full = Math.Min(computedTokens / BlockSize, seq.Table.Count);
        for (int b = seq.Hashes.Count; b < full; b++)
        {
            ulong parent = b == 0 ? RootHash : seq.Hashes[b - 1];
            var tokens = BlockTokens(tokenAt, b);
            ulong hash = HashBlock(parent, tokens, seq.Salt);
            seq.Hashes.Add(hash);
            if (!_pool.IsCached(seq.Table[b])) _pool.Register(seq.Table[b], hash, parent, tokens, b + 1, seq.Priority);
        }
    }

    /// <summary>
    /// Adds to <paramref name="into"/> the hashes of the full blocks the sequence fills up to
    /// <paramref name="tokens"/> that are not registered yet: what this step will put in the cache.
    /// </summary>
    public void AddUpcomingHashes(long sequenceId, Func<int, int> tokenAt, int tokens, HashSet<ulong> into)
    {
        if (!PrefixCaching || !_sequences.TryGetValue(sequenceId, out var seq)) return;
        ulong parent = seq.Hashes.Count == 0 ? RootHash : seq.Hashes[^1];
        for (int b = seq.Hashes.Count; (b + 1) * BlockSize <= tokens; b++)
        {
            parent = HashBlock(parent, BlockTokens(tokenAt, b), seq.Salt);
            into.Add(parent);
        }
    }

    /// <summary>A new sequence sharing every block of <paramref name="parentId"/> (parallel sampling); writes will copy.</summary>
    public void Fork(long parentId, long childId)
    {
        if (_sequences.ContainsKey(childId)) throw new InvalidOperationException($"sequence {childId} already holds blocks");
        var parent = _sequences[parentId];
        var child = new SequenceBlocks { Salt = parent.Salt, Priority = parent.Priority };
        foreach (int block in parent.Table)
        {
            _pool.Retain(block);
            child.Table.Add(block);
        }
        child.Hashes.AddRange(parent.Hashes);
        _sequences[childId] = child;
    }

    /// <summary>The cache slot of a sequence's token position (which must already be reserved).</summary>
    public int Slot(long sequenceId, int position)
    {
        var table = _sequences[sequenceId].Table;
        return table[position / BlockSize] * BlockSize + position % BlockSize;
    }

    /// <summary>
    /// Gives back every block of the sequence (finished, aborted or preempted). The tail goes first, so
    /// under LRU a chain's deepest blocks are evicted before the prefixes others may share.
    /// </summary>
    public void Free(long sequenceId)
    {
        if (!_sequences.Remove(sequenceId, out var seq)) return;
        for (int i = seq.Table.Count - 1; i >= 0; i--) _pool.Release(seq.Table[i]);
    }

    /// <summary>Reference count of a block (0 = free).</summary>
    public int RefCount(int block) => _pool.RefCount(block);

    /// <summary>Whether a block is registered in the prefix cache (its content must never change).</summary>
    public bool IsCached(int block) => _pool.IsCached(block);

    ReadOnlySpan<int> BlockTokens(Func<int, int> tokenAt, int block)
    {
        for (int i = 0; i < BlockSize; i++) _blockTokens[i] = tokenAt(block * BlockSize + i);
        return _blockTokens;
    }

    /// <summary>
    /// A block's key: its parent's hash, its token ids and the salt, mixed with splitmix64's finalizer.
    /// 64 bits suffice because a hit is confirmed by comparing the tokens and the parent hash.
    /// </summary>
    public static ulong HashBlock(ulong parent, ReadOnlySpan<int> tokens, ulong salt)
    {
        ulong h = Mix(parent ^ 0x9e3779b97f4a7c15);
        foreach (int t in tokens) h = Mix(h + (uint)t + 0x9e3779b97f4a7c15);
        return Mix(h ^ salt);
    }

    /// <summary>A stable 64-bit salt of a string (FNV-1a over UTF-16 code units); 0 for none.</summary>
    public static ulong SaltOf(string? salt)
    {
        if (string.IsNullOrEmpty(salt)) return 0;
        ulong h = RootHash;
        foreach (char c in salt) h = (h ^ c) * 0x100000001b3;
        return h;
    }

    static ulong Mix(ulong x)
    {
        x ^= x >> 30;
        x *= 0xbf58476d1ce4e5b9;
        x ^= x >> 27;
        x *= 0x94d049bb133111eb;
        return x ^ (x >> 31);
    }
}
