namespace TokenMill.KvCache;

/// <summary>
/// What the cache knows about a cached block (a full block registered under its prefix hash), as
/// eviction and admission policies see it. Only the <see cref="BlockPool"/> changes it, and never
/// while the block sits in an eviction policy (a policy may order blocks by it).
/// </summary>
public sealed class CachedBlockInfo
{
    internal CachedBlockInfo(int block) => Block = block;

    public int Block { get; }

    /// <summary>Hash of (parent block's hash, this block's token ids, cache salt).</summary>
    public ulong Hash { get; internal set; }

    /// <summary>Logical clock of the last touch (allocation, hit, release): a total order of accesses.</summary>
    public long LastAccess { get; internal set; }

    /// <summary>Engine step of the last touch.</summary>
    public long LastAccessStep { get; internal set; }

    /// <summary>Logical clock of the moment the block was registered in the cache (FIFO's order).</summary>
    public long CachedAt { get; internal set; }

    /// <summary>Times a new sequence found this block in the cache.</summary>
    public int HitCount { get; internal set; }

    /// <summary>1 for a prompt's first block, 2 for the next, …: how deep in a prefix chain it sits.</summary>
    public int PrefixDepth { get; internal set; }

    /// <summary>The most urgent (lowest value, vLLM's convention) priority of any request that used the block.</summary>
    public int OwnerPriority { get; internal set; }

    /// <summary>Tokens to recompute if it is evicted and wanted again: the whole prefix up to its end.</summary>
    public int RecomputeCost { get; internal set; }

    public override string ToString() =>
        $"block {Block} depth {PrefixDepth} hits {HitCount} last {LastAccess} cached {CachedAt} priority {OwnerPriority}";
}

/// <summary>
/// Chooses which cached free block to give up when a block is needed and no uncached block is free.
/// The pool adds a cached block when its last owner releases it and removes it when a sequence hits it
/// (or it is evicted); a block's metadata does not change while it is inside.
/// </summary>
public interface IEvictionPolicy
{
    string Name { get; }
    int Count { get; }
    void Add(CachedBlockInfo block);
    void Remove(CachedBlockInfo block);

    /// <summary>Removes and returns the block to evict, or null when the policy holds none.</summary>
    CachedBlockInfo? Evict();
}

/// <summary>Decides whether a freshly computed full block is registered in the prefix cache at all.</summary>
public interface ICacheAdmissionPolicy
{
    bool Admit(CachedBlockInfo candidate);
}

/// <summary>The default admission rule: every full block is cached.</summary>
public sealed class AdmitAll : ICacheAdmissionPolicy
{
    public static readonly AdmitAll Instance = new();
    public bool Admit(CachedBlockInfo candidate) => true;
}

/// <summary>
/// A policy that evicts the block with the smallest key; ties go to the block freed first, then the
/// lower block id, so the order is total and deterministic.
/// </summary>
public abstract class OrderedEvictionPolicy : IEvictionPolicy
{
    readonly SortedSet<CachedBlockInfo> _blocks;

    protected OrderedEvictionPolicy() => _blocks = new SortedSet<CachedBlockInfo>(Comparer<CachedBlockInfo>.Create(CompareTotal));

    public abstract string Name { get; }
    public int Count => _blocks.Count;

    /// <summary>Negative when <paramref name="a"/> should be evicted before <paramref name="b"/>.</summary>
    protected abstract int Compare(CachedBlockInfo a, CachedBlockInfo b);

    int CompareTotal(CachedBlockInfo? a, CachedBlockInfo? b)
    {
        int c = Compare(a!, b!);
        if (c == 0) c = a!.LastAccess.CompareTo(b!.LastAccess);
        return c != 0 ? c : a!.Block.CompareTo(b!.Block);
    }

    public void Add(CachedBlockInfo block)
    {
        if (!_blocks.Add(block)) throw new InvalidOperationException($"{block} is already evictable");
    }

    public void Remove(CachedBlockInfo block)
    {
        if (!_blocks.Remove(block)) throw new InvalidOperationException($"{block} is not evictable");
    }

    public CachedBlockInfo? Evict()
    {
        var victim = _blocks.Min;
        if (victim is not null) _blocks.Remove(victim);
        return victim;
    }
}

/// <summary>Least recently used first (vLLM's policy). A sequence releases its blocks tail first, so a chain's deepest block goes first.</summary>
public sealed class LruEvictionPolicy : OrderedEvictionPolicy
{
    public override string Name => "lru";
    protected override int Compare(CachedBlockInfo a, CachedBlockInfo b) => a.LastAccess.CompareTo(b.LastAccess);
}

/// <summary>Least frequently hit first; least recently used among equals.</summary>
public sealed class LfuEvictionPolicy : OrderedEvictionPolicy
{
    public override string Name => "lfu";
    protected override int Compare(CachedBlockInfo a, CachedBlockInfo b) => a.HitCount.CompareTo(b.HitCount);
}

/// <summary>First cached, first evicted, however often it was hit since.</summary>
public sealed class FifoEvictionPolicy : OrderedEvictionPolicy
{
    public override string Name => "fifo";
    protected override int Compare(CachedBlockInfo a, CachedBlockInfo b) => a.CachedAt.CompareTo(b.CachedAt);
}

/// <summary>
/// Priority-weighted LRU: a block's age is discounted by <see cref="Weight"/> accesses per level of its
/// owners' priority (lower value = more urgent, kept longer), so an urgent request's prefix outlives a
/// batch job's unless it is much older. Score = LastAccess − Weight × OwnerPriority; lowest goes first.
/// </summary>
public sealed class PriorityLruEvictionPolicy(long weight = PriorityLruEvictionPolicy.DefaultWeight) : OrderedEvictionPolicy
{
    /// <summary>One priority level is worth this many accesses of recency: about one long prompt's blocks.</summary>
    public const long DefaultWeight = 1024;

    public long Weight { get; } = weight;
    public override string Name => "priority-lru";

    protected override int Compare(CachedBlockInfo a, CachedBlockInfo b) =>
        (a.LastAccess - Weight * a.OwnerPriority).CompareTo(b.LastAccess - Weight * b.OwnerPriority);
}

public static class EvictionPolicies
{
    public static readonly string[] Names = ["lru", "lfu", "fifo", "priority-lru"];

    /// <summary>A fresh policy by its CLI name; throws <see cref="ArgumentException"/> naming the choices.</summary>
    public static IEvictionPolicy Create(string name) => name.ToLowerInvariant() switch
    {
        "lru" => new LruEvictionPolicy(),
        "lfu" => new LfuEvictionPolicy(),
        "fifo" => new FifoEvictionPolicy(),
        "priority-lru" => new PriorityLruEvictionPolicy(),
        _ => throw new ArgumentException($"unknown eviction policy '{name}' (policies: {string.Join(", ", Names)})"),
    };
}
