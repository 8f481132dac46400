using TokenMill.KvCache;

namespace TokenMill.Core;

/// <summary>One sequence's share of a step: <see cref="TokenCount"/> tokens from position <see cref="Start"/>.</summary>
public readonly record struct ScheduledSequence(Sequence Sequence, int Start, int TokenCount)
{
    /// <summary>Whether this step reaches the sequence's last token, so its logits give the next token.</summary>
    public bool SamplesNext => Start + TokenCount == Sequence.TotalTokens;
}

/// <summary>
/// Continuous batching in the manner of vLLM's v1 scheduler: every step, running sequences (in
/// priority order) get the tokens they have not computed — one for a decode, the rest of the prompt
/// (up to the budget) for a chunked prefill — then waiting sequences are admitted, each with a
/// prefill chunk, while the token budget, <c>max_num_seqs</c> and the free KV blocks allow. When a
/// running sequence cannot get a block, the lowest-priority, newest running sequence is preempted:
/// its blocks are freed and it waits to be recomputed from scratch.
/// <para>
/// With prefix caching, a sequence admitted from the waiting queue (new, or preempted) starts on its
/// longest cached full-block prefix and computes only the rest; at the start of every step, and when a
/// sequence leaves, the full blocks its computed tokens fill are registered in the cache. A waiting
/// sequence whose next block another sequence computes in this very step waits one step to share it.
/// </para>
/// </summary>
public sealed class Scheduler
{
    readonly KvCacheManager _kv;
    readonly int _maxBatchedTokens;
    readonly int _maxSeqs;
    readonly List<Sequence> _running = [];
    readonly SortedSet<Sequence> _waiting = new(PriorityOrder.Instance);
    readonly List<ScheduledSequence> _scheduled = [];
    readonly HashSet<ulong> _upcoming = []; // hashes of the blocks this step fills (prefix caching)

    public Scheduler(KvCacheManager kv, int maxNumBatchedTokens, int maxNumSeqs)
    {
        _kv = kv;
        _maxBatchedTokens = maxNumBatchedTokens;
        _maxSeqs = maxNumSeqs;
    }

    /// <summary>
    /// Recomputations a request may suffer before it is given up (a preemption storm stays bounded: the
    /// engine fails such a request with a clear error instead of recomputing it forever).
    /// </summary>
    public int MaxPreemptionsPerRequest { get; init; } = int.MaxValue;

    /// <summary>Sequences preempted more than <see cref="MaxPreemptionsPerRequest"/> times: out of the scheduler, for the engine to fail.</summary>
    public IReadOnlyList<Sequence> Exhausted => _exhausted;

    public void ClearExhausted() => _exhausted.Clear();

    readonly List<Sequence> _exhausted = [];

    public IReadOnlyList<Sequence> Running => _running;
    public IReadOnlyCollection<Sequence> Waiting => _waiting;
    public long PreemptionCount { get; private set; }

    /// <summary>Steps scheduled so far: the clock of the KV cache's access times.</summary>
    public long StepCount { get; private set; }

    public bool HasWork => _running.Count > 0 || _waiting.Count > 0;

    public void Add(Sequence sequence)
    {
        sequence.Status = SequenceStatus.Waiting;
        _waiting.Add(sequence);
    }

    /// <summary>Takes a sequence out of the scheduler, wherever it is, and frees its blocks.</summary>
    public void Remove(Sequence sequence)
    {
        if (!_waiting.Remove(sequence)) _running.Remove(sequence);
        _kv.CacheComputedBlocks(sequence.Id, sequence.TokenAtFunc, sequence.ComputedTokens);
        _kv.Free(sequence.Id);
    }

    /// <summary>
    /// Starts <paramref name="child"/> as a copy of <paramref name="parent"/> (which must be running and
    /// have the same tokens): it shares every block and is running at once (parallel sampling).
    /// </summary>
    public void Fork(Sequence parent, Sequence child)
    {
        if (parent.Status != SequenceStatus.Running) throw new InvalidOperationException($"{parent} is not running and cannot be forked");
        _kv.Fork(parent.Id, child.Id);
        child.ComputedTokens = parent.ComputedTokens;
        child.CachedPromptTokens = parent.CachedPromptTokens;
        child.Status = SequenceStatus.Running;
        child.Started = true;
        InsertRunning(child);
    }

    /// <summary>Picks this step's work. Blocks for every scheduled token are reserved on return.</summary>
    public IReadOnlyList<ScheduledSequence> Schedule()
    {
        _scheduled.Clear();
        int budget = _maxBatchedTokens;
        bool preempted = false;
        _kv.Pool.Step = ++StepCount;
        _upcoming.Clear();
        foreach (var seq in _running) _kv.CacheComputedBlocks(seq.Id, seq.TokenAtFunc, seq.ComputedTokens);

        for (int i = 0; i < _running.Count && budget > 0;)
        {
            var seq = _running[i];
            int n = Math.Min(seq.TotalTokens - seq.ComputedTokens, budget);
            if (n <= 0) { i++; continue; }
            bool reserved;
            while (!(reserved = _kv.TryReserve(seq.Id, seq.ComputedTokens, seq.ComputedTokens + n)))
            {
                var victim = _running[^1]; // lowest priority, newest: the end of the priority-ordered list
                Preempt(victim);
                preempted = true;
                if (victim == seq) break;
            }
            if (!reserved) continue; // seq itself was preempted; _running[i] is now the next one
            _kv.AddUpcomingHashes(seq.Id, seq.TokenAtFunc, seq.ComputedTokens + n, _upcoming);
            _scheduled.Add(new ScheduledSequence(seq, seq.ComputedTokens, n));
            budget -= n;
            i++;
        }

        // Admitting new work in the same step that had to preempt would only thrash.
        if (!preempted) Admit(ref budget);

        // Beams that wait for their siblings' logits hold blocks and compute nothing: when nothing can run otherwise,
        // they make room (the newest first), so a beam that is still to compute is never shut out for good.
        while (_scheduled.Count == 0 && _waiting.Any(s => !s.Parked) && _running.LastOrDefault(s => s.ComputedTokens == s.TotalTokens) is { } idle)
        {
            Preempt(idle);
            Admit(ref budget);
        }
        return _scheduled;
    }

    void Admit(ref int budget)
    {
        while (budget > 0 && _running.Count < _maxSeqs && _waiting.Count > 0)
        {
            // A parked beam (its logits are in, its siblings' not yet) has nothing to do until its request steps.
            Sequence? seq = null;
            foreach (var s in _waiting)
                if (!s.Parked)
                {
                    seq = s;
                    break;
                }
            if (seq is null) break;
            // A request with n > 1 will fork into n running sequences: room for all of them (or it runs alone).
            int width = seq.Group is { Forked: false } group ? group.N : 1;
            if (_running.Count > 0 && _running.Count + width > _maxSeqs) break;
            // At least the last token is computed, whatever is cached: its logits give the next token.
            var cached = _kv.MatchPrefix(seq.TokenAtFunc, seq.TotalTokens - 1, seq.CacheSalt);
            // Its next block is being computed in this step by another sequence (requests that arrive together
            // with a shared prefix): wait one step and share it instead of computing it twice.
            if (cached.NextHash is { } next && _upcoming.Contains(next)) break;
            int n = Math.Min(seq.TotalTokens - cached.Tokens, budget);
            if (!_kv.TryAllocate(seq.Id, cached, cached.Tokens + n, seq.Priority, seq.CacheSalt)) break;
            seq.ComputedTokens = cached.Tokens;
            _kv.AddUpcomingHashes(seq.Id, seq.TokenAtFunc, cached.Tokens + n, _upcoming);
            if (!seq.Started) seq.CachedPromptTokens = Math.Min(cached.Tokens, seq.PromptTokens.Length);
            _waiting.Remove(seq);
            seq.Status = SequenceStatus.Running;
            seq.Started = true;
            InsertRunning(seq);
            _scheduled.Add(new ScheduledSequence(seq, seq.ComputedTokens, n));
            budget -= n;
        }
    }

    void Preempt(Sequence victim)
    {
        _running.Remove(victim);
        _kv.CacheComputedBlocks(victim.Id, victim.TokenAtFunc, victim.ComputedTokens);
        _kv.Free(victim.Id);
        victim.ComputedTokens = 0;
        victim.Preemptions++;
        PreemptionCount++;
        victim.Status = SequenceStatus.Waiting;
        if (victim.Preemptions > MaxPreemptionsPerRequest) _exhausted.Add(victim);
        else _waiting.Add(victim);
    }

    void InsertRunning(Sequence seq)
    {
        int i = _running.Count;
        while (i > 0 && PriorityOrder.Instance.Compare(_running[i - 1], seq) > 0) i--;
        _running.Insert(i, seq);
    }

    /// <summary>Lower priority value first, then earlier arrival, then id (a total order).</summary>
    sealed class PriorityOrder : IComparer<Sequence>
    {
        public static readonly PriorityOrder Instance = new();

        public int Compare(Sequence? a, Sequence? b)
        {
            if (ReferenceEquals(a, b)) return 0;
            int c = a!.Priority.CompareTo(b!.Priority);
            if (c == 0) c = a.Arrival.CompareTo(b.Arrival);
            return c != 0 ? c : a.Id.CompareTo(b.Id);
        }
    }
}
