namespace TokenMill.KvCache;

/// <summary>What happened to a KV block, for counters and the simulator.</summary>
public enum KvEventKind
{
    /// <summary>A free block was handed to a sequence.</summary>
    Allocated,

    /// <summary>A computed full block was registered in the prefix cache under its hash.</summary>
    Cached,

    /// <summary>A new sequence found the block in the prefix cache and shares it.</summary>
    Hit,

    /// <summary>A cached free block lost its hash to make room (it is allocated again right after).</summary>
    Evicted,
}

/// <summary>
/// One KV-cache event: the block, its prefix hash (0 when it has none), the scheduler step, and its ordinal — the pool's
/// 1-based count of events raised so far, so that a listener can line events up with a snapshot's <see cref="BlockPool.EventCount"/>.
/// </summary>
public readonly record struct KvCacheEvent(KvEventKind Kind, int Block, ulong Hash, long Step, long Ordinal = 0);

/// <summary>
/// The fixed pool of KV blocks, with a reference count per block, and the prefix cache's index over
/// them. A block is free when its count is zero. Free blocks with no hash wait in a FIFO list; free
/// blocks that are cached (registered under a prefix hash) stay readable and findable until a block is
/// needed and no uncached one is left — then the <see cref="IEvictionPolicy"/> picks which loses its hash.
/// Not thread-safe: only the engine loop touches it.
/// </summary>
public sealed class BlockPool
{
    readonly int[] _refCounts;
    readonly Queue<int> _free;
    readonly CachedBlockInfo?[] _info;
    readonly int[]?[] _tokens;
    readonly ulong[] _parentHash;
    readonly Dictionary<ulong, int> _byHash = [];
    readonly IEvictionPolicy _eviction;
    readonly ICacheAdmissionPolicy _admission;
    long _clock;

    public BlockPool(int blockCount, IEvictionPolicy? eviction = null, ICacheAdmissionPolicy? admission = null)
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(blockCount, 1);
        _refCounts = new int[blockCount];
        _free = new Queue<int>(Enumerable.Range(0, blockCount));
        _info = new CachedBlockInfo?[blockCount];
        _tokens = new int[]?[blockCount];
        _parentHash = new ulong[blockCount];
        _eviction = eviction ?? new LruEvictionPolicy();
        _admission = admission ?? AdmitAll.Instance;
        if (_eviction.Count != 0) throw new ArgumentException("the eviction policy must start empty", nameof(eviction));
    }

    public int BlockCount => _refCounts.Length;

    /// <summary>Blocks that can be allocated now: never-cached free ones plus cached ones nobody uses.</summary>
    public int FreeCount => _free.Count + _eviction.Count;

    /// <summary>Blocks registered in the prefix cache, in use or not.</summary>
    public int CachedCount => _byHash.Count;

    /// <summary>Cached blocks nobody uses: free, but kept until evicted.</summary>
    public int EvictableCount => _eviction.Count;

    public long Evictions { get; private set; }
    public IEvictionPolicy EvictionPolicy => _eviction;

    /// <summary>The scheduler step, stamped on accesses and events.</summary>
    public long Step { get; set; }

    public event Action<KvCacheEvent>? Events;

    /// <summary>Events raised so far (listened to or not): the ordinal of the latest one.</summary>
    public long EventCount { get; private set; }

    void Raise(KvEventKind kind, int block, ulong hash) => Events?.Invoke(new KvCacheEvent(kind, block, hash, Step, ++EventCount));

    public int RefCount(int block) => _refCounts[block];

    public bool IsCached(int block) => _info[block] is not null;

    /// <summary>Metadata of a cached block, or null when the block is not in the prefix cache.</summary>
    public CachedBlockInfo? CacheInfo(int block) => _info[block];

    /// <summary>Takes a free block with reference count 1 — uncached ones first, then the eviction policy's victim — or returns false when none is free.</summary>
    public bool TryAllocate(out int block)
    {
        if (!_free.TryDequeue(out block))
        {
            if (_eviction.Evict() is not { } victim)
            {
                block = -1;
                return false;
            }
            block = victim.Block;
            _byHash.Remove(victim.Hash);
            _info[block] = null;
            _tokens[block] = null;
            Evictions++;
            Raise(KvEventKind.Evicted, block, victim.Hash);
        }
        _refCounts[block] = 1;
        Raise(KvEventKind.Allocated, block, 0);
        return true;
    }

    /// <summary>One more owner of an allocated block (a forked sequence sharing it).</summary>
    public void Retain(int block)
    {
        if (_refCounts[block] <= 0) throw new InvalidOperationException($"KV block {block} is free and cannot be shared");
        _refCounts[block]++;
    }

    /// <summary>One owner fewer; at zero a cached block becomes evictable and any other block free.</summary>
    public void Release(int block)
    {
        if (_refCounts[block] <= 0) throw new InvalidOperationException($"KV block {block} is already free (double release)");
        if (--_refCounts[block] > 0) return;
        if (_info[block] is { } info)
        {
            Touch(info);
            _eviction.Add(info);
        }
        else
        {
            _free.Enqueue(block);
        }
    }

    /// <summary>The cached block holding exactly these tokens after this parent, if any.</summary>
    public bool TryFind(ulong hash, ulong parentHash, ReadOnlySpan<int> tokens, out int block)
    {
        if (_byHash.TryGetValue(hash, out block) && _parentHash[block] == parentHash && tokens.SequenceEqual(_tokens[block]))
            return true;
        block = -1;
        return false; // a miss, or a 64-bit hash collision caught by comparing the tokens
    }

    /// <summary>A new sequence takes a cached block: out of the evictable set if nobody used it, reference count up.</summary>
    public void Hit(int block, int priority)
    {
        var info = _info[block] ?? throw new InvalidOperationException($"KV block {block} is not cached");
        if (_refCounts[block] == 0) _eviction.Remove(info);
        _refCounts[block]++;
        info.HitCount++;
        info.OwnerPriority = Math.Min(info.OwnerPriority, priority);
        Touch(info);
        Raise(KvEventKind.Hit, block, info.Hash);
    }

    /// <summary>
    /// Registers an in-use, fully computed block under its hash. Returns false (and the block stays
    /// uncached) when another block already holds that hash or the admission rule refuses it.
    /// </summary>
    public bool Register(int block, ulong hash, ulong parentHash, ReadOnlySpan<int> tokens, int prefixDepth, int priority)
    {
        if (_refCounts[block] <= 0) throw new InvalidOperationException($"KV block {block} is free and cannot be cached");
        if (_info[block] is not null || _byHash.ContainsKey(hash)) return false;
        var info = new CachedBlockInfo(block)
        {
            Hash = hash,
            PrefixDepth = prefixDepth,
            OwnerPriority = priority,
            RecomputeCost = prefixDepth * tokens.Length,
        };
        Touch(info);
        info.CachedAt = info.LastAccess;
        if (!_admission.Admit(info)) return false;
        _info[block] = info;
        _tokens[block] = tokens.ToArray();
        _parentHash[block] = parentHash;
        _byHash[hash] = block;
        Raise(KvEventKind.Cached, block, hash);
        return true;
    }

    void Touch(CachedBlockInfo info)
    {
        info.LastAccess = ++_clock;
        info.LastAccessStep = Step;
    }
}
