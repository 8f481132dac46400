using TokenMill.KvCache;

namespace TokenMill.Tests.KvCache;

/// <summary>Each eviction policy gives up cached free blocks in the order it promises; the pool keeps cached blocks until it must.</summary>
public class EvictionPolicyTests
{
    static CachedBlockInfo Block(int id, long lastAccess = 0, int hits = 0, long cachedAt = 0, int priority = 0) =>
        new(id) { LastAccess = lastAccess, HitCount = hits, CachedAt = cachedAt, OwnerPriority = priority };

    static int[] VictimOrder(IEvictionPolicy policy, params CachedBlockInfo[] blocks)
    {
        foreach (var b in blocks) policy.Add(b);
        var order = new List<int>();
        while (policy.Evict() is { } victim) order.Add(victim.Block);
        Assert.Equal(0, policy.Count);
        return [.. order];
    }

    [Fact]
    public void Lru_evicts_the_least_recently_accessed_first()
    {
        Assert.Equal([1, 2, 0], VictimOrder(new LruEvictionPolicy(),
            Block(0, lastAccess: 5, hits: 0, cachedAt: 1), Block(1, lastAccess: 1, hits: 9, cachedAt: 3), Block(2, lastAccess: 3, hits: 0, cachedAt: 2)));
    }

    [Fact]
    public void Lfu_evicts_the_least_hit_first_and_the_least_recent_among_equals()
    {
        Assert.Equal([3, 1, 2, 0], VictimOrder(new LfuEvictionPolicy(),
            Block(0, lastAccess: 1, hits: 7), Block(1, lastAccess: 9, hits: 1), Block(2, lastAccess: 2, hits: 3), Block(3, lastAccess: 8, hits: 0)));
        // Equal hit counts: least recently used first.
        Assert.Equal([1, 0], VictimOrder(new LfuEvictionPolicy(), Block(0, lastAccess: 6, hits: 2), Block(1, lastAccess: 4, hits: 2)));
    }

    [Fact]
    public void Fifo_evicts_in_the_order_blocks_were_cached_whatever_their_use_since()
    {
        Assert.Equal([2, 0, 1], VictimOrder(new FifoEvictionPolicy(),
            Block(0, lastAccess: 1, hits: 0, cachedAt: 5), Block(1, lastAccess: 2, hits: 0, cachedAt: 8), Block(2, lastAccess: 99, hits: 50, cachedAt: 1)));
    }

    [Fact]
    public void Priority_lru_keeps_an_urgent_requests_blocks_longer_unless_they_are_much_older()
    {
        // Block 0 belongs to an urgent request (priority 0) and is older; block 1 to a batch job (priority 2).
        Assert.Equal([0, 1], VictimOrder(new LruEvictionPolicy(), Block(0, lastAccess: 10, priority: 0), Block(1, lastAccess: 100, priority: 2)));
        Assert.Equal([1, 0], VictimOrder(new PriorityLruEvictionPolicy(weight: 1024), Block(0, lastAccess: 10, priority: 0), Block(1, lastAccess: 100, priority: 2)));
        // 2 levels × weight 40 = 80 accesses of grace: an urgent block 90 accesses older goes first after all.
        Assert.Equal([0, 1], VictimOrder(new PriorityLruEvictionPolicy(weight: 40), Block(0, lastAccess: 10, priority: 0), Block(1, lastAccess: 100, priority: 2)));
        // Equal priorities: plain LRU.
        Assert.Equal([1, 0], VictimOrder(new PriorityLruEvictionPolicy(), Block(0, lastAccess: 7, priority: 1), Block(1, lastAccess: 3, priority: 1)));
    }

    [Fact]
    public void Policies_are_created_by_their_cli_names_and_unknown_names_list_the_choices()
    {
        foreach (string name in EvictionPolicies.Names) Assert.Equal(name, EvictionPolicies.Create(name).Name);
        var e = Assert.Throws<ArgumentException>(() => EvictionPolicies.Create("random"));
        Assert.Contains("lru, lfu, fifo, priority-lru", e.Message);
    }

    static int[] Tokens(int start, int count) => [.. Enumerable.Range(start, count)];

    /// <summary>Runs one sequence over <paramref name="tokens"/> to completion and frees it: its full blocks stay cached.</summary>
    static void RunAndFree(KvCacheManager kv, long id, int[] tokens)
    {
        var match = kv.MatchPrefix(p => tokens[p], tokens.Length - 1);
        Assert.True(kv.TryAllocate(id, match, tokens.Length));
        kv.CacheComputedBlocks(id, p => tokens[p], tokens.Length);
        kv.Free(id);
    }

    [Fact]
    public void Cached_free_blocks_stay_until_a_block_is_needed_and_uncached_free_blocks_go_first()
    {
        var kv = new KvCacheManager(blockCount: 4, blockSize: 2, enablePrefixCaching: true);
        var events = new List<KvCacheEvent>();
        kv.Events += events.Add;
        var a = Tokens(100, 4); // two full blocks
        RunAndFree(kv, 1, a);
        Assert.Equal(4, kv.FreeBlockCount);
        Assert.Equal(2, kv.CachedBlockCount);
        Assert.Equal(2, kv.EvictableBlockCount);

        // Two more blocks come from the uncached free ones: nothing is evicted.
        Assert.True(kv.TryReserve(2, 4));
        Assert.DoesNotContain(events, e => e.Kind == KvEventKind.Evicted);
        Assert.Equal(2, kv.CachedBlockCount);

        // The cached prefix is still found: a + one more token hits both blocks (5 tokens: the last is computed).
        int[] longer = [.. a, 7];
        var match = kv.MatchPrefix(p => longer[p], longer.Length - 1);
        Assert.Equal(4, match.Tokens);

        // A third block is needed now: a cached one must go, the deepest of the chain first (LRU, freed tail first).
        Assert.True(kv.TryReserve(2, 6));
        var evicted = Assert.Single(events, e => e.Kind == KvEventKind.Evicted);
        Assert.Equal(match.Blocks[1], evicted.Block);
        Assert.Equal(2, kv.MatchPrefix(p => longer[p], longer.Length - 1).Tokens); // only the first block is left
        Assert.False(kv.TryReserve(3, 4)); // the pool is exhausted: 3 held by sequence 2, 1 cached free
        Assert.Equal(1, kv.FreeBlockCount);
    }

    [Fact]
    public void A_hit_takes_a_cached_block_out_of_the_evictable_set_and_counts_the_tokens()
    {
        var kv = new KvCacheManager(blockCount: 6, blockSize: 4, enablePrefixCaching: true);
        var prompt = Tokens(0, 10); // blocks [0..4) and [4..8) full
        RunAndFree(kv, 1, prompt);
        Assert.Equal(2, kv.EvictableBlockCount);

        var match = kv.MatchPrefix(p => prompt[p], prompt.Length - 1);
        Assert.Equal(8, match.Tokens);
        Assert.True(kv.TryAllocate(2, match, prompt.Length));
        Assert.Equal(0, kv.EvictableBlockCount);
        Assert.Equal(match.Blocks, kv.BlockTable(2).Take(2));
        Assert.All(match.Blocks, b => Assert.Equal(1, kv.RefCount(b)));
        Assert.Equal(1, kv.Pool.CacheInfo(match.Blocks[0])!.HitCount);
        Assert.Equal(8, kv.PrefixHitTokens);
        Assert.Equal(10 + 10, kv.PrefixQueryTokens); // both admissions looked up their 10 tokens

        // A different salt shares nothing.
        Assert.Equal(0, kv.MatchPrefix(p => prompt[p], prompt.Length - 1, salt: KvCacheManager.SaltOf("tenant-b")).Tokens);
    }

    [Fact]
    public void An_admission_rule_can_keep_blocks_out_of_the_cache()
    {
        var kv = new KvCacheManager(blockCount: 6, blockSize: 2, enablePrefixCaching: true, admissionPolicy: new OnlyFirstBlocks(1));
        RunAndFree(kv, 1, Tokens(0, 6));
        Assert.Equal(1, kv.CachedBlockCount);
        Assert.Equal(6, kv.FreeBlockCount);
    }

    sealed class OnlyFirstBlocks(int depth) : ICacheAdmissionPolicy
    {
        public bool Admit(CachedBlockInfo candidate) => candidate.PrefixDepth <= depth;
    }

    [Fact]
    public void Without_prefix_caching_nothing_is_cached_or_found()
    {
        var kv = new KvCacheManager(blockCount: 4, blockSize: 2);
        var t = Tokens(0, 5);
        RunAndFree(kv, 1, t);
        Assert.Equal(0, kv.CachedBlockCount);
        Assert.Equal(0, kv.MatchPrefix(p => t[p], 4).Tokens);
    }
}
